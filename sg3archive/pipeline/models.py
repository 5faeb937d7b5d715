"""The models a pipeline worker needs, loaded once per process and reused by every shard task."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from sg3archive.assets import default_encoder_url, default_network_url
from sg3archive.checkpoints.encoder_file import load_encoder
from sg3archive.checkpoints.loader import load_network
from sg3archive.codec import LatentCodec
from sg3archive.devices import resolve_device


@dataclass
class Models:
    G: torch.nn.Module
    encoder: torch.nn.Module
    device: torch.device
    network: str
    encoder_url: str

    @property
    def resolution(self) -> int:
        return int(self.G.img_resolution)


_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str], Models] = {}
_CODECS: dict[tuple[str, str], LatentCodec] = {}


def load_models(network: str | None, encoder: str | None, device: str = "auto") -> Models:
    """Generator + encoder (checked to belong together) on ``device``; cached per process."""
    network = network or default_network_url()
    encoder = encoder or default_encoder_url()
    dev = resolve_device(device)
    key = (network, encoder, str(dev))
    with _LOCK:
        if key not in _MODELS:
            G = load_network(network, device=dev)
            E = load_encoder(encoder, generator=G, device=dev)
            _MODELS[key] = Models(G, E, dev, network, encoder)
        return _MODELS[key]


def load_codec(url: str, storage_options: dict | None = None) -> LatentCodec:
    """The archive's codec model; cached per process by URL and content hash."""
    codec = LatentCodec.load(url, storage_options=storage_options)
    with _LOCK:
        return _CODECS.setdefault((url, codec.hash), codec)


def fingerprint_mismatches(settings: dict, models: Models | None, codec: LatentCodec | None) -> list[str]:
    """One line per model whose fingerprint differs from the one an archive's ``settings`` record
    (models not given are not compared)."""
    pairs = []
    if models is not None:
        pairs += [("generator", models.G.fingerprint, settings.get("generator_fingerprint"), f" ({models.network})"),
                  ("encoder", models.encoder.fingerprint, settings.get("encoder_fingerprint"), f" ({models.encoder_url})")]
    if codec is not None:
        pairs.append(("codec model", codec.hash, settings.get("codec_hash"), ""))
    return [f"{what} fingerprint {have[:16]}… differs from the archive's {str(want)[:16]}…{where}"
            for what, have, want, where in pairs if have != want]
