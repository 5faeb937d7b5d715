"""Rebuild a network from its class name and recorded constructor arguments."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from sg3archive.errors import NetworkFormatError
from sg3archive.networks.bounds import check_finite, check_network_kwargs
from sg3archive.networks.discriminator import Discriminator
from sg3archive.networks.generator import Generator

NETWORK_CLASSES: dict[str, type[torch.nn.Module]] = {"Generator": Generator, "Discriminator": Discriminator}


def build_network(class_name: str, init_kwargs: dict[str, Any], where: str = "the network settings") -> torch.nn.Module:
    """A fresh (randomly initialized) network of ``class_name`` built with ``init_kwargs``.

    The arguments are checked against ``sg3archive.networks.bounds`` first (types, ranges, the
    parameter count they imply), so nothing is allocated for implausible settings. Raises
    ``NetworkFormatError`` naming ``where`` and the argument or class when the config does not fit.
    """
    cls = NETWORK_CLASSES.get(class_name)
    if cls is None:
        raise NetworkFormatError(
            f"network class {str(class_name)[:60]!r} is not supported; sg3archive reads StyleGAN3 generators "
            f"and their StyleGAN2 discriminators ({', '.join(NETWORK_CLASSES)})."
        )
    check_network_kwargs(class_name, init_kwargs, where)
    try:
        return cls(**init_kwargs)
    except TypeError as exc:
        accepted = ", ".join(p for p in inspect.signature(cls.__init__).parameters if p != "self")
        raise NetworkFormatError(
            f"cannot build {class_name} from the recorded arguments ({exc}); accepted arguments: {accepted}. "
            "Was the file written by a different network family (e.g. StyleGAN2 or StyleGAN-XL)?"
        ) from exc
    except (ValueError, ArithmeticError, RuntimeError, MemoryError) as exc:
        raise NetworkFormatError(
            f"{where}: cannot build {class_name} from the recorded arguments ({type(exc).__name__}: {str(exc)[:200]}); "
            "re-export the network from its source."
        ) from None


def load_state_strict(net: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what did not fit; weights holding
    NaN or infinity are refused (such a network only ever makes NaN images)."""
    check_finite(state, what)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing {head(missing)}")
        if unexpected:
            parts.append(f"unexpected {head(unexpected)}")
        if wrong:
            parts.append("wrong shape " + head([f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in wrong]))
        raise NetworkFormatError(f"{what}: the weights do not fit the recorded architecture: {'; '.join(parts)}.")
    net.load_state_dict(state, strict=True)
