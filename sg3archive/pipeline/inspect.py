"""What an archive holds: counts, sizes, bit allocation, fingerprints, failures, orphans, the
quality summary (bytes per image, fidelity at the original size, representations, contract, AVIF
baseline: :class:`sg3archive.quality.summary.QualitySummary`); its shards; its rows (ids and names,
what restore's --ids and --glob select by, each with its representation, stored bytes, fidelity at
the original size and whether it meets its contract).

Memory stays bounded whatever the archive's size: row counts and column sizes come from the
shards' Parquet footers (checked first, :meth:`ArchiveStore.check_shard`), and the few columns
that are read are streamed batch by batch. Stored bytes come from the rows' ``latent_bytes`` and
``image_bytes``; only shards written before format version 4 (which lack them) have their payload
lengths read, and no image data is ever read. The mean PSNR / MS-SSIM of the encode-time
``psnr``/``ms_ssim`` columns are figures at the generator's square (diagnostics); the fidelity
figures are at the original size.
Anything wrong with the manifest (a damaged newest generation skipped) is returned under
``problems``, one line each.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sg3archive.quality.summary import SUMMARY_COLUMNS, QualitySummary
from sg3archive.store.archive import ArchiveStore, ShardRecord
from sg3archive.store.bounded import ShardFooter
from sg3archive.store.format import row_name, row_representation

# Rows per batch when streaming: small enough that a batch of the widest rows stays a few MB.
ROWS_BATCH = 1024
PART_SIZE_COLUMNS = ("latent_bytes", "image_bytes")
# What the summary streams: never the parts themselves (their sizes are recorded).
SUMMARY_READ = tuple(c for c in SUMMARY_COLUMNS if c not in ("payload", "image_data"))


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
    the mean PSNR / MS-SSIM (encode time, at the generator's square: diagnostics) stream small
    columns; ``summary`` is the whole archive's :class:`QualitySummary` (stored bytes per image,
    fidelity at the original size, representations, contract, AVIF baseline); ``failure_list``
    streams the failures. ``problems`` lists damaged manifest generations that were skipped.
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
    summary: QualitySummary = dataclasses.field(default_factory=QualitySummary)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``inspect --json``): every field but ``summary``, which is ``quality``
        (:meth:`QualitySummary.to_dict`); ``fidelity`` repeats its figures at the original size
        beside the square's ``mean_psnr``/``mean_ms_ssim``."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "summary"}
        quality = self.summary.to_dict()
        out["quality"] = quality
        out["fidelity"] = dict(quality["fidelity"])
        return out

    def lines(self) -> list[str]:
        """The text ``sg3archive inspect`` prints (without the warnings)."""
        s = self.settings
        out = [f"archive {self.archive} (manifest generation {self.generation})",
               f"  images {self.images} in {self.shards['images']} shards; failures {self.failures}"]
        if self.images:
            ratio = f"{self.ratio:.1f}x" if self.ratio else "-"
            out.append(f"  payload {self.payload_bytes} bytes in the shards ({self.bytes_per_image or 0:.0f} B/image); "
                       f"source {self.source_bytes} bytes; ratio {ratio}")
            out += [f"  {line}" for line in self.summary.lines()]
            if self.mean_psnr is not None or self.mean_ms_ssim is not None:
                psnr = "-" if self.mean_psnr is None else f"{self.mean_psnr:.2f}"
                ms_ssim = "-" if self.mean_ms_ssim is None else f"{self.mean_ms_ssim:.3f}"
                out.append(f"  diagnostic at the generator's square (latent rows, encode time): mean PSNR {psnr} dB, "
                           f"MS-SSIM {ms_ssim}")
        out.append(f"  profile {s.get('profile')}; bits per layer {s.get('bits')}")
        out += [f"  generator {s.get('generator_fingerprint')}", f"  encoder   {s.get('encoder_fingerprint')}",
                f"  codec     {s.get('codec_hash')}"]
        out += [f"  FAILED {f['source_uri']}: [{f['stage']}] {f['reason']}" for f in self.failure_list]
        if self.orphans:
            out.append(f"  {len(self.orphans)} uncommitted shard files (from interrupted runs; ignored by readers)")
        return out


def inspect_report(url: str, storage_options: dict[str, Any] | None = None) -> InspectReport:
    """Describe the archive at ``url`` (see :class:`InspectReport`)."""
    store = ArchiveStore.open(url, storage_options=storage_options)
    manifest = store.manifest()
    problems = manifest_problems(store)
    footers = [(r, store.check_shard(r)) for r in manifest.shards_of("images")]
    images = sum(f.rows for _, f in footers)
    payload_bytes = sum(f.column_bytes("payload") for _, f in footers)
    source_bytes, psnr, ms_ssim, summary = 0, _Mean(), _Mean(), QualitySummary()
    for record, footer in footers:
        if not footer.rows:
            continue
        sizes_missing = lacks_part_sizes(footer)
        columns = ["source_size", "psnr", "ms_ssim", *SUMMARY_READ] + (["payload"] if sizes_missing else [])
        for batch in store.iter_batches("images", columns=columns, batch_size=ROWS_BATCH, shard_names=[record.name]):
            source_bytes += int(pc.sum(batch.column("source_size")).as_py() or 0)
            psnr.add(batch.column("psnr"))
            ms_ssim.add(batch.column("ms_ssim"))
            summary = summary.merged(_batch_summary(batch))
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
        orphans=store.orphans(), summary=summary,
    )


def lacks_part_sizes(footer: ShardFooter) -> bool:
    """Whether a shard has rows without ``latent_bytes`` (written before format version 4, or a
    row group whose statistics do not say it holds no null): their payload lengths must be read."""
    metadata = footer.metadata
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        chunk = next((group.column(j) for j in range(group.num_columns)
                      if group.column(j).path_in_schema == "latent_bytes"), None)
        if chunk is None or not chunk.is_stats_set or not chunk.statistics.has_null_count:
            return True
        if chunk.statistics.null_count:
            return True
    return False


def _batch_summary(batch: pa.RecordBatch) -> QualitySummary:
    """The :class:`QualitySummary` of one batch: a payload's length stands in for a missing
    ``latent_bytes`` (older rows), so no part is held longer than the batch."""
    names = [c for c in SUMMARY_READ if c in batch.schema.names]
    cols = {c: batch.column(c).to_pylist() for c in names}
    if "payload" in batch.schema.names:
        lengths = pc.binary_length(batch.column("payload")).to_pylist()
        cols["latent_bytes"] = [b if b is not None else n for b, n in zip(cols["latent_bytes"], lengths)]
    rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
    return QualitySummary.of_rows(rows)


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
    named after), ``source_uri``, ``payload_bytes``, encode-time ``psnr`` (dB, at the generator's
    square: a diagnostic; null for rows that are not latent), ``shard``, ``representation``,
    ``stored_bytes`` (all its parts), ``fidelity_psnr`` (dB, restored vs original at the original
    size; null for rows before format 4, +inf when identical) and ``contract_met`` (null: no contract
    recorded).

    The archive and its manifest are read when this is called (manifest problems are appended to
    ``problems`` then, when a list is given); the rows when the iterator is consumed. Each shard is
    checked before it is read and rows stream in batches of :data:`ROWS_BATCH`; a row's
    ``payload_bytes`` is the length of its payload, taken one batch at a time (never a shard's
    payloads at once); ``stored_bytes`` adds its recorded ``image_bytes`` (the image itself is
    never read)."""
    store = ArchiveStore.open(url, storage_options=storage_options)
    manifest = store.manifest()
    if problems is not None:
        problems += manifest_problems(store)
    return _rows(store, manifest.shards_of("images"))


def _rows(store: ArchiveStore, records: list[ShardRecord]) -> Iterator[dict[str, Any]]:
    names = ("id", "source_name", "source_uri", "psnr", "representation", "image_bytes", "fidelity_psnr",
             "contract_met")
    for record in records:
        store.check_shard(record)
        for batch in store.iter_batches("images", columns=[*names, "payload"], batch_size=ROWS_BATCH,
                                        shard_names=[record.name]):
            sizes = pc.binary_length(batch.column("payload")).to_pylist()
            cols = {c: batch.column(c).to_pylist() for c in names}
            del batch
            for i, size in enumerate(sizes):
                uri = cols["source_uri"][i]
                image = cols["image_bytes"][i] or 0
                yield {"id": cols["id"][i], "name": row_name(cols["source_name"][i], uri), "source_uri": uri,
                       "payload_bytes": size, "psnr": cols["psnr"][i], "shard": record.name,
                       "representation": row_representation({"representation": cols["representation"][i]}),
                       "stored_bytes": (size or 0) + int(image), "fidelity_psnr": cols["fidelity_psnr"][i],
                       "contract_met": cols["contract_met"][i]}


def row_line(row: dict[str, Any]) -> str:
    """One row of ``sg3archive inspect --rows`` (see :data:`ROWS_HEADER`): id, representation,
    stored bytes, fidelity PSNR at the original size ("inf": identical; "-": not recorded), contract
    met (yes/NO/-), encode-time PSNR at the generator's square (a diagnostic), name."""
    fidelity = row.get("fidelity_psnr")
    fid = f"{'-':>8s}" if fidelity is None else f"{'inf':>8s}" if math.isinf(fidelity) else f"{fidelity:8.2f}"
    met = {True: "yes", False: "NO"}.get(row.get("contract_met"), "-")  # type: ignore[arg-type]
    square = f"{row['psnr']:6.2f}" if row.get("psnr") is not None else f"{'-':>6s}"
    return (f"{row['id']}  {row.get('representation') or 'latent':9s}  {row.get('stored_bytes', 0):8d}  {fid}  "
            f"{met:>8s}  {square}  {row['name']}")


ROWS_HEADER = (f"{'id':32s}  {'repr':9s}  {'bytes':>8s}  {'fid_psnr':>8s}  {'contract':>8s}  {'psnr':>6s}  name"
               "   (fid_psnr: dB at the original size; psnr: at the generator's square, a diagnostic)")
