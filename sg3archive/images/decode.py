"""Decoding one image's bytes to RGB pixels, under Pillow with fixed rules.

Decoding rules (:func:`decode_image`), in the order they apply:

* **Size before pixels.** ``Image.open`` only reads the header. An image with more than
  ``max_pixels`` pixels (first frame, before orientation) is rejected before any pixel data is
  decoded. Pillow's own decompression-bomb guard stays on too (``Image.MAX_IMAGE_PIXELS`` is never
  changed): its warning and its error both become :class:`ImageRejected`, so the effective limit is
  the smaller of ``max_pixels`` and ``Image.MAX_IMAGE_PIXELS`` (about 89 Mpx by default).
  (Turning the warning into an error uses ``warnings.catch_warnings``, which on Python < 3.14
  briefly changes process-wide warning filters; harmless, but noted for threaded callers.)
* **Accepted formats only**: :data:`ACCEPTED_FORMATS` (PNG, JPEG/MPO, WebP, BMP, TIFF, GIF, AVIF).
  Pillow is never asked to try its other plugins (EPS would run Ghostscript).
* **Truncation is an error.** ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False (decoding
  refuses to run otherwise); pixels are loaded inside a ``try`` and a short file is rejected as
  "truncated image data".
* **Multi-frame** images (animated GIF/PNG/WebP, multi-page TIFF, MPO) keep their first frame.
* **EXIF orientation** is applied (``ImageOps.exif_transpose``); width and height are reported after
  it. An unreadable EXIF block is ignored (and noted).
* **Modes → RGB**:

  - ``RGB``: as stored. ``L`` (grayscale) is replicated to three channels; ``1`` (bilevel)
    becomes 0/255 then is replicated. ``P`` (palette) is expanded through its palette.
  - Alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, or a ``transparency`` entry on ``P``/``L``/``RGB``)
    is composited over **white**: ``out = (c·a + 255·(255 − a)) / 255`` rounded; ``had_alpha``
    is True.
  - ``CMYK`` uses Pillow's conversion (no colour management); ``YCbCr``, ``LAB``, ``HSV`` use
    Pillow's conversion too.
  - 16-bit (``I;16``, ``I;16B``, …): ``v >> 8``. 32-bit integer ``I``: clipped to [0, 65535]
    (Pillow reads 16-bit files as ``I`` too), then ``>> 8``.
  - Float ``F``: non-finite values become 0; the range is read off the data — [0, 1] when the
    maximum is at most 1, else [0, 255] when at most 255, else [0, 65535] — then values are
    clipped to that range and scaled linearly to 0…255 (rounded).
  - Grayscale results of the last two rules are replicated to three channels (a transparency
    key on such high-depth data is ignored).

  Embedded ICC profiles are not applied (pixel values are taken as stored; noted). Conversions
  run over row strips, so a high-depth image costs its own pixels plus the uint8 result.
* Anything unreadable — empty, not an image, a format not accepted, truncated, corrupt, an
  unsupported mode or codec — raises :class:`ImageRejected` with a one-line reason.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from sg3archive.errors import Sg3ArchiveError
from sg3archive.images.errors import ImageRejected
from sg3archive.images.limits import DEFAULT_MAX_PIXELS, human_pixels

# Pillow format names decode_image lets Pillow try (JPEG also yields MPO, BMP also DIB).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "AVIF")


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
_PILLOW_CONVERTED_MODES = {
    "CMYK": "CMYK converted to RGB with Pillow's formula (no colour management)",
    "YCbCr": "YCbCr converted to RGB by Pillow",
    "LAB": "LAB converted to RGB by Pillow",
    "HSV": "HSV converted to RGB by Pillow",
    "RGBX": "RGBX: padding channel dropped",
}


@dataclass(frozen=True)
class DecodedImage:
    """One decoded input, ready for fitting.

    Attributes:
        rgb: ``[H, W, 3]`` uint8, after EXIF orientation and the mode rules (module docstring).
        width, height: pixels, after orientation.
        mode: the PIL mode as stored (``"P"``, ``"I;16"``, …), before conversion.
        format: the PIL format name (``"PNG"``, ``"JPEG"``, ``"MPO"``, …).
        had_alpha: the image carried alpha or a transparency key (composited over white).
        notes: what was done to reach ``rgb``, one short phrase each.
    """

    rgb: np.ndarray
    width: int
    height: int
    mode: str
    format: str
    had_alpha: bool
    notes: list[str] = field(default_factory=list)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, uri: str = "") -> DecodedImage:
    """Decode one encoded image to RGB under the rules of the module docstring.

    Args:
        data: the file's bytes.
        max_pixels: the most pixels (width × height of the first frame) accepted; checked from the
            header before any pixel is decoded.
        uri: where the bytes came from, for messages only.

    Raises:
        ImageRejected: empty, not an accepted image, truncated, corrupt, unsupported, too large.
        Sg3ArchiveError: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` was switched on by someone.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise Sg3ArchiveError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated images would decode silently; "
            "set it back to False before archiving"
        )
    if len(data) == 0:
        raise ImageRejected("empty file (0 bytes)", uri)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise ImageRejected(f"image has no pixels ({width}x{height})", uri)
                if width * height > max_pixels:
                    raise ImageRejected(
                        f"image is {width}x{height} = {human_pixels(width * height)}, "
                        f"over the {human_pixels(max_pixels)} limit (max_pixels)",
                        uri,
                    )
                mode, fmt = img.mode, img.format or ""
                if getattr(img, "is_animated", False):
                    notes.append(f"multi-frame {fmt}: first frame kept")
                img.load()
                mode = img.mode  # a few plugins settle the mode only on load
                oriented = _apply_orientation(img, notes)
                rgb, had_alpha = _to_rgb(oriented, notes)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            f"over Pillow's decompression-bomb limit ({exc}); such images are refused whatever max_pixels says",
            uri,
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            f"not a readable image (cannot identify image file; accepted formats: {', '.join(ACCEPTED_FORMATS)})",
            uri,
        ) from None
    except (OSError, EOFError, SyntaxError, ValueError, IndexError, TypeError, KeyError) as exc:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, EOFError) or "truncated" in text.lower():
            raise ImageRejected(f"truncated image data ({text})", uri) from None
        raise ImageRejected(f"corrupt or unsupported image data ({text})", uri) from None
    return DecodedImage(
        rgb=rgb, width=rgb.shape[1], height=rgb.shape[0], mode=mode, format=fmt, had_alpha=had_alpha, notes=notes
    )


def _apply_orientation(img: Image.Image, notes: list[str]) -> Image.Image:
    try:
        orientation = img.getexif().get(0x0112, 1)  # 0x0112: EXIF Orientation
    except Exception:  # noqa: BLE001 — EXIF blocks in the wild are often malformed; pixels still are fine
        notes.append("EXIF unreadable: orientation not applied")
        return img
    if orientation not in range(2, 9):
        return img
    notes.append(f"EXIF orientation {orientation} applied")
    return ImageOps.exif_transpose(img)


def _to_rgb(img: Image.Image, notes: list[str]) -> tuple[np.ndarray, bool]:
    """``[H, W, 3]`` uint8 and whether alpha was composited (rules in the module docstring).

    Every conversion but plain RGB runs over row strips of the image (:func:`_convert_in_strips`),
    so its temporaries are a strip's, never a whole-image float or 32-bit copy: a float TIFF near
    the pixel limit costs its own pixels plus the uint8 result, not several times that.
    """
    mode = img.mode
    if "icc_profile" in img.info and img.info["icc_profile"]:
        notes.append("embedded ICC profile not applied")
    if mode.startswith("I;16") or mode in ("I", "F"):
        rgb = _high_depth_to_rgb(img, notes)
        notes.append("grayscale replicated to RGB")
        return rgb, False
    has_key = img.info.get("transparency") is not None and mode in ("P", "L", "RGB", "1")
    if mode in _ALPHA_MODES or has_key:
        notes.append(("palette expanded; " if mode in ("P", "PA") else "") + "alpha composited over white")
        return _convert_in_strips(img, lambda strip: _composite_over_white(np.asarray(strip.convert("RGBA")))), True
    if mode == "RGB":
        return np.asarray(img), False
    if mode in ("L", "1"):
        notes.append(("bilevel as 0/255; " if mode == "1" else "") + "grayscale replicated to RGB")
        return _convert_in_strips(img, lambda strip: np.asarray(strip.convert("L"))[:, :, None]), False
    if mode == "P":
        notes.append("palette expanded to RGB")
    elif mode in _PILLOW_CONVERTED_MODES:
        notes.append(_PILLOW_CONVERTED_MODES[mode])
    else:
        raise ValueError(f"unsupported image mode {mode!r}")
    return _convert_in_strips(img, lambda strip: np.asarray(strip.convert("RGB"))), False


STRIP_PIXELS = 1 << 18  # pixels converted at a time by _convert_in_strips


def _strips(img: Image.Image) -> Iterator[tuple[int, int, Image.Image]]:
    """``(top, bottom, strip)`` over the image in bands of about :data:`STRIP_PIXELS` pixels."""
    width, height = img.size
    rows = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        yield top, bottom, img.crop((0, top, width, bottom))


def _convert_in_strips(img: Image.Image, convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """``[H, W, 3]`` uint8 filled strip by strip with ``convert(strip)``: a per-pixel conversion
    returning ``[h, W, 3]`` or ``[h, W, 1]`` (a gray result is replicated to the three channels)."""
    width, height = img.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    for top, bottom, strip in _strips(img):
        out[top:bottom] = convert(strip)
    return out


def _high_depth_to_rgb(img: Image.Image, notes: list[str]) -> np.ndarray:
    """16-bit, 32-bit integer or float gray → ``[H, W, 3]`` uint8 (rules in the module docstring)."""
    if img.mode.startswith("I;16"):
        notes.append("16-bit values scaled to 8-bit (v >> 8)")
        return _convert_in_strips(img, lambda s: (np.asarray(s).astype(np.uint16) >> 8).astype(np.uint8)[:, :, None])
    if img.mode == "I":
        notes.append("32-bit integers clipped to [0, 65535], then >> 8")
        return _convert_in_strips(
            img, lambda s: (np.clip(np.asarray(s), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)[:, :, None])
    # float: the range is read off the whole image first (one pass), then each strip is scaled
    top = 0.0
    for _, _, strip in _strips(img):
        values = np.asarray(strip)
        top = max(top, float(np.max(values, where=np.isfinite(values), initial=0.0)))
    hi = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    notes.append(f"float values read as range [0, {hi:g}], scaled to 8-bit")

    def scale(strip: Image.Image) -> np.ndarray:
        values = np.asarray(strip).astype(np.float64)  # one float64 temporary per strip, worked in place
        values[~np.isfinite(values)] = 0.0
        np.clip(values, 0.0, hi, out=values)
        values *= 255.0 / hi
        return np.rint(values, out=values).astype(np.uint8)[:, :, None]

    return _convert_in_strips(img, scale)


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """``[H, W, 4]`` uint8 → ``[H, W, 3]`` uint8 over a white background, rounded."""
    color = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:].astype(np.uint32)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)

