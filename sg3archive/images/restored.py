"""The PIL mode a restored image is written in, and the conversion to it.

Restored modes (:func:`restored_mode`, :func:`to_restored_image`): the generator makes RGB; a
restored image is written in the source's mode where the output format holds it, else the
nearest one it does. Grayscale sources (``L``, ``1``, 16-bit, ``I``, ``F``) become ``L`` (Pillow's
luma of the reconstruction, so no colour tint; 8-bit, since the archive holds no more); ``LA``/
``La`` stay ``LA``; ``RGBA``/``RGBa``/``PA`` stay ``RGBA``; everything else (``RGB``, ``P``,
``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``) becomes ``RGB``. Alpha is not archived (it was
composited over white), so a restored alpha channel is fully opaque (255). JPEG holds no alpha
(``LA`` → ``L``, ``RGBA`` → ``RGB``); WebP holds only RGB/RGBA (``L`` → RGB with equal channels,
``LA`` → RGBA). Palette and transparency keys are not recreated.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sg3archive.images.rgb import check_rgb

_GRAY_MODES = frozenset({"L", "1", "I", "F"})
_GRAY_ALPHA_MODES = frozenset({"LA", "La"})
_COLOR_ALPHA_MODES = frozenset({"RGBA", "RGBa", "PA"})
_FORMAT_MODES = {"PNG": ("L", "LA", "RGB", "RGBA"), "JPEG": ("L", "RGB"), "WEBP": ("RGB", "RGBA")}


def restored_mode(source_mode: str, image_format: str) -> str:
    """The PIL mode a restored image of a ``source_mode`` original is written in, in
    ``image_format`` (``"PNG"``, ``"JPEG"`` or ``"WEBP"``; rules in the module docstring)."""
    if image_format not in _FORMAT_MODES:
        raise ValueError(f"unknown output format {image_format!r}; use one of {sorted(_FORMAT_MODES)}")
    gray = _is_gray(source_mode)
    alpha = source_mode in _GRAY_ALPHA_MODES or source_mode in _COLOR_ALPHA_MODES
    held = _FORMAT_MODES[image_format]
    # the source's own kind first, then alpha dropped, then gray widened to RGB
    preferred = [("LA" if gray else "RGBA") if alpha else None, "L" if gray else None, "RGBA" if alpha else None]
    return next((mode for mode in preferred if mode in held), "RGB")


def _is_gray(mode: str) -> bool:
    return mode in _GRAY_MODES or mode in _GRAY_ALPHA_MODES or mode.startswith("I;16")


def to_restored_image(rgb: np.ndarray, source_mode: str, image_format: str) -> Image.Image:
    """A restored ``[H, W, 3]`` uint8 RGB array as a PIL image in :func:`restored_mode`: gray
    sources through luma (no tint), a fully opaque alpha channel where the mode has one."""
    check_rgb(rgb, "rgb")
    mode = restored_mode(source_mode, image_format)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if _is_gray(source_mode):
        image = image.convert("L")
    return image if image.mode == mode else image.convert(mode)  # L→LA, RGB→RGBA: alpha 255

