"""Our own network format: one safetensors file per network plus a JSON index, any fsspec URL.

Layout of a network directory::

    network.json          index: format, version, per key (G_ema, G, D) class, init_kwargs,
                          weights file name and fingerprint; provenance of the source
    G_ema.safetensors     weights, official key names; header metadata repeats the key's entry
    D.safetensors

Every ``.safetensors`` file is self-describing (its metadata holds the same entry as the index),
so a single file can be loaded on its own. Weights are written first and the index last, so a
reader never sees an index that points at missing weights.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import re
import struct
from typing import Any

import fsspec
import safetensors.torch
import torch

from sg3archive import __version__
from sg3archive.checkpoints.fingerprint import weights_fingerprint
from sg3archive.checkpoints.safe_read import (
    MAX_JSON_BYTES,
    MAX_WEIGHTS_BYTES,
    check_size,
    plain_file_name,
    read_capped,
    read_json_capped,
)
from sg3archive.errors import FingerprintMismatchError, NetworkFormatError
from sg3archive.networks.bounds import check_finite, check_network_kwargs, check_state_size
from sg3archive.networks.build import build_network, load_state_strict

FORMAT = "sg3archive.network"
FORMAT_VERSION = 1
INDEX_NAME = "network.json"
_META_KEY = "sg3archive.network"


def _entry(key: str, net: torch.nn.Module, fingerprint: str) -> dict[str, Any]:
    init_kwargs = getattr(net, "init_kwargs", None)
    if init_kwargs is None:
        raise NetworkFormatError(f"{key}: {type(net).__name__} does not record init_kwargs; cannot save it.")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "key": key,
        "class": type(net).__name__,
        "init_kwargs": init_kwargs,
        "weights": f"{key}.safetensors",
        "fingerprint": fingerprint,
    }


def save_networks(
    networks: dict[str, torch.nn.Module],
    url: str,
    *,
    source: dict[str, Any] | None = None,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Write ``networks`` (key → module, e.g. ``{"G_ema": G, "D": D}``) as a network directory.

    Returns the index that was written. ``source`` records provenance (e.g. the pickle's sha256).
    """
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    entries = {}
    for key, net in networks.items():
        state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
        fingerprint = weights_fingerprint(state)
        entry = _entry(key, net, fingerprint)
        blob = safetensors.torch.save(state, metadata={_META_KEY: json.dumps(entry, sort_keys=True)})
        with fs.open(posixpath.join(root, entry["weights"]), "wb") as f:
            f.write(blob)
        entries[key] = entry
    index = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sg3archive_version": __version__,
        "source": source or {},
        "networks": entries,
    }
    with fs.open(posixpath.join(root, INDEX_NAME), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return index


def _check_entry(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise NetworkFormatError(f"{where} is not an sg3archive network description.")
    version = entry.get("format_version")
    if type(version) is not int or version > FORMAT_VERSION:
        raise NetworkFormatError(
            f"{where} has network format version {version!r:.40}; this sg3archive reads up to {FORMAT_VERSION}. "
            "Upgrade sg3archive to read it."
        )
    return entry


def _check_network_entry(entry: Any, where: str) -> dict[str, Any]:
    """One network's description (index entry or safetensors metadata), every field's type checked."""
    entry = _check_entry(entry, where)
    expected = {"key": str, "class": str, "init_kwargs": dict, "weights": str, "fingerprint": str}
    for name, kind in expected.items():
        value = entry.get(name)
        if not isinstance(value, kind):
            got = "missing" if value is None else f"a {type(value).__name__}"
            raise NetworkFormatError(
                f"{where}: {name!r} must be a {'JSON object' if kind is dict else 'string'}, but it is {got}; "
                "the file was damaged or edited by hand. Re-create it with `sg3archive import-network`."
            )
    if not re.fullmatch(r"[0-9a-f]{64}", entry["fingerprint"]):
        raise NetworkFormatError(f"{where}: 'fingerprint' is not a sha256 in hex; re-create the network directory.")
    plain_file_name(entry["weights"], where)
    return entry


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (string → string), read from its JSON header."""
    if len(data) < 8:
        raise NetworkFormatError("file too short to be safetensors")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise NetworkFormatError("safetensors header runs past the end of the file (truncated?)")
    if length > MAX_JSON_BYTES:
        raise NetworkFormatError(f"safetensors header is {length:,} bytes, more than the {MAX_JSON_BYTES:,} allowed")
    try:
        header = json.loads(data[8 : 8 + length])
    except (ValueError, RecursionError) as exc:
        raise NetworkFormatError(f"safetensors header is not valid JSON: {str(exc)[:200]}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(header, dict) or not isinstance(meta, (dict, type(None))):
        raise NetworkFormatError("safetensors header is not a JSON object with an object of metadata")
    meta = meta or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise NetworkFormatError("safetensors metadata must map strings to strings")
    return meta


def _weights_cap(count: int) -> int:
    """Largest plausible weights file for ``count`` values (float64 at most, plus its header)."""
    return min(MAX_WEIGHTS_BYTES, 8 * count + MAX_JSON_BYTES + 8)


def network_from_safetensors(data: bytes, where: str, expected_key: str | None = None) -> torch.nn.Module:
    """Rebuild the network stored in one self-describing safetensors blob and check its fingerprint.

    The description is type-checked and its settings bounded before anything is built; weights
    holding NaN or infinity are refused.
    """
    try:
        meta = safetensors_metadata(data)
    except NetworkFormatError as exc:
        raise NetworkFormatError(f"{where}: {exc}") from None
    if _META_KEY not in meta:
        raise NetworkFormatError(
            f"{where} has no sg3archive network description in its metadata; "
            "convert official pickles with `sg3archive import-network IN.pkl OUT`."
        )
    try:
        description = json.loads(meta[_META_KEY])
    except (ValueError, RecursionError):
        raise NetworkFormatError(f"{where}: its network description is not valid JSON; re-create the file.") from None
    entry = _check_network_entry(description, where)
    if expected_key is not None and entry["key"] != expected_key:
        raise NetworkFormatError(f"{where} holds {entry['key']!r}, not {expected_key!r}.")
    count = check_network_kwargs(entry["class"], entry["init_kwargs"], where)
    check_size(len(data), _weights_cap(count), where, f"the weights of this {entry['class']}")
    try:
        state = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise NetworkFormatError(f"{where} is not a readable safetensors file: {str(exc)[:200]}") from None
    check_finite(state, where)
    fingerprint = weights_fingerprint(state)
    if fingerprint != entry["fingerprint"]:
        raise FingerprintMismatchError(
            f"{where}: the weights' fingerprint {fingerprint[:16]}… differs from the recorded "
            f"{entry['fingerprint'][:16]}…; the file was modified or corrupted. Re-create it from the source network."
        )
    check_state_size(count, state, where)
    net = build_network(entry["class"], entry["init_kwargs"], where)
    load_state_strict(net, state, where)
    net.fingerprint = fingerprint  # type: ignore[assignment]  # a str attribute on a Module
    return net


def read_index(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The ``network.json`` index of a network directory (a plain file of at most 1 MiB, ``safe_read.MAX_JSON_BYTES``)."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    where = f"{url}/{INDEX_NAME}"
    try:
        index = read_json_capped(fs, posixpath.join(root, INDEX_NAME), where)
    except FileNotFoundError:
        raise NetworkFormatError(f"{url} has no {INDEX_NAME}; is it a network directory?") from None
    index = _check_entry(index, where)
    if not isinstance(index.get("networks", {}), dict):
        raise NetworkFormatError(f"{where}: 'networks' must be a JSON object; re-create the network directory.")
    return index


def load_from_directory(url: str, key: str, storage_options: dict | None = None) -> torch.nn.Module:
    """Load network ``key`` from a network directory written by :func:`save_networks`.

    The weights file the index names must be a plain file in the directory (no ``..``, no
    symlink) no larger than its settings allow; its size is checked before it is read.
    """
    index = read_index(url, storage_options)
    entries = index.get("networks") or {}
    if key not in entries:
        raise NetworkFormatError(f"{url} has no network {key!r}; it holds {sorted(map(str, entries)) or 'none'}.")
    entry = _check_network_entry(entries[key], f"{url}/{INDEX_NAME} [{key}]")
    count = check_network_kwargs(entry["class"], entry["init_kwargs"], f"{url}/{INDEX_NAME} [{key}]")
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    where = f"{url}/{entry['weights']}"
    try:
        data = read_capped(fs, posixpath.join(root, entry["weights"]), _weights_cap(count), where,
                           f"the weights of this {entry['class']}")
    except FileNotFoundError:
        raise NetworkFormatError(f"{where} is missing; the network directory is incomplete. Copy it again.") from None
    net = network_from_safetensors(data, where, expected_key=key)
    if net.fingerprint != entry["fingerprint"]:
        raise FingerprintMismatchError(
            f"{url}: {key}'s weights do not match the fingerprint in {INDEX_NAME}; the directory was modified."
        )
    return net
