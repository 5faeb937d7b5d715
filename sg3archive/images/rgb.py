"""The pixel array every image module passes around: ``[H, W, 3]`` uint8 RGB, and its check."""

from __future__ import annotations

import numpy as np


def check_rgb(rgb: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming the argument ``name`` unless ``rgb`` is a non-empty ``[H, W, 3]`` uint8 array."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {tuple(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"{name} must be a uint8 array [H, W, 3], got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{name} has no pixels (shape {tuple(rgb.shape)})")
