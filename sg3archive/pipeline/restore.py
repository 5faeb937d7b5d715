"""Restore images from an archive: select rows, decode payloads, synthesize in batches, write
files under the destination (never outside it), skipping outputs that already exist."""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import fsspec
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from sg3archive.errors import FingerprintMismatchError, Sg3ArchiveError
from sg3archive.pipeline.jobs import RestoreJob
from sg3archive.pipeline.models import fingerprint_mismatches, load_codec, load_models
from sg3archive.pixels import to_uint8
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.inputs import FitInfo, unfit

SUFFIX = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
COLUMNS = ["id", "source_uri", "payload", "fit", "width", "height"]


@dataclass
class RestoreSummary:
    destination: str
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def text(self) -> str:
        rate = self.written / self.seconds if self.seconds else float("nan")
        return f"{self.written} images restored to {self.destination}, {self.skipped} already there; {rate:.2f} images/s"


def output_name(source_uri: str, fmt: str) -> str:
    """A relative output path derived from a source URI: scheme dropped, the path kept, the
    suffix set to the format. Refuses names that would leave the destination."""
    parts = urlsplit(source_uri)
    path = parts.path if parts.scheme in ("", "file") else f"{parts.netloc}/{parts.path}"
    if parts.scheme == "" and len(source_uri) > 1 and source_uri[1] == ":":  # a Windows drive path
        path = source_uri.replace("\\", "/")[2:]
    pieces = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("/", "")]
    if not pieces or any(p in (".", "..") for p in pieces):
        raise Sg3ArchiveError(f"cannot derive a safe output name from source {source_uri!r}")
    return str(PurePosixPath(*pieces).with_suffix(SUFFIX[fmt]))


def _selected(job: RestoreJob, batch: dict) -> list[int]:
    keep = []
    ids = set(job.ids or [])
    for i, (rid, uri) in enumerate(zip(batch["id"], batch["source_uri"])):
        if ids and rid not in ids:
            continue
        if job.glob and not fnmatch.fnmatch(uri, job.glob):
            continue
        keep.append(i)
    return keep


def restore(job: RestoreJob, progress: bool = True) -> RestoreSummary:
    """Run a restore job in this process (the CLI's path; the flow runs one task per shard)."""
    started = time.perf_counter()
    store = ArchiveStore.open(job.archive, storage_options=job.storage_options)
    models = load_models(job.network, job.encoder, job.device)
    codec = load_codec(store.codec_url, job.storage_options)
    mismatches = fingerprint_mismatches(store.settings, models, codec)
    if mismatches:
        raise FingerprintMismatchError("; ".join(mismatches) + "; pass the models the archive was written with")
    fs, root = fsspec.core.url_to_fs(job.destination)
    fs.makedirs(root, exist_ok=True)
    summary = RestoreSummary(job.destination)
    shard_names = [job.shard] if job.shard else None
    if job.shard and job.shard not in {r.name for r in store.shards("images")}:
        raise Sg3ArchiveError(f"shard {job.shard!r} is not in the archive's manifest; `sg3archive inspect` lists them")
    bar = tqdm(desc="restore", unit="img", disable=not progress)
    for batch in store.iter_batches("images", columns=COLUMNS, shard_names=shard_names, batch_size=job.batch_size):
        cols = batch.to_pydict()
        todo = []
        for i in _selected(job, cols):
            name = output_name(cols["source_uri"][i], job.format)
            target = posixpath.join(root, name)
            if not job.overwrite and fs.exists(target):
                summary.skipped += 1
                continue
            todo.append((i, target))
        if not todo:
            continue
        ws = codec.decompress([cols["payload"][i] for i, _ in todo]).to(models.device)
        with torch.no_grad():
            images = to_uint8(models.G.synthesis(ws))
        for (i, target), img in zip(todo, images):
            if job.size == "original":
                img = unfit(img, FitInfo.from_json(cols["fit"][i]))
            _write_image(fs, target, img, job.format)
            summary.written += 1
            summary.files.append(fs.unstrip_protocol(target))
            bar.update(1)
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _write_image(fs: fsspec.AbstractFileSystem, target: str, img: np.ndarray, fmt: str) -> None:
    """Encode then write under a temporary name and rename: a crash leaves no partial image."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format={"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}[fmt],
                                                    **({"quality": 95} if fmt != "png" else {}))
    fs.makedirs(posixpath.dirname(target), exist_ok=True)
    tmp = f"{target}.part-{os.getpid()}"
    with fs.open(tmp, "wb") as f:
        f.write(buf.getvalue())
    fs.mv(tmp, target)
