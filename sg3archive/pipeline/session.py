"""ArchiveSession: one archive opened once for a compress, restore or audit run, with its models.

A session opens the :class:`~sg3archive.store.archive.ArchiveStore` once, resolves the device
once, takes the generator, the encoder and the archive's codec from the one process cache
(:data:`cache`), and compares their fingerprints with the ones the archive records, at open, for
every command. With ``check=True`` (the default) a difference is refused with
:class:`~sg3archive.store.format.ArchiveMismatchError`; with ``check=False`` the lines are kept in
:attr:`ArchiveSession.mismatches` for the caller to report (the audit does).

:data:`cache` is the only place models and codecs are cached in a process: a bounded LRU of
model pairs and of codecs, so a long-lived worker that meets many archives does not keep every
network it ever loaded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

import torch

from sg3archive.assets import default_encoder_url, default_network_url
from sg3archive.checkpoints.encoder_file import load_encoder
from sg3archive.checkpoints.loader import load_network
from sg3archive.codec import LatentCodec
from sg3archive.devices import resolve_device
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.format import ArchiveMismatchError

__all__ = ["ArchiveSession", "Models", "ModelCache", "cache", "fingerprint_mismatches", "mismatch_message",
           "MAX_MODEL_PAIRS", "MAX_CODECS"]

MAX_MODEL_PAIRS = 2  # generator + encoder pairs kept per process (each can be hundreds of MB)
MAX_CODECS = 8  # codec models kept per process (a few MB each)


@dataclass(frozen=True)
class Models:
    """A generator and the encoder checked to belong to it, on one device."""

    G: torch.nn.Module
    encoder: torch.nn.Module
    device: torch.device
    network: str
    encoder_url: str

    @property
    def resolution(self) -> int:
        return int(cast(int, self.G.img_resolution))


class ModelCache:
    """The process's bounded cache of model pairs and codecs (least recently used go first).

    Model pairs are keyed by (network URL, encoder URL, device); codecs by (codec URL, content
    hash), so a codec whose files changed is never served from the cache. Thread-safe: a pair is
    loaded once even when several threads ask for it at the same time.
    """

    def __init__(self, max_models: int = MAX_MODEL_PAIRS, max_codecs: int = MAX_CODECS) -> None:
        self.max_models = max_models
        self.max_codecs = max_codecs
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple[str, str, str], Models] = OrderedDict()
        self._codecs: OrderedDict[tuple[str, str], LatentCodec] = OrderedDict()

    def models(self, network: str | None = None, encoder: str | None = None,
               device: str | torch.device = "auto") -> Models:
        """Generator + encoder (checked to belong together) on ``device``; the bundled defaults
        where ``network`` / ``encoder`` are None."""
        network = network or default_network_url()
        encoder = encoder or default_encoder_url()
        dev = resolve_device(device)
        key = (network, encoder, str(dev))
        with self._lock:
            found = self._models.get(key)
            if found is None:
                G = load_network(network, device=dev)
                E = load_encoder(encoder, generator=G, device=dev)
                found = Models(G, E, dev, network, encoder)
                self._models[key] = found
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            return found

    def codec(self, url: str, storage_options: dict[str, Any] | None = None) -> LatentCodec:
        """The codec model saved at ``url``, read and hash-checked on every call (small files);
        the instance for the same URL and content is reused (its decoding tables are built once)."""
        loaded = LatentCodec.load(url, storage_options=storage_options)
        key = (url, loaded.hash)
        with self._lock:
            found = self._codecs.setdefault(key, loaded)
            self._codecs.move_to_end(key)
            while len(self._codecs) > self.max_codecs:
                self._codecs.popitem(last=False)
            return found

    def model_keys(self) -> list[tuple[str, str, str]]:
        """(network, encoder, device) of the model pairs held now, least recently used first."""
        with self._lock:
            return list(self._models)

    def codec_keys(self) -> list[tuple[str, str]]:
        """(codec URL, hash) of the codecs held now, least recently used first."""
        with self._lock:
            return list(self._codecs)

    def clear(self) -> None:
        """Forget every cached model and codec."""
        with self._lock:
            self._models.clear()
            self._codecs.clear()


cache = ModelCache()


def fingerprint_mismatches(settings: dict[str, Any], models: Models | None, codec: LatentCodec | None) -> list[str]:
    """One line per model whose fingerprint differs from the one an archive's ``settings`` record
    (models not given are not compared)."""
    pairs = []
    if models is not None:
        pairs += [("generator", cast(str, models.G.fingerprint), settings.get("generator_fingerprint"),
                   f" ({models.network})"),
                  ("encoder", cast(str, models.encoder.fingerprint), settings.get("encoder_fingerprint"),
                   f" ({models.encoder_url})")]
    if codec is not None:
        pairs.append(("codec model", codec.hash, settings.get("codec_hash"), ""))
    return [f"{what} fingerprint {have[:16]}… differs from the archive's {str(want)[:16]}…{where}"
            for what, have, want, where in pairs if have != want]


def mismatch_message(archive: str, mismatches: list[str]) -> str:
    """The one line that refuses an archive whose recorded fingerprints differ from the models
    given: what differs, and the flag that fixes it."""
    fixes = []
    if any(m.startswith("generator") for m in mismatches):
        fixes.append("--network")
    if any(m.startswith("encoder") for m in mismatches):
        fixes.append("--encoder")
    todo = (f"pass the {' and '.join(fixes)} this archive was made with (`sg3archive inspect {archive}` shows its "
            "fingerprints), or compress into a new DEST") if fixes else (
        "its codec folder was changed or replaced; restore it from a copy of the archive")
    return f"archive {archive} was made with other models: {'; '.join(mismatches)}; {todo}"


class ArchiveSession:
    """An archive opened once, with the models and the codec it is read or written with.

    Build it with :meth:`open` (an existing archive) or :meth:`create` (the first run of compress).

    Attributes:
        store: the ArchiveStore, opened once.
        models: generator + encoder (None when opened with ``need_models=False``).
        codec: the archive's codec (the one archive.json names).
        settings: the archive's settings (``store.settings``).
        mismatches: one line per fingerprint that differs from the archive's (empty when all match).
        device: the device resolved once for the whole run.
    """

    def __init__(self, store: ArchiveStore, models: Models | None, codec: LatentCodec, device: torch.device,
                 mismatches: list[str]) -> None:
        self.store = store
        self.models = models
        self.codec = codec
        self.device = device
        self.mismatches = mismatches

    def __repr__(self) -> str:
        return f"ArchiveSession({self.store.url!r}, device={str(self.device)!r})"

    @property
    def settings(self) -> dict[str, Any]:
        return self.store.settings

    @property
    def resolution(self) -> int:
        """The generator's resolution (the archive's recorded one when no models were loaded)."""
        if self.models is not None:
            return self.models.resolution
        return int(self.settings["resolution"])

    @classmethod
    def open(cls, archive: str, *, storage_options: dict[str, Any] | None = None, network: str | None = None,
             encoder: str | None = None, device: str | torch.device = "auto", check: bool = True,
             need_models: bool = True) -> ArchiveSession:
        """Open the archive at ``archive`` with its models.

        Args:
            network, encoder: model URLs; the bundled defaults when None.
            device: "auto", "cpu", "cuda", "cuda:N" or a torch.device; resolved once here.
            check: refuse fingerprints that differ from the archive's (else only list them).
            need_models: load the generator and encoder (False: the codec alone, e.g. to read payloads).

        Raises:
            ArchiveNotFoundError: ``archive`` holds no archive.
            ArchiveMismatchError: with ``check``, a model differs from the one the archive was made with.
        """
        store = ArchiveStore.open(archive, storage_options=storage_options)
        dev = resolve_device(device)
        models = cache.models(network, encoder, dev) if need_models else None
        return cls._checked(store, models, dev, storage_options, check)

    @classmethod
    def create(cls, destination: str, *, settings: dict[str, Any], codec: LatentCodec,
               models: Models | None = None, storage_options: dict[str, Any] | None = None,
               check: bool = True) -> ArchiveSession:
        """Create the archive at ``destination`` with ``codec`` (written content-addressed, see
        :meth:`ArchiveStore.create`), or join the one another run created there first: the session
        is the archive as it ends up, with the winner's codec and settings.

        Raises:
            ArchiveMismatchError: an archive exists there with other settings (the codec aside), or
                with ``check``, ``models`` differ from the ones it was made with.
        """
        store = ArchiveStore.create(destination, settings, storage_options=storage_options, codec=codec)
        dev = models.device if models is not None else torch.device("cpu")
        return cls._checked(store, models, dev, storage_options, check)

    @classmethod
    def _checked(cls, store: ArchiveStore, models: Models | None, device: torch.device,
                 storage_options: dict[str, Any] | None, check: bool) -> ArchiveSession:
        codec = cache.codec(store.codec_url, storage_options)
        mismatches = fingerprint_mismatches(store.settings, models, codec)
        if check and mismatches:
            raise ArchiveMismatchError(mismatch_message(store.url, mismatches))
        return cls(store, models, codec, device, mismatches)
