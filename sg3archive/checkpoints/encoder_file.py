"""The encoder file format: a directory with ``encoder.json`` and ``encoder.safetensors``.

``encoder.json`` holds the encoder kind and constructor arguments (enough to rebuild it with
no code from the file), the fingerprint of its own weights, and the fingerprint of the
generator it was trained against: an encoder only makes sense with that generator, so
loading it next to any other generator is refused. ``info`` carries provenance (training
configuration, step, measured quality) and is not part of either fingerprint.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec
import safetensors.torch
import torch

from sg3archive.checkpoints.fingerprint import network_fingerprint
from sg3archive.checkpoints.safe_read import MAX_JSON_BYTES, MAX_WEIGHTS_BYTES, read_capped, read_json_capped
from sg3archive.errors import FingerprintMismatchError, NetworkFormatError
from sg3archive.networks.bounds import check_encoder_kwargs, check_finite, check_state_size

ENCODER_FORMAT = "sg3archive.encoder"
ENCODER_VERSION = 1
JSON_NAME, WEIGHTS_NAME = "encoder.json", "encoder.safetensors"


def save_encoder(encoder: torch.nn.Module, url: str, *, generator_fingerprint: str, info: dict[str, Any] | None = None,
                 storage_options: dict | None = None) -> str:
    """Write the encoder under directory ``url`` (weights first, then the JSON that names them);
    returns the encoder's fingerprint."""
    from sg3archive.networks.encoder import encoder_kind

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    fingerprint = network_fingerprint(encoder)
    with fs.open(posixpath.join(root, WEIGHTS_NAME), "wb") as f:
        f.write(safetensors.torch.save(state, metadata={"format": ENCODER_FORMAT, "fingerprint": fingerprint}))
    doc = {
        "format": ENCODER_FORMAT,
        "format_version": ENCODER_VERSION,
        "kind": encoder_kind(encoder),
        "init_kwargs": encoder.init_kwargs,
        "fingerprint": fingerprint,
        "generator_fingerprint": generator_fingerprint,
        "info": info or {},
    }
    with fs.open(posixpath.join(root, JSON_NAME), "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    return fingerprint


def read_encoder_info(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The parsed ``encoder.json`` of an encoder directory, every field's type checked.

    The file must be a plain file (no symlink) of at most 1 MiB (``safe_read.MAX_JSON_BYTES``); ``kind`` and ``init_kwargs``
    are checked against ``sg3archive.networks.bounds``.
    """
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    where = f"{url}/{JSON_NAME}"
    try:
        doc = read_json_capped(fs, posixpath.join(root, JSON_NAME), where)
    except FileNotFoundError:
        raise NetworkFormatError(f"{url} is not an encoder directory (no {JSON_NAME}); train one with "
                                 "`sg3archive train` or use the bundled default") from None
    if not isinstance(doc, dict) or doc.get("format") != ENCODER_FORMAT:
        raise NetworkFormatError(f"{where} is not an sg3archive encoder file")
    if type(doc.get("format_version")) is not int or doc["format_version"] > ENCODER_VERSION:
        raise NetworkFormatError(f"{url}: encoder format {doc.get('format_version')!r:.40} is newer than this "
                                 f"sg3archive reads ({ENCODER_VERSION}); upgrade sg3archive")
    expected = {"kind": str, "init_kwargs": dict, "fingerprint": str, "generator_fingerprint": str}
    for name, kind in expected.items():
        if not isinstance(doc.get(name), kind):
            got = "missing" if doc.get(name) is None else f"a {type(doc.get(name)).__name__}"
            raise NetworkFormatError(f"{where}: {name!r} must be a {'JSON object' if kind is dict else 'string'}, "
                                     f"but it is {got}; the file was damaged or edited. Re-create the encoder "
                                     "(`sg3archive train`) or copy it again.")
    if not isinstance(doc.get("info", {}), dict):
        raise NetworkFormatError(f"{where}: 'info' must be a JSON object; copy the encoder again.")
    check_encoder_kwargs(doc["kind"], doc["init_kwargs"], where)
    return doc


def load_encoder(url: str, *, generator: torch.nn.Module | None = None, device: str | torch.device | None = None,
                 storage_options: dict | None = None) -> torch.nn.Module:
    """Rebuild an encoder from its directory, verify its weights' fingerprint, and, when
    ``generator`` is given, that it was trained against that generator. Returned in eval mode
    with ``.fingerprint`` and ``.generator_fingerprint`` set.

    The weights file must be a plain file no larger than the encoder's settings allow (checked
    before reading); NaN or infinite weights are refused."""
    from sg3archive.networks.encoder import build_encoder

    doc = read_encoder_info(url, storage_options)
    if generator is not None:
        have = getattr(generator, "fingerprint", None) or network_fingerprint(generator)
        if have != doc.get("generator_fingerprint"):
            raise FingerprintMismatchError(
                f"encoder {url} was trained against generator {str(doc.get('generator_fingerprint'))[:16]}…, "
                f"but the generator given is {have[:16]}…; use the generator it was trained with, "
                "or train an encoder for this generator (`sg3archive train`)"
            )
    count = check_encoder_kwargs(doc["kind"], doc["init_kwargs"], f"{url}/{JSON_NAME}")
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    where = f"{url}/{WEIGHTS_NAME}"
    try:
        data = read_capped(fs, posixpath.join(root, WEIGHTS_NAME), min(MAX_WEIGHTS_BYTES, 8 * count + MAX_JSON_BYTES),
                           where, "the weights of this encoder")
    except FileNotFoundError:
        raise NetworkFormatError(f"{url}: {WEIGHTS_NAME} is missing") from None
    try:
        state = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types on damaged files
        raise NetworkFormatError(f"{where} is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
    check_finite(state, where, kind="encoder file")
    check_state_size(count // 2, state, where)  # count is an upper bound: compare with its half
    try:
        encoder = build_encoder(doc["kind"], **doc["init_kwargs"])
        encoder.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, ArithmeticError) as exc:
        raise NetworkFormatError(f"{url}: encoder weights do not fit its description ({str(exc)[:300]})") from None
    fingerprint = network_fingerprint(encoder)
    if fingerprint != doc.get("fingerprint"):
        raise FingerprintMismatchError(f"{url}: encoder weights do not match the fingerprint in {JSON_NAME}; "
                                       "the files were modified or damaged")
    encoder.fingerprint = fingerprint  # type: ignore[assignment]  # a str attribute on a Module
    encoder.generator_fingerprint = doc["generator_fingerprint"]
    encoder.info = doc.get("info", {})
    encoder.requires_grad_(False)
    return encoder.eval().to(device) if device is not None else encoder.eval()
