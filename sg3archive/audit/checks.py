"""The audit: proves that what an archive holds can still be restored at the promised quality.

Four checks, each turning what it finds into precise problem messages:

* integrity — the newest manifest generation is readable (a damaged one that readers skip is a
  problem); every manifest-listed shard is a regular file of the archive with its recorded sha256
  and row count and a plausible Parquet footer; every sampled payload matches its sha256 and its
  own CRC; every audit history record matches its checksum; uncommitted (orphaned) shards are
  listed;
* compatibility — the generator, encoder and codec model load and their fingerprints are the
  ones the archive records (the archive and its models are opened once, through
  :class:`~sg3archive.pipeline.session.ArchiveSession`; a mismatch is a problem, not an error);
* determinism — a seeded sample of rows, stratified over shards, is decoded and synthesized; the
  reconstruction's 8×8 thumbnail must equal the one recorded at encode time within a tolerance
  (catches a changed library, weight file or device drift);
* quality — where a source is still reachable with its recorded sha256 (fitted to the generator's
  square by :func:`sg3archive.images.load_fitted`, as compress did), PSNR and MS-SSIM of the
  reconstruction against it (and LPIPS when its weights are provisioned; otherwise a note says
  so and how to provision them), compared with the encode-time values and the job's thresholds.

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

Memory is constant in the sample size: rows are read shard by shard and processed in batches,
and only fixed-size accumulators and the worst few images are kept.
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
import torch
from tqdm import tqdm

from sg3archive.audit.accumulators import Stats, WorstN
from sg3archive.audit.sources import SourcePolicy, job_roots, reachable_source, recorded_max_pixels
from sg3archive.audit.thresholds import QUALITY_THRESHOLDS, THRESHOLD_TEXT, Thresholds
from sg3archive.codec import LatentCodec
from sg3archive.codec.errors import CodecError
from sg3archive.devices import resolve_device
from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import sha256_hex, thumbnail, to_uint8
from sg3archive.metrics import ms_ssim, psnr
from sg3archive.networks.generator import Generator
from sg3archive.pipeline.session import ArchiveSession, Models, cache, fingerprint_mismatches
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.manifest import ShardRecord

COLUMNS = ["id", "source_uri", "source_sha256", "payload", "payload_sha256", "fit", "psnr", "ms_ssim", "recon_thumb",
           "source_root", "source_uri_bytes"]
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
        return text + (f" over {self.compared} images compared with their sources "
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
    """Determinism and quality on the sample, shard by shard and batch by batch: payload
    integrity, decoding, synthesis, the thumbnail against encode time, the source comparison."""

    models: Models
    codec: LatentCodec
    found: AuditResult
    worst: WorstN
    perceptual: Any
    policy: SourcePolicy
    source_storage_options: dict | None

    def run(self, store: ArchiveStore, shards: list[ShardRecord], picks: list[np.ndarray], batch_size: int,
            progress: bool) -> None:
        with tqdm(total=sum(len(i) for i in picks), desc="audit: rows", unit="img", file=sys.stderr,
                  disable=not progress) as bar:
            for record, idx in zip(shards, picks):
                if not len(idx):
                    continue
                rows = store.read_table("images", columns=COLUMNS, shard_names=[record.name]).take(idx).to_pylist()
                for start in range(0, len(rows), batch_size):
                    batch = rows[start : start + batch_size]
                    self.batch(batch, record.name)
                    bar.update(len(batch))

    def batch(self, rows: list[dict], shard: str) -> None:
        """Check one batch of sampled rows of ``shard``."""
        rows, ws = self._decode(self._intact(rows, shard), shard)
        if ws is None:
            return
        generator = cast(Generator, self.models.G)
        with torch.no_grad():
            recon = generator.synthesis(ws.to(self.models.device)).clamp(-1, 1)
        for row, img in zip(rows, recon):
            self._determinism(row, img)
            self._compare(row, img)

    def _intact(self, rows: list[dict], shard: str) -> list[dict]:
        """The rows whose payload matches its recorded sha256 (the others are problems)."""
        ok = []
        for row in rows:
            self.found.sampled += 1
            got = sha256_hex(row["payload"])
            if got != row["payload_sha256"]:
                self.found.problems.append(f"integrity: row {row['id']} ({row['source_uri']}) in {shard}: "
                                           f"payload sha256 mismatch: expected {row['payload_sha256']} found {got}")
                continue
            ok.append(row)
        return ok

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

    def _determinism(self, row: dict, img: torch.Tensor) -> None:
        """The reconstruction's thumbnail against the one recorded at encode time."""
        tolerance = self.found.thresholds.thumb_tolerance
        recorded = np.frombuffer(row["recon_thumb"], np.uint8).reshape(8, 8, 3)
        diff = int(np.abs(thumbnail(img.cpu()).astype(np.int16) - recorded).max())
        self.found.stats["thumb_diff"].add(float(diff))
        if diff > tolerance:
            self.found.problems.append(f"determinism: row {row['id']} ({row['source_uri']}) reconstructs differently "
                                       f"from encode time (thumbnail differs by {diff} levels > {tolerance})")

    def _compare(self, row: dict, img: torch.Tensor) -> None:
        """The reconstruction against its source, where the source may be read and is unchanged
        (else it is listed in ``unverified_sources``); the metrics, the worst images, the verdict."""
        found = self.found
        source, unverified = reachable_source(row, self.source_storage_options, self.policy)
        if source is None:
            if unverified is not None:
                found.unverified_sources.append(unverified)
            return
        found.compared += 1
        x = source.to(self.models.device)[None]
        p, s = float(psnr(img[None], x)[0]), float(ms_ssim(img[None], x)[0])
        found.stats["psnr"].add(p)
        found.stats["ms_ssim"].add(s)
        drop = (row["psnr"] - p) if row["psnr"] is not None and math.isfinite(p) else float("nan")
        found.stats["psnr_drop"].add(drop)
        lp = float(self.perceptual(img[None], x)[0]) if self.perceptual is not None else None
        if lp is not None:
            found.stats["lpips"].add(lp)
        self.worst.add(p, {"id": row["id"], "source_uri": row["source_uri"], "psnr": p, "ms_ssim": s,
                           "original": to_uint8(x)[0], "restored": to_uint8(img[None])[0]})
        where = f"row {row['id']} ({row['source_uri']})"
        found.problems += quality_problems(where, found.thresholds, psnr=p, ms_ssim=s, lpips=lp, drop=drop,
                                           encoded_psnr=row["psnr"])


def quality_problems(where: str, th: Thresholds, *, psnr: float, ms_ssim: float, lpips: float | None, drop: float,
                     encoded_psnr: float | None) -> list[str]:
    """The verdict on one compared row: a ``quality`` problem per threshold it misses."""
    out = []
    if th.max_psnr_drop is not None and drop > th.max_psnr_drop:
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
