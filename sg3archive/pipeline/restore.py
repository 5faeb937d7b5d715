"""Restore images from an archive: plan (select rows and name their outputs from the id and name
columns only), then decode payloads, synthesize in batches and write files under the destination
(never outside it), skipping outputs that already exist.

Names: a row restores to ``DEST/<source_name>`` with the suffix set to the output format, where
``source_name`` is the source's path relative to the compress job's SRC (``more/gray.png`` for
``examples/images/more/gray.png`` compressed from ``examples/images``). Rows of archives written
before that column existed use their URI's path without the scheme (``data/photos/a.png``). When
two rows would get the same file (``a.jpg`` and ``a.png``, or two sources compressed into one
archive), the row first in archive order keeps the name and later ones get ``.<id[:8]>`` before
the suffix; names compare case-insensitively, as some filesystems do. The rule depends on the
archive only, not on the selection, so partial restores and full ones agree.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

import fsspec
import numpy as np
import torch
from tqdm import tqdm

from sg3archive.errors import FingerprintMismatchError, Sg3ArchiveError
from sg3archive.pipeline.jobs import RestoreJob
from sg3archive.pipeline.models import fingerprint_mismatches, load_codec, load_models
from sg3archive.pixels import to_uint8
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.format import row_name, uri_path
from sg3archive.store.inputs import FitInfo, to_restored_image, unfit

SUFFIX = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
PIL_FORMAT = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
NAME_COLUMNS = ["id", "source_uri", "source_name"]
COLUMNS = [*NAME_COLUMNS, "payload", "fit", "mode"]
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class RestoreSummary:
    destination: str
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def text(self) -> str:
        text = f"{self.written} images restored to {self.destination}, {self.skipped} already there"
        if self.written and self.seconds > 0:
            text += f"; {self.written / self.seconds:.2f} images/s"
        return text


@dataclass
class RestorePlan:
    """What a restore writes, found from the id and name columns only.

    Attributes:
        total: selected rows.
        shards: images shard name → selected rows in it, in commit order (shards without any are left out).
        renamed: shard name → row index in the shard → output name, for rows whose name was taken
            by an earlier row (every other selected row writes ``output_name(row_name(...))``).
    """

    total: int = 0
    shards: dict[str, int] = field(default_factory=dict)
    renamed: dict[str, dict[int, str]] = field(default_factory=dict)

    def for_shard(self, shard: str) -> RestorePlan:
        """The part of the plan in one shard (a flow task's share)."""
        count = self.shards.get(shard, 0)
        return RestorePlan(total=count, shards={shard: count} if count else {},
                           renamed={shard: self.renamed[shard]} if shard in self.renamed else {})


def output_name(name: str, fmt: str) -> str:
    """A relative output path for a row name (or, for a URI, its path without the scheme) with the
    suffix set to the format: backslashes read as slashes, drive letters and empty parts (``//``,
    leading ``/``) dropped. Refuses names that would leave the destination (``.``/``..`` parts)."""
    text = uri_path(name) if "://" in name else name
    pieces = [p for p in _DRIVE.sub("", text.replace("\\", "/")).split("/") if p]
    if not pieces or any(p in (".", "..") or "\x00" in p for p in pieces):
        raise Sg3ArchiveError(f"cannot derive a safe output name from {name!r}: it would leave the destination")
    try:
        return str(PurePosixPath(*pieces).with_suffix(SUFFIX[fmt]))
    except ValueError as exc:
        raise Sg3ArchiveError(f"cannot derive an output name from {name!r}: {exc}") from None


def _unique(name: str, rid: str, taken: set[str]) -> str:
    """``name``, or when an earlier row took it, ``name`` with the id before the suffix."""
    stem, suffix = posixpath.splitext(name)
    candidates = [name, f"{stem}.{rid[:8]}{suffix}", f"{stem}.{rid}{suffix}"]
    n = 2
    while True:
        for candidate in candidates:
            if candidate.casefold() not in taken:
                taken.add(candidate.casefold())
                return candidate
        candidates = [f"{stem}.{rid}-{n}{suffix}"]  # the same source archived more than once
        n += 1


def _selector(job: RestoreJob) -> Callable[[str, str, str], bool]:
    ids = set(job.ids or ())
    glob = job.glob
    name_glob = glob.removeprefix("./") if glob else None

    def selected(rid: str, uri: str, name: str) -> bool:
        if ids and rid not in ids:
            return False
        return not glob or fnmatchcase(name, name_glob) or fnmatchcase(uri, glob)

    return selected


def _listing_hint(archive: str) -> str:
    return f"`sg3archive inspect {archive} --rows` lists ids and names"


def plan_restore(job: RestoreJob, store: ArchiveStore | None = None) -> RestorePlan:
    """Select the rows ``job`` asks for and name their outputs, reading only the id and name
    columns (of every images shard: names taken by rows outside the selection count too; memory:
    one short name per row, nothing per pixel).

    Raises:
        Sg3ArchiveError: an unknown shard, ids not in the archive, a selection that matches
            nothing, or a selected row whose name would leave the destination.
    """
    store = store or ArchiveStore.open(job.archive, storage_options=job.storage_options)
    records = store.shards("images")
    if job.shard and job.shard not in {r.name for r in records}:
        raise Sg3ArchiveError(f"{job.shard!r} is not an images shard of {job.archive}; "
                              f"`sg3archive inspect {job.archive} --shards` lists them")
    selected = _selector(job)
    wanted, found = set(job.ids or ()), set()
    taken: set[str] = set()
    plan = RestorePlan()
    for record in records:
        index = 0
        for batch in store.iter_batches("images", columns=NAME_COLUMNS, shard_names=[record.name]):
            cols = batch.to_pydict()
            for rid, uri, source_name in zip(cols["id"], cols["source_uri"], cols["source_name"]):
                name = row_name(source_name, uri)
                chosen = selected(rid, uri, name) and (not job.shard or record.name == job.shard)
                if rid in wanted:
                    found.add(rid)
                try:
                    out = output_name(name, job.format)
                except Sg3ArchiveError as exc:
                    if chosen:
                        raise Sg3ArchiveError(f"image {rid}: {exc}; leave it out with --glob or --ids") from None
                    index += 1
                    continue  # never written, so it takes no name
                final = _unique(out, rid, taken)
                if chosen:
                    plan.total += 1
                    plan.shards[record.name] = plan.shards.get(record.name, 0) + 1
                    if final != out:
                        plan.renamed.setdefault(record.name, {})[index] = final
                index += 1
    missing = sorted(wanted - found)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise Sg3ArchiveError(f"{len(missing)} of the --ids are not in {job.archive}: {shown}; "
                              f"{_listing_hint(job.archive)}")
    if not plan.total and (job.ids or job.glob or job.shard):
        what = " with ".join(s for s in (f"--glob {job.glob!r}" if job.glob else "",
                                         f"--ids ({len(wanted)})" if job.ids else "",
                                         f"--shard {job.shard}" if job.shard else "") if s)
        hint = (" (--glob matches names relative to the compressed folder, e.g. 'more/*.png', or full source URIs)"
                if job.glob else "")
        raise Sg3ArchiveError(f"{what} matches no image of {job.archive}{hint}; {_listing_hint(job.archive)}")
    return plan


def restore(job: RestoreJob, progress: bool = True, plan: RestorePlan | None = None) -> RestoreSummary:
    """Run a restore job in this process (the CLI's path; the flow plans once, then runs one
    task per shard with that shard's part of the plan)."""
    started = time.perf_counter()
    store = ArchiveStore.open(job.archive, storage_options=job.storage_options)
    plan = plan if plan is not None else plan_restore(job, store)
    fs, root = fsspec.core.url_to_fs(job.destination)
    if fs.isfile(root):
        raise Sg3ArchiveError(f"DEST {job.destination} is a file; restore writes images into a folder: give a "
                              "folder (new or existing) as DEST")
    summary = RestoreSummary(job.destination)
    if not plan.total:
        summary.seconds = time.perf_counter() - started
        return summary
    models = load_models(job.network, job.encoder, job.device)
    codec = load_codec(store.codec_url, job.storage_options)
    mismatches = fingerprint_mismatches(store.settings, models, codec)
    if mismatches:
        raise FingerprintMismatchError("; ".join(mismatches) + "; pass the models the archive was written with")
    fs.makedirs(root, exist_ok=True)  # only once the models load: a mistake leaves no empty DEST behind
    selected = _selector(job)
    with tqdm(total=plan.total, desc="restore", unit="img", file=sys.stderr, disable=not progress) as bar:
        for shard in plan.shards:
            renamed = plan.renamed.get(shard, {})
            index = 0
            for batch in store.iter_batches("images", columns=COLUMNS, shard_names=[shard], batch_size=job.batch_size):
                cols = batch.to_pydict()
                todo = []
                for i, (rid, uri, source_name) in enumerate(zip(cols["id"], cols["source_uri"], cols["source_name"])):
                    name = row_name(source_name, uri)
                    if not selected(rid, uri, name):
                        continue
                    target = posixpath.join(root, renamed.get(index + i) or output_name(name, job.format))
                    if not job.overwrite and fs.exists(target):
                        summary.skipped += 1
                        bar.update(1)
                        continue
                    todo.append((i, target))
                index += batch.num_rows
                if not todo:
                    continue
                ws = codec.decompress([cols["payload"][i] for i, _ in todo]).to(models.device)
                with torch.no_grad():
                    images = to_uint8(models.G.synthesis(ws))
                for (i, target), img in zip(todo, images):
                    if job.size == "original":
                        img = unfit(img, FitInfo.from_json(cols["fit"][i]))
                    _write_image(fs, target, img, cols["mode"][i], job.format)
                    summary.written += 1
                    summary.files.append(fs.unstrip_protocol(target))
                    bar.update(1)
    summary.seconds = time.perf_counter() - started
    return summary


def _write_image(fs: fsspec.AbstractFileSystem, target: str, img: np.ndarray, source_mode: str, fmt: str) -> None:
    """Encode in the source's mode where the format holds it, then write under a temporary name
    and rename: a crash leaves no partial image."""
    buf = io.BytesIO()
    image = to_restored_image(img, source_mode, PIL_FORMAT[fmt])
    image.save(buf, format=PIL_FORMAT[fmt], **({"quality": 95} if fmt != "png" else {}))
    fs.makedirs(posixpath.dirname(target), exist_ok=True)
    tmp = f"{target}.part-{os.getpid()}"
    with fs.open(tmp, "wb") as f:
        f.write(buf.getvalue())
    fs.mv(tmp, target)
