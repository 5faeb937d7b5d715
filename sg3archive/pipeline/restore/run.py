"""Running a restore: :func:`restore` and its named steps.

A run opens the archive once (:class:`~sg3archive.pipeline.session.ArchiveSession`: store,
models, codec, fingerprints checked), plans (or takes the flow's plan), checks DEST, then for each
shard with selected rows: reads its batches (``_Run._pending_rows``: rows already there are
skipped, damaged and unsafe ones recorded), rebuilds each row's image at the original size (or the
generator's with ``--size generator``), encodes it (:mod:`.encode`) and writes it (``_Run._write``)
under DEST. How the image is rebuilt depends on the row's representation:

* ``latent`` (every row before format version 4): the batch's payloads decoded (:func:`_decode`)
  and synthesized together (:func:`_synthesize`), then mapped back to the original size;
* ``classical`` and ``original``: without the models, from the row's ``image_data`` (an AVIF/WebP
  file, or the source's bytes), checked against its ``image_sha256`` and decoded under a bound
  (:mod:`.stored`), read only for the rows being written.

Every row then goes through the same writing step: the same output formats, names, safety rules
and limits.

What happened is counted in one small collector (:class:`_Tally`) and returned at the end as a
frozen :class:`~sg3archive.pipeline.restore.report.RestoreReport`.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import fsspec
import numpy as np
import torch
from tqdm import tqdm

from sg3archive.codec import LatentCodec
from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import to_uint8
from sg3archive.pipeline.destination import DestinationWriteError, UnsafeTargetError, destination_error
from sg3archive.pipeline.jobs import RestoreJob
from sg3archive.pipeline.restore.encode import check_size, encode_decoded, encode_image
from sg3archive.pipeline.restore.report import (
    BadRow,
    RestoreReport,
    RowNotWritableError,
    refusal,
    representation_counts,
    shard_refused,
    shown,
)
from sg3archive.pipeline.restore.selection import (
    NAME_COLUMNS,
    SHARD_REFUSED,
    RestorePlan,
    plan_restore,
    selector,
    uris_and_names,
)
from sg3archive.pipeline.restore.stored import (
    STORED,
    ImageData,
    StoredImageDamaged,
    representation_of,
    stored_damage,
    stored_rgb,
)
from sg3archive.pipeline.restore.targets import Targets, open_targets
from sg3archive.pipeline.session import ArchiveSession, Models

__all__ = ["COLUMNS", "restore"]

# image_data is not among them: it is read apart, only for the rows being written (.stored.ImageData).
COLUMNS = [*NAME_COLUMNS, "payload", "payload_sha256", "fit", "mode", "representation", "image_sha256", "width",
           "height"]
# Columns a row is restored from, with the type each value must have (the schema requires them).
_VALUE_TYPES = {"payload": bytes, "payload_sha256": str, "fit": str, "mode": str}


@dataclass
class _Tally:
    """What a run has done so far (the one mutable part of a run); :meth:`report` freezes it."""

    bad: list[BadRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    written: int = 0
    skipped: int = 0
    files: list[str] = field(default_factory=list)
    representations: dict[str, int] = field(default_factory=dict)  # files written per representation
    bar: tqdm | None = None

    def _tick(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def wrote(self, url: str, representation: str) -> None:
        self.written += 1
        self.files.append(url)
        self.representations[representation] = self.representations.get(representation, 0) + 1
        self._tick()

    def skip(self) -> None:
        self.skipped += 1
        self._tick()

    def not_restored(self, rid: Any, name: str | None, reason: str, unwritable: bool = False) -> None:
        self.bad.append(BadRow(shown(rid, "(no id)"), shown(name, "(no name)"), reason, unwritable))
        self._tick()

    def shard_refused(self, shard: str, why: str, rows_left: int) -> None:
        self.bad.append(shard_refused(shard, why))
        self._tick(max(rows_left, 0))

    def report(self, destination: str, seconds: float) -> RestoreReport:
        return RestoreReport(destination, self.written, self.skipped, seconds, tuple(self.files), tuple(self.bad),
                             tuple(self.warnings), representation_counts(self.representations))


@dataclass
class _Row:
    """A selected row on its way to a file."""

    index: int  # in the batch
    id: str
    name: str
    relative: str  # output name under DEST
    position: int = 0  # in the shard
    representation: str = "latent"


def restore(job: RestoreJob, progress: bool = True, plan: RestorePlan | None = None) -> RestoreReport:
    """Run a restore job in this process (the CLI's path; the flow plans once, then runs one
    task per shard with that shard's part of the plan).

    Rows that cannot be restored are listed in the report's ``bad`` and skipped, and so is
    each shard the store refuses to read (one entry; the other shards restore).

    Raises:
        Sg3ArchiveError: a selection that matches nothing, DEST is a file.
        ArchiveMismatchError: the models differ from the ones the archive was made with.
        DestinationWriteError: DEST is full, read-only or not writable.
    """
    started = time.perf_counter()
    session = ArchiveSession.open(job.archive, storage_options=job.storage_options, network=job.network,
                                  encoder=job.encoder, device=job.device, check=True)
    plan = plan if plan is not None else plan_restore(job, session.store)
    tally = _Tally(bad=plan.refused_shard_rows(),
                   warnings=[str(m) for m in getattr(session.store, "damage", None) or []])
    fs, root = _destination(job)
    if plan.total and session.models is not None:
        targets = open_targets(job, fs, root, session.store)  # after the models load: a mistake leaves no empty DEST
        tally.warnings.extend(targets.warnings)
        run = _Run(job, session, session.models, plan, targets, tally)
        with tqdm(total=plan.total, desc="restore", unit="img", file=sys.stderr, disable=not progress) as bar:
            tally.bar = bar
            for shard in plan.shards:
                run.shard(shard)
    return tally.report(job.destination, time.perf_counter() - started)


def _destination(job: RestoreJob) -> tuple[fsspec.AbstractFileSystem, str]:
    """DEST's filesystem and path; refuses a DEST that is a file."""
    fs, root = fsspec.core.url_to_fs(job.destination, **job.destination_storage_options)
    if fs.isfile(root):
        raise Sg3ArchiveError(f"DEST {job.destination} is a file; restore writes images into a folder: give a "
                              "folder (new or existing) as DEST")
    return fs, root


def _damaged_values(cols: dict[str, list[Any]], i: int) -> str | None:
    """Why row ``i`` cannot be restored from its values (a null, or a value of the wrong type,
    where the schema requires one), or None when every one is there."""
    bad = [column for column, kind in _VALUE_TYPES.items() if not isinstance(cols[column][i], kind)]
    if not bad:
        return None
    return f"its {' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} missing or of the wrong type (the archive is damaged)"


def _decode(codec: LatentCodec, payloads: list[bytes]) -> list[torch.Tensor | str]:
    """One W+ (or the reason it does not decode) per payload: the batch at once, and when that
    fails, one at a time so that only the bad payloads are lost."""
    try:
        return list(codec.decompress(payloads))
    except Sg3ArchiveError:
        pass
    out: list[torch.Tensor | str] = []
    for payload in payloads:
        try:
            out.append(codec.decompress([payload])[0])
        except Sg3ArchiveError as exc:
            out.append(f"its payload does not decode: {exc}")
    return out


def _synthesize(models: Models, ws: list[torch.Tensor]) -> np.ndarray:
    """The generator's images (``[N, H, W, 3]`` uint8) for a batch of W+ codes."""
    synthesis = cast(Callable[[torch.Tensor], torch.Tensor], models.G.synthesis)  # a Module attribute to torch's stubs
    with torch.no_grad():
        return to_uint8(synthesis(torch.stack(ws).to(models.device)))


class _Run:
    """One restore's shards, row by row: the steps between a plan and the files under DEST."""

    def __init__(self, job: RestoreJob, session: ArchiveSession, models: Models, plan: RestorePlan,
                 targets: Targets, tally: _Tally) -> None:
        self.job, self.store, self.plan, self.targets, self.tally = job, session.store, plan, targets, tally
        self.models, self.codec = models, session.codec
        self.selected = selector(job)

    def shard(self, shard: str) -> None:
        """Restore one shard's selected rows, batch by batch (its ``image_data`` read alongside,
        only once a classical or original row is written)."""
        image_data = ImageData(self.store, shard)
        for cols, rows in self._pending_rows(shard):
            self._restore_batch(cols, rows, image_data)

    def _pending_rows(self, shard: str) -> Iterator[tuple[dict[str, list[Any]], list[_Row]]]:
        """Batches of one shard with the selected rows still to write (rows already there are
        counted as skipped, refused, damaged and unsafe ones recorded as bad). A shard the store
        refuses to read is one bad entry; its rows not yet yielded are not written."""
        refused = self.plan.refused.get(shard, {})
        index, done = 0, 0
        batches = self.store.iter_batches("images", columns=COLUMNS, shard_names=[shard],
                                          batch_size=self.job.batch_size)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except SHARD_REFUSED as exc:
                self.tally.shard_refused(shard, refusal(exc), self.plan.shards.get(shard, 0) - done)
                return
            cols = batch.to_pydict()
            rows = []
            for i, (rid, (uri, name)) in enumerate(zip(cols["id"], uris_and_names(cols))):
                if not self.selected(rid, uri, name):
                    continue
                done += 1
                if index + i in refused:
                    self.tally.not_restored(rid, name, refused[index + i])
                    continue
                row = self._pending(shard, index + i, cols, i, rid, name)
                if row is not None:
                    rows.append(row)
            index += batch.num_rows
            if rows:
                yield cols, rows

    def _pending(self, shard: str, position: int, cols: dict[str, list[Any]], i: int, rid: Any,
                 name: str | None) -> _Row | None:
        """Row ``i`` of a batch (``position`` in its shard) as a row to write, or None when it is
        already there (counted as skipped) or cannot be restored (recorded as bad)."""
        damage = _damaged_values(cols, i)
        representation = representation_of(cols["representation"][i])
        if representation is None:
            damage = damage or (f"its representation {cols['representation'][i]!r} is not one this version restores "
                                "(the archive is damaged, or newer than this sg3archive)")
        elif representation in STORED:
            damage = damage or stored_damage(cols, i)
        if damage:
            self.tally.not_restored(rid, name, damage)
            return None
        if not isinstance(name, str):  # the plan refuses these already; a plan made elsewhere may not
            self.tally.not_restored(rid, name, "its name is missing (the archive is damaged)")
            return None
        row = _Row(i, rid, name, self.plan.output_for(shard, position, name, self.job.format), position,
                   representation or "latent")
        try:
            there = self.targets.exists(row.relative)
        except UnsafeTargetError as exc:
            self.tally.not_restored(rid, name, str(exc))
            return None
        except (OSError, UnicodeError) as exc:  # this one target (a name too long, ...); DEST-wide stops
            self._unwritable(row, exc)
            return None
        if there and not self.job.overwrite:
            self.tally.skip()
            return None
        if hashlib.sha256(cols["payload"][i]).hexdigest() != cols["payload_sha256"][i]:
            self.tally.not_restored(rid, name, "its payload does not match the payload_sha256 recorded beside it "
                                               "(the archive is damaged)")
            return None
        return row

    def _restore_batch(self, cols: dict[str, list[Any]], rows: list[_Row], image_data: ImageData) -> None:
        """Rebuild, encode and write one batch's rows in archive order (bad ones recorded and
        skipped): the latent rows' payloads decoded and synthesized together first."""
        squares = self._synthesized(cols, [row for row in rows if row.representation not in STORED])
        for row in rows:
            if row.representation not in STORED and row.index not in squares:
                continue  # its payload did not decode (recorded)
            try:
                if row.representation in STORED:
                    data = self._stored_file(cols, row, image_data)
                else:
                    data = encode_image(self.job, squares.pop(row.index), cols["fit"][row.index],
                                        cols["mode"][row.index])
            except RowNotWritableError as exc:
                self.tally.not_restored(row.id, row.name, str(exc), unwritable=True)
                continue
            except StoredImageDamaged as exc:
                self.tally.not_restored(row.id, row.name, str(exc))
                continue
            except (Sg3ArchiveError, ValueError, TypeError, OverflowError, OSError) as exc:
                self.tally.not_restored(row.id, row.name, f"its image cannot be rebuilt: {exc}")
                continue
            self._write(row, data)

    def _synthesized(self, cols: dict[str, list[Any]], rows: list[_Row]) -> dict[int, np.ndarray]:
        """The synthesized square (``[R, R, 3]`` uint8) of each latent row whose payload decodes,
        by its index in the batch (the others recorded as bad)."""
        if not rows:
            return {}
        good = []
        for row, ws in zip(rows, _decode(self.codec, [cols["payload"][row.index] for row in rows])):
            if isinstance(ws, str):
                self.tally.not_restored(row.id, row.name, ws)
            else:
                good.append((row, ws))
        if not good:
            return {}
        images = _synthesize(self.models, [ws for _, ws in good])
        return {row.index: img for (row, _), img in zip(good, images)}

    def _stored_file(self, cols: dict[str, list[Any]], row: _Row, image_data: ImageData) -> bytes:
        """The file of a classical or original row: its size checked against the format first,
        then its ``image_data`` read, checked and decoded (:func:`.stored.stored_rgb`), then
        written as a latent row's image is.

        Raises:
            StoredImageDamaged: its image_data is missing, altered or of another size.
            RowNotWritableError: too large for the format or for this machine's memory.
        """
        width, height = cols["width"][row.index], cols["height"][row.index]
        if self.job.size == "original":
            check_size(self.job, width, height)
        try:
            rgb = stored_rgb(image_data.at(row.position), cols["image_sha256"][row.index], width, height)
        except MemoryError:
            raise RowNotWritableError(f"its original size {width}×{height} needs more memory than this machine "
                                      "has") from None
        return encode_decoded(self.job, rgb, cols["fit"][row.index], cols["mode"][row.index])

    def _write(self, row: _Row, data: bytes) -> None:
        """Write one row's file (skipped when it appeared since it was checked, unless ``overwrite``)."""
        try:
            wrote = self.targets.write(row.relative, data, self.job.overwrite)
        except DestinationWriteError:
            raise
        except UnsafeTargetError as exc:
            self.tally.not_restored(row.id, row.name, str(exc))
            return
        except (OSError, UnicodeError) as exc:
            self._unwritable(row, exc)
            return
        if wrote:
            self.tally.wrote(self.targets.url(row.relative), row.representation)
        else:  # appeared since it was checked (another restore into the same DEST)
            self.tally.skip()

    def _unwritable(self, row: _Row, exc: OSError | UnicodeError) -> None:
        """Record a row whose own target cannot be checked or written (ENAMETOOLONG, ELOOP,
        ENOTDIR, EILSEQ, ...) as a bad row; an error that means all of DEST cannot be written
        stops the run."""
        if isinstance(exc, OSError):
            stop = destination_error(self.targets.label, exc)
            if stop is not None:
                raise stop from None
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        what = what[:1].lower() + what[1:]
        self.tally.not_restored(row.id, row.name, f"cannot write {row.relative!r} in DEST: {what}", unwritable=True)


# The same function under a name that does not clash with this package's own name where
# ``sg3archive.pipeline`` exports it (a package attribute ``restore`` is the subpackage).
restore_images = restore
