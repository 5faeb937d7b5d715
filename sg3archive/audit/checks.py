"""The audit: proves that what an archive holds can still be restored at the promised quality.

Four checks, each turning what it finds into precise problem messages:

* integrity — the newest manifest generation is readable (a damaged one that readers skip is a
  problem); every manifest-listed shard is a regular file of the archive with its recorded sha256
  and row count and a plausible Parquet footer; every sampled payload matches its sha256 and its
  own CRC; every audit history record matches its checksum; uncommitted (orphaned) shards are
  listed;
* compatibility — the generator, encoder and codec model load and their fingerprints are the
  ones the archive records;
* determinism — a seeded sample of rows, stratified over shards, is decoded and synthesized; the
  reconstruction's 8×8 thumbnail must equal the one recorded at encode time within a tolerance
  (catches a changed library, weight file or device drift);
* quality — where a source is still reachable with its recorded sha256, PSNR and MS-SSIM of the
  reconstruction against it (and LPIPS when its weights are provisioned; otherwise a note says
  so and how to provision them), compared with the encode-time values and the job's thresholds.

Sources are read only under the archive's recorded source roots, or the roots the audit job
names, and never over http(s) unless the job allows it (sg3archive.audit.sources): a source
elsewhere is not read but listed as ``refused``. A source that is gone, changed (another sha256),
unreadable or refused is not archive damage: the row is
still restored and checked for determinism, and the source is listed in ``unverified_sources``
(id, URI, reason) — visible everywhere, but it does not fail the audit. The verdict always says
against which thresholds it was reached (:meth:`AuditResult.verdict`).

Memory is constant in the sample size: rows are read shard by shard and processed in batches,
and only fixed-size accumulators and the worst few images are kept.
"""

from __future__ import annotations

import datetime as dt
import math
import posixpath
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sg3archive.audit.accumulators import Stats, WorstN
from sg3archive.audit.sources import allowed_source, job_roots
from sg3archive.codec.errors import CodecError
from sg3archive.devices import resolve_device
from sg3archive.errors import Sg3ArchiveError
from sg3archive.metrics import ms_ssim, psnr
from sg3archive.pipeline.compress import recon_thumbnail
from sg3archive.pipeline.models import fingerprint_mismatches, load_codec, load_models
from sg3archive.pixels import to_uint8
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.inputs import FitInfo, decode_image, read_bytes, refit, sha256_hex, to_tensor

COLUMNS = ["id", "source_uri", "source_sha256", "payload", "payload_sha256", "fit", "psnr", "ms_ssim", "recon_thumb",
           "source_root", "source_uri_bytes"]


@dataclass(frozen=True)
class SourcePolicy:
    """Where the audit may read sources: ``roots`` (full URLs) named by the audit job, which
    replace the archive's recorded roots when given; ``allow_http`` lets http(s) sources be read."""

    roots: tuple[str, ...] = ()
    allow_http: bool = False


@dataclass(frozen=True)
class Thresholds:
    """When an audit fails. ``None`` switches a check off."""

    min_psnr: float | None = None  # dB, reconstruction vs reachable source
    max_psnr_drop: float | None = 0.5  # dB below the encode-time PSNR
    min_ms_ssim: float | None = None
    max_lpips: float | None = None  # only checked when the LPIPS weights are provisioned
    thumb_tolerance: int = 2  # max |difference| of the 8×8 thumbnail, in 0..255 levels


# field: (its name when it is off, how it reads when set)
THRESHOLD_TEXT = {
    "max_psnr_drop": ("max PSNR drop", "PSNR drop ≤ {:g} dB vs encode time"),
    "thumb_tolerance": ("thumbnail tolerance", "thumbnail difference ≤ {:g} levels"),
    "min_psnr": ("min PSNR", "PSNR ≥ {:g} dB"),
    "min_ms_ssim": ("min MS-SSIM", "MS-SSIM ≥ {:g}"),
    "max_lpips": ("max LPIPS", "LPIPS ≤ {:g}"),
}
QUALITY_THRESHOLDS = ("max_psnr_drop", "min_psnr", "min_ms_ssim", "max_lpips")  # need a compared source
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


@dataclass
class AuditResult:
    archive: str
    started_at: str
    seed: int
    sample_size: int
    thresholds: Thresholds
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not measured, and why
    sampled: int = 0
    compared: int = 0  # rows whose source was reachable with its recorded sha256
    shards_checked: int = 0
    orphans: list[str] = field(default_factory=list)
    unverified_sources: list[dict[str, str]] = field(default_factory=list)  # {id, uri, kind, reason}
    lpips_measured: bool = False
    stats: dict[str, Stats] = field(default_factory=dict)
    worst: list[tuple[float, dict]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems

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
        text = f"mean PSNR {p.mean:.2f} dB (min {p.min:.2f}), MS-SSIM {s.mean:.3f}"
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
            "thresholds": vars(self.thresholds),
            "metrics": {k: v.summary() for k, v in self.stats.items()},
        }


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
              source_roots: list[str] | None = None, allow_http_sources: bool = False) -> AuditResult:
    """Audit the archive at ``archive`` (see the module docstring). Never raises for what it
    finds: every finding is a line in ``problems``; ``passed`` is True when there is none.
    ``progress`` shows tqdm bars (shards verified, rows sampled) on stderr. Sources are read only
    under ``source_roots`` when given, else under each row's recorded root; http(s) sources only
    with ``allow_http_sources``."""
    resolve_device(device)  # a device this machine lacks is the caller's mistake, not an archive problem
    started = dt.datetime.now(dt.timezone.utc)
    seed = nightly_seed() if seed is None else seed
    res = AuditResult(archive, started.isoformat(timespec="seconds"), seed, sample_size, thresholds or Thresholds())
    res.stats = {"psnr": Stats(0.0, 60.0), "ms_ssim": Stats(0.0, 1.0), "psnr_drop": Stats(-5.0, 5.0),
                 "thumb_diff": Stats(0.0, 32.0), "lpips": Stats(0.0, 1.0)}
    store = ArchiveStore.open(archive, storage_options=storage_options)
    settings = store.settings
    policy = SourcePolicy(tuple(job_roots(source_roots, source_storage_options)), allow_http_sources)

    # The manifest and the audit history: damage readers would skip, or not notice.
    store.manifest()
    res.problems += [f"integrity: {m}" for m in store.damage]
    res.notes += [f"manifest: {m}" for m in store.pending]
    from sg3archive.audit.history import load_history  # history imports this module

    res.problems += [f"integrity: {m}" for m in load_history(archive, storage_options).problems]

    # Integrity of every committed shard, and orphans.
    good_shards = []
    records = store.shards("images") + store.shards("failures")
    for record in tqdm(records, desc="audit: shards", unit="shard", file=sys.stderr, disable=not progress):
        found = store.verify_shard(record)
        res.shards_checked += 1
        res.problems += [f"integrity: shard {record.name}: {shard_problem(record.name, p)}" for p in found]
        if not found and record.kind == "images":
            good_shards.append(record)
    res.orphans = store.orphans()

    # Compatibility: the models load and are the archive's.
    models = codec = None
    try:
        models = load_models(network, encoder, device)
    except Sg3ArchiveError as exc:
        res.problems.append(f"compatibility: the generator/encoder do not load: {exc}")
    try:
        codec = load_codec(store.codec_url, storage_options)
    except Sg3ArchiveError as exc:
        res.problems.append(f"compatibility: the archive's codec model does not load: {exc}")
    res.problems += [f"compatibility: {m}" for m in fingerprint_mismatches(settings, models, codec)]
    if models is None or codec is None or any(p.startswith("compatibility") for p in res.problems):
        res.seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
        return res  # cannot synthesize faithfully: determinism and quality are not measured

    # Determinism and quality on a stratified, seeded sample.
    perceptual = None
    if lpips:
        from sg3archive.metrics import LPIPS
        from sg3archive.metrics.quality import LpipsUnavailableError

        try:
            perceptual = LPIPS("alex", device=models.device)
        except LpipsUnavailableError as exc:
            res.notes.append(lpips_note(str(exc), res.thresholds.max_lpips is not None))
    else:
        res.notes.append("LPIPS not measured: switched off (lpips: false in the audit job)")
    res.lpips_measured = perceptual is not None
    rng = np.random.default_rng(seed)
    picks = _allocate([r.rows for r in good_shards], sample_size, rng)
    worst_n = WorstN(worst)
    with tqdm(total=sum(len(i) for i in picks), desc="audit: rows", unit="img", file=sys.stderr,
              disable=not progress) as bar:
        for record, idx in zip(good_shards, picks):
            if not len(idx):
                continue
            table = store.read_table("images", columns=COLUMNS, shard_names=[record.name]).take(idx)
            rows = table.to_pylist()
            del table
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                _audit_batch(batch, record.name, models, codec, res, worst_n, source_storage_options, perceptual,
                             policy)
                bar.update(len(batch))
    res.worst = worst_n.items()
    res.seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    return res


def _audit_batch(rows: list[dict], shard: str, models, codec, res: AuditResult, worst: WorstN,
                 source_storage_options: dict | None, perceptual=None, policy: SourcePolicy | None = None) -> None:
    th = res.thresholds
    ok = []
    for row in rows:
        res.sampled += 1
        found = sha256_hex(row["payload"])
        if found != row["payload_sha256"]:
            res.problems.append(f"integrity: row {row['id']} ({row['source_uri']}) in {shard}: "
                                f"payload sha256 mismatch: expected {row['payload_sha256']} found {found}")
            continue
        ok.append(row)
    if not ok:
        return
    try:
        ws = codec.decompress([r["payload"] for r in ok]).to(models.device)
    except CodecError:  # find the bad payload(s) one by one
        good = []
        for r in ok:
            try:
                codec.decompress([r["payload"]])
                good.append(r)
            except CodecError as exc:
                res.problems.append(f"integrity: row {r['id']} in {shard}: payload does not decode ({exc})")
        ok = good
        if not ok:
            return
        ws = codec.decompress([r["payload"] for r in ok]).to(models.device)
    with torch.no_grad():
        recon = models.G.synthesis(ws).clamp(-1, 1)
    for row, img in zip(ok, recon):
        diff = int(np.abs(recon_thumbnail(img.cpu()).astype(np.int16) - np.frombuffer(row["recon_thumb"], np.uint8).reshape(8, 8, 3)).max())
        res.stats["thumb_diff"].add(float(diff))
        if diff > th.thumb_tolerance:
            res.problems.append(f"determinism: row {row['id']} ({row['source_uri']}) reconstructs differently from "
                                f"encode time (thumbnail differs by {diff} levels > {th.thumb_tolerance})")
        source, unverified = _reachable_source(row, models.resolution, source_storage_options, policy)
        if source is None:
            res.unverified_sources.append(unverified)
            continue
        res.compared += 1
        x = source.to(models.device)[None]
        p, s = float(psnr(img[None], x)[0]), float(ms_ssim(img[None], x)[0])
        res.stats["psnr"].add(p)
        res.stats["ms_ssim"].add(s)
        drop = (row["psnr"] - p) if row["psnr"] is not None and math.isfinite(p) else float("nan")
        res.stats["psnr_drop"].add(drop)
        lp = float(perceptual(img[None], x)[0]) if perceptual is not None else None
        if lp is not None:
            res.stats["lpips"].add(lp)
        worst.add(p, {"id": row["id"], "source_uri": row["source_uri"], "psnr": p, "ms_ssim": s,
                      "original": to_uint8(x)[0], "restored": to_uint8(img[None])[0]})
        where = f"row {row['id']} ({row['source_uri']})"
        if th.max_psnr_drop is not None and drop > th.max_psnr_drop:
            res.problems.append(f"quality: {where}: PSNR {p:.2f} dB is {drop:.2f} dB below encode time "
                                f"({row['psnr']:.2f} dB; allowed drop {th.max_psnr_drop} dB)")
        if th.min_psnr is not None and p < th.min_psnr:
            res.problems.append(f"quality: {where}: PSNR {p:.2f} dB below the threshold {th.min_psnr} dB")
        if th.min_ms_ssim is not None and s < th.min_ms_ssim:
            res.problems.append(f"quality: {where}: MS-SSIM {s:.3f} below the threshold {th.min_ms_ssim}")
        if th.max_lpips is not None and lp is not None and lp > th.max_lpips:
            res.problems.append(f"quality: {where}: LPIPS {lp:.3f} above the threshold {th.max_lpips}")


def _reachable_source(row: dict, resolution: int, storage_options: dict | None,
                      policy: SourcePolicy | None = None) -> tuple[torch.Tensor | None, dict[str, str] | None]:
    """``(fitted source, None)`` when the source may be read (:mod:`sg3archive.audit.sources`:
    under the job's ``policy.roots``, else the row's recorded ``source_root``), can still be read
    and its sha256 is the recorded one; else ``(None, {id, uri, kind, reason})`` with kind
    ``refused`` (not read: outside the roots, a scheme the audit does not read, http(s) unless
    allowed, a symlink out), ``missing``, ``changed`` or ``unreadable`` (any error reading or
    decoding it: one source's failure is recorded, the audit goes on)."""
    uri = fmt.exact_uri(row)  # a surrogateescape str for a name that is not UTF-8
    exact = row.get("source_uri_bytes") is not None
    recorded_root = fmt.unstored_text(row["source_root"]) if exact and row.get("source_root") else row.get("source_root")
    policy = policy or SourcePolicy()

    def unverified(kind: str, reason: str) -> tuple[None, dict[str, str]]:
        return None, {"id": row["id"], "uri": uri, "kind": kind, "reason": reason}

    recorded = not policy.roots
    roots = list(policy.roots) if policy.roots else [r for r in [recorded_root] if r]
    decision = allowed_source(uri, roots, policy.allow_http, recorded=recorded)
    if decision.read is None:
        return unverified("refused", decision.reason or f"source not read: {uri}")
    try:  # decision.read is exactly what allowed_source checked: a local real path, or the URI itself
        data = read_bytes(decision.read, storage_options)
    except FileNotFoundError:
        return unverified("missing", f"source missing: {uri}")
    except Exception as exc:  # noqa: BLE001 - any backend's failure (EOFError, aiohttp, ftplib…) is this source's
        return unverified("unreadable", f"source unreadable: {uri}: {_one_line(exc)}")
    found = sha256_hex(data)
    if found != row["source_sha256"]:
        return unverified("changed", f"source changed: {uri}: sha256 expected {row['source_sha256']} found {found}")
    try:
        img = decode_image(data)
        square = refit(img.rgb, FitInfo.from_json(row["fit"]))  # the square exactly as compress made it
    except Exception as exc:  # noqa: BLE001 - a decoder's failure on one source never ends the audit
        return unverified("unreadable", f"source unreadable: {uri}: {_one_line(exc)}")
    return to_tensor(square), None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
