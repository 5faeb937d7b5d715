"""Conversions between network tensors and stored pixels (PIL images, uint8 arrays)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``x [N, C, H, W]`` in [-1, 1] → ``img [N, H, W, C]`` uint8 (the official rounding: x·127.5 + 128, clamped)."""
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
