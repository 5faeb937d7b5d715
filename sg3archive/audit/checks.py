"""The audit: proves that what an archive holds can still be restored at the promised quality.

Four checks, each turning what it finds into precise problem messages:

* integrity — every manifest-listed shard exists with its recorded sha256 and row count; every
  sampled payload matches its sha256 and its own CRC; uncommitted (orphaned) shards are listed;
* compatibility — the generator, encoder and codec model load and their fingerprints are the
  ones the archive records;
* determinism — a seeded sample of rows, stratified over shards, is decoded and synthesized; the
  reconstruction's 8×8 thumbnail must equal the one recorded at encode time within a tolerance
  (catches a changed library, weight file or device drift);
* quality — where a source is still reachable with its recorded sha256, PSNR and MS-SSIM of the
  reconstruction against it (and LPIPS when its weights are provisioned; otherwise a note says
  so), compared with the encode-time values and the job's thresholds.

Memory is constant in the sample size: rows are read shard by shard and processed in batches,
and only fixed-size accumulators and the worst few images are kept.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sg3archive.audit.accumulators import Stats, WorstN
from sg3archive.codec.errors import CodecError
from sg3archive.errors import Sg3ArchiveError
from sg3archive.metrics import ms_ssim, psnr
from sg3archive.pipeline.compress import recon_thumbnail
from sg3archive.pipeline.models import fingerprint_mismatches, load_codec, load_models
from sg3archive.pixels import to_uint8
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.inputs import FitInfo, decode_image, fit_to_square, read_bytes, sha256_hex, to_tensor

COLUMNS = ["id", "source_uri", "source_sha256", "payload", "payload_sha256", "fit", "psnr", "ms_ssim", "recon_thumb"]


@dataclass(frozen=True)
class Thresholds:
    """When an audit fails. ``None`` switches a check off."""

    min_psnr: float | None = None  # dB, reconstruction vs reachable source
    max_psnr_drop: float | None = 0.5  # dB below the encode-time PSNR
    min_ms_ssim: float | None = None
    max_lpips: float | None = None  # only checked when the LPIPS weights are provisioned
    thumb_tolerance: int = 2  # max |difference| of the 8×8 thumbnail, in 0..255 levels


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
    stats: dict[str, Stats] = field(default_factory=dict)
    worst: list[tuple[float, dict]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems

    def record(self) -> dict[str, Any]:
        """The JSON-able summary (also the audit-history row)."""
        return {
            "archive": self.archive, "started_at": self.started_at, "seed": self.seed, "passed": self.passed,
            "problems": list(self.problems), "notes": list(self.notes), "sampled": self.sampled, "compared": self.compared,
            "shards_checked": self.shards_checked, "orphans": list(self.orphans), "seconds": self.seconds,
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
              batch_size: int = 16, worst: int = 8, lpips: bool = True) -> AuditResult:
    """Audit the archive at ``archive`` (see the module docstring). Never raises for what it
    finds: every finding is a line in ``problems``; ``passed`` is True when there is none."""
    started = dt.datetime.now(dt.timezone.utc)
    seed = nightly_seed() if seed is None else seed
    res = AuditResult(archive, started.isoformat(timespec="seconds"), seed, sample_size, thresholds or Thresholds())
    res.stats = {"psnr": Stats(0.0, 60.0), "ms_ssim": Stats(0.0, 1.0), "psnr_drop": Stats(-5.0, 5.0),
                 "thumb_diff": Stats(0.0, 32.0), "lpips": Stats(0.0, 1.0)}
    store = ArchiveStore.open(archive, storage_options=storage_options)
    settings = store.settings

    # Integrity of every committed shard, and orphans.
    good_shards = []
    for record in store.shards("images") + store.shards("failures"):
        found = store.verify_shard(record)
        res.shards_checked += 1
        res.problems += [f"integrity: shard {record.name}: {p}" for p in found]
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
            res.notes.append("LPIPS not measured: " + str(exc).splitlines()[0])
    rng = np.random.default_rng(seed)
    picks = _allocate([r.rows for r in good_shards], sample_size, rng)
    worst_n = WorstN(worst)
    for record, idx in zip(good_shards, picks):
        if not len(idx):
            continue
        table = store.read_table("images", columns=COLUMNS, shard_names=[record.name]).take(idx)
        rows = table.to_pylist()
        del table
        for start in range(0, len(rows), batch_size):
            _audit_batch(rows[start : start + batch_size], record.name, models, codec, res, worst_n,
                         source_storage_options, perceptual)
    res.worst = worst_n.items()
    res.seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    return res


def _audit_batch(rows: list[dict], shard: str, models, codec, res: AuditResult, worst: WorstN,
                 source_storage_options: dict | None, perceptual=None) -> None:
    th = res.thresholds
    ok = []
    for row in rows:
        res.sampled += 1
        if sha256_hex(row["payload"]) != row["payload_sha256"]:
            res.problems.append(f"integrity: row {row['id']} ({row['source_uri']}) in {shard}: payload sha256 mismatch")
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
        source = _reachable_source(row, models.resolution, source_storage_options)
        if source is None:
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


def _reachable_source(row: dict, resolution: int, storage_options: dict | None) -> torch.Tensor | None:
    """The fitted source image when it can still be read and its sha256 is the recorded one."""
    try:
        data = read_bytes(row["source_uri"], storage_options)
    except (OSError, Sg3ArchiveError, ValueError):
        return None
    if sha256_hex(data) != row["source_sha256"]:
        return None
    try:
        img = decode_image(data)
        square, _ = fit_to_square(img.rgb, resolution, FitInfo.from_json(row["fit"]).mode)
    except (Sg3ArchiveError, ValueError, OSError):
        return None
    return to_tensor(square)
