"""The quality summary of a set of archived images, as every report shows it.

One home for what the compress summary, ``inspect``, the flow artifacts and the audit report say
about quality and size: bytes per image, fidelity at the original size (mean and worst), the mix of
representations with bytes per kind, how many images miss their contract, and the AVIF baseline
("N× smaller than AVIF at equal quality", or larger — said so).

A :class:`QualitySummary` is built from image rows (:meth:`QualitySummary.of_rows`; the archive's
own columns, so a retried task or ``inspect`` reads the same figures compress printed) and merged
across shards (:meth:`merged`). Rows written before the quality contract record no fidelity at the
original size; they are counted, and the summary says their fidelity is not recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# The row columns a summary reads (a reader may fetch just these).
SUMMARY_COLUMNS = ("representation", "payload", "image_data", "latent_bytes", "image_bytes", "contract",
                   "contract_met", "fidelity_psnr", "fidelity_ms_ssim", "fidelity_lpips", "avif_bytes", "source_name",
                   "source_uri", "image_codec", "image_quality")
LISTED = 20  # a summary of at most this many images also lists each one (the README's sample run)


@dataclass(frozen=True)
class Spread:
    """Sum, count and worst of one figure (``worst`` is the min, or the max for ``higher_is_worse``)."""

    total: float = 0.0
    count: int = 0
    worst: float | None = None
    higher_is_worse: bool = False

    def added(self, value: float) -> Spread:
        worse = self.worst is None or (value > self.worst if self.higher_is_worse else value < self.worst)
        return replace(self, total=self.total + value, count=self.count + 1, worst=value if worse else self.worst)

    def merged(self, other: Spread) -> Spread:
        if not other.count:
            return self
        out = replace(self, total=self.total + other.total, count=self.count + other.count)
        return out.added_worst(other.worst)

    def added_worst(self, value: float | None) -> Spread:
        if value is None:
            return self
        worse = self.worst is None or (value > self.worst if self.higher_is_worse else value < self.worst)
        return replace(self, worst=value) if worse else self

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass(frozen=True)
class QualitySummary:
    """Quality and size of a set of image rows (see the module docstring)."""

    images: int = 0
    stored_bytes: int = 0
    mix: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # representation -> (images, bytes)
    psnr: Spread = Spread()  # dB, over images not restored identically
    identical: int = 0  # images restored with identical pixels (PSNR infinite)
    ms_ssim: Spread = Spread()
    lpips: Spread = Spread(higher_is_worse=True)
    unmeasured: int = 0  # rows that record no fidelity at the original size (written before the contract)
    below_contract: int = 0
    contracts: tuple[str, ...] = ()  # the contracts the rows were made under (JSON), sorted
    baseline_images: int = 0  # images whose AVIF baseline was measured
    baseline_bytes: int = 0  # AVIF's bytes on them
    baseline_archive_bytes: int = 0  # the archive's bytes on the same images
    listed: tuple[tuple[str, str, int, float | None, float | None], ...] = ()  # the first LISTED images:
    # (name, representation as it reads, bytes, PSNR, MS-SSIM at the original size)

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def of_rows(cls, rows: Iterable[Mapping[str, Any]]) -> QualitySummary:
        """The summary of image rows (dicts with :data:`SUMMARY_COLUMNS`, any missing ones null)."""
        out = cls()
        for row in rows:
            out = out.added(row)
        return out

    def added(self, row: Mapping[str, Any]) -> QualitySummary:
        """This summary with one more row."""
        kind = row.get("representation") or "latent"
        latent = row.get("latent_bytes")
        if latent is None:
            payload = row.get("payload")
            latent = len(payload) if payload is not None else 0
        image = row.get("image_bytes")
        if image is None:
            data = row.get("image_data")
            image = len(data) if data is not None else 0
        stored = int(latent) + int(image)
        count, size = self.mix.get(kind, (0, 0))
        changes: dict[str, Any] = {"images": self.images + 1, "stored_bytes": self.stored_bytes + stored,
                                   "mix": {**self.mix, kind: (count + 1, size + stored)}}
        p, s, lp = row.get("fidelity_psnr"), row.get("fidelity_ms_ssim"), row.get("fidelity_lpips")
        if p is None:
            changes["unmeasured"] = self.unmeasured + 1
        elif math.isinf(p):
            changes["identical"] = self.identical + 1
        else:
            changes["psnr"] = self.psnr.added(float(p))
        if s is not None:
            changes["ms_ssim"] = self.ms_ssim.added(float(s))
        if lp is not None:
            changes["lpips"] = self.lpips.added(float(lp))
        if row.get("contract_met") is False:
            changes["below_contract"] = self.below_contract + 1
        contract = row.get("contract")
        if contract and contract not in self.contracts:
            changes["contracts"] = tuple(sorted((*self.contracts, contract)))
        if len(self.listed) < LISTED:
            name = row.get("source_name") or str(row.get("source_uri") or "?").rsplit("/", 1)[-1]
            how = kind if kind != "classical" else f"classical ({row.get('image_codec')} q{row.get('image_quality')})"
            changes["listed"] = (*self.listed, (name, how, stored, None if p is None else float(p),
                                                None if s is None else float(s)))
        if row.get("avif_bytes") is not None:
            changes.update(baseline_images=self.baseline_images + 1,
                           baseline_bytes=self.baseline_bytes + int(row["avif_bytes"]),
                           baseline_archive_bytes=self.baseline_archive_bytes + stored)
        return replace(self, **changes)

    def merged(self, other: QualitySummary) -> QualitySummary:
        """The summary of both sets of rows."""
        mix = dict(self.mix)
        for kind, (count, size) in other.mix.items():
            c, s = mix.get(kind, (0, 0))
            mix[kind] = (c + count, s + size)
        return QualitySummary(
            images=self.images + other.images, stored_bytes=self.stored_bytes + other.stored_bytes, mix=mix,
            psnr=self.psnr.merged(other.psnr), identical=self.identical + other.identical,
            ms_ssim=self.ms_ssim.merged(other.ms_ssim), lpips=self.lpips.merged(other.lpips),
            unmeasured=self.unmeasured + other.unmeasured, below_contract=self.below_contract + other.below_contract,
            contracts=tuple(sorted(set(self.contracts) | set(other.contracts))),
            baseline_images=self.baseline_images + other.baseline_images,
            baseline_bytes=self.baseline_bytes + other.baseline_bytes,
            baseline_archive_bytes=self.baseline_archive_bytes + other.baseline_archive_bytes,
            listed=(*self.listed, *other.listed)[:LISTED])

    # -- reading ------------------------------------------------------------------------------
    @property
    def bytes_per_image(self) -> float | None:
        return self.stored_bytes / self.images if self.images else None

    @property
    def avif_ratio(self) -> float | None:
        """AVIF's bytes over the archive's on the baseline images (> 1: the archive is smaller)."""
        if not self.baseline_images or not self.baseline_archive_bytes:
            return None
        return self.baseline_bytes / self.baseline_archive_bytes

    def contract_texts(self) -> list[str]:
        """The contracts, as they read (``standard (PSNR ≥ 30 dB, MS-SSIM ≥ 0.95)``)."""
        from sg3archive.quality.contract import QualityContract

        out = []
        for text in self.contracts:
            try:
                out.append(QualityContract.from_json(text).text())
            except ValueError:
                out.append("an unreadable contract")
        return out

    def fidelity_text(self) -> str:
        """Fidelity at the original size: mean and worst of each figure measured."""
        parts = []
        if self.psnr.count:
            parts.append(f"PSNR mean {self.psnr.mean:.2f} dB, worst {self.psnr.worst:.2f} dB")
        if self.identical:
            parts.append(f"{self.identical} identical")
        if self.ms_ssim.count:
            parts.append(f"MS-SSIM mean {self.ms_ssim.mean:.4f}, worst {self.ms_ssim.worst:.4f}")
        if self.lpips.count:
            parts.append(f"LPIPS mean {self.lpips.mean:.4f}, worst {self.lpips.worst:.4f}")
        text = "fidelity at original size: " + ("; ".join(parts) if parts else "not recorded")
        if self.unmeasured and parts:
            text += f" ({self.unmeasured} rows written before the quality contract record none)"
        elif self.unmeasured:
            text += " (rows written before the quality contract)"
        return text

    def mix_text(self) -> str:
        """``latent 3 (1,203 B), classical 5 (2,310 B)``."""
        return ", ".join(f"{kind} {count} ({size:,} B)" for kind, (count, size) in sorted(self.mix.items()))

    def baseline_text(self) -> str:
        """The AVIF comparison in plain words."""
        ratio = self.avif_ratio
        if ratio is None:
            return "AVIF baseline: not measured"
        where = f"on {self.baseline_images} images"
        if ratio >= 1:
            return f"{ratio:.2f}x smaller than AVIF at equal quality ({where}: {self.baseline_bytes:,} B with AVIF alone)"
        return (f"{1 / ratio:.2f}x LARGER than AVIF at equal quality ({where}: {self.baseline_bytes:,} B with AVIF "
                "alone)")

    def lines(self) -> list[str]:
        """The summary for people, one line each (nothing for an empty set)."""
        if not self.images:
            return []
        out = [f"bytes/image {self.bytes_per_image:,.0f} ({self.stored_bytes:,} B in all); representations: "
               f"{self.mix_text()}", self.fidelity_text()]
        if self.contracts:
            line = "contract: " + "; ".join(self.contract_texts())
            line += (f"; {self.below_contract} images BELOW it (only the representations allowed could be used)"
                     if self.below_contract else "; every image meets it")
            out.append(line)
        out.append(self.baseline_text())
        if self.images <= LISTED:
            out += [f"  {name}: {how}, {size:,} B, " + ("identical" if psnr is not None and math.isinf(psnr) else
                                                        "fidelity not recorded" if psnr is None else
                                                        f"PSNR {psnr:.2f} dB" + (f", MS-SSIM {ssim:.4f}" if ssim is not None
                                                                                  else ""))
                    for name, how, size, psnr, ssim in self.listed]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe figures (no infinities)."""
        return {
            "images": self.images, "stored_bytes": self.stored_bytes, "bytes_per_image": self.bytes_per_image,
            "representations": {k: {"images": c, "bytes": b} for k, (c, b) in sorted(self.mix.items())},
            "fidelity": {"psnr_mean": self.psnr.mean, "psnr_worst": self.psnr.worst, "identical": self.identical,
                         "ms_ssim_mean": self.ms_ssim.mean, "ms_ssim_worst": self.ms_ssim.worst,
                         "lpips_mean": self.lpips.mean, "lpips_worst": self.lpips.worst,
                         "unmeasured": self.unmeasured},
            "contracts": self.contract_texts(), "below_contract": self.below_contract,
            "avif_baseline": {"images": self.baseline_images, "avif_bytes": self.baseline_bytes,
                              "archive_bytes": self.baseline_archive_bytes, "ratio": self.avif_ratio},
        }


__all__ = ["SUMMARY_COLUMNS", "QualitySummary", "Spread"]
