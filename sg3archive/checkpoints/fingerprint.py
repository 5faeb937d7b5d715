"""Content fingerprints of network weights: the identity an archive records for its models."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch

_DOMAIN = b"sg3archive.weights.v1\0"


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of a state dict in a canonical form: sorted names, dtype, shape and raw bytes.

    The same weights give the same fingerprint whether they were read from an official pickle,
    our safetensors file, or a module in memory, on any machine or device.
    """
    digest = hashlib.sha256(_DOMAIN)
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        header = json.dumps([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)])
        digest.update(header.encode() + b"\0")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def network_fingerprint(module: torch.nn.Module) -> str:
    """Fingerprint of a module's current parameters and persistent buffers."""
    return weights_fingerprint(module.state_dict())
