"""Bytes → the tensor the encoder sees, with the record of how it was fitted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sg3archive.images.decode import decode_image
from sg3archive.images.errors import ImageRejected
from sg3archive.images.fit import DEFAULT_FIT, FitInfo, FitMode, fit_to_square
from sg3archive.images.limits import DEFAULT_MAX_PIXELS
from sg3archive.images.tensors import to_tensor

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FittedImage:
    """One decoded source fitted to the generator's square.

    Attributes:
        tensor: ``[3, R, R]`` float32 in [-1, 1].
        fit: how the square was cut from (or padded around) the original.
        width, height, mode, format: the original image as decoded.
        original: the decoded ``[H, W, 3]`` uint8 RGB at the original size, when asked for
            (``keep_original``): what every quality figure is measured against.
    """

    tensor: torch.Tensor
    fit: FitInfo
    width: int
    height: int
    mode: str
    format: str
    original: np.ndarray | None = None

    def columns(self) -> dict[str, Any]:
        """The archive row's columns that describe the original (``width`` … ``fit``)."""
        return {"width": self.width, "height": self.height, "mode": self.mode, "format": self.format,
                "fit": self.fit.to_json()}


def load_fitted(data: bytes, resolution: int, fit: FitMode | str = DEFAULT_FIT, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                uri: str = "", keep_original: bool = False) -> FittedImage:
    """Decode ``data`` and fit it to a ``resolution`` square by ``fit`` (crop, pad or stretch).

    Raises:
        ImageRejected: the bytes are not an image we accept, are larger than ``max_pixels``, or
            decoding ran out of memory (one image never stops a batch).
    """
    try:
        img = decode_image(data, max_pixels=max_pixels, uri=uri)
        square, info = fit_to_square(img.rgb, resolution, fit, max_pixels=max_pixels)
    except MemoryError:
        raise ImageRejected("out of memory decoding or fitting the image; lower --max-pixels or free memory",
                            uri) from None
    return FittedImage(to_tensor(square), info, img.width, img.height, img.mode, img.format,
                       img.rgb if keep_original else None)
