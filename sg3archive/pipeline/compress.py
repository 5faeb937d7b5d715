"""Compress a collection into an archive: prepare (codec model, archive settings), plan shards,
compress each shard (one unit of work: models loaded once, images batched on the device, one
Parquet shard written and committed), summarize.

Usable without Prefect (:func:`compress`, what the CLI runs); the Prefect flow calls
:func:`prepare`, :func:`plan_shards` and :func:`compress_shard` as tasks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sg3archive.codec import LatentCodec
from sg3archive.codec.profiles import resolve_bits
from sg3archive.encoding import encode_images, refine_latents
from sg3archive.errors import Sg3ArchiveError
from sg3archive.metrics import ms_ssim, psnr
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.pipeline.models import Models, load_codec, load_models
from sg3archive.pixels import to_uint8
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.bounded import own_folder
from sg3archive.store.format import ArchiveMismatchError
from sg3archive.store.inputs import (
    IMAGE_SUFFIXES,
    ImageRejected,
    decode_image,
    fit_to_square,
    iter_sources,
    read_bytes,
    sha256_hex,
    to_tensor,
)
from sg3archive.store.manifest import ARCHIVE_FILE, CODEC_DIR
from sg3archive.training.data import SyntheticPairs

PLANS_DIR = "_plans"
MAPPING_CALIBRATION = 512  # mapping-network W+ samples added to the codec's calibration set


@dataclass(frozen=True)
class ShardPlan:
    """One unit of work: the URIs listed in ``path`` (a JSON-lines file in the archive: one JSON
    string per line, ASCII-only, so any name a file system allows round-trips; see
    :func:`plan_text`)."""

    index: int
    path: str
    count: int


@dataclass
class ShardResult:
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


@dataclass
class Summary:
    archive: str
    shards: int = 0
    images: int = 0
    failures: int = 0
    skipped: int = 0
    failed_before: int = 0
    payload_bytes: int = 0
    source_bytes: int = 0
    seconds: float = 0.0
    results: list[ShardResult] = field(default_factory=list)

    def add(self, r: ShardResult) -> None:
        self.results.append(r)
        self.shards += 1 if r.shard else 0
        self.images += r.images
        self.failures += r.failures
        self.skipped += r.skipped
        self.failed_before += r.failed_before
        self.payload_bytes += r.payload_bytes
        self.source_bytes += r.source_bytes

    @property
    def archived_any(self) -> bool:
        """Whether the archive now holds anything of the source: images written by this run or
        already there from an earlier one."""
        return self.images + self.skipped - self.failed_before > 0

    def text(self) -> str:
        """One line for people; figures that do not exist (nothing written) are left out, never ``nan``."""
        line = (f"{self.images} images archived into {self.archive} ({self.shards} shards), "
                f"{self.skipped - self.failed_before} already there, {self.failures} failed")
        if self.failed_before:
            line += f" ({self.failed_before} more failed in an earlier run and were not retried)"
        if self.images:
            line += (f"; {self.payload_bytes} payload bytes ({self.payload_bytes / self.images:.0f} B/image), "
                     f"ratio vs source {self.source_bytes / self.payload_bytes:.1f}x")
            if self.seconds:
                line += f"; {self.images / self.seconds:.2f} images/s"
        return line

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.source_bytes / self.payload_bytes if self.payload_bytes else None
        d["images_per_s"] = self.images / self.seconds if self.seconds else None
        return d


def settings_key(settings: dict) -> str:
    """Short hash of what determines a row: the same source with the same key is not redone."""
    keep = {k: settings.get(k) for k in ("generator_fingerprint", "encoder_fingerprint", "codec_hash", "fit",
                                          "refine_steps", "resolution")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _settings(job: CompressJob, models: Models, codec: LatentCodec) -> dict:
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
    }


def _read_source(uri: str, job: CompressJob) -> tuple[bytes, dict]:
    """Read and hash one source (OSError / ImageRejected on failure)."""
    data = read_bytes(uri, job.source_storage_options or None)
    return data, {"source_uri": uri, "source_size": len(data), "source_sha256": sha256_hex(data)}


def _square(data: bytes, info: dict, job: CompressJob, resolution: int) -> tuple[torch.Tensor, dict]:
    """Decode and fit one source to the generator's square; ImageRejected says why not (running
    out of memory included: one image never stops the run)."""
    try:
        img = decode_image(data, max_pixels=job.max_pixels, uri=info["source_uri"])
        square, fit = fit_to_square(img.rgb, resolution, job.fit, max_pixels=job.max_pixels)
    except MemoryError:
        raise ImageRejected("out of memory decoding or fitting the image; lower --max-pixels or free memory",
                            info["source_uri"]) from None
    return to_tensor(square), dict(info, width=img.width, height=img.height, mode=img.mode, format=img.format,
                                   fit=fit.to_json())


def _load_square(uri: str, job: CompressJob, resolution: int) -> tuple[torch.Tensor, dict]:
    data, info = _read_source(uri, job)
    return _square(data, info, job, resolution)


def _calibration_ws(job: CompressJob, models: Models) -> torch.Tensor:
    """W+ codes to fit the codec on: the encoder's output for the first decodable images of the
    collection, plus style-mixed samples of the generator's mapping network."""
    images = []
    if job.calibration_images:
        for uri in iter_sources(job.source, pattern=job.pattern, storage_options=job.source_storage_options or None):
            try:
                images.append(_load_square(uri, job, models.resolution)[0])
            except (ImageRejected, OSError, ValueError, MemoryError):
                continue
            if len(images) >= job.calibration_images:
                break
    parts = []
    if images:
        parts.append(encode_images(models.encoder, torch.stack(images).to(models.device), job.batch_size).cpu())
    pairs = SyntheticPairs(models.G)
    parts.append(pairs.ws(MAPPING_CALIBRATION, torch.Generator().manual_seed(0)).cpu())
    return torch.cat(parts)


class NothingToArchiveError(Sg3ArchiveError):
    """The source holds no image files (or does not exist), or its files all failed."""


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


def prepare(job: CompressJob) -> dict:
    """Open (to resume) or create the archive; fit and store its codec model on first use.
    Returns the archive settings. Refuses an existing archive made with other models, a missing
    or empty source and a destination that is a file (:func:`check_job_paths`)."""
    check_job_paths(job)
    models = load_models(job.network, job.encoder, job.device)
    codec_url = posixpath.join(job.destination.rstrip("/"), CODEC_DIR)  # the store's layout, before it exists
    fs, root = fsspec.core.url_to_fs(job.destination, **job.storage_options)
    if fs.exists(posixpath.join(root, ARCHIVE_FILE)):
        codec = load_codec(codec_url, job.storage_options)
        name, bits = resolve_bits(job.profile, codec.num_ws)
        if name != codec.model.profile or (name == "custom" and [float(b) for b in bits] != list(codec.bits)):
            raise ArchiveMismatchError(
                f"{job.destination} was made with codec profile {codec.model.profile!r} "
                f"(bits {[float(b) for b in codec.bits]}), not {job.profile!r}; use its profile to add to it, "
                "or a new destination")
        # Opens the archive, refusing it when it was made with other models or settings.
        return ArchiveStore.create(job.destination, _settings(job, models, codec), job.storage_options).settings
    coder = "range" if job.coder == "arithmetic" else job.coder
    codec = LatentCodec.fit(_calibration_ws(job, models), profile=job.profile, coder=coder)
    own_folder(fs, root, CODEC_DIR, job.destination)  # the codec is never written through a link out
    codec.save(codec_url, storage_options=job.storage_options)
    settings = _settings(job, models, codec)
    ArchiveStore.create(job.destination, settings, storage_options=job.storage_options)
    return settings


PLAN_SUFFIX = ".jsonl"


def plan_text(uris: list[str]) -> str:
    """A plan file's text: one JSON string per line, ASCII-only (``\\n``, ``\\u2028``, lone
    surrogates of names that are not UTF-8 all escaped), so every line break is a separator."""
    return "".join(json.dumps(uri, ensure_ascii=True) + "\n" for uri in uris)


def parse_plan(text: str, legacy: bool = False) -> list[str]:
    """The URIs of a plan file's text (:func:`plan_text`); ``legacy``: the one-URI-per-line
    ``.txt`` plans of earlier versions."""
    if legacy:
        return [line for line in text.splitlines() if line]
    uris = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        try:
            uri = json.loads(line)
        except ValueError:
            uri = None
        if not isinstance(uri, str):
            raise Sg3ArchiveError(f"plan line {number} is not a JSON string; delete the _plans folder and re-run")
        uris.append(uri)
    return uris


def plan_shards(job: CompressJob, run_id: str | None = None) -> Iterator[ShardPlan]:
    """Stream the source listing into plan files of ``shard_size`` URIs under ``_plans/<run>/``;
    yields one small record per shard (the listing itself is never held in memory)."""
    run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    fs, root = fsspec.core.url_to_fs(job.destination, **job.storage_options)
    # _plans and _plans/<run> must be the archive's own folders (no link out) before a plan is written.
    folder = own_folder(fs, root, f"{PLANS_DIR}/{run_id}", job.destination)
    batch: list[str] = []
    index = 0

    def flush() -> ShardPlan:
        path = posixpath.join(folder, f"{index:07d}{PLAN_SUFFIX}")
        with fs.open(path, "w", encoding="ascii") as f:
            f.write(plan_text(batch))
        return ShardPlan(index, fs.unstrip_protocol(path), len(batch))

    for uri in iter_sources(job.source, pattern=job.pattern, storage_options=job.source_storage_options or None):
        batch.append(uri)
        if len(batch) == job.shard_size:
            yield flush()
            index += 1
            batch = []
    if batch:
        yield flush()


def _read_plan(plan: ShardPlan, job: CompressJob) -> list[str]:
    with fsspec.open(plan.path, "r", encoding="utf-8", **job.storage_options) as f:
        return parse_plan(f.read(), legacy=not plan.path.endswith(PLAN_SUFFIX))


def committed_exact_keys(store: ArchiveStore) -> dict[str, set[tuple[str, str | None, str]]]:
    """``(exact source_uri, source_sha256, settings_key)`` of the committed rows, by table kind:
    :meth:`ArchiveStore.committed_keys_by_kind` with names that are not UTF-8 compared exactly
    (their stored ``source_uri`` is a readable form another name could share)."""
    keys: dict[str, set[tuple[str, str | None, str]]] = {kind: set() for kind in fmt.KINDS}
    for kind in fmt.KINDS:
        if store.shards(kind):
            keys[kind] = fmt.exact_keys(store.read_table(kind, columns=list(fmt.EXACT_KEY_COLUMNS)))
    return keys


def recon_thumbnail(img: torch.Tensor) -> np.ndarray:
    """``[8, 8, 3]`` uint8 thumbnail of one reconstruction ``[3, R, R]``: the fingerprint written at
    encode time and compared by the audit's determinism check."""
    return to_uint8(F.adaptive_avg_pool2d(img.float(), 8)[None])[0]


def _ticking(items: list[str], tick: Callable[[int], None] | None) -> Iterator[str]:
    """``items``, calling ``tick(1)`` once the loop body has finished with each one."""
    for item in items:
        yield item
        if tick is not None:
            tick(1)


def compress_shard(job: CompressJob, plan: ShardPlan, tick: Callable[[int], None] | None = None) -> ShardResult:
    """Encode, quantize and store the images of one plan as one shard, then commit it.

    Sources already in the archive (same URI, sha256 and settings) are skipped; unreadable ones
    go to a failures shard with their reason. Committing per shard makes a killed run resumable.
    ``tick(1)`` is called as each source is done with (a progress bar's ``update``).
    """
    started = time.perf_counter()
    models = load_models(job.network, job.encoder, job.device)
    store = ArchiveStore.open(job.destination, storage_options=job.storage_options)
    codec = load_codec(store.codec_url, job.storage_options)
    key = settings_key(store.settings)
    done_by_kind = committed_exact_keys(store)
    done = set().union(*done_by_kind.values())
    result = ShardResult(plan.index)
    rows: list[dict] = []
    failures: list[tuple[str, dict]] = []  # (exact source URI, row)
    pending: list[tuple[torch.Tensor, dict]] = []
    now = lambda: dt.datetime.now(dt.timezone.utc)  # noqa: E731

    def fail(info: dict, stage: str, reason: str) -> None:
        failures.append((info["source_uri"], {
            **fmt.source_columns(None, info["source_uri"]), "source_size": info.get("source_size"),
            "source_sha256": info.get("source_sha256"), "stage": stage, "reason": fmt.readable_text(reason),
            "settings_key": key, "failed_at": now()}))

    def encode_pending() -> None:
        if not pending:
            return
        x = torch.stack([t for t, _ in pending]).to(models.device)
        infos = [i for _, i in pending]
        pending.clear()
        try:
            ws = encode_images(models.encoder, x, job.batch_size)
            if job.refine_steps:
                ws = refine_latents(models.G, ws, x, steps=job.refine_steps)
            payloads = codec.compress(ws.cpu())
            ws_hat = codec.decompress(payloads).to(models.device)
            with torch.no_grad():
                recon = torch.cat([models.G.synthesis(ws_hat[i:i + job.batch_size])
                                   for i in range(0, len(ws_hat), job.batch_size)]).clamp(-1, 1)
            p, s = psnr(recon, x).cpu(), ms_ssim(recon, x).cpu()
        except Exception as exc:  # a failing batch is recorded, the run goes on
            for info in infos:
                fail(info, "encode", f"{type(exc).__name__}: {exc}")
            return
        for i, info in enumerate(infos):
            rows.append(dict(info, **fmt.source_columns(job.source, info["source_uri"], job.source_storage_options),
                             id=fmt.image_id(info["source_uri"], info["source_sha256"]), payload=payloads[i], payload_sha256=sha256_hex(payloads[i]),
                             bits=[float(b) for b in codec.bits], profile=codec.model.profile, transform=None,
                             psnr=float(p[i]), ms_ssim=float(s[i]), lpips=None, recon_thumb=recon_thumbnail(recon[i].cpu()).tobytes(),
                             encoder_fingerprint=models.encoder.fingerprint,
                             generator_fingerprint=models.G.fingerprint, codec_hash=codec.hash,
                             settings_key=key, encoded_at=now()))
            result.payload_bytes += len(payloads[i])
            result.source_bytes += info["source_size"]

    for uri in _ticking(_read_plan(plan, job), tick):
        try:
            data, info = _read_source(uri, job)
        except ImageRejected as exc:
            fail({"source_uri": uri}, "read", exc.reason)
            continue
        except (OSError, ValueError, MemoryError) as exc:
            fail({"source_uri": uri}, "read", f"{type(exc).__name__}: {exc}")
            continue
        if (uri, info["source_sha256"], key) in done:
            result.skipped += 1
            result.failed_before += (uri, info["source_sha256"], key) not in done_by_kind["images"]
            continue
        try:
            tensor, info = _square(data, info, job, models.resolution)
        except ImageRejected as exc:
            fail(info, "decode", exc.reason)
            continue
        except (OSError, ValueError) as exc:
            fail(info, "decode", f"{type(exc).__name__}: {exc}")
            continue
        pending.append((tensor, info))
        if len(pending) >= job.batch_size:
            encode_pending()
    encode_pending()

    # A source that failed before and fails again is not recorded twice.
    failures = [f for uri, f in failures if (uri, f["source_sha256"], key) not in done]
    records = []
    meta = dict(store.settings)
    if rows:
        table = pa.Table.from_pylist(rows, schema=fmt.images_schema())
        records.append(store.write_shard(table, "images", meta))
        result.shard = records[-1].name
    if failures:
        table = pa.Table.from_pylist(failures, schema=fmt.failures_schema())
        records.append(store.write_shard(table, "failures", meta))
        result.failure_shard = records[-1].name
    if records:
        store.commit(records)
    result.images, result.failures = len(rows), len(failures)
    result.seconds = time.perf_counter() - started
    return result


def compress(job: CompressJob, progress: bool = True) -> Summary:
    """The whole job in this process, shard after shard (the CLI's path; no Prefect needed)."""
    started = time.perf_counter()
    if progress:
        tqdm.write(f"preparing {job.destination}: loading the models (a new archive also fits its codec"
                   f" on up to {job.calibration_images} of the images)", file=sys.stderr)
    prepare(job)
    summary = Summary(job.destination)
    plans = list(plan_shards(job))
    total = sum(p.count for p in plans)
    with tqdm(total=total, desc="compress", unit="img", disable=not progress) as bar:
        for plan in plans:
            summary.add(compress_shard(job, plan, tick=bar.update))
    summary.seconds = time.perf_counter() - started
    return summary
