"""The quality contract: what an archive promises about every image, and the representations an
image may be stored as.

A contract is a set of floors on the fidelity of the restored image against the original, both at
the original's size (:class:`sg3archive.metrics.fidelity.Fidelity`): ``min_psnr`` (dB),
``min_ms_ssim``, ``max_lpips``, or ``lossless`` (identical pixels). Compress stores each image as
the fewest bytes that meet it (:mod:`sg3archive.quality.choose`); the archive records the contract
(``archive.json`` and every row) and the audit checks it.

Named contracts (:data:`CONTRACTS`) are what ``--quality NAME`` picks; their floors, and why the
default is what it is, are measured by ``benchmarks/rd.py`` (README, "Quality contract").
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

# How an image is stored. "latent+residual" (the payload plus a classically coded residual) was
# measured by benchmarks/rd.py and is not built: it never beat the cheaper of latent and classical.
Representation = Literal["latent", "classical", "original"]
REPRESENTATIONS: tuple[str, ...] = get_args(Representation)
NOT_BUILT = {"latent+residual": "benchmarks/rd.py measured it (docs/rd/rd.md): on none of 56 images (generator "
                                "images and real photos) did the payload plus a WebP/AVIF-coded residual take fewer "
                                "bytes than the cheapest of latent, AVIF and WebP at any floor from 15 to 50 dB, so it "
                                "is not built"}

DEFAULT_CONTRACT = "standard"


class QualityContract(BaseModel):
    """Floors on restored-vs-original fidelity at the original size; ``None`` switches one off.
    ``name`` is the preset it came from (``custom`` when floors were given one by one)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(default="custom", description="the named contract these floors come from")
    min_psnr: float | None = Field(default=None, ge=0, description="PSNR floor (dB) of each restored image against its "
                                                                   "original, at the original size")
    min_ms_ssim: float | None = Field(default=None, ge=0, le=1, description="MS-SSIM floor of each restored image "
                                                                           "against its original, at the original size")
    max_lpips: float | None = Field(default=None, ge=0, description="LPIPS ceiling of each restored image against its "
                                                                    "original (needs the LPIPS weights)")
    lossless: bool = Field(default=False, description="restored pixels identical to the original's")

    @model_validator(mode="after")
    def _finite(self) -> QualityContract:
        for name in ("min_psnr", "min_ms_ssim", "max_lpips"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        return self

    @property
    def needs_lpips(self) -> bool:
        """Whether checking this contract needs the LPIPS weights."""
        return self.max_lpips is not None

    @property
    def floors(self) -> dict[str, Any]:
        """The floors that are set (without the name)."""
        return {k: v for k, v in self.model_dump().items() if k != "name" and v not in (None, False)}

    def shortfalls(self, psnr: float, ms_ssim: float, lpips: float | None) -> list[str]:
        """What a restored image with these figures misses, one phrase each (empty: it meets the
        contract). An LPIPS ceiling with no LPIPS measured is missed (never assumed met)."""
        out = []
        if self.lossless and psnr != math.inf:
            out.append(f"not lossless (PSNR {psnr:.2f} dB)")
        if self.min_psnr is not None and not psnr >= self.min_psnr:
            out.append(f"PSNR {psnr:.2f} dB < {self.min_psnr:g} dB")
        if self.min_ms_ssim is not None and not ms_ssim >= self.min_ms_ssim:
            out.append(f"MS-SSIM {ms_ssim:.4f} < {self.min_ms_ssim:g}")
        if self.max_lpips is not None and (lpips is None or not lpips <= self.max_lpips):
            out.append("LPIPS not measured" if lpips is None else f"LPIPS {lpips:.4f} > {self.max_lpips:g}")
        return out

    def meets(self, psnr: float, ms_ssim: float, lpips: float | None) -> bool:
        """Whether figures meet every floor (:meth:`shortfalls` is empty)."""
        return not self.shortfalls(psnr, ms_ssim, lpips)

    def text(self) -> str:
        """How the contract reads: ``standard (MS-SSIM ≥ 0.95)``."""
        parts = []
        if self.lossless:
            parts.append("lossless")
        if self.min_psnr is not None:
            parts.append(f"PSNR ≥ {self.min_psnr:g} dB")
        if self.min_ms_ssim is not None:
            parts.append(f"MS-SSIM ≥ {self.min_ms_ssim:g}")
        if self.max_lpips is not None:
            parts.append(f"LPIPS ≤ {self.max_lpips:g}")
        return f"{self.name} ({', '.join(parts) or 'no floor'})"

    def to_json(self) -> str:
        """The compact JSON a row records."""
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> QualityContract:
        """A row's recorded contract (ValueError when it is not one)."""
        try:
            return cls.model_validate_json(text, strict=False)
        except ValueError as exc:
            raise ValueError(f"not a quality contract: {' '.join(str(exc).split())[:200]}") from None


# The named contracts (--quality NAME). Their floors are justified in the README from benchmarks/rd.py.
CONTRACTS: dict[str, QualityContract] = {
    "standard": QualityContract(name="standard", min_ms_ssim=0.95, min_psnr=28.0),
    "perceptual": QualityContract(name="perceptual", max_lpips=0.10, min_ms_ssim=0.90),
    "high": QualityContract(name="high", min_psnr=38.0, min_ms_ssim=0.99),
    "lossless": QualityContract(name="lossless", lossless=True),
    "none": QualityContract(name="none"),
}
assert DEFAULT_CONTRACT in CONTRACTS


def named_contract(name: str) -> QualityContract:
    """The named contract ``name``; ValueError saying which names there are."""
    if name not in CONTRACTS:
        raise ValueError(f"unknown quality contract {name!r}; use one of {', '.join(CONTRACTS)} "
                         "or give floors (--min-psnr, --min-ms-ssim, --max-lpips)")
    return CONTRACTS[name]


def contract_of(value: object) -> object:
    """A job's ``quality`` as given (a name, a mapping of floors, or a contract) turned into what
    :class:`QualityContract` validates: a name becomes its preset; a mapping with ``name`` set to a
    preset's name takes that preset's floors with the mapping's laid over them."""
    if isinstance(value, str):
        return named_contract(value)
    if isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"] in CONTRACTS:
        return {**CONTRACTS[value["name"]].model_dump(), **value}
    return value


def check_representations(names: list[str]) -> list[str]:
    """``names`` if each is a representation this version builds (none twice, at least one);
    ValueError saying what would do otherwise."""
    if not names:
        raise ValueError(f"give at least one representation: {', '.join(REPRESENTATIONS)}")
    for name in names:
        if name in NOT_BUILT:
            raise ValueError(f"representation {name!r} is not available: {NOT_BUILT[name]}")
        if name not in REPRESENTATIONS:
            raise ValueError(f"unknown representation {name!r}; use any of {', '.join(REPRESENTATIONS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"representations listed twice: {names}")
    return names


__all__ = ["CONTRACTS", "DEFAULT_CONTRACT", "NOT_BUILT", "REPRESENTATIONS", "QualityContract", "Representation",
           "check_representations", "contract_of", "named_contract"]
