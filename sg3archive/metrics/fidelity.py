"""Fidelity of a restored image to its original, measured at the original size in 8-bit RGB.

This is the one place the quality contract's figures come from: every PSNR, MS-SSIM and LPIPS the
product records, prints or audits is :func:`measure_fidelity` of the decoded original against the
restored image, both ``[H, W, 3]`` uint8 at the original's full size (never a crop, a downscale or
the generator's square). The rules, each chosen so the figure exists for *any* image size a file
system can hold and costs bounded memory:

* **PSNR**: ``10 log10(255² / MSE)`` over every pixel and channel. The squared error is summed
  exactly in int64 over row strips (no float32 accumulation, no whole-image int64 copy);
  ``math.inf`` when the images are identical.
* **MS-SSIM**: the figure of :func:`sg3archive.metrics.quality.ms_ssim` (torchmetrics, the reference:
  11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03, as many scales as
  :func:`~sg3archive.metrics.quality.ms_ssim_scales` allows, their weights rescaled to sum to 1)
  whenever the shorter side is at least 11 px, computed here so that large photos are cheap. As in
  torchmetrics: every scale but the last contributes the mean contrast-structure term over the
  positions where the window fits (torchmetrics reflects by 5 px, then crops that border away), the
  last scale the mean SSIM over every pixel of the image reflected by 5 px; means run over pixels
  and channels and are clipped at 0 (``normalize="relu"``); scales are 2x2 averages, an odd last
  row or column dropped. Here: the blur is two 1-D passes of 11 taps (not one 2-D pass of 121), the
  scales are kept as exact integer sums of the uint8 pixels (uint16), and each scale is read in
  tiles of output pixels with a 10-px halo, each tile's five moment maps reduced to a sum before the
  next, so memory is a few MB of tiles plus a quarter-size copy of the pair. Agrees with
  ``quality.ms_ssim`` within 1e-4 (float32 rounding; ~2e-6 measured). On one thread of a busy
  2-core machine (``benchmarks/fidelity_speed.py``) a 4000x3000 pair took 3.4 s (1.8 s of CPU) and
  added 44 MB at peak, where torchmetrics took 15 s (7.6 s of CPU) and added 3.7 GB.
  Below 11 px (1..10 px, e.g. 1x1 or 5x300) it is single-scale SSIM with the same Gaussian
  (sigma 1.5) truncated to the largest odd window that fits, ``k = side`` if odd else
  ``side - 1`` (so a 1- or 2-px side uses a 1-px window: luminance term only), at every pixel of
  the image reflected at its borders by ``(k - 1) / 2`` px, variances clipped at 0, mean over
  pixels and channels, clipped at 0. That is torchmetrics' own single-scale computation, so with
  ``k = 11`` it equals ``ms_ssim`` with one scale (tested at 11 px). Identical images give exactly
  1.0 (checked on the pixels, not left to float rounding).
* **LPIPS** (only when a :class:`~sg3archive.metrics.LPIPS` instance is passed): computed on tiles
  of at most :data:`LPIPS_TILE` px a side and averaged weighted by tile area (pixels of the
  original). Each axis is cut into ``ceil(length / tile)`` near-equal pieces, so no sliver tile is
  ever produced; an image within one tile is measured whole (the same value as LPIPS of the whole
  image). Tiles carry no margin: the network sees zero padding at tile edges, which moves the
  figure slightly at 512-px tiles and much more at smaller ones (figures at :data:`LPIPS_TILE`).
  An image whose shorter side is under the network's minimum (``LPIPS_MIN_SIZE``: 31 px for
  AlexNet, 16 for VGG) is upsampled by the smallest integer factor that reaches it,
  nearest-neighbour on both axes (every original pixel weighs the same; the aspect ratio stays),
  tile by tile. Memory is one tile's activations, whatever the image size.

:class:`Fidelity` is the frozen result; :meth:`Fidelity.to_dict` is its JSON form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sg3archive.metrics.quality import LPIPS_MIN_SIZE, MS_SSIM_BETAS, MS_SSIM_KERNEL, MS_SSIM_SIGMA, ms_ssim_scales

# LPIPS tile side (px of the network's input). Smaller tiles drift from whole-image LPIPS (AlexNet, JPEG q20,
# measured on four photos 400..741 px: 512-px tiles within 3 %, 256-px tiles up to -27 %, 128-px up to -63 %),
# so tiles are as large as memory allows: AlexNet at 1024² needs a few hundred MB.
LPIPS_TILE = 1024
# Rows summed at a time by the exact PSNR (bounds the int64 temporaries to a strip's).
_PSNR_STRIP_VALUES = 1 << 22
# SSIM's stabilising constants for data in [0, 1] (K1 = 0.01, K2 = 0.03), as torchmetrics uses them.
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2


@dataclass(frozen=True)
class Fidelity:
    """How close a restored image is to its original, at the original size.

    Attributes:
        psnr: dB over all pixels and channels, peak 255; ``math.inf`` when identical.
        ms_ssim: in [0, 1]; exactly 1.0 when identical.
        lpips: LPIPS distance (0 when identical), or ``None`` when not measured.
    """

    psnr: float
    ms_ssim: float
    lpips: float | None

    @property
    def identical(self) -> bool:
        """The restored pixels equal the original's (PSNR is infinite)."""
        return math.isinf(self.psnr)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: ``{"psnr", "identical", "ms_ssim", "lpips"}``.

        JSON has no infinity, so the rule is: ``"psnr"`` is ``None`` exactly when the images are
        identical, and ``"identical"`` says so explicitly (``True``); otherwise ``"psnr"`` is the
        finite dB value and ``"identical"`` is ``False``. ``"lpips"`` is ``None`` when not measured.
        """
        return {
            "psnr": None if self.identical else float(self.psnr),
            "identical": self.identical,
            "ms_ssim": float(self.ms_ssim),
            "lpips": None if self.lpips is None else float(self.lpips),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fidelity:
        """The inverse of :meth:`to_dict` (``"psnr": None`` with ``"identical": True`` reads as inf)."""
        psnr = data.get("psnr")
        if psnr is None:
            if data.get("identical") is not True:
                raise ValueError("fidelity record has psnr None but is not marked identical")
            psnr = math.inf
        lpips = data.get("lpips")
        return cls(psnr=float(psnr), ms_ssim=float(data["ms_ssim"]), lpips=None if lpips is None else float(lpips))


def _check_images(original: np.ndarray, restored: np.ndarray) -> None:
    for name, rgb in (("original", original), ("restored", restored)):
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            got = f"{rgb.dtype} {tuple(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise ValueError(f"{name} must be a uint8 array [H, W, 3], got {got}")
    if original.shape != restored.shape:
        raise ValueError(
            f"original and restored must have the same shape, got {tuple(original.shape)} and {tuple(restored.shape)}"
        )
    if original.shape[0] == 0 or original.shape[1] == 0:
        raise ValueError(f"images have no pixels (shape {tuple(original.shape)})")


def psnr_uint8(original: np.ndarray, restored: np.ndarray) -> float:
    """PSNR in dB (peak 255) of two same-shape uint8 arrays; the squared error is summed exactly."""
    _check_images(original, restored)
    rows = max(1, _PSNR_STRIP_VALUES // max(1, original[0].size))
    total = 0
    for top in range(0, original.shape[0], rows):
        diff = original[top:top + rows].astype(np.int32) - restored[top:top + rows].astype(np.int32)
        np.multiply(diff, diff, out=diff)  # at most 255² per value: int32 holds it
        total += int(diff.sum(dtype=np.int64))
    if total == 0:
        return math.inf
    mse = total / original.size
    return float(10.0 * math.log10(255.0**2 / mse))


def _to_unit_tensor(rgb: np.ndarray, device: str | torch.device) -> Tensor:
    """``[1, 3, H, W]`` float32 in [0, 1] on ``device``."""
    pixels = np.ascontiguousarray(rgb)
    if not pixels.flags.writeable:  # torch.from_numpy warns on read-only arrays (Pillow's are); uint8: a cheap copy
        pixels = pixels.copy()
    return torch.from_numpy(pixels).to(device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def _small_ssim(a: Tensor, b: Tensor) -> float:
    """Single-scale SSIM for a shorter side under 11 px (rule in the module docstring); a, b in [0, 1]."""
    side = min(a.shape[2], a.shape[3])
    k = side if side % 2 else side - 1
    k = min(k, MS_SSIM_KERNEL)
    dist = torch.arange(k, dtype=torch.float32, device=a.device) - (k - 1) / 2
    g = torch.exp(-0.5 * (dist / MS_SSIM_SIGMA) ** 2)
    g = g / g.sum()
    channels = a.shape[1]
    kh = g.reshape(1, 1, k, 1).repeat(channels, 1, 1, 1)
    kw = g.reshape(1, 1, 1, k).repeat(channels, 1, 1, 1)

    pad = (k - 1) // 2

    def blur(x: Tensor) -> Tensor:
        if pad:
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        x = torch.nn.functional.conv2d(x, kh, groups=channels)
        return torch.nn.functional.conv2d(x, kw, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = (blur(a * a) - mu_a**2).clamp(min=0.0)
    var_b = (blur(b * b) - mu_b**2).clamp(min=0.0)
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mu_a**2 + mu_b**2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    )
    return float(ssim_map.mean().clamp(min=0.0))


# MS-SSIM's moment maps are computed a tile at a time: (rows, columns) of output pixels per tile. On the CPU a
# tile's dozen float32 maps stay within a core's L2 cache (2 MiB here: 32 x 1024 px measured ~2x faster per pixel
# than whole-width strips); an accelerator takes larger tiles (fewer kernel launches).
_MS_SSIM_TILE = (32, 1024)
_MS_SSIM_TILE_ACCEL = (512, 8192)


def _gaussian_taps() -> tuple[float, ...]:
    """The 1-D window of :data:`MS_SSIM_KERNEL` taps, sigma :data:`MS_SSIM_SIGMA`, summing to 1 (torchmetrics')."""
    half = (MS_SSIM_KERNEL - 1) / 2
    weights = [math.exp(-0.5 * ((i - half) / MS_SSIM_SIGMA) ** 2) for i in range(MS_SSIM_KERNEL)]
    return tuple(w / sum(weights) for w in weights)


_TAPS = _gaussian_taps()


def _blur_valid(x: Tensor, channels: int) -> Tensor:
    """Separable Gaussian blur, valid part only: ``[R, W * C]`` (rows of interleaved channels) to
    ``[R - 10, (W - 10) * C]``; the window is symmetric, so mirrored taps are added before weighting."""
    span, mid = MS_SSIM_KERNEL - 1, (MS_SSIM_KERNEL - 1) // 2
    rows = x.shape[0] - span
    out = x[mid:mid + rows] * _TAPS[mid]
    pair = torch.empty_like(out)
    for k in range(mid):
        torch.add(x[k:k + rows], x[span - k:span - k + rows], out=pair)
        out.add_(pair, alpha=_TAPS[k])
    cols = out.shape[1] - span * channels
    blurred = out[:, mid * channels:mid * channels + cols] * _TAPS[mid]
    pair = torch.empty_like(blurred)
    for k in range(mid):
        torch.add(out[:, k * channels:k * channels + cols], out[:, (span - k) * channels:(span - k) * channels + cols],
                  out=pair)
        blurred.add_(pair, alpha=_TAPS[k])
    return blurred


def _tile_tensor(pixels: np.ndarray, device: torch.device) -> Tensor:
    """An integer ``[R, W, C]`` tile as float32 ``[R, W * C]`` on ``device`` (integers travel, floats are made there)."""
    rows = pixels.shape[0]
    if device.type == "cpu":
        return torch.from_numpy(pixels.astype(np.float32)).reshape(rows, -1)
    return torch.from_numpy(np.array(pixels)).to(device).float().reshape(rows, -1)


def _mean_similarity(a: np.ndarray, b: np.ndarray, scale: float, luminance: bool, device: torch.device,
                     tile: tuple[int, int] | None = None) -> float:
    """Mean over pixels and channels of SSIM's contrast-structure map (``luminance=False``) or of the
    whole SSIM map (``luminance=True``), at every position where the 11-px window fits in ``[H, W, C]``.

    ``a`` and ``b`` hold pixel values times ``scale`` (integers: pooled sums of uint8 pixels); the
    constants are scaled to match, so the figure is that of the images divided by ``scale``. The output
    is cut into tiles of ``tile = (rows, columns)`` (default :data:`_MS_SSIM_TILE`), each read with a
    halo of ``MS_SSIM_KERNEL - 1`` px, so memory is one tile's maps however large the image; a tile's
    five moment maps are reduced to a sum before the next tile is read.
    """
    height, width, channels = a.shape
    span = MS_SSIM_KERNEL - 1
    out_rows, out_cols = height - span, width - span
    c1, c2 = (0.01 * scale) ** 2, (0.03 * scale) ** 2
    if tile is None:
        tile = _MS_SSIM_TILE if device.type == "cpu" else _MS_SSIM_TILE_ACCEL
    total = 0.0
    for top in range(0, out_rows, tile[0]):
        bottom = min(top + tile[0], out_rows)
        for left in range(0, out_cols, tile[1]):
            right = min(left + tile[1], out_cols)
            x, y = (_tile_tensor(img[top:bottom + span, left:right + span], device) for img in (a, b))
            mu_x, mu_y = _blur_valid(x, channels), _blur_valid(y, channels)
            var_x = _blur_valid(x * x, channels).sub_(mu_x * mu_x).clamp_(min=0.0)
            var_y = _blur_valid(y * y, channels).sub_(mu_y * mu_y).clamp_(min=0.0)
            cov = _blur_valid(x.mul_(y), channels).sub_(mu_x * mu_y)
            del x, y
            # contrast-structure (2 cov + c2) / (var_x + var_y + c2), built in place in cov
            sim = cov.mul_(2).add_(c2).div_(var_x.add_(var_y).add_(c2))
            del var_x, var_y
            if luminance:  # times (2 mu_x mu_y + c1) / (mu_x² + mu_y² + c1)
                sim.mul_((mu_x * mu_y).mul_(2).add_(c1))
                sim.div_(mu_x.mul_(mu_x).add_(mu_y.mul_(mu_y)).add_(c1))
            total += float(sim.sum(dtype=torch.float64))
    return total / (out_rows * out_cols * channels)


def _pool_sums(img: np.ndarray) -> np.ndarray:
    """2x2 sums (uint16) of ``[H, W, C]`` integers, an odd last row or column dropped (torchmetrics'
    ``avg_pool2d(2)`` times 4: integer sums stay exact through the five scales, 255 * 4**4 < 2**16)."""
    rows, cols = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    out = img[0:rows:2, 0:cols:2].astype(np.uint16)
    out += img[1:rows:2, 0:cols:2]
    out += img[0:rows:2, 1:cols:2]
    out += img[1:rows:2, 1:cols:2]
    return out


def _ms_ssim_strips(original: np.ndarray, restored: np.ndarray, device: torch.device) -> float:
    """MS-SSIM of two ``[H, W, 3]`` uint8 images (shorter side >= 11): :func:`quality.ms_ssim`'s figure.

    torchmetrics (``normalize="relu"``) at each scale but the last keeps only the mean contrast-structure
    term over the positions where the window fits (its reflection padding is cropped away), at the last
    scale only the mean SSIM over every pixel of the image reflected by 5 px; each mean is clipped at 0
    and the product of ``mean ** beta`` is the figure. Scales are 2x2 means (odd edges dropped), kept
    here as exact integer sums.
    """
    scales = ms_ssim_scales(original.shape[0], original.shape[1])
    betas = MS_SSIM_BETAS[:scales]
    value = 1.0
    a: np.ndarray = original
    b: np.ndarray = restored
    pad = (MS_SSIM_KERNEL - 1) // 2
    for level, beta in enumerate(betas):
        scale = 255.0 * 4**level
        last = level == scales - 1
        if last:
            reflect = ((pad, pad), (pad, pad), (0, 0))
            mean = _mean_similarity(np.pad(a, reflect, mode="reflect"), np.pad(b, reflect, mode="reflect"),
                                    scale, True, device)
        else:
            mean = _mean_similarity(a, b, scale, False, device)
        value *= max(0.0, mean) ** (beta / sum(betas))
        if not last:
            a, b = _pool_sums(a), _pool_sums(b)
    return value


def ms_ssim_uint8(original: np.ndarray, restored: np.ndarray, device: str | torch.device = "cpu") -> float:
    """MS-SSIM in [0, 1] of two same-shape ``[H, W, 3]`` uint8 images, defined for any size (module docstring)."""
    _check_images(original, restored)
    if np.array_equal(original, restored):
        return 1.0
    with torch.inference_mode():
        if min(original.shape[:2]) < MS_SSIM_KERNEL:
            value = _small_ssim(_to_unit_tensor(original, device), _to_unit_tensor(restored, device))
        else:
            value = _ms_ssim_strips(original, restored, torch.device(device))
    return min(1.0, max(0.0, value))


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    """``ceil(length / tile)`` near-equal ``(start, stop)`` pieces covering ``range(length)``."""
    count = max(1, math.ceil(length / tile))
    edges = [round(i * length / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def lpips_uint8(original: np.ndarray, restored: np.ndarray, perceptual: torch.nn.Module, *,
                tile: int = LPIPS_TILE, device: str | torch.device = "cpu") -> float:
    """LPIPS of two same-shape ``[H, W, 3]`` uint8 images at their size, tiled (rule in the module docstring).

    Args:
        perceptual: an :class:`sg3archive.metrics.LPIPS` (its ``net_name`` gives the minimum input side).
        tile: the most px a side of one network input; at least 64.
        device: where tiles are sent (the model must already be there).
    """
    _check_images(original, restored)
    min_size = LPIPS_MIN_SIZE.get(getattr(perceptual, "net_name", "alex"), max(LPIPS_MIN_SIZE.values()))
    if tile < 2 * min_size:
        raise ValueError(f"LPIPS tile must be at least {2 * min_size} px, got {tile}")
    height, width = original.shape[:2]
    factor = max(1, math.ceil(min_size / min(height, width)))
    step = max(1, tile // factor)
    total = 0.0
    with torch.inference_mode():
        for top, bottom in _spans(height, step):
            for left, right in _spans(width, step):
                pair = []
                for rgb in (original, restored):
                    x = _to_unit_tensor(rgb[top:bottom, left:right], device).mul_(2).sub_(1)
                    if factor > 1:
                        x = x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
                    pair.append(x)
                value = float(perceptual(pair[0], pair[1])[0])
                total += value * (bottom - top) * (right - left)
    return total / (height * width)


def measure_fidelity(original: np.ndarray, restored: np.ndarray, perceptual: torch.nn.Module | None = None,
                     device: str | torch.device = "cpu") -> Fidelity:
    """PSNR, MS-SSIM and (when ``perceptual`` is given) LPIPS of ``restored`` against ``original``.

    Args:
        original, restored: ``[H, W, 3]`` uint8 arrays of one shape, the original's full size.
        perceptual: an :class:`sg3archive.metrics.LPIPS` instance, or ``None`` to skip LPIPS.
        device: where MS-SSIM and LPIPS run.

    Raises:
        ValueError: not uint8 ``[H, W, 3]``, empty, or the two shapes differ (both are named).
    """
    _check_images(original, restored)
    lpips = None
    if perceptual is not None:
        lpips = 0.0 if np.array_equal(original, restored) else lpips_uint8(original, restored, perceptual,
                                                                            device=device)
    return Fidelity(psnr=psnr_uint8(original, restored), ms_ssim=ms_ssim_uint8(original, restored, device), lpips=lpips)
