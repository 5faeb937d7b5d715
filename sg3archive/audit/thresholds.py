"""When an audit fails: the one thresholds model and everything said about each threshold.

:class:`Thresholds` is the audit job's ``thresholds`` mapping (``sg3archive.pipeline.jobs.AuditThresholds``
is this class) and what :func:`sg3archive.audit.run_audit` checks against. Each threshold's wording —
its name when off, how it reads when set, its unit, when it fails the audit, whether it needs a
re-read source — lives in :data:`THRESHOLD_INFO`; the summary, the Markdown record and the HTML
report all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class Thresholds(BaseModel):
    """When an audit fails; ``None`` (YAML ``null``) switches a check off."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    min_psnr: float | None = Field(default=None, description="fail below this PSNR (dB) of a reconstruction vs its source")
    max_psnr_drop: float | None = Field(default=0.5, description="fail when a reconstruction's PSNR is this many dB below "
                                                         "its encode-time PSNR")
    min_ms_ssim: float | None = Field(default=None, description="fail below this MS-SSIM of a reconstruction vs its source")
    max_lpips: float | None = Field(default=None, description="fail above this LPIPS vs the source (checked only when the "
                                                      "LPIPS weights are provisioned)")
    thumb_tolerance: int = Field(default=2, ge=0, le=255, description="largest difference of the 8x8 thumbnail vs encode "
                                                              "time, in 0..255 levels")


@dataclass(frozen=True)
class ThresholdInfo:
    """How one threshold is named and explained."""

    label: str  # its name, e.g. when it is off: "min PSNR"
    phrase: str  # how it reads when set: a format string taking the value
    unit: str  # "dB", "levels" or ""
    fails_when: str  # the audit fails when ...
    needs_source: bool  # a quality threshold: checked only on rows whose source could be re-read


# In the order a verdict lists them.
THRESHOLD_INFO: dict[str, ThresholdInfo] = {
    "max_psnr_drop": ThresholdInfo("max PSNR drop", "PSNR drop ≤ {:g} dB vs encode time", "dB",
                                   "a reconstruction's PSNR is more than this below its encode-time PSNR", True),
    "thumb_tolerance": ThresholdInfo("thumbnail tolerance", "thumbnail difference ≤ {:g} levels", "levels",
                                     "the reconstruction's 8×8 thumbnail differs from the encode-time one by more",
                                     False),
    "min_psnr": ThresholdInfo("min PSNR", "PSNR ≥ {:g} dB", "dB",
                              "a reconstruction's PSNR against its source is below this", True),
    "min_ms_ssim": ThresholdInfo("min MS-SSIM", "MS-SSIM ≥ {:g}", "",
                                 "a reconstruction's MS-SSIM against its source is below this", True),
    "max_lpips": ThresholdInfo("max LPIPS", "LPIPS ≤ {:g}", "",
                               "a reconstruction's LPIPS against its source is above this", True),
}
assert set(THRESHOLD_INFO) == set(Thresholds.model_fields)

# The views older code reads (derived, not restated):
# field: (its name when it is off, how it reads when set)
THRESHOLD_TEXT: dict[str, tuple[str, str]] = {k: (t.label, t.phrase) for k, t in THRESHOLD_INFO.items()}
# the thresholds that need a compared (re-read) source, in the order max_psnr_drop, min_psnr, min_ms_ssim, max_lpips
QUALITY_THRESHOLDS: tuple[str, ...] = tuple(k for k, t in THRESHOLD_INFO.items() if t.needs_source)
# threshold: (unit, fails the audit when)
THRESHOLD_MEANING: dict[str, tuple[str, str]] = {k: (t.unit, t.fails_when) for k, t in THRESHOLD_INFO.items()}

__all__ = ["QUALITY_THRESHOLDS", "THRESHOLD_INFO", "THRESHOLD_MEANING", "THRESHOLD_TEXT", "ThresholdInfo", "Thresholds"]
