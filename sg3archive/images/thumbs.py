"""The reconstruction thumbnail: an ``[8, 8, 3]`` uint8 fingerprint of each archived image's
reconstruction, written at encode time and compared by the audit's determinism check.

Its shape's one home is :data:`THUMB_SHAPE` (the archive format's ``recon_thumb`` column checks
:data:`THUMB_BYTES`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sg3archive.images.tensors import to_uint8

if TYPE_CHECKING:
    import torch

THUMB_SHAPE = (8, 8, 3)  # recon_thumb: uint8 HWC
THUMB_BYTES = THUMB_SHAPE[0] * THUMB_SHAPE[1] * THUMB_SHAPE[2]


def thumbnail(img: torch.Tensor) -> np.ndarray:
    """``[8, 8, 3]`` uint8 thumbnail of one reconstruction ``[3, R, R]`` in [-1, 1]: the mean of
    each of an 8×8 grid of cells (adaptive average pooling), rounded as :func:`to_uint8` does."""
    import torch.nn.functional as F

    return to_uint8(F.adaptive_avg_pool2d(img.float(), THUMB_SHAPE[:2])[None])[0]
