"""Choosing each image's representation: the fewest bytes that meet the contract.

Every candidate is judged by what restore would write, at the original's size, against the
original's decoded pixels (:func:`as_written`, :func:`sg3archive.metrics.fidelity.measure_fidelity`):

* ``latent``: the W+ payload; its restored image is the synthesized square mapped back to the
  original's size by the row's fit record (:func:`sg3archive.images.unfit`), as restore does;
* ``classical``: the original coded with AVIF or WebP at the lowest quality that meets the contract
  (:func:`sg3archive.images.classical.smallest_meeting`); a codec is not tried past the bytes of a
  cheaper candidate already found;
* ``original``: the source's bytes, verbatim; restored, they decode to the original's pixels, so they
  meet every contract.

When none of the allowed representations meets the contract (``--representations`` restricted),
the image is still archived, as the allowed candidate with the best fidelity found, and its row says
the contract was not met (``contract_met``): nothing is dropped.

The AVIF baseline (the bytes AVIF alone needs to meet the contract) is measured on the images the
caller asks for; the reports compare the archive with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sg3archive.images import FitInfo, thumbnail, to_tensor, unfit
from sg3archive.images.classical import CLASSICAL_CODECS, ClassicalCoding, decode_rgb, encode_rgb, smallest_meeting
from sg3archive.images.restored import restored_mode, to_restored_image
from sg3archive.metrics.fidelity import Fidelity, lpips_uint8, measure_fidelity, ms_ssim_uint8, psnr_uint8
from sg3archive.quality.contract import QualityContract

IDENTICAL = Fidelity(psnr=math.inf, ms_ssim=1.0, lpips=0.0)
BASELINE_CODEC = "avif"  # what the reports compare the archive with
FALLBACK_QUALITY = 100  # classical quality used when nothing allowed meets the contract


@dataclass(frozen=True)
class Candidate:
    """One way of storing an image, judged: its parts' bytes, the restored image's fidelity."""

    representation: str
    latent_bytes: int = 0
    data: bytes | None = None  # the classical file or the original's bytes (None for latent)
    codec: str | None = None  # "avif"/"webp", or the original's format for "original"
    quality: int | None = None  # the classical coding's quality setting
    fidelity: Fidelity = IDENTICAL
    met: bool = True

    @property
    def bytes(self) -> int:
        """What the archive stores for this image (all parts)."""
        return self.latent_bytes + (len(self.data) if self.data is not None else 0)


@dataclass(frozen=True)
class Choice:
    """The representation chosen for one image, and the AVIF baseline when it was measured
    (``baseline_bytes`` None: not measured; ``baseline_met`` False: AVIF meets the contract at no
    quality, the baseline is then the original's size)."""

    chosen: Candidate
    baseline_bytes: int | None = None
    baseline_quality: int | None = None
    baseline_met: bool | None = None


def as_written(rgb: np.ndarray, source_mode: str) -> np.ndarray:
    """The RGB pixels restore writes (as PNG) for a restored ``rgb`` of a ``source_mode`` original:
    gray sources through luma, everything else as it is."""
    if restored_mode(source_mode, "PNG") in ("RGB", "RGBA"):
        return rgb
    return np.asarray(to_restored_image(rgb, source_mode, "PNG").convert("RGB"))


def restored_thumb(rgb: np.ndarray) -> np.ndarray:
    """The ``recon_thumb`` of a row that is not latent: the 8×8 thumbnail of its restored image
    (``[H, W, 3]`` uint8 at the original size, as written); the audit recomputes it the same way."""
    return thumbnail(to_tensor(rgb))


def latent_restored(square: np.ndarray, fit: FitInfo, source_mode: str) -> np.ndarray:
    """The image restore writes for a latent row: the synthesized ``[R, R, 3]`` uint8 square at the
    original's size, in the original's mode."""
    return as_written(unfit(square, fit), source_mode)


class Chooser:
    """Judges candidates against ``contract`` and picks among ``representations``."""

    def __init__(self, contract: QualityContract, representations: Sequence[str],
                 perceptual: torch.nn.Module | None = None, device: str | torch.device = "cpu") -> None:
        self.contract = contract
        self.representations = tuple(representations)
        self.perceptual = perceptual
        self.device = device

    def measure(self, original: np.ndarray, restored: np.ndarray) -> Fidelity:
        """Fidelity of ``restored`` against ``original`` (both as written, original size)."""
        return measure_fidelity(original, restored, self.perceptual, device=self.device)

    def meets(self, fidelity: Fidelity) -> bool:
        return self.contract.meets(fidelity.psnr, fidelity.ms_ssim, fidelity.lpips)

    def passes(self, original: np.ndarray, restored: np.ndarray) -> bool:
        """Whether ``restored`` meets the contract, measuring only the figures the contract has,
        cheapest first (a search's trials; the chosen coding is then measured in full)."""
        contract = self.contract
        psnr = psnr_uint8(original, restored)
        if contract.lossless and psnr != math.inf:
            return False
        if contract.min_psnr is not None and not psnr >= contract.min_psnr:
            return False
        if contract.min_ms_ssim is not None and not ms_ssim_uint8(original, restored, self.device) >= contract.min_ms_ssim:
            return False
        if contract.max_lpips is not None:
            if self.perceptual is None:
                return False
            return lpips_uint8(original, restored, self.perceptual, device=self.device) <= contract.max_lpips
        return True

    def latent(self, original: np.ndarray, square: np.ndarray, fit: FitInfo, source_mode: str,
               payload_bytes: int) -> Candidate:
        """The latent candidate of one image from its synthesized square."""
        fidelity = self.measure(original, latent_restored(square, fit, source_mode))
        return Candidate("latent", latent_bytes=payload_bytes, fidelity=fidelity, met=self.meets(fidelity))

    def _classical(self, original: np.ndarray, source_mode: str, codec: str,
                   max_bytes: int | None) -> tuple[ClassicalCoding | None, Fidelity | None]:
        """The smallest coding with ``codec`` that meets the contract, and its fidelity."""
        try:
            found = smallest_meeting(original, codec, lambda restored: self.passes(
                original, as_written(restored, source_mode)), max_bytes=max_bytes)
        except (RuntimeError, ValueError, OSError):  # a size or shape the codec's library refuses (AVIF 1×100000)
            return None, None
        if found is None:
            return None, None
        return found, self.measure(original, as_written(found.restored, source_mode))

    def choose(self, original: np.ndarray, source: bytes, source_format: str, source_mode: str,
               latent: Candidate | None, baseline: bool = False) -> Choice:
        """The fewest-bytes candidate that meets the contract among the allowed representations
        (``latent``: the latent candidate, when it was made); with ``baseline``, the AVIF baseline
        is measured too (it costs a full AVIF search)."""
        meeting: list[Candidate] = [latent] if latent is not None and latent.met else []
        result_baseline: tuple[int | None, int | None, bool | None] = (None, None, None)
        allowed = self.representations

        def best() -> int | None:
            return min(c.bytes for c in meeting) if meeting else None

        codecs: list[str] = list(CLASSICAL_CODECS) if "classical" in allowed else []
        if baseline and BASELINE_CODEC not in codecs:
            codecs.insert(0, BASELINE_CODEC)
        elif baseline:  # the baseline's full search first: its result bounds the others
            codecs.remove(BASELINE_CODEC)
            codecs.insert(0, BASELINE_CODEC)
        for codec in codecs:
            full = baseline and codec == BASELINE_CODEC
            cheapest = best()
            found, fidelity = self._classical(original, source_mode, codec, None if full else
                                              (cheapest - 1 if cheapest is not None else None))
            if full:
                result_baseline = ((len(found.data), found.quality, True) if found is not None
                                   else (len(source), None, False))
            if found is not None and fidelity is not None and "classical" in allowed:
                meeting.append(Candidate("classical", data=found.data, codec=codec, quality=found.quality,
                                         fidelity=fidelity, met=True))
        if "original" in allowed:
            meeting.append(Candidate("original", data=source, codec=(source_format or "").lower() or None))
        if meeting:
            chosen = min(meeting, key=lambda c: (c.bytes, _ORDER[c.representation]))
        else:
            chosen = self._fallback(original, source_mode, latent)
        return Choice(chosen, *result_baseline)

    def _fallback(self, original: np.ndarray, source_mode: str, latent: Candidate | None) -> Candidate:
        """Nothing allowed meets the contract: the allowed candidate with the best fidelity."""
        tried: list[Candidate] = [latent] if latent is not None else []
        for codec in CLASSICAL_CODECS if "classical" in self.representations else ():
            try:
                data = encode_rgb(original, codec, FALLBACK_QUALITY)
                fidelity = self.measure(original, as_written(decode_rgb(data), source_mode))
            except (RuntimeError, ValueError, OSError):  # the codec refuses this size: the next one
                continue
            tried.append(Candidate("classical", data=data, codec=codec, quality=FALLBACK_QUALITY, fidelity=fidelity,
                                   met=self.meets(fidelity)))
            break
        if not tried:
            raise ValueError("no representation to fall back to")
        return max(tried, key=lambda c: (c.fidelity.psnr, c.fidelity.ms_ssim))


_ORDER = {"latent": 0, "classical": 1, "original": 2}  # ties go to the first (the latent path)

__all__ = ["BASELINE_CODEC", "Candidate", "Choice", "Chooser", "as_written", "latent_restored", "restored_thumb"]
