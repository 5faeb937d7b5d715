"""Archive job specifications: what a compress or restore run does, as validated data.

The same models back the YAML manifests in ``manifests/``, the CLI flags and the Prefect flows'
parameters, so a job means the same thing however it is started.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sg3archive.errors import Sg3ArchiveError


class JobError(Sg3ArchiveError):
    """A job specification is invalid; the message lists every problem."""


class _Spec(BaseModel):
    """Strict: a value of the wrong type is an error, never converted (``profile: yes`` is not
    1 bit, ``shard_size: 2.5`` is not 2), whether it came from a manifest, a flow or Python."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

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
    pattern: str | None = Field(None, description="glob under source, e.g. '**/*.png' (default: all image files)")
    network: str | None = Field(None, description="generator file/directory; default: the bundled network")
    encoder: str | None = Field(None, description="encoder directory; default: the bundled encoder")
    profile: str | int | list[int] = Field("balanced", description="codec profile: preset name, uniform bits, or bits per layer")
    coder: Literal["ans", "range", "arithmetic"] = "ans"
    fit: Literal["crop", "pad", "stretch"] = Field("crop", description="how images are fitted to the generator's square")
    shard_size: int = Field(256, ge=1, le=1_000_000, description="images per Parquet shard (one task per shard)")
    batch_size: int = Field(16, ge=1, le=4096)
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto")
    refine_steps: int = Field(0, ge=0, le=10_000, description="encode-time latent refinement steps (0 = off)")
    calibration_images: int = Field(256, ge=0, description="collection images encoded to fit the codec model")
    max_pixels: int = Field(64_000_000, ge=1, description="larger images are rejected (decompression bombs)")
    lpips: bool = Field(False, description="also record LPIPS at encode time (needs the LPIPS weights)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the destination")
    source_storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the source")
    task_runner: Literal["thread", "dask"] = Field("thread", description="Prefect task runner of the compress flow")
    workers: int = Field(1, ge=1, le=1024, description="parallel shard tasks (threads, or Dask workers)")
    dask_address: str | None = Field(None, description="with task_runner dask: a running scheduler, e.g. tcp://host:8786 "
                                                       "(default: a local cluster of `workers` workers)")

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str | int | list[int]) -> str | int | list[int]:
        from sg3archive.codec.profiles import PRESETS

        if isinstance(value, str) and value not in PRESETS:
            raise ValueError(f"unknown profile {value!r}; use one of {sorted(PRESETS)}, an int (4-12) or a list")
        if isinstance(value, int) and not 1 <= value <= 16:
            raise ValueError("uniform bits must be in 1..16")
        return value


class RestoreJob(_Spec):
    """Regenerate images from an archive into ``destination``."""

    archive: str
    destination: str
    ids: list[str] | None = Field(None, description="restore only these image ids (every one must be in the archive)")
    glob: str | None = Field(None, description="restore only images whose name relative to the compressed source "
                                               "(e.g. 'more/*.png'), or whose full source URI, matches this glob")
    shard: str | None = Field(None, description="restore only this images shard (file name)")
    format: Literal["png", "webp", "jpeg"] = "png"
    size: Literal["generator", "original"] = Field("original", description="output at the generator's resolution or the original size")
    network: str | None = None
    encoder: str | None = None
    batch_size: int = Field(16, ge=1, le=4096)
    device: str = "auto"
    overwrite: bool = Field(False, description="rewrite outputs that already exist (default: skip them, resumable)")
    storage_options: dict[str, Any] = Field(default_factory=dict)
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


class AuditThresholds(_Spec):
    """When an audit fails (see ``sg3archive.audit.Thresholds``); null switches a check off."""

    min_psnr: float | None = None
    max_psnr_drop: float | None = 0.5
    min_ms_ssim: float | None = None
    max_lpips: float | None = None
    thumb_tolerance: int = Field(2, ge=0, le=255)


class AuditJob(_Spec):
    """Audit the archive at ``archive`` (the nightly job)."""

    archive: str
    sample_size: int = Field(32, ge=0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="default: the date, YYYYMMDD (a new sample each night)")
    network: str | None = None
    encoder: str | None = None
    report: str | None = Field(None, description="write the HTML report here")
    device: str = "auto"
    lpips: bool = Field(True, description="measure LPIPS when its weights are provisioned")
    thresholds: AuditThresholds = Field(default_factory=AuditThresholds)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    source_storage_options: dict[str, Any] = Field(default_factory=dict)
    source_roots: list[str] = Field(default_factory=list, description=(
        "read sources only under these folders/prefixes (they replace the roots the archive records; "
        "needed for rows of format version 1, which record none)"))
    allow_http_sources: bool = Field(False, description="also read http(s) sources (never by default)")


# How the CLI names a job's fields: positional arguments in capitals, options as flags. Errors use
# these names (with the manifest key beside them when a manifest was given), never model names.
ARGUMENT_NAMES = {"source": "SRC", "destination": "DEST", "archive": "ARCHIVE"}
JOB_NAMES = {"CompressJob": "compress", "RestoreJob": "restore", "AuditJob": "audit"}


def field_label(field: str, manifest: str | Path | None = None) -> str:
    """``--shard-size`` / ``DEST`` for a field, plus ``(shard_size: in m.yaml)`` with a manifest."""
    top = field.split(".")[0]
    label = ARGUMENT_NAMES.get(top) or "--" + top.replace("_", "-")
    return f"{label} ({field}: in {manifest})" if manifest else label


_UNION_TAG = re.compile(r"^(?:str|int|float|bool|list\[.*\]|dict\[.*\]|literal\[.*\]|function-.*)$")
_EXPECTED = {"string_type": "text", "int_type": "a whole number", "int_from_float": "a whole number",
             "float_type": "a number", "bool_type": "true or false", "list_type": "a list", "dict_type": "a mapping",
             "finite_number": "a finite number", "model_type": "a mapping", "literal_error": None}


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _problems(errors: list[dict], manifest: str | Path | None) -> list[str]:
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
        expected = [_EXPECTED[e["type"]] for e in errs if _EXPECTED.get(e["type"])]
        for e in errs:
            if e["type"] == "missing":
                out.append(f"{label} is required")
            elif e["type"] == "extra_forbidden":
                out.append(f"{where}: is not a setting of this job (check its spelling"
                           f"{' in ' + str(manifest) if manifest else ''})")
            elif not _EXPECTED.get(e["type"]):
                out.append(f"{label}: {e['msg'].removeprefix('Value error, ')}")
        if expected:
            given = next(e["input"] for e in errs if _EXPECTED.get(e["type"]))
            out.append(f"{label}: expected {' or '.join(dict.fromkeys(expected))}, got {given!r} "
                       f"({_type_name(given)})")
    return list(dict.fromkeys(out))


def make_job(kind: type[_Spec], values: dict[str, Any], manifest: str | Path | None = None) -> Any:
    """Validate ``values`` as a job of ``kind``; raise :class:`JobError` listing every problem in
    the user's words (flags and arguments, and the manifest's keys when ``manifest`` is given)."""
    odd = [repr(k) for k in values if not isinstance(k, str)]
    if odd:
        raise JobError(f"{', '.join(odd[:3])} is not a setting of this job (keys are names such as destination)")
    try:
        return kind(**values)
    except ValidationError as exc:
        problems = "; ".join(_problems(exc.errors(), manifest))
        command = JOB_NAMES.get(kind.__name__, kind.__name__)
        raise JobError(f"{problems} (see `sg3archive {command} --help`)") from None


def load_job(url: str | Path, kind: type[_Spec] = CompressJob, **overrides: Any) -> Any:
    """Read a YAML manifest (any fsspec URL); ``overrides`` replace its fields (CLI flags)."""
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
    doc.update({k: v for k, v in overrides.items() if v is not None})
    return make_job(kind, doc, manifest=url)
