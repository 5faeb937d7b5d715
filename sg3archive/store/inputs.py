"""The input side of compression: list sources, read their bytes, decode images safely, fit them
to the generator's square resolution (and undo the fit after decompression).

Listing (:func:`iter_sources`) streams: it never builds the full list of a prefix. A folder is
walked with ``fs.walk`` in this fixed order: a folder's own files in sorted name order, then its
subfolders in sorted name order, depth first (so ``a/x.png`` comes after ``b.png``; the order is
the same on every run and every backend, but it is not a global sort of the URLs). Names starting
with ``.`` (hidden files and folders, macOS ``._*`` resource forks) are always skipped.

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

  Embedded ICC profiles are not applied (pixel values are taken as stored; noted).
* Anything unreadable — empty, not an image, a format not accepted, truncated, corrupt, an
  unsupported mode or codec — raises :class:`ImageRejected` with a one-line reason.

Fitting (:func:`fit_to_square`) maps an image to ``[R, R, 3]`` through a box in the original's
coordinates: ``crop`` takes the centred square of side ``min(w, h)``; ``pad`` takes the centred
square of side ``max(w, h)`` (offsets may be negative), filling outside the image by **edge
replication** (no hard border for Lanczos to ring on); ``stretch`` takes the whole image and
does not keep the aspect. Resizing is Pillow's Lanczos. :func:`unfit` maps back: the square is
resized to the box and placed on a canvas of the original size; what lies outside the box (the
parts a crop cut off) is unknown and filled by edge replication of the restored region.

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

import dataclasses
import hashlib
import io
import json
import posixpath
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import fsspec
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from sg3archive.errors import Sg3ArchiveError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif", "avif"})
URI_LIST_SUFFIXES = (".txt", ".lst")
# Pillow format names decode_image lets Pillow try (JPEG also yields MPO, BMP also DIB).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "AVIF")
FIT_MODES = ("crop", "pad", "stretch")
FIT_INFO_VERSION = 1
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 512 * 1024**2

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
_PILLOW_CONVERTED_MODES = {
    "CMYK": "CMYK converted to RGB with Pillow's formula (no colour management)",
    "YCbCr": "YCbCr converted to RGB by Pillow",
    "LAB": "LAB converted to RGB by Pillow",
    "HSV": "HSV converted to RGB by Pillow",
    "RGBX": "RGBX: padding channel dropped",
}


class ImageRejected(Sg3ArchiveError):
    """An input cannot be archived: unreadable, truncated, too large, or of an unsupported kind.

    ``reason`` is the one-line cause (fit for a report column), ``uri`` the input it concerns.
    """

    def __init__(self, reason: str, uri: str = "") -> None:
        self.reason = reason
        self.uri = uri
        super().__init__(f"{uri}: {reason}" if uri else reason)


# -- listing ----------------------------------------------------------------------------------
def iter_sources(
    src: str,
    *,
    pattern: str | None = None,
    recursive: bool = True,
    uri_list: bool = False,
    storage_options: dict | None = None,
) -> Iterator[str]:
    """Yield the URLs of the images a source names, one at a time, in a deterministic order.

    Args:
        src: a folder or bucket prefix (local path, ``file://``, ``s3://``, any fsspec URL); or a
            text file with one URI per line (when it ends in ``.txt``/``.lst`` or ``uri_list``);
            or one image file.
        pattern: a glob relative to ``src`` (``*``, ``?``, ``[...]``, ``**`` for any depth, e.g.
            ``"**/*.png"``), matched case-sensitively against each file's relative path. Without
            it files are kept by their suffix (:data:`IMAGE_SUFFIXES`, any case).
        recursive: without ``pattern``, whether to descend into subfolders; a pattern decides
            its own depth.
        uri_list: read ``src`` as a URI list whatever its suffix.
        storage_options: passed to fsspec (credentials, endpoint, …).

    Yields full URLs (``fs.unstrip_protocol``, e.g. ``file:///data/a.png``, ``s3://b/k.png``).
    A URI list yields its entries in file order, skipping blank lines and lines starting with
    ``#``; entries with a protocol (``s3://…``) are yielded as written, other entries are paths on
    the list's own filesystem, relative ones resolved against the list's folder. Entries are not
    checked for existence here (reading them is).

    Raises:
        FileNotFoundError: ``src`` is no file, folder or non-empty prefix.
    """
    fs, path = fsspec.core.url_to_fs(src, **(storage_options or {}))
    fs.invalidate_cache(path)  # another process may have written since a listing was cached
    is_dir = fs.isdir(path)
    if uri_list or (src.lower().endswith(URI_LIST_SUFFIXES) and not is_dir):
        if not fs.isfile(path):
            raise FileNotFoundError(
                f"URI list {src!r} not found; check the path (and storage_options for remote stores)"
            )
        return _iter_uri_list(fs, path)
    if is_dir:
        return _iter_folder(fs, path, pattern, recursive)
    if fs.isfile(path):
        return iter([fs.unstrip_protocol(path)])
    raise FileNotFoundError(
        f"source {src!r} not found: it is no file, folder or non-empty prefix; check the path "
        "(and storage_options for remote stores)"
    )


def _iter_uri_list(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    with fs.open(path, "rt", encoding="utf-8-sig") as f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if "://" in entry:
                yield entry
            else:
                yield fs.unstrip_protocol(posixpath.normpath(posixpath.join(parent, entry)))


def _iter_folder(fs: fsspec.AbstractFileSystem, path: str, pattern: str | None, recursive: bool) -> Iterator[str]:
    base = path.rstrip("/") or path
    if pattern is not None:
        pattern = pattern.removeprefix("./").lstrip("/")
        matcher = _glob_regex(pattern)
        maxdepth = None if "**" in pattern else pattern.count("/") + 1
    else:
        matcher = None
        maxdepth = None if recursive else 1

    def raise_listing_error(exc: OSError) -> None:
        raise exc

    for root, dirs, files in fs.walk(base, maxdepth=maxdepth, on_error=raise_listing_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # walk visits dirs in this order
        rel_root = root[len(base) :].strip("/") if root.startswith(base) else root
        for name in sorted(files):
            if not name or name.startswith("."):
                continue
            if matcher is not None:
                if not matcher.fullmatch(posixpath.join(rel_root, name)):
                    continue
            elif "." not in name or name.rpartition(".")[2].lower() not in IMAGE_SUFFIXES:
                continue
            yield fs.unstrip_protocol(posixpath.join(root, name))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over ``/``-separated relative paths as a regex: ``**/`` any number of folders."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


# -- reading ----------------------------------------------------------------------------------
def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as 64 lowercase hex digits (the content hash archives record)."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(url: str, storage_options: dict | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """All bytes of one file, refusing files over ``max_bytes`` (checked by size first, when the
    filesystem reports one, so an oversized file is never downloaded).

    Raises:
        FileNotFoundError: no such file.
        ImageRejected: the file is larger than ``max_bytes``.
    """
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{url}: file not found; check the URL (and storage_options for remote stores)"
        ) from None
    except (NotImplementedError, OSError, TypeError):
        size = None
    if size is not None and size > max_bytes:
        raise ImageRejected(f"file is {_human_bytes(size)}, over the {_human_bytes(max_bytes)} limit (max_bytes)", url)
    with fs.open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageRejected(f"file is over the {_human_bytes(max_bytes)} limit (max_bytes)", url)
    return data


def _human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _human_pixels(n: int) -> str:
    for unit, scale in (("Gpx", 1e9), ("Mpx", 1e6), ("kpx", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} px"


# -- decoding ---------------------------------------------------------------------------------
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
                        f"image is {width}x{height} = {_human_pixels(width * height)}, "
                        f"over the {_human_pixels(max_pixels)} limit (max_pixels)",
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
    """``[H, W, 3]`` uint8 and whether alpha was composited (rules in the module docstring)."""
    mode = img.mode
    if "icc_profile" in img.info and img.info["icc_profile"]:
        notes.append("embedded ICC profile not applied")
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _high_depth_to_8bit(img, notes)
        notes.append("grayscale replicated to RGB")
        return np.repeat(gray[:, :, None], 3, axis=2), False
    has_key = img.info.get("transparency") is not None and mode in ("P", "L", "RGB", "1")
    if mode in _ALPHA_MODES or has_key:
        rgba = np.asarray(img.convert("RGBA"))
        notes.append(("palette expanded; " if mode in ("P", "PA") else "") + "alpha composited over white")
        return _composite_over_white(rgba), True
    if mode == "RGB":
        return np.asarray(img), False
    if mode in ("L", "1"):
        gray = np.asarray(img.convert("L"))
        notes.append(("bilevel as 0/255; " if mode == "1" else "") + "grayscale replicated to RGB")
        return np.repeat(gray[:, :, None], 3, axis=2), False
    if mode == "P":
        notes.append("palette expanded to RGB")
        return np.asarray(img.convert("RGB")), False
    if mode in _PILLOW_CONVERTED_MODES:
        notes.append(_PILLOW_CONVERTED_MODES[mode])
        return np.asarray(img.convert("RGB")), False
    raise ValueError(f"unsupported image mode {mode!r}")


def _high_depth_to_8bit(img: Image.Image, notes: list[str]) -> np.ndarray:
    values = np.asarray(img)
    if img.mode.startswith("I;16"):
        notes.append("16-bit values scaled to 8-bit (v >> 8)")
        return (values.astype(np.uint16) >> 8).astype(np.uint8)
    if img.mode == "I":
        notes.append("32-bit integers clipped to [0, 65535], then >> 8")
        return (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    values = np.where(np.isfinite(values), values, 0).astype(np.float64)
    top = float(values.max(initial=0.0))
    hi = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    notes.append(f"float values read as range [0, {hi:g}], scaled to 8-bit")
    return np.rint(np.clip(values, 0.0, hi) * (255.0 / hi)).astype(np.uint8)


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """``[H, W, 4]`` uint8 → ``[H, W, 3]`` uint8 over a white background, rounded."""
    color = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:].astype(np.uint32)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


# -- fitting to the generator's square --------------------------------------------------------
@dataclass(frozen=True)
class FitInfo:
    """How an image was mapped to the generator's square, enough to map a result back.

    Attributes:
        width, height: the original's size in pixels (after EXIF orientation).
        mode: ``"crop"``, ``"pad"`` or ``"stretch"``.
        box: ``(left, top, right, bottom)`` in the original's pixel coordinates, the region that
            became the square; for ``pad`` it extends past the image (negative offsets).
        resolution: the square's side ``R``.
    """

    width: int
    height: int
    mode: str
    box: tuple[int, int, int, int]
    resolution: int

    def to_json(self) -> str:
        """One-line JSON with a format version, stored beside the image's codes."""
        body = {"version": FIT_INFO_VERSION, **dataclasses.asdict(self)}
        body["box"] = list(self.box)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FitInfo:
        """Read :meth:`to_json`'s output back; rejects other versions and malformed records."""
        try:
            body = json.loads(text)
            version = body.pop("version")
            if version != FIT_INFO_VERSION:
                raise ValueError(f"fit info version {version!r}, this code reads version {FIT_INFO_VERSION}")
            box = body.pop("box")
            if len(box) != 4:
                raise ValueError(f"box must have 4 numbers, got {box!r}")
            info = cls(
                width=int(body["width"]),
                height=int(body["height"]),
                mode=str(body["mode"]),
                box=tuple(int(v) for v in box),
                resolution=int(body["resolution"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a fit-info record ({exc}): {text[:200]!r}") from None
        if info.mode not in FIT_MODES or min(info.width, info.height, info.resolution) <= 0:
            raise ValueError(f"fit-info record out of range: {text[:200]!r}")
        return info


def fit_to_square(rgb: np.ndarray, resolution: int, mode: str = "crop") -> tuple[np.ndarray, FitInfo]:
    """Map an image to the generator's ``[R, R, 3]`` input (rules in the module docstring).

    Args:
        rgb: ``[H, W, 3]`` uint8.
        resolution: ``R``, the generator's ``img_resolution``.
        mode: ``"crop"`` (centred square of side min(W, H)), ``"pad"`` (centred square of side
            max(W, H), edge-replicated), or ``"stretch"`` (the whole image, aspect not kept).

    Returns:
        ``img [R, R, 3]`` uint8 and the :class:`FitInfo` that :func:`unfit` needs.
    """
    _check_rgb(rgb, "rgb")
    if mode not in FIT_MODES:
        raise ValueError(f"unknown fit mode {mode!r}; use one of {FIT_MODES}")
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    height, width = rgb.shape[:2]
    if mode == "stretch":
        box = (0, 0, width, height)
    else:
        side = min(width, height) if mode == "crop" else max(width, height)
        left, top = (width - side) // 2, (height - side) // 2  # negative for pad
        box = (left, top, left + side, top + side)
    square = _resize(_take_box(rgb, box), resolution, resolution)
    return square, FitInfo(width=width, height=height, mode=mode, box=box, resolution=resolution)


def unfit(square_rgb: np.ndarray, info: FitInfo) -> np.ndarray:
    """Map a square result back to the original's size: ``[S, S, 3]`` uint8 → ``[H, W, 3]`` uint8.

    The square (any side ``S``, normally ``info.resolution``) is resized to the box and placed at
    it; the canvas outside the box is filled by edge replication of the placed region.
    """
    _check_rgb(square_rgb, "square_rgb")
    if square_rgb.shape[0] != square_rgb.shape[1]:
        raise ValueError(f"square_rgb must be square, got shape {tuple(square_rgb.shape)}")
    left, top, right, bottom = info.box
    width, height = info.width, info.height
    if right <= max(left, 0) or bottom <= max(top, 0) or left >= width or top >= height:
        raise ValueError(f"fit box {info.box} does not overlap the {width}x{height} image")
    placed = _resize(square_rgb, right - left, bottom - top)
    inside = placed[max(0, -top) : min(bottom, height) - top, max(0, -left) : min(right, width) - left]
    pads = ((max(0, top), max(0, height - bottom)), (max(0, left), max(0, width - right)), (0, 0))
    return np.pad(inside, pads, mode="edge")


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
    _check_rgb(rgb, "rgb")
    mode = restored_mode(source_mode, image_format)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if _is_gray(source_mode):
        image = image.convert("L")
    return image if image.mode == mode else image.convert(mode)  # L→LA, RGB→RGBA: alpha 255


def _take_box(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The box's pixels; where the box extends past the image, edge-replicated."""
    height, width = rgb.shape[:2]
    left, top, right, bottom = box
    inside = rgb[max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
    pads = ((max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width)), (0, 0))
    return np.pad(inside, pads, mode="edge")


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return np.ascontiguousarray(rgb)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))


def _check_rgb(rgb: np.ndarray, name: str) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {tuple(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"{name} must be a uint8 array [H, W, 3], got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{name} has no pixels (shape {tuple(rgb.shape)})")


# -- tensors ----------------------------------------------------------------------------------
def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``img [H, W, 3]`` uint8 → ``x [3, H, W]`` float32 in [-1, 1] (``img / 127.5 − 1``);
    :func:`from_tensor` inverts it exactly."""
    import torch

    _check_rgb(rgb, "rgb")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C", copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0).contiguous()


def from_tensor(x: torch.Tensor) -> np.ndarray:
    """``x [3, H, W]`` in [-1, 1] → ``img [H, W, 3]`` uint8 (``x·127.5 + 128`` clamped, the
    project's :func:`sg3archive.pixels.to_uint8`)."""
    from sg3archive.pixels import to_uint8

    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"x must be [3, H, W], got shape {tuple(x.shape)}")
    return to_uint8(x[None])[0]
