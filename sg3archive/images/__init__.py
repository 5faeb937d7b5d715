"""Images in and out: listing and reading sources, Pillow's decoding rules, fitting to the
generator's square and back, tensor conversion and thumbnails.

The one path from bytes to pixels is :func:`load_fitted`: compress, audit and training all call
it, so an image means the same pixels wherever it is read.
"""

from __future__ import annotations

from sg3archive.images.load import FittedImage, load_fitted
from sg3archive.store.inputs import (
    DEFAULT_MAX_PIXELS,
    FIT_MODES,
    FitInfo,
    ImageRejected,
    decode_image,
    fit_to_square,
    iter_sources,
    read_bytes,
    sha256_hex,
    to_tensor,
)

__all__ = [
    "DEFAULT_MAX_PIXELS", "FIT_MODES", "FitInfo", "FittedImage", "ImageRejected", "decode_image", "fit_to_square",
    "iter_sources", "load_fitted", "read_bytes", "sha256_hex", "to_tensor",
]
