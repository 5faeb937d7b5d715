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
import struct
from typing import Any

import fsspec
import safetensors.torch
import torch

from sg3archive import __version__
from sg3archive.checkpoints.fingerprint import weights_fingerprint
from sg3archive.errors import FingerprintMismatchError, NetworkFormatError
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
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise NetworkFormatError(
            f"{where} has network format version {version!r}; this sg3archive reads up to {FORMAT_VERSION}. "
            "Upgrade sg3archive to read it."
        )
    return entry


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (string → string), read from its JSON header."""
    if len(data) < 8:
        raise NetworkFormatError("file too short to be safetensors")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise NetworkFormatError("safetensors header runs past the end of the file (truncated?)")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise NetworkFormatError(f"safetensors header is not valid JSON: {exc}") from exc
    return header.get("__metadata__") or {}


def network_from_safetensors(data: bytes, where: str, expected_key: str | None = None) -> torch.nn.Module:
    """Rebuild the network stored in one self-describing safetensors blob and check its fingerprint."""
    meta = safetensors_metadata(data)
    if _META_KEY not in meta:
        raise NetworkFormatError(
            f"{where} has no sg3archive network description in its metadata; "
            "convert official pickles with `sg3archive import-network IN.pkl OUT`."
        )
    entry = _check_entry(json.loads(meta[_META_KEY]), where)
    if expected_key is not None and entry["key"] != expected_key:
        raise NetworkFormatError(f"{where} holds {entry['key']!r}, not {expected_key!r}.")
    try:
        state = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise NetworkFormatError(f"{where} is not a readable safetensors file: {exc}") from exc
    fingerprint = weights_fingerprint(state)
    if fingerprint != entry["fingerprint"]:
        raise FingerprintMismatchError(
            f"{where}: the weights' fingerprint {fingerprint[:16]}… differs from the recorded "
            f"{entry['fingerprint'][:16]}…; the file was modified or corrupted. Re-create it from the source network."
        )
    net = build_network(entry["class"], entry["init_kwargs"])
    load_state_strict(net, state, where)
    net.fingerprint = fingerprint
    return net


def read_index(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The ``network.json`` index of a network directory."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    path = posixpath.join(root, INDEX_NAME)
    try:
        with fs.open(path, "r") as f:
            index = json.load(f)
    except FileNotFoundError as exc:
        raise NetworkFormatError(f"{url} has no {INDEX_NAME}; is it a network directory?") from exc
    except ValueError as exc:
        raise NetworkFormatError(f"{url}/{INDEX_NAME} is not valid JSON: {exc}") from exc
    return _check_entry(index, f"{url}/{INDEX_NAME}")


def load_from_directory(url: str, key: str, storage_options: dict | None = None) -> torch.nn.Module:
    """Load network ``key`` from a network directory written by :func:`save_networks`."""
    index = read_index(url, storage_options)
    entries = index.get("networks") or {}
    if key not in entries:
        raise NetworkFormatError(f"{url} has no network {key!r}; it holds {sorted(entries) or 'none'}.")
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    weights = posixpath.join(root, entries[key]["weights"])
    with fs.open(weights, "rb") as f:
        data = f.read()
    net = network_from_safetensors(data, f"{url}/{entries[key]['weights']}", expected_key=key)
    if net.fingerprint != entries[key]["fingerprint"]:
        raise FingerprintMismatchError(
            f"{url}: {key}'s weights do not match the fingerprint in {INDEX_NAME}; the directory was modified."
        )
    return net
