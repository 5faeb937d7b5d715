"""Lanczos resampling with bounded memory: Pillow's resize, and the same filter computed in numpy
strips when one Pillow call over a very long or very wide output would need far more memory
than the output itself (a 1×38,000,000 restore).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_ONE_CALL_PIXELS = 1 << 24
_ONE_CALL_LENGTH = 1 << 16
_STRIP_PIXELS = 1 << 18
_STRIP_LENGTH = 1 << 12
_ACROSS_PIXELS = 1 << 24


def resample_into(out: np.ndarray, rgb: np.ndarray, region: tuple[float, float, float, float],
                   size: tuple[int, int], window: tuple[int, int, int, int]) -> np.ndarray:
    """Write into ``out`` (``[y1-y0, x1-x0, 3]``) the ``window`` ``(x0, y0, x1, y1)`` of ``rgb``'s
    float ``region`` resampled (Lanczos) to ``size`` ``(width, height)``; returns ``out``.

    What one Pillow ``resize(size, LANCZOS, box=region)`` gives, computed in strips: Pillow
    filters rows first, then columns. Along the axis that is cut, :func:`lanczos_pass` applies
    Pillow's own filter (same centres, same fixed-point weights) to just the strip's output
    pixels; the other axis is one Pillow pass. (Pillow's ``box=`` on a strip is not enough: a
    strip spanning only a few source pixels comes out up to ~40 levels off.)
    """
    x0, y0, x1, y1 = window
    rx0, ry0, rx1, ry1 = region
    w, h = x1 - x0, y1 - y0
    image = Image.fromarray(np.ascontiguousarray(rgb))
    side_y = rgb.shape[0]
    if w * h <= _ONE_CALL_PIXELS and max(w, h) <= _ONE_CALL_LENGTH and window == (0, 0, size[0], size[1]):
        out[...] = np.asarray(image.resize(size, Image.Resampling.LANCZOS, box=region))
        return out
    if size[1] >= side_y and size[0] * side_y <= _ACROSS_PIXELS:  # strips of rows; every source row filtered across once
        across = np.asarray(image.resize((size[0], side_y), Image.Resampling.LANCZOS, box=(rx0, 0, rx1, side_y)))
        across = across[:, x0:x1]
        step = max(1, min(_STRIP_LENGTH, _STRIP_PIXELS // max(w, 1)))
        for start in range(y0, y1, step):
            stop = min(y1, start + step)
            out[start - y0 : stop - y0] = lanczos_pass(across, 0, (ry0, ry1), size[1], (start, stop))
        return out
    step = max(1, min(_STRIP_LENGTH, _STRIP_PIXELS // max(h, side_y)))  # a very wide image: columns
    if size[1] < side_y:  # Pillow filters columns first when the output is shorter: so do these strips
        side_x = rgb.shape[1]
        down = np.asarray(image.resize((side_x, size[1]), Image.Resampling.LANCZOS, box=(0, ry0, side_x, ry1)))
        down = down[y0:y1]
        for start in range(x0, x1, step):
            stop = min(x1, start + step)
            out[:, start - x0 : stop - x0] = lanczos_pass(down, 1, (rx0, rx1), size[0], (start, stop))
        return out
    for start in range(x0, x1, step):
        stop = min(x1, start + step)
        columns = Image.fromarray(np.ascontiguousarray(lanczos_pass(rgb, 1, (rx0, rx1), size[0], (start, stop))))
        resized = columns.resize((stop - start, size[1]), Image.Resampling.LANCZOS, box=(0, ry0, stop - start, ry1))
        out[:, start - x0 : stop - x0] = np.asarray(resized)[y0:y1]
    return out


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights for 8-bit images


def lanczos_pass(src: np.ndarray, axis: int, span: tuple[float, float], out_size: int,
                  part: tuple[int, int]) -> np.ndarray:
    """Output pixels ``part`` ``[start, stop)`` of a 1-D Lanczos resize of ``src`` along ``axis``
    (0 rows, 1 columns) from the source ``span`` to ``out_size`` pixels, as Pillow's
    ``precompute_coeffs`` and 8-bit pass compute them (filter centres from the whole resize, so
    strips join seamlessly); memory: the strip's pixels times the filter's taps."""
    low, high = span
    in_size = src.shape[axis]
    scale = (high - low) / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = low + (np.arange(part[0], part[1], dtype=np.float64) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    x = (taps[None, :] + xmin[:, None] - center[:, None] + 0.5) / filterscale
    with np.errstate(invalid="ignore", divide="ignore"):
        px = np.pi * x
        sinc = np.where(x == 0.0, 1.0, np.sin(px) / px)
        sinc3 = np.where(x == 0.0, 1.0, np.sin(px / 3) / (px / 3))
    weights = np.where((x >= -3.0) & (x < 3.0) & (taps[None, :] < xmax[:, None]), sinc * sinc3, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.where(total != 0.0, weights / np.where(total != 0.0, total, 1.0), weights)
    fixed = np.where(weights < 0, -0.5 + weights * (1 << _PRECISION_BITS),
                     0.5 + weights * (1 << _PRECISION_BITS)).astype(np.int64)
    moved = np.moveaxis(src, axis, 0)
    acc = np.full((part[1] - part[0],) + moved.shape[1:], 1 << (_PRECISION_BITS - 1), dtype=np.int64)
    for k in range(ksize):
        index = np.minimum(xmin + k, in_size - 1)
        coef = fixed[:, k].reshape((-1,) + (1,) * (moved.ndim - 1))
        acc += moved[index].astype(np.int64) * coef
    result = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(result, 0, axis)



def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` resized to ``width`` × ``height`` with Pillow's Lanczos (a contiguous copy when the size is already right)."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return np.ascontiguousarray(rgb)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))
