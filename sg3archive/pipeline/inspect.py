"""What an archive holds: counts, sizes, bit allocation, fingerprints, failures, orphans; its
shards; its rows (ids and names, what restore's --ids and --glob select by).

Memory stays bounded whatever the archive's size: row counts and payload sizes come from the
shards' Parquet footers (checked first, :meth:`ArchiveStore.check_shard`), and the few columns
that are read are streamed batch by batch; no payload is held for the summary or the shard list.
Anything wrong with the manifest (a damaged newest generation skipped) is returned under
``problems``, one line each.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sg3archive.store.archive import ArchiveStore, ShardRecord
from sg3archive.store.format import row_name

# Rows per batch when streaming: small enough that a batch of the widest rows stays a few MB.
ROWS_BATCH = 1024


def manifest_problems(store: ArchiveStore) -> list[str]:
    """The manifest's problems a reader must hear about: each newer generation skipped as damaged,
    or as a commit probably still being written."""
    return list(store.damage) + list(store.pending)


class _Mean:
    """A running mean over streamed batches (nulls and NaN skipped)."""

    def __init__(self) -> None:
        self.total, self.n = 0.0, 0

    def add(self, column: pa.Array | pa.ChunkedArray) -> None:
        values = pc.drop_null(column)
        values = pc.filter(values, pc.invert(pc.is_nan(values))) if len(values) else values
        if len(values):
            self.total += float(pc.sum(values).as_py())
            self.n += len(values)

    @property
    def value(self) -> float | None:
        return self.total / self.n if self.n else None


@dataclass(frozen=True)
class InspectReport:
    """What ``sg3archive inspect ARCHIVE`` shows (from the manifest: committed data only).

    ``images`` and ``payload_bytes`` come from the shards' footers: ``payload_bytes`` is what the
    payload column takes in the shards (its Parquet column chunks as stored). ``source_bytes`` and
    the mean PSNR / MS-SSIM stream three small columns; ``failure_list`` streams the failures.
    ``problems`` lists damaged manifest generations that were skipped.
    """

    archive: str
    generation: int
    problems: list[str]
    shards: dict[str, int]
    images: int
    failures: int
    payload_bytes: int
    bytes_per_image: float | None
    source_bytes: int
    ratio: float | None
    mean_psnr: float | None
    mean_ms_ssim: float | None
    settings: dict[str, Any]
    failure_list: list[dict[str, Any]]
    orphans: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``inspect --json``)."""
        return dataclasses.asdict(self)


def inspect_report(url: str, storage_options: dict[str, Any] | None = None) -> InspectReport:
    """Describe the archive at ``url`` (see :class:`InspectReport`)."""
    store = ArchiveStore.open(url, storage_options=storage_options)
    manifest = store.manifest()
    problems = manifest_problems(store)
    footers = [(r, store.check_shard(r)) for r in manifest.shards_of("images")]
    images = sum(f.rows for _, f in footers)
    payload_bytes = sum(f.column_bytes("payload") for _, f in footers)
    source_bytes, psnr, ms_ssim = 0, _Mean(), _Mean()
    if images:
        for batch in store.iter_batches("images", columns=["source_size", "psnr", "ms_ssim"], batch_size=ROWS_BATCH):
            source_bytes += int(pc.sum(batch.column("source_size")).as_py() or 0)
            psnr.add(batch.column("psnr"))
            ms_ssim.add(batch.column("ms_ssim"))
    failure_list: list[dict[str, Any]] = []
    if manifest.shards_of("failures"):
        for batch in store.iter_batches("failures", columns=["source_uri", "stage", "reason"], batch_size=ROWS_BATCH):
            failure_list += batch.to_pylist()
    return InspectReport(
        archive=url, generation=manifest.generation, problems=problems,
        shards={kind: len(manifest.shards_of(kind)) for kind in ("images", "failures")},
        images=images, failures=len(failure_list), payload_bytes=payload_bytes,
        bytes_per_image=payload_bytes / images if images else None, source_bytes=source_bytes,
        ratio=source_bytes / payload_bytes if payload_bytes else None, mean_psnr=_finite(psnr.value),
        mean_ms_ssim=_finite(ms_ssim.value), settings=store.settings, failure_list=failure_list,
        orphans=store.orphans(),
    )


def inspect_archive(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`inspect_report` as its JSON form (a plain dict, for scripts and ``--json``)."""
    return inspect_report(url, storage_options).to_dict()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def list_shards(url: str, storage_options: dict[str, Any] | None = None,
                problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The committed shards in commit order: file name (restore's --shard), kind, rows, bytes.
    Each shard's footer is checked (a refused one raises, naming it); rows are the footer's.
    Manifest problems are appended to ``problems`` when a list is given."""
    store = ArchiveStore.open(url, storage_options=storage_options)
    manifest = store.manifest()
    if problems is not None:
        problems += manifest_problems(store)
    out = []
    for r in manifest.shards:
        footer = store.check_shard(r)
        out.append({"name": r.name, "kind": r.kind, "rows": footer.rows, "bytes": footer.size,
                    "committed_at": r.committed_at})
    return out


def iter_rows(url: str, storage_options: dict[str, Any] | None = None,
              problems: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """One small record per image row, in archive order, streamed shard by shard: ``id``,
    ``name`` (relative to the compressed source; what restore's --glob matches and the output is
    named after), ``source_uri``, ``payload_bytes``, encode-time ``psnr`` (dB) and ``shard``.

    The archive and its manifest are read when this is called (manifest problems are appended to
    ``problems`` then, when a list is given); the rows when the iterator is consumed. Each shard is
    checked before it is read and rows stream in batches of :data:`ROWS_BATCH`; a row's
    ``payload_bytes`` is the length of its payload, taken one batch at a time (never a shard's
    payloads at once)."""
    store = ArchiveStore.open(url, storage_options=storage_options)
    manifest = store.manifest()
    if problems is not None:
        problems += manifest_problems(store)
    return _rows(store, manifest.shards_of("images"))


def _rows(store: ArchiveStore, records: list[ShardRecord]) -> Iterator[dict[str, Any]]:
    names = ("id", "source_name", "source_uri", "psnr")
    for record in records:
        store.check_shard(record)
        for batch in store.iter_batches("images", columns=[*names, "payload"], batch_size=ROWS_BATCH,
                                        shard_names=[record.name]):
            sizes = pc.binary_length(batch.column("payload")).to_pylist()
            cols = {c: batch.column(c).to_pylist() for c in names}
            del batch
            for rid, name, uri, size, quality in zip(cols["id"], cols["source_name"], cols["source_uri"], sizes,
                                                     cols["psnr"]):
                yield {"id": rid, "name": row_name(name, uri), "source_uri": uri, "payload_bytes": size,
                       "psnr": quality, "shard": record.name}
