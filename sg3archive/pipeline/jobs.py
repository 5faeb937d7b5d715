"""Archive job specifications: what a compress, restore or audit run does, as validated data.

The same models back the YAML manifests in ``manifests/``, the CLI flags (generated from these
fields by ``sg3archive.cli_options``) and the Prefect flows' parameters, so a job means the same
thing however it is started. Every job carries ``version`` (:data:`JOB_VERSION`): a manifest
without one is version 1, one newer than this code reads is refused rather than misread.

The names the jobs accept have their own homes: coders and profiles in ``sg3archive.codec.names``,
fit modes in ``sg3archive.images``, thresholds in ``sg3archive.audit.thresholds``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sg3archive import __version__
from sg3archive.audit.thresholds import Thresholds
from sg3archive.codec.names import (
    AUTO_PROFILE,
    DEFAULT_CODER,
    DEFAULT_MAX_LOSS_DB,
    DEFAULT_PROFILE,
    DEFAULT_RD_LAMBDA,
    PROFILE_NAMES,
    CoderName,
    check_profile,
)
from sg3archive.devices import DEVICE_HELP
from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import DEFAULT_FIT, DEFAULT_MAX_PIXELS, FitMode
from sg3archive.quality.contract import (
    CONTRACTS,
    DEFAULT_CONTRACT,
    REPRESENTATIONS,
    QualityContract,
    check_representations,
    contract_of,
)

# The newest job version this code reads; a manifest without `version` is version 1.
JOB_VERSION = 1


class JobError(Sg3ArchiveError):
    """A job specification is invalid; the message lists every problem."""


def version_problem(version: object, where: str = "this job") -> str | None:
    """Why ``version`` cannot be read by this code (None when it can); ``where`` names the job,
    e.g. ``manifest m.yaml``."""
    if version is None or (isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= JOB_VERSION):
        return None
    if isinstance(version, int) and not isinstance(version, bool) and version > JOB_VERSION:
        return (f"{where} is job version {version}; this sg3archive {__version__} reads versions up to {JOB_VERSION}: "
                "upgrade sg3archive (pip install -U sg3archive)")
    return f"{where} has version {version!r}; job versions are whole numbers from 1 (omit it for version 1)"


_J = TypeVar("_J", bound=BaseModel)


class _Spec(BaseModel):
    """Strict: a value of the wrong type is an error, never converted (``profile: yes`` is not
    1 bit, ``shard_size: 2.5`` is not 2), whether it came from a manifest, a flow or Python."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: int = Field(default=JOB_VERSION, description="job format version (omit it: 1); newer versions are refused "
                                                          "by older sg3archive")

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        problem = version_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("device", check_fields=False)
    @classmethod
    def _device(cls, value: str) -> str:
        from sg3archive.devices import check_device_name

        try:
            return check_device_name(value)
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("device ")) from None


class CompressJob(_Spec):
    """Compress every image under ``source`` into the archive at ``destination``."""

    source: str = Field(description="folder / bucket prefix (any fsspec URL), a .txt/.lst list of URIs, or one image")
    destination: str = Field(description="archive directory URL")
    pattern: str | None = Field(default=None, description="glob under source, e.g. '**/*.png' (default: all image files)")
    network: str | None = Field(default=None, description="generator file/directory; default: the bundled network")
    encoder: str | None = Field(default=None, description="encoder directory; default: the bundled encoder")
    profile: str | int | list[int] = Field(default=DEFAULT_PROFILE, description=(
        f"codec profile: {', '.join(PROFILE_NAMES)} (with target_bytes), uniform bits (1-16), or bits per layer"))
    target_bytes: float | None = Field(default=None, gt=0, description="with profile auto: payload bytes per image the "
                                                                       "codec's bit allocation aims at")
    max_quantization_loss: float = Field(default=DEFAULT_MAX_LOSS_DB, gt=0, le=10, description=(
        "with profile matched: the most mean PSNR (dB) quantization may cost against the encoder's own "
        "reconstruction on the calibration set"))
    coder: CoderName = Field(default=DEFAULT_CODER, description="entropy coder (arithmetic = range)")
    fit: FitMode = Field(default=DEFAULT_FIT, description="how images are fitted to the generator's square")
    shard_size: int = Field(default=256, ge=1, le=1_000_000, description="images per Parquet shard (one task per shard)")
    batch_size: int = Field(default=16, ge=1, le=4096, description="images per model batch")
    device: str = Field(default="auto", description=DEVICE_HELP)
    refine_steps: int = Field(default=0, ge=0, le=10_000, description=(
        "encode-time rate-distortion refinement steps of each latent for the archive's codec (0 = off)"))
    rd_lambda: float = Field(default=DEFAULT_RD_LAMBDA, ge=0, le=100, description=(
        "with refine_steps: dB of PSNR a payload byte must buy (higher: fewer bytes, lower fidelity)"))
    calibration_images: int = Field(default=256, ge=0, description="collection images encoded to fit the codec model")
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1, description="larger images are rejected (decompression bombs)")
    lpips: bool = Field(default=False, description="also measure LPIPS of each image at compress time and record it in "
                                                   "its row (needs the LPIPS weights)")
    quality: QualityContract = Field(default_factory=lambda: CONTRACTS[DEFAULT_CONTRACT], description=(
        f"the quality contract every image must meet, restored vs original at the original size: a name "
        f"({', '.join(CONTRACTS)}; default {DEFAULT_CONTRACT}) or floors (min_psnr, min_ms_ssim, max_lpips, lossless)"))
    representations: list[str] = Field(default_factory=lambda: list(REPRESENTATIONS), description=(
        f"how images may be stored, the fewest bytes that meet the contract chosen per image: any of "
        f"{', '.join(REPRESENTATIONS)}"))
    escalation_steps: int = Field(default=0, ge=0, le=10_000, description=(
        "latent refinement steps tried on an image whose latent misses the contract (0 = off)"))
    escalation_budget: int = Field(default=1000, ge=0, description=(
        "the most escalation steps one shard task spends, over all its images"))
    baseline_images: int = Field(default=16, ge=0, description=(
        "images per shard task on which the AVIF baseline (bytes AVIF alone needs to meet the contract) is measured"))
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the destination")
    source_storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the source")
    task_runner: Literal["thread", "dask"] = Field(default="thread", description="Prefect task runner of the compress flow")
    workers: int = Field(default=1, ge=1, le=1024, description="parallel shard tasks (threads, or Dask workers)")
    dask_address: str | None = Field(default=None, description="with task_runner dask: a running scheduler, e.g. tcp://host:8786 "
                                                               "(default: a local cluster of `workers` workers)")

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str | int | list[int]) -> str | int | list[int]:
        return check_profile(value)

    @field_validator("quality", mode="before")
    @classmethod
    def _quality(cls, value: object) -> object:
        return contract_of(value)

    @field_validator("representations")
    @classmethod
    def _representations(cls, value: list[str]) -> list[str]:
        return check_representations(value)

    @model_validator(mode="after")
    def _auto_target(self) -> CompressJob:
        if self.profile == AUTO_PROFILE and self.target_bytes is None:
            raise ValueError("profile auto needs --target-bytes (target_bytes: payload bytes per image)")
        if self.profile != AUTO_PROFILE and self.target_bytes is not None:
            raise ValueError("--target-bytes (target_bytes) goes with --profile auto only")
        return self


class RestoreJob(_Spec):
    """Regenerate images from an archive into ``destination``."""

    archive: str = Field(description="archive directory URL")
    destination: str = Field(description="folder (any fsspec URL) the images are written into")
    ids: list[str] | None = Field(default=None, description="restore only these image ids (every one must be in the archive)")
    glob: str | None = Field(default=None, description="restore only images whose name relative to the compressed source "
                                                       "(e.g. 'more/*.png'), or whose full source URI, matches this glob")
    shard: str | None = Field(default=None, description="restore only this images shard (file name)")
    format: Literal["png", "webp", "jpeg"] = Field(default="png", description="output format")
    size: Literal["generator", "original"] = Field(default="original", description="output at the generator's "
                                                                                   "resolution or the original size")
    network: str | None = Field(default=None, description="generator file/directory; default: the one the archive records")
    encoder: str | None = Field(default=None, description="encoder directory; default: the bundled encoder")
    batch_size: int = Field(default=16, ge=1, le=4096, description="images per model batch")
    device: str = Field(default="auto", description=DEVICE_HELP)
    overwrite: bool = Field(default=False, description="rewrite outputs that already exist (default: skip them, resumable)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the archive")
    destination_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the destination (a bucket's endpoint, credentials); "
                                          "empty means none: the archive's storage_options are never reused for it")

    @field_validator("ids")
    @classmethod
    def _ids(cls, value: list[str] | None) -> list[str] | None:
        for i in value or []:
            if not i or any(c not in "0123456789abcdef" for c in i):
                raise ValueError(f"image id {i!r} is not an archive id (lowercase hex)")
        return value


# When an audit fails: the one thresholds model (its home: sg3archive.audit.thresholds).
AuditThresholds = Thresholds


class AuditJob(_Spec):
    """Audit the archive at ``archive`` (the nightly job)."""

    archive: str = Field(description="archive directory URL")
    sample_size: int = Field(default=32, ge=0, description="rows decoded and synthesized")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="sample seed; default: the date, YYYYMMDD "
                                                                           "(a new sample each night)")
    network: str | None = Field(default=None, description="generator file/directory; default: the bundled network")
    encoder: str | None = Field(default=None, description="encoder directory; default: the bundled encoder")
    report: str | None = Field(default=None, description="write the HTML report here")
    device: str = Field(default="auto", description=DEVICE_HELP)
    lpips: bool = Field(default=True, description="measure LPIPS when its weights are provisioned")
    thresholds: Thresholds = Field(default_factory=Thresholds, description="when the audit fails")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the archive")
    source_storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the sources")
    source_roots: list[str] = Field(default_factory=list, description=(
        "read sources only under these folders/prefixes (they replace the roots the archive records; "
        "needed for rows of format version 1, which record none)"))
    allow_http_sources: bool = Field(default=False, description="also read http(s) sources (never by default)")


# How the CLI names a job's fields: positional arguments in capitals, options as flags. Errors use
# these names (with the manifest key beside them when a manifest was given), never model names.
ARGUMENT_NAMES = {"source": "SRC", "destination": "DEST", "archive": "ARCHIVE"}
JOB_NAMES = {"CompressJob": "compress", "RestoreJob": "restore", "AuditJob": "audit", "TrainJob": "train"}
# Fields whose flag is not their name spelled with dashes (the train command's established flags).
FLAG_NAMES = {"truncation_psi": "--trunc", "truncation_cutoff": "--trunc-cutoff", "lpips_net": "--lpips",
              "out_dir": "--out", "export_dir": "--export", "sample_size": "--sample", "source_roots": "--source-root",
              "betas": "--beta1/--beta2", "glob": "--glob", "format": "--format", "rd_lambda": "--lambda"}


def field_label(field: str, manifest: str | Path | None = None) -> str:
    """``--shard-size`` / ``DEST`` for a field, plus ``(shard_size: in m.yaml)`` with a manifest."""
    parts = field.split(".")
    # A threshold's flag is its own name (--thumb-tolerance), not its group's (there is no --thresholds).
    top = parts[1] if parts[0] == "thresholds" and len(parts) > 1 else parts[0]
    label = ARGUMENT_NAMES.get(top) or FLAG_NAMES.get(top) or "--" + top.replace("_", "-")
    return f"{label} ({field}: in {manifest})" if manifest else label


_UNION_TAG = re.compile(r"^(?:str|int|float|bool|list\[.*\]|dict\[.*\]|literal\[.*\]|function-.*)$")
_EXPECTED = {"string_type": "text", "int_type": "a whole number", "int_from_float": "a whole number",
             "float_type": "a number", "bool_type": "true or false", "list_type": "a list", "dict_type": "a mapping",
             "finite_number": "a finite number", "model_type": "a mapping", "literal_error": None}


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _problems(errors: Sequence[Any], manifest: str | Path | None) -> list[str]:
    """One message per field: type mismatches of a union's members folded into one line that says
    what was given and what would do, e.g. ``--profile: expected text or a whole number or a
    list, got True (true/false)``."""
    grouped: dict[str, list[dict]] = {}
    for error in errors:
        where = ".".join(str(p) for p in error["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
        grouped.setdefault(where, []).append(error)
    out = []
    for where, errs in grouped.items():
        label = field_label(where, manifest) if where else (f"manifest {manifest}" if manifest else "the job")
        expected = [text for e in errs if (text := _EXPECTED.get(e["type"]))]
        for e in errs:
            if e["type"] == "missing":
                out.append(f"{label} is required")
            elif e["type"] == "extra_forbidden":
                out.append(f"{where}: is not a setting of this job (check its spelling"
                           f"{' in ' + str(manifest) if manifest else ''})")
            elif not _EXPECTED.get(e["type"]):
                message = e["msg"].removeprefix("Value error, ")
                out.append(f"{label}: {message}" if where or manifest else message)  # a whole-job check speaks for itself
        if expected:
            given = next(e["input"] for e in errs if _EXPECTED.get(e["type"]))
            out.append(f"{label}: expected {' or '.join(dict.fromkeys(expected))}, got {given!r} "
                       f"({_type_name(given)})")
    return list(dict.fromkeys(out))


def describe_errors(exc: ValidationError, manifest: str | Path | None = None) -> str:
    """A validation error as one line in the user's words: every problem, ``; ``-separated."""
    return "; ".join(_problems(exc.errors(), manifest))


def make_job(kind: type[BaseModel], values: dict[str, Any], manifest: str | Path | None = None) -> Any:
    """Validate ``values`` as a job of ``kind``; raise :class:`JobError` listing every problem in
    the user's words (flags and arguments, and the manifest's keys when ``manifest`` is given)."""
    odd = [repr(k) for k in values if not isinstance(k, str)]
    if odd:
        raise JobError(f"{', '.join(odd[:3])} is not a setting of this job (keys are names such as destination)")
    problem = version_problem(values.get("version"), f"manifest {manifest}" if manifest else "this job")
    if problem:
        raise JobError(problem)
    try:
        return kind.model_validate(values)
    except ValidationError as exc:
        problems = describe_errors(exc, manifest)
        command = JOB_NAMES.get(kind.__name__, kind.__name__)
        raise JobError(f"{problems} (see `sg3archive {command} --help`)") from None


def load_job(url: str | Path, kind: type[BaseModel] = CompressJob, **overrides: Any) -> Any:
    """Read a YAML manifest (any fsspec URL); ``overrides`` that are not None replace its fields."""
    doc = read_manifest(url)
    doc.update({k: v for k, v in overrides.items() if v is not None})
    return make_job(kind, doc, manifest=url)


def read_manifest(url: str | Path) -> dict[str, Any]:
    """A job manifest's settings as a mapping (strict YAML, names as keys), not yet validated."""
    from sg3archive.pipeline.strict_yaml import MAX_MANIFEST_BYTES, StrictYAMLError, load_strict_yaml

    try:
        with fsspec.open(str(url), "r", encoding="utf-8") as f:
            doc = load_strict_yaml(f.read(MAX_MANIFEST_BYTES + 1))
    except FileNotFoundError:
        raise JobError(f"job manifest {url} does not exist") from None
    except IsADirectoryError:
        raise JobError(f"job manifest {url} is a folder; --manifest takes a YAML file") from None
    except UnicodeDecodeError:
        raise JobError(f"job manifest {url} is not UTF-8 text; save it as UTF-8 YAML") from None
    except StrictYAMLError as exc:
        raise JobError(f"job manifest {url}: {exc}") from None
    except yaml.YAMLError as exc:
        raise JobError(f"job manifest {url} is not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(doc, dict):
        raise JobError(f"job manifest {url} must be a mapping of settings")
    odd = [repr(k) for k in doc if not isinstance(k, str)]
    if odd:
        raise JobError(f"job manifest {url}: {', '.join(odd[:3])} is not a setting name; keys are names such as "
                       "destination or shard_size")
    return doc


def resolve_job(kind: type[_J], job: _J | None = None, manifest: str | Path | None = None,
                overrides: dict[str, Any] | None = None, *, caller: str = "this flow") -> _J:
    """The job a flow run does: the YAML ``manifest`` with the fields ``job`` sets explicitly laid
    over it, or ``job`` itself; then ``overrides`` (fields of ``kind``; None values ignored) over
    either. Raises :class:`JobError` when neither a job nor a manifest is given."""
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    if manifest:
        given = job.model_dump(exclude_unset=True) if job is not None else {}
        return cast(_J, load_job(manifest, kind, **{**given, **extra}))
    if job is None:
        fields = ", ".join(n for n, f in kind.model_fields.items() if f.is_required()) or "its fields"
        raise JobError(f"{caller} needs a job ({kind.__name__} fields: {fields}, ...) or a manifest")
    return cast(_J, make_job(kind, {**job.model_dump(), **extra})) if extra else job
