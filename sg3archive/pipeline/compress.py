"""Compress a collection into an archive: prepare (open or create the archive, fit its codec),
plan shards, compress each shard, summarize.

One shard is one unit of work (:func:`compress_shard`), in named steps: open the archive (models,
codec, fingerprints checked), decide the skips from its own plan file, read each source, decode and
fit it, encode a batch (:func:`sg3archive.pipeline.encode.code_batch`, the path calibration uses
too), build the rows, write and commit the shard. Plan files: :mod:`sg3archive.pipeline.plans`;
calibration: :mod:`sg3archive.pipeline.calibrate`.

A task's shards are named after its plan (:func:`~sg3archive.pipeline.plans.shard_name`), so a
retried task (one that died after its commit, before it returned) finds them, commits them again
(a no-op once landed) and reports them, instead of archiving its plan a second time
(:func:`written_before`).

Usable without Prefect (:func:`compress`, what the CLI runs); the Prefect flow calls
:func:`prepare`, :func:`plan_shards` and :func:`compress_shard` as tasks.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import posixpath
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from sg3archive.codec import LatentCodec
from sg3archive.codec.names import AUTO_PROFILE
from sg3archive.codec.profiles import resolve_bits
from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import (
    IMAGE_SUFFIXES,
    FitInfo,
    ImageRejected,
    iter_sources,
    load_fitted,
    read_bytes,
    sha256_hex,
    thumbnail,
    to_uint8,
)
from sg3archive.images.classical import decode_rgb
from sg3archive.pipeline.calibrate import MAPPING_CALIBRATION, calibration_ws, fit_codec
from sg3archive.pipeline.encode import code_batch
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.pipeline.plans import (
    PLAN_SUFFIX,
    PLANS_DIR,
    PlanEntry,
    ShardPlan,
    committed_exact_keys,
    done_by_uri,
    new_run_id,
    parse_plan,
    parse_plan_entries,
    plan_shards,
    plan_text,
    read_plan,
    remove_plans,
    shard_name,
)
from sg3archive.pipeline.session import ArchiveSession, Models, cache
from sg3archive.quality.choose import Candidate, Choice, Chooser, as_written, restored_thumb
from sg3archive.quality.summary import SUMMARY_COLUMNS, QualitySummary
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore, ShardRecord, ShardRefusedError, UnsafeArchiveFileError
from sg3archive.store.format import ArchiveMismatchError
from sg3archive.store.manifest import ARCHIVE_FILE

__all__ = [
    "MAPPING_CALIBRATION", "PLANS_DIR", "PLAN_SUFFIX", "CompressReport", "LpipsWeightsMissingError",
    "NothingToArchiveError", "PlanEntry", "ShardPlan", "ShardReport", "ShardResult", "Summary", "calibration_ws",
    "check_job_paths", "committed_exact_keys", "compress", "compress_images", "compress_shard", "parse_plan", "parse_plan_entries",
    "plan_shards", "plan_text", "prepare", "recon_thumbnail", "remove_plans", "settings_key", "written_before",
]

recon_thumbnail = thumbnail  # the encode-time fingerprint of a reconstruction (home: sg3archive.images.thumbs)


# -- reports -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardReport:
    """What one shard task did: rows written (``shard``), failures recorded (``failure_shard``),
    sources skipped because an earlier run archived them (``failed_before`` of them as failures)."""

    index: int
    shard: str | None = None
    images: int = 0
    failures: int = 0
    skipped: int = 0
    failed_before: int = 0  # skipped sources that an earlier run recorded as failures
    payload_bytes: int = 0
    source_bytes: int = 0
    seconds: float = 0.0
    failure_shard: str | None = None
    quality: QualitySummary = field(default_factory=QualitySummary)  # the rows written: size, fidelity, mix


ShardResult = ShardReport  # the name of earlier versions


@dataclass(frozen=True)
class CompressReport:
    """A compress run: the sums of its :class:`ShardReport` s (:meth:`of`)."""

    archive: str
    shards: int = 0
    images: int = 0
    failures: int = 0
    skipped: int = 0
    failed_before: int = 0
    payload_bytes: int = 0
    source_bytes: int = 0
    seconds: float = 0.0
    results: tuple[ShardReport, ...] = field(default_factory=tuple)
    quality: QualitySummary = field(default_factory=QualitySummary)

    @classmethod
    def of(cls, archive: str, results: Iterable[ShardReport], seconds: float = 0.0) -> CompressReport:
        """The report of a run whose shard tasks reported ``results``."""
        results = tuple(results)
        return cls(archive, shards=sum(1 for r in results if r.shard), images=sum(r.images for r in results),
                   failures=sum(r.failures for r in results), skipped=sum(r.skipped for r in results),
                   failed_before=sum(r.failed_before for r in results),
                   payload_bytes=sum(r.payload_bytes for r in results),
                   source_bytes=sum(r.source_bytes for r in results), seconds=seconds, results=results,
                   quality=functools.reduce(QualitySummary.merged, (r.quality for r in results), QualitySummary()))

    def added(self, r: ShardReport) -> CompressReport:
        """This report with one more shard's (what ``Summary.add`` did in place before)."""
        return CompressReport.of(self.archive, (*self.results, r), self.seconds)

    @property
    def archived_any(self) -> bool:
        """Whether the archive now holds anything of the source: images written by this run or
        already there from an earlier one."""
        return self.images + self.skipped - self.failed_before > 0

    def text(self) -> str:
        """For people: one line of counts and bytes (payload bytes are all the parts the archive stores),
        then the quality summary of the rows written (:meth:`QualitySummary.lines`); figures that
        do not exist (nothing written) are left out, never ``nan``."""
        line = (f"{self.images} images archived into {self.archive} ({self.shards} shards), "
                f"{self.skipped - self.failed_before} already there, {self.failures} failed")
        if self.failed_before:
            line += f" ({self.failed_before} more failed in an earlier run and were not retried)"
        if self.images:
            line += (f"; {self.payload_bytes} payload bytes ({self.payload_bytes / self.images:.0f} B/image), "
                     f"ratio vs source {self.source_bytes / self.payload_bytes:.1f}x")
            if self.seconds:
                rate = self.images / self.seconds
                # Slow runs (refinement at full size on a CPU) read better as seconds per image.
                line += f"; {rate:.2f} images/s" if rate >= 0.1 else f"; {self.seconds / self.images:.1f} s/image"
        return "\n".join([line, *("  " + q for q in self.quality.lines())])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["results"] = [dict(r, quality=result.quality.to_dict()) for r, result in zip(d["results"], self.results)]
        d["quality"] = self.quality.to_dict()
        d["ratio"] = self.source_bytes / self.payload_bytes if self.payload_bytes else None
        d["images_per_s"] = self.images / self.seconds if self.seconds else None
        return d


Summary = CompressReport  # the name of earlier versions


# -- archive settings ----------------------------------------------------------------------------
def settings_key(settings: dict[str, Any]) -> str:
    """Short hash of what determines a row: the same source with the same key is not redone."""
    keep = {k: settings.get(k) for k in ("generator_fingerprint", "encoder_fingerprint", "codec_hash", "fit",
                                          "refine_steps", "resolution")}
    # The contract's settings (format 4) join the key only where recorded: archives made before it
    # keep their keys, so a resumed one does not redo its images.
    keep.update({k: settings[k] for k in LATER_SETTINGS if k in settings})
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _settings(job: CompressJob, models: Models, codec: LatentCodec) -> dict[str, Any]:
    return {
        "generator_fingerprint": models.G.fingerprint,
        "encoder_fingerprint": models.encoder.fingerprint,
        "codec_hash": codec.hash,
        "profile": codec.model.profile,
        "bits": [float(b) for b in codec.bits],
        "num_ws": codec.num_ws,
        "w_dim": codec.w_dim,
        "resolution": models.resolution,
        "fit": job.fit,
        "refine_steps": job.refine_steps,
        "rd_lambda": job.rd_lambda,
        "quality": job.quality.model_dump(),
        "representations": sorted(job.representations),
        "escalation_steps": job.escalation_steps,
    }


# Settings that archives made before the quality contract do not record; such an archive resumed by
# this version takes them from the job (its new rows record their contract).
CONTRACT_SETTINGS = ("quality", "representations", "escalation_steps")
# Recorded since rate–distortion refinement; in the key only where recorded (as CONTRACT_SETTINGS).
RD_SETTINGS = ("rd_lambda",)
# Every setting an older archive may lack: compared and keyed only where the archive records it.
LATER_SETTINGS = (*CONTRACT_SETTINGS, *RD_SETTINGS)


# -- prepare -------------------------------------------------------------------------------------
class NothingToArchiveError(Sg3ArchiveError):
    """The source holds no image files (or does not exist), or its files all failed."""


class LpipsWeightsMissingError(Sg3ArchiveError):
    """``lpips: true`` in a compress job, and the LPIPS weights are not provisioned."""


def check_job_paths(job: CompressJob) -> None:
    """Refuse, before a model is loaded or an archive created, a source that does not exist or
    holds no image files, and a destination that is a file."""
    fs, root = fsspec.core.url_to_fs(job.destination, **job.storage_options)
    if fs.isfile(root):
        raise Sg3ArchiveError(f"DEST {job.destination} is a file, not an archive folder; give a new folder "
                              "(or an existing archive) as DEST")
    try:
        first = next(iter(iter_sources(job.source, pattern=job.pattern,
                                       storage_options=job.source_storage_options or None)), None)
    except FileNotFoundError as exc:
        raise NothingToArchiveError(f"SRC: {exc}") from None
    except NotADirectoryError as exc:
        raise NothingToArchiveError(f"SRC {job.source}: {exc}") from None
    if first is None:
        what = f"no files matching --pattern {job.pattern!r}" if job.pattern else (
            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        raise NothingToArchiveError(f"SRC {job.source} holds {what}: nothing to archive; check the path"
                                    + ("" if job.pattern else " (or give --pattern)"))


def check_lpips_weights(job: CompressJob) -> None:
    """With ``lpips: true``, or a contract with an LPIPS ceiling, refuse a job whose LPIPS backbone
    weights are not provisioned (before any model is loaded), saying how to provision them."""
    if not job.lpips and not job.quality.needs_lpips:
        return
    from sg3archive.metrics.quality import LPIPS_WEIGHTS_ENV, PROVISION_COMMAND, LpipsUnavailableError, resolve_backbone_state

    try:
        resolve_backbone_state("alex")
    except LpipsUnavailableError:
        why = ("--max-lpips (quality: max_lpips) in the compress job" if job.quality.needs_lpips
               else "lpips: true in the compress job")
        instead = "or give the contract without an LPIPS ceiling" if job.quality.needs_lpips else "or set lpips: false"
        raise LpipsWeightsMissingError(
            f"{why} needs the LPIPS (alex) weights, which are not provisioned here; run "
            f"`{PROVISION_COMMAND} --fetch` or set ${LPIPS_WEIGHTS_ENV} to a folder holding them "
            f"({instead})") from None


def _check_profile(job: CompressJob, codec: LatentCodec) -> None:
    """Refuse a profile other than the one the archive's codec was fitted with."""
    same = codec.model.profile == AUTO_PROFILE if job.profile == AUTO_PROFILE else None
    if same is None:
        name, bits = resolve_bits(job.profile, codec.num_ws)
        same = name == codec.model.profile and (name != "custom" or [float(b) for b in bits] == list(codec.bits))
    if not same:
        raise ArchiveMismatchError(
            f"{job.destination} was made with codec profile {codec.model.profile!r} "
            f"(bits {[float(b) for b in codec.bits]}), not {job.profile!r}; use its profile to add to it, "
            "or a new destination")


def prepare(job: CompressJob) -> dict[str, Any]:
    """Open (to resume) or create the archive; fit and store its codec model on first use.
    Returns the archive settings.

    Refuses, before any plan is written or the codec fitted: a missing or empty source and a
    destination that is a file (:func:`check_job_paths`), LPIPS asked for without its weights, and
    an existing archive made with another generator, encoder or profile (or other settings).
    """
    check_job_paths(job)
    check_lpips_weights(job)
    fs, root = fsspec.core.url_to_fs(job.destination, **job.storage_options)
    if fs.exists(posixpath.join(root, ARCHIVE_FILE)):
        session = open_session(job)  # refuses other models (fingerprints) at open
        assert session.models is not None
        _check_profile(job, session.codec)
        # Refuses the archive when its other settings (fit, refine steps, contract, ...) differ.
        older = tuple(k for k in LATER_SETTINGS if k not in session.store.settings)
        session.store.check_settings(_settings(job, session.models, session.codec), ignored=older)
        return session.settings
    models = cache.models(job.network, job.encoder, job.device)
    codec = fit_codec(job, models)
    # The store writes the codec content-addressed; when another run created the archive first,
    # the session is that archive, with its codec (whose profile must then be the job's too).
    session = ArchiveSession.create(job.destination, settings=_settings(job, models, codec), codec=codec,
                                    models=models, storage_options=job.storage_options)
    if session.codec.hash != codec.hash:
        _check_profile(job, session.codec)
    return session.settings


# -- one shard, in named steps -------------------------------------------------------------------
Done = dict[str, dict[tuple[str | None, str], set[str]]]  # uri -> (sha256, settings_key) -> table kinds


def skip_set(entries: list[PlanEntry], store: ArchiveStore) -> Done:
    """What the archive held for this plan's URIs, from the plan itself; for plans of earlier
    versions (no committed entries in them) the archive's keys are read, as those versions did."""
    archived = done_by_uri(committed_exact_keys(store)) if any(e.done is None for e in entries) else {}
    done: Done = {}
    for entry in entries:
        for sha, key, kind in entry.done if entry.done is not None else archived.get(entry.uri, ()):
            done.setdefault(entry.uri, {}).setdefault((sha, key), set()).add(kind)
    return done


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class _Pending:
    """One decoded source waiting for its batch: the square the encoder sees, the original's pixels
    (what fidelity is measured against) and bytes (the ``original`` representation)."""

    tensor: torch.Tensor
    info: dict[str, Any]
    original: np.ndarray
    data: bytes
    fit: FitInfo


@dataclass(frozen=True)
class _Latent:
    """One image's latent coding: payload, synthesized square, generator-square diagnostics."""

    payload: bytes
    recon: torch.Tensor  # [3, R, R] in [-1, 1]
    psnr: float
    ms_ssim: float
    lpips: float | None
    candidate: Candidate


@dataclass
class _Shard:
    """The state of one shard task while it runs (private: its result is a :class:`ShardReport`)."""

    job: CompressJob
    plan: ShardPlan
    store: ArchiveStore
    models: Models
    codec: LatentCodec
    perceptual: torch.nn.Module | None  # LPIPS, when the job records it or its contract needs it
    key: str
    entries: list[PlanEntry]
    done: Done
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (exact source URI, row)
    pending: list[_Pending] = field(default_factory=list)
    skipped: int = 0
    failed_before: int = 0
    payload_bytes: int = 0
    source_bytes: int = 0
    baselines: int = 0  # images whose AVIF baseline was measured
    escalation_left: int = 0  # refinement steps this task may still spend on images that miss the contract

    def __post_init__(self) -> None:
        self.escalation_left = self.job.escalation_budget
        self.chooser = Chooser(self.job.quality, self.job.representations, self.perceptual, self.models.device)

    # step: a failure row
    def fail(self, info: dict[str, Any], stage: str, reason: str) -> None:
        self.failures.append((info["source_uri"], {
            **fmt.source_columns(None, info["source_uri"]), "source_size": info.get("source_size"),
            "source_sha256": info.get("source_sha256"), "stage": stage, "reason": fmt.readable_text(reason),
            "settings_key": self.key, "failed_at": _now()}))

    # step: read one source
    def read(self, uri: str) -> tuple[bytes, dict[str, Any]] | None:
        """The source's bytes and its identity columns, or None (recorded as a failure)."""
        try:
            data = read_bytes(uri, self.job.source_storage_options or None)
        except ImageRejected as exc:
            self.fail({"source_uri": uri}, "read", exc.reason)
            return None
        except (OSError, ValueError, MemoryError) as exc:
            self.fail({"source_uri": uri}, "read", f"{type(exc).__name__}: {exc}")
            return None
        return data, {"source_uri": uri, "source_size": len(data), "source_sha256": sha256_hex(data)}

    # step: skip what an earlier run archived
    def already_done(self, info: dict[str, Any]) -> bool:
        kinds = self.done.get(info["source_uri"], {}).get((info["source_sha256"], self.key))
        if kinds is None:
            return False
        self.skipped += 1
        self.failed_before += "images" not in kinds
        return True

    # step: decode and fit
    def decode(self, data: bytes, info: dict[str, Any]) -> _Pending | None:
        """The source fitted to the generator's square (``load_fitted``) with its original pixels,
        or None (a failure)."""
        job = self.job
        try:
            fitted = load_fitted(data, self.models.resolution, job.fit, max_pixels=job.max_pixels,
                                 uri=info["source_uri"], keep_original=True)
        except ImageRejected as exc:
            self.fail(info, "decode", exc.reason)
            return None
        except (OSError, ValueError) as exc:
            self.fail(info, "decode", f"{type(exc).__name__}: {exc}")
            return None
        assert fitted.original is not None
        return _Pending(fitted.tensor, dict(info, **fitted.columns()), fitted.original, data, fitted.fit)

    # step: encode a batch
    def encode_pending(self) -> None:
        """Code the pending batch: the latent path for the whole batch (when allowed), then each
        image's representation; a failing batch is recorded, the run goes on."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        latents: list[_Latent | None] = [None] * len(batch)
        if "latent" in self.job.representations:
            try:
                latents = list(self.latent_batch(batch, self.job))
                self.escalate(batch, latents)
            except Exception as exc:  # noqa: BLE001  (any failure of the models is the batch's reason)
                for item in batch:
                    self.fail(item.info, "encode", f"{type(exc).__name__}: {exc}")
                return
        for item, latent in zip(batch, latents):
            choice = self.choose(item, latent)
            if choice is None:
                continue
            row = self.image_row(item, latent, choice)
            self.rows.append(row)
            self.payload_bytes += choice.chosen.bytes
            self.source_bytes += item.info["source_size"]

    def latent_batch(self, batch: list[_Pending], job: CompressJob) -> list[_Latent]:
        """The latent coding of each image of ``batch`` (encoder, refinement per ``job``), judged
        at the original size."""
        x = torch.stack([item.tensor for item in batch]).to(self.models.device)
        coded = code_batch(self.models, self.codec, x, job, self.perceptual, measure_lpips=self.job.lpips)
        out = []
        for i, item in enumerate(batch):
            square = to_uint8(coded.recon[i : i + 1])[0]
            candidate = self.chooser.latent(item.original, square, item.fit, item.info["mode"], len(coded.payloads[i]))
            out.append(_Latent(coded.payloads[i], coded.recon[i], coded.psnr[i], coded.ms_ssim[i],
                               None if coded.lpips is None else coded.lpips[i], candidate))
        return out

    # step: escalate refinement for images whose latent misses the contract
    def escalate(self, batch: list[_Pending], latents: list[_Latent | None]) -> None:
        """Refine (``escalation_steps`` more steps) the latents that miss the contract, while this
        task's budget lasts; a refined latent replaces the first when it meets the contract or is
        better (higher PSNR at original size)."""
        steps = self.job.escalation_steps
        missed = [i for i, latent in enumerate(latents) if latent is not None and not latent.candidate.met]
        if not steps or not missed or self.escalation_left < steps:
            return
        missed = missed[: self.escalation_left // steps]
        self.escalation_left -= steps * len(missed)
        job = self.job.model_copy(update={"refine_steps": self.job.refine_steps + steps})
        for i, refined in zip(missed, self.latent_batch([batch[i] for i in missed], job)):
            old = latents[i]
            assert old is not None
            if refined.candidate.met or refined.candidate.fidelity.psnr > old.candidate.fidelity.psnr:
                latents[i] = refined

    # step: choose the representation
    def choose(self, item: _Pending, latent: _Latent | None) -> Choice | None:
        """The fewest bytes that meet the contract (:class:`~sg3archive.quality.choose.Chooser`);
        the AVIF baseline is measured on this task's first ``baseline_images`` images. An image
        the classical codecs cannot handle is stored as its original when that is allowed, else
        recorded as a failure."""
        baseline = self.baselines < self.job.baseline_images
        try:
            choice = self.chooser.choose(item.original, item.data, item.info["format"], item.info["mode"],
                                         latent.candidate if latent is not None else None, baseline=baseline)
        except (ImageRejected, OSError, ValueError, MemoryError) as exc:
            if "original" not in self.job.representations:
                self.fail(item.info, "encode", f"{type(exc).__name__}: {exc}")
                return None
            choice = Choice(Candidate("original", data=item.data, codec=(item.info["format"] or "").lower() or None))
        self.baselines += choice.baseline_bytes is not None
        return choice

    # step: one image row
    def image_row(self, item: _Pending, latent: _Latent | None, choice: Choice) -> dict[str, Any]:
        job, codec, models, chosen = self.job, self.codec, self.models, choice.chosen
        info = item.info
        row: dict[str, Any] = dict(
            info, **fmt.source_columns(job.source, info["source_uri"], job.source_storage_options),
            id=fmt.image_id(info["source_uri"], info["source_sha256"]), bits=[float(b) for b in codec.bits],
            profile=codec.model.profile, transform=None, encoder_fingerprint=models.encoder.fingerprint,
            generator_fingerprint=models.G.fingerprint, codec_hash=codec.hash, settings_key=self.key,
            encoded_at=_now(), representation=chosen.representation, latent_bytes=chosen.latent_bytes,
            image_bytes=len(chosen.data) if chosen.data is not None else 0, contract=job.quality.to_json(),
            contract_met=chosen.met, fidelity_psnr=chosen.fidelity.psnr, fidelity_ms_ssim=chosen.fidelity.ms_ssim,
            fidelity_lpips=chosen.fidelity.lpips, avif_bytes=choice.baseline_bytes, avif_quality=choice.baseline_quality)
        if chosen.representation == "latent":
            assert latent is not None
            return dict(row, payload=latent.payload, payload_sha256=sha256_hex(latent.payload), psnr=latent.psnr,
                        ms_ssim=latent.ms_ssim, lpips=latent.lpips, recon_thumb=thumbnail(latent.recon).tobytes(),
                        image_data=None, image_sha256=None, image_codec=None, image_quality=None)
        assert chosen.data is not None
        restored = item.original if chosen.representation == "original" else decode_rgb(chosen.data)
        return dict(row, payload=b"", payload_sha256=sha256_hex(b""), psnr=None, ms_ssim=None, lpips=None,
                    recon_thumb=restored_thumb(as_written(restored, info["mode"])).tobytes(), image_data=chosen.data,
                    image_sha256=sha256_hex(chosen.data), image_codec=chosen.codec, image_quality=chosen.quality)

    # step: write and commit
    def write_and_commit(self) -> tuple[str | None, str | None, int]:
        """Write the images and failures shards and commit them together; returns their names
        and the number of failures recorded (one that failed before and again is not recorded twice)."""
        failures = [row for uri, row in self.failures
                    if (row["source_sha256"], self.key) not in self.done.get(uri, {})]
        records = []
        meta = dict(self.store.settings)
        shard = failure_shard = None
        # Images first: a failures shard on disk means the plan's images shard (if any) is there too.
        if self.rows:
            records.append(self.store.write_shard(pa.Table.from_pylist(self.rows, schema=fmt.images_schema()),
                                                  "images", meta, name=shard_name(self.plan, "images")))
            shard = records[-1].name
        if failures:
            records.append(self.store.write_shard(pa.Table.from_pylist(failures, schema=fmt.failures_schema()),
                                                  "failures", meta, name=shard_name(self.plan, "failures")))
            failure_shard = records[-1].name
        if records:
            self.store.commit(records)
        return shard, failure_shard, len(failures)


def _ticking(items: list[PlanEntry], tick: Callable[[int], None] | None) -> Iterator[PlanEntry]:
    """``items``, calling ``tick(1)`` once the loop body has finished with each one."""
    for item in items:
        yield item
        if tick is not None:
            tick(1)


def _perceptual(job: CompressJob, device: torch.device) -> torch.nn.Module | None:
    """The LPIPS model when the job records LPIPS or its contract has an LPIPS ceiling (None
    otherwise); built once per shard task (a few MB, under a second) so it always follows the
    weights the environment provisions now."""
    if not job.lpips and not job.quality.needs_lpips:
        return None
    from sg3archive.metrics import LPIPS

    return LPIPS("alex", device=device)


def open_session(job: CompressJob) -> ArchiveSession:
    """The job's archive opened with its models and codec; a generator, encoder or codec model
    other than the ones the archive was made with is refused here (ArchiveMismatchError)."""
    return ArchiveSession.open(job.destination, storage_options=job.storage_options, network=job.network,
                               encoder=job.encoder, device=job.device, check=True)


def written_before(store: ArchiveStore, plan: ShardPlan) -> ShardReport | None:
    """What an earlier try of this plan's task wrote, committed (again) and reported; ``None`` when
    it wrote nothing (the plan is to be done).

    One ``exists`` per table kind (the plan's shard names), never a listing or another shard: a
    task retried after its commit (or after writing, before committing) commits its shards once
    (:meth:`ArchiveStore.commit` writes nothing for shards already listed) and reports their rows,
    with nothing skipped. Images are written before failures, so an images shard alone is either
    the whole plan or a try that died before its failures shard: those sources are then not
    recorded as failures, and the next run tries them again.

    Raises:
        Sg3ArchiveError: a file of such a name is there but the store refuses it (damage).
    """
    records: dict[str, ShardRecord] = {}
    for kind in fmt.KINDS:
        name = shard_name(plan, kind)
        try:
            record = store.written_shard(name, kind)
        except (ShardRefusedError, UnsafeArchiveFileError) as exc:
            why = exc.why if isinstance(exc, ShardRefusedError) else str(exc)
            raise Sg3ArchiveError(
                f"shard {name} in {store.url}/shards, left by an earlier try of plan {plan.index} ({plan.path}), "
                f"is damaged ({why}); delete it and rerun") from None
        if record is not None:
            records[kind] = record
    if not records:
        return None
    store.commit(list(records.values()))
    images, failures = records.get("images"), records.get("failures")
    source_bytes = 0
    quality = QualitySummary()
    if images is not None and images.rows:  # read like any committed shard: the store's bounded reader
        columns = [c for c in SUMMARY_COLUMNS if c != "image_data"] + ["source_size"]
        for batch in store.iter_batches("images", columns=columns, shard_names=[images.name]):
            source_bytes += int(pc.sum(batch.column("source_size")).as_py() or 0)
            quality = quality.merged(QualitySummary.of_rows(batch.to_pylist()))
    return ShardReport(plan.index, shard=images.name if images else None, images=images.rows if images else 0,
                       failures=failures.rows if failures else 0, payload_bytes=quality.stored_bytes,
                       source_bytes=source_bytes, failure_shard=failures.name if failures else None, quality=quality)


def open_shard(job: CompressJob, plan: ShardPlan, session: ArchiveSession | None = None) -> _Shard:
    """Step 1 of a shard task: open the archive with its models and codec (refusing other models;
    or take ``session``, opened so), read the plan and decide the skips from it."""
    session = session or open_session(job)
    assert session.models is not None
    entries = read_plan(plan, job.storage_options)
    return _Shard(job, plan, session.store, session.models, session.codec, _perceptual(job, session.device),
                  settings_key(session.settings), entries, skip_set(entries, session.store))


def compress_shard(job: CompressJob, plan: ShardPlan, tick: Callable[[int], None] | None = None) -> ShardReport:
    """Encode, quantize and store the images of one plan as one shard, then commit it.

    Sources already in the archive (same URI, sha256 and settings, as the plan recorded them) are
    skipped; unreadable ones go to a failures shard with their reason. Committing per shard makes
    a killed run resumable. The shards are named after the plan: a retry of a task whose first try
    wrote them commits and reports those (:func:`written_before`) and reads no source. ``tick(1)``
    is called as each source is done with (a progress bar's ``update``).
    """
    started = time.perf_counter()
    session = open_session(job)
    earlier = written_before(session.store, plan)
    if earlier is not None:
        if tick is not None:
            tick(plan.count)
        return replace(earlier, seconds=time.perf_counter() - started)
    shard = open_shard(job, plan, session)
    for entry in _ticking(shard.entries, tick):
        read = shard.read(entry.uri)
        if read is None or shard.already_done(read[1]):
            continue
        decoded = shard.decode(*read)
        if decoded is None:
            continue
        shard.pending.append(decoded)
        if len(shard.pending) >= job.batch_size:
            shard.encode_pending()
    shard.encode_pending()
    name, failure_name, failures = shard.write_and_commit()
    return ShardReport(plan.index, shard=name, images=len(shard.rows), failures=failures, skipped=shard.skipped,
                       failed_before=shard.failed_before, payload_bytes=shard.payload_bytes,
                       source_bytes=shard.source_bytes, seconds=time.perf_counter() - started,
                       failure_shard=failure_name, quality=QualitySummary.of_rows(shard.rows))


# -- the whole run -------------------------------------------------------------------------------
def compress(job: CompressJob, progress: bool = True) -> CompressReport:
    """The whole job in this process, shard after shard (the CLI's path; no Prefect needed). The
    run's plan files are removed when it completes (failed sources included)."""
    started = time.perf_counter()
    if progress:
        tqdm.write(f"preparing {job.destination}: loading the models (a new archive also fits its codec"
                   f" on up to {job.calibration_images} of the images)", file=sys.stderr)
    prepare(job)
    run_id = new_run_id()
    plans = list(plan_shards(job, run_id))
    results = []
    with tqdm(total=sum(p.count for p in plans), desc="compress", unit="img", disable=not progress) as bar:
        for plan in plans:
            results.append(compress_shard(job, plan, tick=bar.update))
    remove_plans(job, run_id)
    return CompressReport.of(job.destination, results, time.perf_counter() - started)


# ``compress`` under a name that does not clash with this module's where ``sg3archive.pipeline``
# exports it (a package attribute ``compress`` is this module).
compress_images = compress
