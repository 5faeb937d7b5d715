"""Conversions between network tensors and stored pixels: ``[H, W, 3]`` uint8 arrays ↔ ``[3, H, W]``
tensors in [-1, 1], the official uint8 rounding of a batch, PIL images and image grids.

``torch`` is imported where a function needs it, so that listing, decoding and the archive
format can be used without loading it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sg3archive.images.rgb import check_rgb

if TYPE_CHECKING:
    import torch


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``img [H, W, 3]`` uint8 → ``x [3, H, W]`` float32 in [-1, 1] (``img / 127.5 − 1``);
    :func:`from_tensor` inverts it exactly."""
    import torch

    check_rgb(rgb, "rgb")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C", copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0).contiguous()


def from_tensor(x: torch.Tensor) -> np.ndarray:
    """``x [3, H, W]`` in [-1, 1] → ``img [H, W, 3]`` uint8 (``x·127.5 + 128`` clamped, the
    project's :func:`to_uint8`)."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"x must be [3, H, W], got shape {tuple(x.shape)}")
    return to_uint8(x[None])[0]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``x [N, C, H, W]`` in [-1, 1] → ``img [N, H, W, C]`` uint8 (the official rounding: x·127.5 + 128, clamped)."""
    import torch

    return (x.detach() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(img: np.ndarray) -> Image.Image:
    """One ``[H, W, C]`` uint8 image as a PIL image (C = 1, 3 or 4; other counts keep the first 3)."""
    channels = img.shape[2]
    if channels not in (1, 3, 4):
        img, channels = img[:, :, :3], 3
    return Image.fromarray(np.ascontiguousarray(img[:, :, 0] if channels == 1 else img))


def make_grid(images: list[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Tile equally sized ``[H, W, C]`` uint8 images into one, row-major, black where the grid is short."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or math.ceil(len(images) / max(1, math.isqrt(len(images))))
    rows = math.ceil(len(images) / columns)
    h, w, c = images[0].shape
    grid = np.zeros([rows * h, columns * w, c], dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = img
    return grid
