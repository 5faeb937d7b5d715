"""``load_network``: one entry point for official pickles and our own network files, any fsspec URL."""

from __future__ import annotations

import io
import os
from typing import Any

import fsspec
import torch

from sg3archive.checkpoints.fingerprint import weights_fingerprint
from sg3archive.checkpoints.network_file import load_from_directory, network_from_safetensors
from sg3archive.checkpoints.official_pickle import PersistentRecord, read_official_pickle
from sg3archive.checkpoints.safe_read import MAX_PICKLE_BYTES, read_capped
from sg3archive.errors import NetworkFormatError
from sg3archive.networks.bounds import check_network_kwargs, check_state_size
from sg3archive.networks.build import build_network, load_state_strict

NETWORK_KEYS = {"G_ema": "Generator", "G": "Generator", "D": "Discriminator"}


def _check_stylegan3(record: PersistentRecord, where: str) -> None:
    synthesis = record.children().get("synthesis")
    if synthesis is None or "input" not in synthesis.children():
        raise NetworkFormatError(
            f"{where}: this generator is not a StyleGAN3 generator (its synthesis network has no Fourier "
            "'input' layer; StyleGAN2/ADA pickles look like this). sg3archive needs a StyleGAN3 -T or -R network."
        )


def network_from_record(record: PersistentRecord, key: str, where: str) -> torch.nn.Module:
    """Rebuild one network of an official snapshot with our classes and load its tensors."""
    class_name = NETWORK_KEYS[key]
    if record.class_name != class_name:
        raise NetworkFormatError(f"{where}: {key!r} is a {record.class_name}, expected a {class_name}.")
    if record.init_args():
        raise NetworkFormatError(f"{where}: {key!r} was built with positional arguments, which official networks never use.")
    if class_name == "Generator":
        _check_stylegan3(record, where)
    label = f"{where} [{key}]"
    try:
        init_kwargs = record.init_kwargs()
        count = check_network_kwargs(class_name, init_kwargs, label)  # before anything is allocated
        state = record.state_dict()  # bounded by the file's size
    except NetworkFormatError as exc:
        raise NetworkFormatError(str(exc) if str(exc).startswith(label) else f"{label}: {exc}") from None
    check_state_size(count, state, label)
    net = build_network(class_name, init_kwargs, label)
    load_state_strict(net, state, label)
    net.fingerprint = weights_fingerprint(state)  # type: ignore[assignment]  # a str attribute on a Module
    return net


def _from_pickle(data: bytes, key: str, where: str) -> torch.nn.Module:
    stream = io.BytesIO(data)
    stream.name = where  # so that errors name the file
    snapshot = read_official_pickle(stream)
    record = snapshot.get(key)
    if not isinstance(record, PersistentRecord):
        present = sorted(k for k, v in snapshot.items() if isinstance(v, PersistentRecord))
        raise NetworkFormatError(f"{where} has no network {key!r}; networks present: {present or 'none'}.")
    return network_from_record(record, key, where)


def load_network(
    path_or_url: str | os.PathLike,
    key: str = "G_ema",
    *,
    device: str | torch.device | None = None,
    storage_options: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Load a StyleGAN3 generator (``key="G_ema"`` or ``"G"``) or its discriminator (``key="D"``).

    ``path_or_url`` is a local path or any fsspec URL of: an official StyleGAN3 training pickle
    (read as data only: no code from the file runs), a network directory written by
    ``sg3archive import-network``, or one of its ``.safetensors`` files. The network comes back
    in eval mode with gradients off, on ``device`` (default CPU), with ``.fingerprint`` set to
    the sha256 of its weights.
    """
    if key not in NETWORK_KEYS:
        raise ValueError(f"key must be one of {sorted(NETWORK_KEYS)}, got {key!r}")
    url = os.fspath(path_or_url)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(path):
        raise NetworkFormatError(f"network file {url} does not exist.")
    if fs.isdir(path):
        net = load_from_directory(url, key, storage_options)
    else:
        data = read_capped(fs, path, MAX_PICKLE_BYTES, f"network file {url}", "a network file", follow_symlinks=True)
        if data[:1] == b"\x80":
            net = _from_pickle(data, key, url)
        elif data[:2] == b"PK":
            raise NetworkFormatError(
                f"{url} is a zip archive (a torch.save checkpoint?), not an official StyleGAN3 snapshot pickle "
                "or an sg3archive network file."
            )
        else:
            try:
                net = network_from_safetensors(data, url, expected_key=key)
            except NetworkFormatError as exc:
                if url in str(exc):
                    raise
                raise NetworkFormatError(f"{url} is neither an official StyleGAN3 snapshot pickle nor an sg3archive "
                                         f"network file ({exc}); give --network a .pkl, a network directory or its "
                                         ".safetensors file") from None
    net.eval().requires_grad_(False)
    return net.to(device) if device is not None else net
