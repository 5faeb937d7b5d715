"""The audit: proves that what an archive holds can still be restored at the promised quality.

Four checks, each turning what it finds into precise problem messages:

* integrity — the newest manifest generation is readable (a damaged one that readers skip is a
  problem); every manifest-listed shard is a regular file of the archive with its recorded sha256
  and row count and a plausible Parquet footer; every sampled payload matches its sha256 and its
  own CRC, and the part sizes recorded (``latent_bytes``, ``image_bytes``) are the parts'; a
  sampled classical or original row's image matches its ``image_sha256`` (an original's is its
  source's) and decodes at the recorded size (such rows never go through the codec); every audit
  history record matches its checksum; uncommitted (orphaned) shards are listed;
* compatibility — the generator, encoder and codec model load and their fingerprints are the
  ones the archive records (the archive and its models are opened once, through
  :class:`~sg3archive.pipeline.session.ArchiveSession`; a mismatch is a problem, not an error);
* determinism — a seeded sample of rows, stratified over shards, is restored (latent rows:
  decoded and synthesized; others: their image decoded as restore writes it); the 8×8 thumbnail
  must equal the one recorded at encode time within a tolerance (catches a changed library,
  weight file or device drift);
* the contract — a row that records its quality contract (format 4) must meet it: with the
  fidelity it records (whatever ``contract_met`` says) and, where its source is reachable, with
  the fidelity measured now; a miss is a ``contract:`` problem naming the row. An LPIPS ceiling
  the audit cannot measure (no weights) is a note, not a failure;
* quality — where a source is still reachable with its recorded sha256, it is decoded at its
  original size (:func:`sg3archive.audit.sources.read_source`) and compared with the image the
  row restores to at that size (:func:`sg3archive.metrics.fidelity.measure_fidelity`: PSNR,
  MS-SSIM, and LPIPS when its weights are provisioned; otherwise a note says so and how to
  provision them); these figures meet the job's thresholds. The drop check compares them with the
  encode-time figure: ``fidelity_psnr`` for format-4 rows; rows written before record only the
  generator's square, so their drop compares the synthesized square with the fitted source (a
  diagnostic at the square, as audits of those archives always did).

The sampled rows as recorded are summarized (:class:`sg3archive.quality.summary.QualitySummary`:
bytes per image, fidelity at the original size, representations, contract, AVIF baseline).

Sources are read only under the archive's recorded source roots, or the roots the audit job
names, and never over http(s) unless the job allows it (sg3archive.audit.sources): a source
elsewhere is not read but listed as ``refused``. A source that is gone, changed (another sha256),
unreadable or refused is not archive damage: the row is
still restored and checked for determinism, and the source is listed in ``unverified_sources``
(id, URI, reason) — visible everywhere, but it does not fail the audit. The verdict always says
against which thresholds it was reached (:meth:`AuditReport.verdict`).

:func:`run_audit` is a sequence of named steps (open, records, shards, sample, per-batch checks,
the per-row verdict :func:`quality_problems`); they fill an :class:`AuditResult` that is frozen
into the :class:`AuditReport` it returns. Both share :class:`AuditFindings` (verdict, record).

Memory is constant in the sample size: rows are read shard by shard (the small columns; the
payload and image of the sampled rows only) and processed in batches, and only fixed-size
accumulators and the worst few images (shrunk for display) are kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import posixpath
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image
from tqdm import tqdm

from sg3archive.audit.accumulators import Stats, WorstN
from sg3archive.audit.sources import SourcePolicy, job_roots, one_line, read_source, recorded_max_pixels
from sg3archive.audit.thresholds import QUALITY_THRESHOLDS, THRESHOLD_TEXT, Thresholds
from sg3archive.codec import LatentCodec
from sg3archive.codec.errors import CodecError
from sg3archive.devices import resolve_device
from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import FitInfo, ImageRejected, sha256_hex, thumbnail, to_uint8
from sg3archive.images.classical import decode_rgb
from sg3archive.metrics import psnr
from sg3archive.metrics.fidelity import Fidelity, measure_fidelity
from sg3archive.networks.generator import Generator
from sg3archive.pipeline.session import ArchiveSession, Models, cache, fingerprint_mismatches
from sg3archive.quality.choose import as_written, latent_restored, restored_thumb
from sg3archive.quality.contract import QualityContract
from sg3archive.quality.summary import SUMMARY_COLUMNS, QualitySummary
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.manifest import ShardRecord

PART_COLUMNS = ("payload", "image_data")  # the large columns: read for the sampled rows only
COLUMNS = list(dict.fromkeys([
    "id", "source_uri", "source_sha256", "payload", "payload_sha256", "fit", "psnr", "ms_ssim", "recon_thumb",
    "source_root", "source_uri_bytes", "width", "height", "mode", "image_sha256", "image_codec",
    *SUMMARY_COLUMNS]))
STATS_RANGES = {"psnr": (0.0, 60.0), "ms_ssim": (0.0, 1.0), "psnr_drop": (-5.0, 5.0), "thumb_diff": (0.0, 32.0),
                "lpips": (0.0, 1.0)}  # each metric's histogram axis

__all__ = ["AuditFindings", "AuditReport", "AuditResult", "SourcePolicy", "ThresholdStatus", "Thresholds", "lpips_note",
           "nightly_seed", "quality_problems", "run_audit", "shard_problem"]


# When an audit fails and how each threshold reads: one home, sg3archive.audit.thresholds.

UNVERIFIED_POLICY = ("not archive damage, so they do not fail the audit: these rows were restored and checked for "
                     "determinism, but their quality was not measured")


@dataclass(frozen=True)
class ThresholdStatus:
    """One threshold of an audit: ``phrase`` reads "PSNR drop ≤ 0.5 dB vs encode time"; ``why_not``
    is empty when it was applied, else why not ("off", "no source compared", "LPIPS not measured")."""

    name: str
    label: str
    value: float | None
    phrase: str
    why_not: str

    @property
    def checked(self) -> bool:
        return not self.why_not


class AuditFindings:
    """What an audit found, and how it reads: the verdict, the thresholds it was reached against,
    the quality measured, the JSON record. Shared by :class:`AuditReport` (what :func:`run_audit`
    returns) and :class:`AuditResult` (the same findings, mutable: what a run fills in)."""

    archive: str
    started_at: str
    seed: int
    sample_size: int
    thresholds: Thresholds
    problems: Sequence[str]
    notes: Sequence[str]  # what was not measured, and why
    sampled: int
    compared: int  # rows whose source was reachable with its recorded sha256
    shards_checked: int
    orphans: Sequence[str]
    unverified_sources: Sequence[dict[str, str]]  # {id, uri, kind, reason}
    lpips_measured: bool
    stats: Mapping[str, Stats]
    worst: Sequence[tuple[float, dict]]
    seconds: float
    summary: QualitySummary  # the sampled rows as recorded: bytes, fidelity at original size, contract

    @property
    def passed(self) -> bool:
        return not self.problems

    def problems_of(self, check: str) -> list[str]:
        """The problems one check (``integrity``, ``compatibility``, ``determinism``, ``quality``) found."""
        return [p for p in self.problems if p.startswith(f"{check}:")]

    def threshold_status(self) -> list[ThresholdStatus]:
        """Each threshold and whether it was applied: a set one that could not be (no source
        compared, LPIPS not measured) is not checked, and says why."""
        rows = []
        for name, (label, phrase) in THRESHOLD_TEXT.items():
            value = getattr(self.thresholds, name)
            if value is None:
                why = "off"
            elif name == "thumb_tolerance" and not self.sampled:
                why = "no rows sampled"
            elif name in QUALITY_THRESHOLDS and not self.compared:
                why = "no source compared"
            elif name == "max_lpips" and not self.lpips_measured:
                why = "LPIPS not measured"
            else:
                why = ""
            rows.append(ThresholdStatus(name, label, value, phrase.format(value) if value is not None else "", why))
        return rows

    def thresholds_text(self) -> str:
        """"thresholds: A, B; not checked: C, D" — what this verdict was measured against."""
        rows = self.threshold_status()
        checked = [r.phrase for r in rows if r.checked]
        off = [r.label if r.why_not == "off" else f"{r.label} ({r.why_not})" for r in rows if not r.checked]
        text = "thresholds: " + (", ".join(checked) or "none")
        return text + (f"; not checked: {', '.join(off)}" if off else "")

    def verdict(self) -> str:
        """``PASSED (thresholds: …; not checked: …)`` or ``FAILED (…)``."""
        return f"{'PASSED' if self.passed else 'FAILED'} ({self.thresholds_text()})"

    def quality_text(self) -> str:
        """The absolute quality measured, which the verdict does not judge unless a min threshold is set."""
        p, s = self.stats.get("psnr"), self.stats.get("ms_ssim")
        if p is None or not p.n:
            why = "no sampled row's source was reachable unchanged" if self.sampled else "no rows were sampled"
            return f"quality not measured: {why}"
        text = f"mean PSNR {p.mean:.2f} dB (min {p.min:.2f})"
        if s is not None and s.n:
            text += f", MS-SSIM {s.mean:.3f}"
        lp = self.stats.get("lpips")
        if lp is not None and lp.n:
            text += f", LPIPS {lp.mean:.3f}"
        return text + (f" over {self.compared} images compared with their sources, at their original size "
                       "(absolute values; PASSED/FAILED is about the thresholds only)")

    def record(self) -> dict[str, Any]:
        """The JSON-able summary (also the audit-history row)."""
        return {
            "archive": self.archive, "started_at": self.started_at, "seed": self.seed, "passed": self.passed,
            "problems": list(self.problems), "notes": list(self.notes), "sampled": self.sampled, "compared": self.compared,
            "shards_checked": self.shards_checked, "orphans": list(self.orphans), "seconds": self.seconds,
            "verdict": self.verdict(), "quality": self.quality_text(),
            "unverified_sources": [dict(u) for u in self.unverified_sources],
            "thresholds": self.thresholds.model_dump(),
            "metrics": {k: v.summary() for k, v in self.stats.items()},
            "sample_summary": self.summary.to_dict(), "sample_summary_lines": self.summary.lines(),
        }


@dataclass(frozen=True)
class AuditReport(AuditFindings):
    """What :func:`run_audit` found (frozen): ``problems`` (empty: ``passed``), ``notes``, counts,
    ``unverified_sources``, the metric ``stats`` and the ``worst`` few images."""

    archive: str
    started_at: str
    seed: int
    sample_size: int
    thresholds: Thresholds
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    sampled: int = 0
    compared: int = 0
    shards_checked: int = 0
    orphans: tuple[str, ...] = ()
    unverified_sources: tuple[dict[str, str], ...] = ()
    lpips_measured: bool = False
    stats: Mapping[str, Stats] = field(default_factory=dict)
    worst: tuple[tuple[float, dict], ...] = ()
    seconds: float = 0.0
    summary: QualitySummary = field(default_factory=QualitySummary)


@dataclass
class AuditResult(AuditFindings):
    """The findings of an audit while it runs (mutable; the fields of :class:`AuditReport`).
    :meth:`report` freezes them. Also how tests and tools build findings by hand."""

    archive: str
    started_at: str
    seed: int
    sample_size: int
    thresholds: Thresholds
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sampled: int = 0
    compared: int = 0
    shards_checked: int = 0
    orphans: list[str] = field(default_factory=list)
    unverified_sources: list[dict[str, str]] = field(default_factory=list)
    lpips_measured: bool = False
    stats: dict[str, Stats] = field(default_factory=dict)
    worst: list[tuple[float, dict]] = field(default_factory=list)
    seconds: float = 0.0
    summary: QualitySummary = field(default_factory=QualitySummary)

    def report(self) -> AuditReport:
        """These findings, frozen."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(AuditReport)}
        for name in ("problems", "notes", "orphans", "unverified_sources", "worst"):
            values[name] = tuple(values[name])
        values["stats"] = dict(self.stats)
        return AuditReport(**values)


def nightly_seed(when: dt.date | None = None) -> int:
    """A different sample every night, the same one for reruns on the same day: YYYYMMDD."""
    when = when or dt.datetime.now(dt.timezone.utc).date()
    return when.year * 10000 + when.month * 100 + when.day


def _allocate(rows: list[int], total: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Stratified sample: per shard a share proportional to its rows (largest remainder)."""
    n = sum(rows)
    total = min(total, n)
    if n == 0 or total == 0:
        return [np.empty(0, dtype=np.int64) for _ in rows]
    exact = np.array(rows, dtype=np.float64) * total / n
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: total - take.sum()]:
        take[i] += 1
    return [np.sort(rng.choice(r, size=k, replace=False)) if k else np.empty(0, dtype=np.int64)
            for r, k in zip(rows, take)]


def run_audit(archive: str, *, sample_size: int = 32, seed: int | None = None, network: str | None = None,
              encoder: str | None = None, device: str = "auto", thresholds: Thresholds | None = None,
              storage_options: dict | None = None, source_storage_options: dict | None = None,
              batch_size: int = 16, worst: int = 8, lpips: bool = True, progress: bool = False,
              source_roots: list[str] | None = None, allow_http_sources: bool = False) -> AuditReport:
    """Audit the archive at ``archive`` (see the module docstring). Never raises for what it
    finds: every finding is a line in ``problems``; ``passed`` is True when there is none.
    ``progress`` shows tqdm bars (shards verified, rows sampled) on stderr. Sources are read only
    under ``source_roots`` when given, else under each row's recorded root; http(s) sources only
    with ``allow_http_sources``.

    The steps, in order: open the archive and its models (:func:`_open`), check the manifest and
    the history (:func:`_check_records`) and every shard (:func:`_check_shards`), draw the sample
    (:func:`_sample`), then per shard and batch decode, synthesize and compare with the sources
    (:class:`_SampleCheck`); each row's verdict is :func:`quality_problems`."""
    dev = resolve_device(device)  # a device this machine lacks is the caller's mistake, not an archive problem
    started = dt.datetime.now(dt.timezone.utc)
    seed = nightly_seed() if seed is None else seed
    found = AuditResult(archive, started.isoformat(timespec="seconds"), seed, sample_size,
                        thresholds if thresholds is not None else Thresholds.model_validate({}))
    found.stats = {name: Stats(lo, hi) for name, (lo, hi) in STATS_RANGES.items()}
    store, session, incompatible = _open(archive, storage_options=storage_options, network=network, encoder=encoder,
                                         device=dev)
    _check_records(store, found, storage_options)
    good_shards = _check_shards(store, found, progress)
    found.problems += incompatible
    if session is not None and session.models is not None and not incompatible:
        check = _SampleCheck(session.models, session.codec, found, WorstN(worst),
                             _perceptual(lpips, session.models.device, found),
                             SourcePolicy(tuple(job_roots(source_roots, source_storage_options)), allow_http_sources,
                                          recorded_max_pixels(store.settings)),
                             source_storage_options)
        picks = _sample([r.rows for r in good_shards], sample_size, seed)
        check.run(store, good_shards, picks, batch_size, progress)
        found.worst = check.worst.items()
    # else: it cannot synthesize faithfully, so determinism and quality are not measured
    found.seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    return found.report()


# -- the steps --------------------------------------------------------------------------------
def _open(archive: str, *, storage_options: dict | None, network: str | None, encoder: str | None,
          device: torch.device) -> tuple[ArchiveStore, ArchiveSession | None, list[str]]:
    """Open the archive with its models, once: ``(store, session, compatibility problems)``.

    Through :meth:`ArchiveSession.open` with ``check=False``: fingerprints that differ are
    problems, not errors. When a model does not load the session is None, the store is opened on
    its own (integrity is still checked) and the problems say which model failed and why. An
    archive that cannot be opened at all raises, as the caller's mistake."""
    try:
        session = ArchiveSession.open(archive, storage_options=storage_options, network=network, encoder=encoder,
                                      device=device, check=False)
    except Sg3ArchiveError as exc:
        failure = exc
    else:
        return session.store, session, [f"compatibility: {m}" for m in session.mismatches]
    store = ArchiveStore.open(archive, storage_options=storage_options)
    return store, None, _load_problems(store, failure, storage_options, network, encoder, device)


def _load_problems(store: ArchiveStore, failure: Sg3ArchiveError, storage_options: dict | None,
                   network: str | None, encoder: str | None, device: torch.device) -> list[str]:
    """Why the session did not open, per model: the generator/encoder (loaded first) and the
    archive's codec; models that do load are still compared with the archive's fingerprints."""
    try:
        cache.codec(store.codec_url, storage_options)
    except Sg3ArchiveError as exc:
        codec_failure: Sg3ArchiveError = exc
    else:  # the codec loads, so the models did not
        return [f"compatibility: the generator/encoder do not load: {failure}"]
    problems, models = [], None
    try:
        models = cache.models(network, encoder, device)
    except Sg3ArchiveError as exc:
        problems.append(f"compatibility: the generator/encoder do not load: {exc}")
    problems.append(f"compatibility: the archive's codec model does not load: {codec_failure}")
    if models is not None:
        problems += [f"compatibility: {m}" for m in fingerprint_mismatches(store.settings, models, None)]
    return problems


def _check_records(store: ArchiveStore, found: AuditResult, storage_options: dict | None) -> None:
    """The manifest and the audit history: damage that readers would skip, or not notice."""
    from sg3archive.audit.history import load_history  # history imports this module

    store.manifest()
    found.problems += [f"integrity: {m}" for m in store.damage]
    found.notes += [f"manifest: {m}" for m in store.pending]
    found.problems += [f"integrity: {m}" for m in load_history(found.archive, storage_options).problems]


def _check_shards(store: ArchiveStore, found: AuditResult, progress: bool) -> list[ShardRecord]:
    """Verify every committed shard (images and failures) and list the orphans; returns the image
    shards found intact, the ones the sample is drawn from."""
    good = []
    records = store.shards("images") + store.shards("failures")
    for record in tqdm(records, desc="audit: shards", unit="shard", file=sys.stderr, disable=not progress):
        problems = store.verify_shard(record)
        found.shards_checked += 1
        found.problems += [f"integrity: shard {record.name}: {shard_problem(record.name, p)}" for p in problems]
        if not problems and record.kind == "images":
            good.append(record)
    found.orphans = store.orphans()
    return good


def _sample(rows: list[int], sample_size: int, seed: int) -> list[np.ndarray]:
    """The seeded sample: per shard (``rows`` each), the sorted row indices to check."""
    return _allocate(rows, sample_size, np.random.default_rng(seed))


def _perceptual(lpips: bool, device: torch.device, found: AuditResult) -> Any:
    """The LPIPS metric on ``device``, or None with a note saying why it is not measured."""
    perceptual = None
    if lpips:
        from sg3archive.metrics import LPIPS
        from sg3archive.metrics.quality import LpipsUnavailableError

        try:
            perceptual = LPIPS("alex", device=device)
        except LpipsUnavailableError as exc:
            found.notes.append(lpips_note(str(exc), found.thresholds.max_lpips is not None))
    else:
        found.notes.append("LPIPS not measured: switched off (lpips: false in the audit job)")
    found.lpips_measured = perceptual is not None
    return perceptual


@dataclass
class _SampleCheck:
    """Integrity, determinism, the contract and quality on the sample, shard by shard and batch by
    batch. Latent rows: payload integrity, decoding, synthesis, the thumbnail against encode time;
    classical and original rows: their image's checksum, sizes and decoding (never the codec), the
    thumbnail of the image restore writes. Then every row's contract and, where its source can be
    read, its restored image against the source at the original size."""

    models: Models
    codec: LatentCodec
    found: AuditResult
    worst: WorstN
    perceptual: Any
    policy: SourcePolicy
    source_storage_options: dict | None
    lpips_noted: bool = False

    def run(self, store: ArchiveStore, shards: list[ShardRecord], picks: list[np.ndarray], batch_size: int,
            progress: bool) -> None:
        with tqdm(total=sum(len(i) for i in picks), desc="audit: rows", unit="img", file=sys.stderr,
                  disable=not progress) as bar:
            for record, idx in zip(shards, picks):
                if not len(idx):
                    continue
                rows = sampled_rows(store, record.name, idx)
                for start in range(0, len(rows), batch_size):
                    batch = rows[start : start + batch_size]
                    self.batch(batch, record.name)
                    bar.update(len(batch))

    def batch(self, rows: list[dict], shard: str) -> None:
        """Check one batch of sampled rows of ``shard``."""
        latent = []
        for row in rows:
            self.found.sampled += 1
            self.found.summary = self.found.summary.added(row)
            if not self._payload_intact(row, shard):
                continue
            self._recorded_contract(row)
            if fmt.row_representation(row) == "latent":
                latent.append(row)
            else:
                self._image_row(row, shard)
        rows, ws = self._decode(latent, shard)
        if ws is None:
            return
        generator = cast(Generator, self.models.G)
        with torch.no_grad():
            recon = generator.synthesis(ws.to(self.models.device)).clamp(-1, 1)
        for row, img in zip(rows, recon):
            self._determinism(row, thumbnail(img.cpu()))
            self._compare(row, img)

    # -- integrity ----------------------------------------------------------------------------
    def _payload_intact(self, row: dict, shard: str) -> bool:
        """The payload matches its recorded sha256, and the recorded part sizes are the parts'."""
        if row["payload"] is None:
            self.found.problems.append(f"integrity: row {row['id']} ({row['source_uri']}) in {shard}: its payload "
                                       "could not be read")
            return False
        got = sha256_hex(row["payload"])
        if got != row["payload_sha256"]:
            self.found.problems.append(f"integrity: row {row['id']} ({row['source_uri']}) in {shard}: "
                                       f"payload sha256 mismatch: expected {row['payload_sha256']} found {got}")
            return False
        problems = []
        for column, part in (("latent_bytes", row["payload"]), ("image_bytes", row.get("image_data"))):
            recorded, size = row.get(column), len(part) if part is not None else 0
            if recorded is not None and recorded != size:
                problems.append(f"integrity: row {row['id']} ({row['source_uri']}) in {shard}: {column} mismatch: "
                                f"expected {recorded} found {size}")
        self.found.problems += problems
        return not problems

    def _image_row(self, row: dict, shard: str) -> None:
        """A classical or original row: its image's checksum (an original's is the source's), its
        decoding, the thumbnail of what restore writes, then the comparison with the source."""
        where = f"row {row['id']} ({row['source_uri']}) in {shard}"
        kind, data = fmt.row_representation(row), row.get("image_data")
        if data is None:
            self.found.problems.append(f"integrity: {where}: a {kind} row without image_data")
            return
        got = sha256_hex(data)
        if got != row.get("image_sha256"):
            self.found.problems.append(f"integrity: {where}: image sha256 mismatch: expected {row.get('image_sha256')} "
                                       f"found {got}")
            return
        if kind == "original" and got != row["source_sha256"]:
            self.found.problems.append(f"integrity: {where}: an original row whose image is not its source "
                                       f"(image sha256 {got}, source sha256 {row['source_sha256']})")
            return
        try:
            restored = as_written(decode_rgb(data, max_pixels=self.policy.max_pixels), row["mode"])
        except ImageRejected as exc:
            self.found.problems.append(f"integrity: {where}: its {row.get('image_codec') or kind} image does not "
                                       f"decode ({one_line(exc)})")
            return
        if restored.shape[:2] != (row["height"], row["width"]):
            self.found.problems.append(f"integrity: {where}: its image decodes as {restored.shape[1]}×"
                                       f"{restored.shape[0]}, not the recorded {row['width']}×{row['height']}")
            return
        self._determinism(row, restored_thumb(restored))
        self._compare(row, None, restored)

    def _decode(self, rows: list[dict], shard: str) -> tuple[list[dict], torch.Tensor | None]:
        """``(rows whose payload decodes, their W+ codes)``; a payload that does not decode is a
        problem (found one by one when the batch fails)."""
        if not rows:
            return rows, None
        try:
            return rows, self.codec.decompress([r["payload"] for r in rows])
        except CodecError:
            pass
        good = []
        for r in rows:
            try:
                self.codec.decompress([r["payload"]])
                good.append(r)
            except CodecError as exc:
                self.found.problems.append(f"integrity: row {r['id']} in {shard}: payload does not decode ({exc})")
        if not good:
            return good, None
        return good, self.codec.decompress([r["payload"] for r in good])

    # -- determinism --------------------------------------------------------------------------
    def _determinism(self, row: dict, thumb: np.ndarray) -> None:
        """The restored image's thumbnail against the one recorded at encode time."""
        tolerance = self.found.thresholds.thumb_tolerance
        recorded = np.frombuffer(row["recon_thumb"], np.uint8).reshape(8, 8, 3)
        diff = int(np.abs(thumb.astype(np.int16) - recorded).max())
        self.found.stats["thumb_diff"].add(float(diff))
        if diff > tolerance:
            self.found.problems.append(f"determinism: row {row['id']} ({row['source_uri']}) reconstructs differently "
                                       f"from encode time (thumbnail differs by {diff} levels > {tolerance})")

    # -- the contract -------------------------------------------------------------------------
    def _contract(self, row: dict) -> QualityContract | None:
        text = row.get("contract")
        if not text:
            return None
        try:
            return QualityContract.from_json(text)
        except ValueError as exc:
            self.found.problems.append(f"contract: row {row['id']} ({row['source_uri']}): its recorded contract "
                                       f"does not read ({one_line(exc)})")
            return None

    def _recorded_contract(self, row: dict) -> None:
        """The fidelity recorded at encode time against the recorded contract (whatever
        ``contract_met`` says)."""
        contract = self._contract(row)
        if contract is None:
            return
        where = f"row {row['id']} ({row['source_uri']})"
        p, s, lp = row.get("fidelity_psnr"), row.get("fidelity_ms_ssim"), row.get("fidelity_lpips")
        if p is None or s is None:
            self.found.problems.append(f"contract: {where}: records the contract {contract.text()} but no fidelity "
                                       "at the original size")
            return
        missed = contract.shortfalls(p, s, lp)
        if missed:
            self.found.problems.append(f"contract: {where}: as recorded at encode time, restored at "
                                       f"{row['width']}×{row['height']} misses its contract {contract.text()}: "
                                       f"{', '.join(missed)}")

    def _measured_contract(self, row: dict, fidelity: Fidelity) -> None:
        """The fidelity measured now against the recorded contract; an LPIPS ceiling the audit
        cannot measure (no LPIPS) is a note, not a failure."""
        contract = self._contract(row)
        if contract is None:
            return
        missed = contract.shortfalls(fidelity.psnr, fidelity.ms_ssim, fidelity.lpips)
        if fidelity.lpips is None and contract.needs_lpips:
            missed = [m for m in missed if not m.startswith("LPIPS")]
            if not self.lpips_noted:
                self.lpips_noted = True
                self.found.notes.append(f"contract: the LPIPS ceiling of {contract.text()} was not re-measured "
                                        "(LPIPS not measured by this audit); the recorded LPIPS was checked")
        if missed:
            self.found.problems.append(f"contract: row {row['id']} ({row['source_uri']}): restored at "
                                       f"{row['width']}×{row['height']} misses its contract {contract.text()}: "
                                       f"{', '.join(missed)}")

    # -- quality ------------------------------------------------------------------------------
    def _compare(self, row: dict, img: torch.Tensor | None, restored: np.ndarray | None = None) -> None:
        """The restored image against its source at the original size, where the source may be
        read and is unchanged (else it is listed in ``unverified_sources``): the metrics, the worst
        images, the contract, the verdict. ``img``: a latent row's synthesized square (restored
        from it as restore does, and compared at the square for rows before format 4);
        ``restored``: a classical or original row's image as restore writes it."""
        found = self.found
        latent = img is not None
        pixels, unverified = read_source(row, self.source_storage_options, self.policy, square=latent)
        if pixels is None:
            if unverified is not None:
                found.unverified_sources.append(unverified)
            return
        found.compared += 1
        original = pixels.original
        if img is not None:
            restored = latent_restored(to_uint8(img[None])[0], FitInfo.from_json(row["fit"]), row["mode"])
        assert restored is not None
        fidelity = measure_fidelity(original, restored, self.perceptual, device=self.models.device)
        p, s, lp = fidelity.psnr, fidelity.ms_ssim, fidelity.lpips
        found.stats["psnr"].add(p)
        found.stats["ms_ssim"].add(s)
        if lp is not None:
            found.stats["lpips"].add(lp)
        recorded = row.get("fidelity_psnr")
        if recorded is not None:  # format 4: at the original size, as measured now
            encoded: float | None = recorded
            drop = _drop(recorded, p)
        else:  # older rows recorded the square's PSNR: the drop is a diagnostic at the square
            encoded = row.get("psnr")
            square_psnr = math.nan
            if img is not None and pixels.square is not None:
                square_psnr = float(psnr(img[None], pixels.square.to(img.device)[None])[0])
            drop = (encoded - square_psnr) if encoded is not None and math.isfinite(square_psnr) else math.nan
        found.stats["psnr_drop"].add(drop)
        self.worst.add(p, {"id": row["id"], "source_uri": row["source_uri"], "psnr": p, "ms_ssim": s,
                           "size": f"{original.shape[1]}×{original.shape[0]}",
                           "representation": fmt.row_representation(row), **display_images(original, restored)})
        where = f"row {row['id']} ({row['source_uri']})"
        self._measured_contract(row, fidelity)
        found.problems += quality_problems(where, found.thresholds, psnr=p, ms_ssim=s, lpips=lp, drop=drop,
                                           encoded_psnr=encoded)


def _drop(recorded: float, measured: float) -> float:
    """How far ``measured`` PSNR is below ``recorded`` (either may be +inf: identical)."""
    if math.isinf(recorded) and math.isinf(measured):
        return 0.0
    return recorded - measured


DISPLAY_SIDE = 256  # the longest side of the worst images kept for the report


def display_images(original: np.ndarray, restored: np.ndarray) -> dict[str, np.ndarray]:
    """The report's side-by-side of one image at the original size: ``original``, ``restored`` and
    ``diff`` (|difference| ×4, computed at the original size), each shrunk to at most
    :data:`DISPLAY_SIDE` px a side, so the worst few images kept stay small whatever their size."""
    diff = np.abs(original.astype(np.int16) - restored.astype(np.int16))
    diff = np.clip(diff * 4, 0, 255).astype(np.uint8)
    height, width = original.shape[:2]
    scale = DISPLAY_SIDE / max(height, width)
    if scale >= 1:
        return {"original": original.copy(), "restored": restored.copy(), "diff": diff}
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def shrink(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.BOX))

    return {"original": shrink(original), "restored": shrink(restored), "diff": shrink(diff)}


def sampled_rows(store: ArchiveStore, shard: str, idx: np.ndarray) -> list[dict]:
    """The rows at positions ``idx`` of ``shard``, with :data:`COLUMNS`. Memory: the small columns
    of the shard, then the payload and image_data of the sampled rows only (streamed, filtered by
    id; rows sharing an id are told apart by their order)."""
    small = [c for c in COLUMNS if c not in PART_COLUMNS]
    table = store.read_table("images", columns=small, shard_names=[shard])
    ids = table.column("id").to_pylist()
    rows = [dict(r, payload=None, image_data=None) for r in table.take(idx).to_pylist()]
    del table
    rank: dict[str, int] = {}
    wanted: dict[tuple[str, int], int] = {}  # (id, occurrence in the shard) -> index into rows
    order = {int(i): n for n, i in enumerate(idx)}
    for position, rid in enumerate(ids):
        occurrence = rank.get(rid, 0)
        rank[rid] = occurrence + 1
        if position in order:
            wanted[(rid, occurrence)] = order[position]
    seen: dict[str, int] = {}
    names = sorted({r["id"] for r in rows})
    for batch in store.iter_batches("images", columns=["id", *PART_COLUMNS], shard_names=[shard],
                                    filter=pc.field("id").isin(names), batch_size=16):
        for part in batch.to_pylist():
            occurrence = seen.get(part["id"], 0)
            seen[part["id"]] = occurrence + 1
            at = wanted.get((part["id"], occurrence))
            if at is not None:
                rows[at].update(payload=part["payload"], image_data=part["image_data"])
    return rows


def quality_problems(where: str, th: Thresholds, *, psnr: float, ms_ssim: float, lpips: float | None, drop: float,
                     encoded_psnr: float | None) -> list[str]:
    """The verdict on one compared row (figures at the original size; ``drop`` against the
    encode-time PSNR): a ``quality`` problem per threshold it misses."""
    out = []
    if th.max_psnr_drop is not None and drop > th.max_psnr_drop:
        if math.isinf(drop):
            out.append(f"quality: {where}: PSNR {psnr:.2f} dB, but it was restored identically at encode time "
                       f"(allowed drop {th.max_psnr_drop} dB)")
        else:
            out.append(f"quality: {where}: PSNR {psnr:.2f} dB is {drop:.2f} dB below encode time "
                       f"({encoded_psnr:.2f} dB; allowed drop {th.max_psnr_drop} dB)")
    if th.min_psnr is not None and psnr < th.min_psnr:
        out.append(f"quality: {where}: PSNR {psnr:.2f} dB below the threshold {th.min_psnr} dB")
    if th.min_ms_ssim is not None and ms_ssim < th.min_ms_ssim:
        out.append(f"quality: {where}: MS-SSIM {ms_ssim:.3f} below the threshold {th.min_ms_ssim}")
    if th.max_lpips is not None and lpips is not None and lpips > th.max_lpips:
        out.append(f"quality: {where}: LPIPS {lpips:.3f} above the threshold {th.max_lpips}")
    return out


# ArchiveStore.verify_shard's findings, each "<shard>: <what>", reworded as "<what> mismatch: expected … found …"
_SHARD_FINDINGS = [
    (re.compile(r"sha256 (\w+), record says (\w+)"), "sha256 mismatch: expected {1} found {0}"),
    (re.compile(r"(\d+) rows, record says (\d+)"), "row count mismatch: expected {1} found {0}"),
    (re.compile(r"(\d+) bytes, record says (\d+)"), "size mismatch: expected {1} bytes found {0}"),
    (re.compile(r"its metadata says kind (.+), record says (.+)"), "kind mismatch: expected {1} found {0}"),
]


def shard_problem(name: str, finding: str) -> str:
    """One finding of :meth:`ArchiveStore.verify_shard` without the shard name it starts with (the
    audit's message names the shard once), mismatches as ``… mismatch: expected X found Y``."""
    what = finding[len(name) + 2:] if finding.startswith(f"{name}: ") else finding
    missing = re.fullmatch(r"missing \((.+)\)", what)
    if missing:
        return f"file missing (looked for it in {posixpath.dirname(missing[1]) or '.'}/)"
    for pattern, text in _SHARD_FINDINGS:
        m = pattern.fullmatch(what)
        if m:
            return text.format(*m.groups())
    return what


def lpips_note(message: str, threshold_set: bool) -> str:
    """The note for an audit without LPIPS: the whole reason and remedy from
    :class:`LpipsUnavailableError` (what was tried, how to provision the weights)."""
    from sg3archive.metrics.quality import LPIPS_WEIGHTS_ENV, PROVISION_COMMAND

    head = "LPIPS not measured" + (" (so max LPIPS is not checked)" if threshold_set else "") + ": "
    if PROVISION_COMMAND not in message:
        message += (f"\nTo measure LPIPS, run `{PROVISION_COMMAND} --fetch` or set ${LPIPS_WEIGHTS_ENV} "
                    "to a folder holding the backbone weights.")
    return head + message
