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

  Embedded ICC profiles are not applied (pixel values are taken as stored; noted). Conversions
  run over row strips, so a high-depth image costs its own pixels plus the uint8 result.
* Anything unreadable — empty, not an image, a format not accepted, truncated, corrupt, an
  unsupported mode or codec — raises :class:`ImageRejected` with a one-line reason.

Fitting (:func:`fit_to_square`) maps an image to ``[R, R, 3]`` through a box in the original's
coordinates: ``crop`` takes the centred square of side ``min(w, h)``; ``pad`` takes the centred
square of side ``max(w, h)`` (offsets may be negative), filling outside the image by **edge
replication** (no hard border for Lanczos to ring on); ``stretch`` takes the whole image and
does not keep the aspect. Resizing is Pillow's Lanczos. No intermediate exceeds the job's pixel
limit: when pad's square of side ``max(w, h)`` would (a 1×100000 strip), the image is resized
into the generator's square first and edge-replicated there (a version-2 fit record, whose box
is the whole image). :func:`unfit` maps back: the square is resized to the box and placed on a
canvas of the original size; what lies outside the box (the parts a crop cut off) is unknown and
filled by edge replication of the restored region. Fit records are read strictly
(:meth:`FitInfo.from_json`, :class:`FitRecordError`): a damaged or forged record can never make
restore or audit allocate more than the pixel limit.

Sources (:func:`iter_sources`, :func:`read_bytes`): local paths are read through the local
filesystem directly, never parsed as fsspec URLs (``a::b.png`` stays one name); any name the file
system allows is listed, including names that are not UTF-8 (as ``surrogateescape`` strings);
only regular files are read, so a FIFO, socket or device named ``*.png`` is refused with a reason,
never opened for blocking reads.

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
import os
import posixpath
import re
import stat
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from sg3archive.errors import Sg3ArchiveError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif", "avif"})
URI_LIST_SUFFIXES = (".txt", ".lst")
# Pillow format names decode_image lets Pillow try (JPEG also yields MPO, BMP also DIB).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "AVIF")
FIT_MODES = ("crop", "pad", "stretch")
FIT_INFO_VERSION = 1  # crop, stretch, and pad whose padded square fits in max_pixels
PAD_FIT_INFO_VERSION = 2  # pad at the generator's resolution: box = the whole image
FIT_INFO_VERSIONS = (FIT_INFO_VERSION, PAD_FIT_INFO_VERSION)
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


class FitRecordError(Sg3ArchiveError, ValueError):
    """A row's ``fit`` record is not a valid, bounded :class:`FitInfo` (damaged or forged).

    Also a ``ValueError``, so callers that caught the looser errors of earlier versions still do.
    """


# -- where a source lives ---------------------------------------------------------------------
# "proto://…" or fsspec's chaining "proto::…" at the start of a string.
_URL_START = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)(://|::)")
_LOCAL_PROTOCOLS = ("file", "local")


def local_path(url: str) -> str | None:
    """The absolute local path ``url`` names, or None when it is a remote (or chained) URL.

    Local paths never go through fsspec's URL parsing, whose ``::`` chaining would cut
    ``a::b.png`` in two: a string is local when it has no ``proto://`` or ``proto::`` prefix, when
    it is a ``file://``/``local://`` URL (everything after the scheme is the path, whatever
    characters follow), or when its ``proto::`` prefix names no fsspec protocol (``a::b.png``)
    or the whole string names an existing local file.
    """
    match = _URL_START.match(url)
    local_fs = LocalFileSystem
    if match is None:
        return local_fs._strip_protocol(url)
    protocol, separator = match.group(1).lower(), match.group(2)
    if separator == "://":
        if protocol in _LOCAL_PROTOCOLS:
            return local_fs._strip_protocol("/" + url[match.end():].lstrip("/"))
        return None
    if protocol not in fsspec.available_protocols() or os.path.lexists(url):
        return local_fs._strip_protocol(url)
    return None


def filesystem_for(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for a source URL: local paths (:func:`local_path`) on the local filesystem
    object directly, anything else through ``fsspec.core.url_to_fs``."""
    path = local_path(url)
    if path is not None:
        return fsspec.filesystem("file", **(storage_options or {})), path
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


_FILE_KINDS = (
    (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` names: ``"regular file"``, ``"FIFO"``, ``"socket"``, ``"directory"``, …"""
    if stat.S_ISREG(mode):
        return "regular file"
    return next((name for test, name in _FILE_KINDS if test(mode)), "special file")


def _require_regular(mode: int, url: str) -> None:
    if not stat.S_ISREG(mode):
        raise ImageRejected(f"not a regular file ({file_kind(mode)}); only regular files are read", url)


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

    Names are yielded as Python strings whatever bytes the file system holds: a local name that
    is not UTF-8 carries its undecodable bytes as lone surrogates (``os.fsdecode``'s
    ``surrogateescape``); ``format.exact_name`` and ``os.fsencode`` give the bytes back. Local
    entries that are not regular files (a FIFO, socket or device, even named ``*.png``) are
    yielded too, so that reading them records why they were not archived; a URI list must itself
    be a regular file (it is read more than once).

    Raises:
        FileNotFoundError: ``src`` is no file, folder or non-empty prefix, or a URI list that is
            not a regular file.
    """
    fs, path = filesystem_for(src, storage_options)
    local = local_path(src) is not None
    fs.invalidate_cache(path)  # another process may have written since a listing was cached
    is_dir = fs.isdir(path)
    if uri_list or (src.lower().endswith(URI_LIST_SUFFIXES) and not is_dir):
        if local and os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            raise FileNotFoundError(
                f"URI list {src!r} is a {file_kind(os.stat(path).st_mode)}, not a regular file; "
                "write the list to a file first"
            )
        if not fs.isfile(path):
            raise FileNotFoundError(
                f"URI list {src!r} not found; check the path (and storage_options for remote stores)"
            )
        return _iter_uri_list(fs, path)
    if is_dir:
        return _iter_folder(fs, path, pattern, recursive)
    if fs.isfile(path) or (local and os.path.exists(path)):
        return iter([fs.unstrip_protocol(path)])
    raise FileNotFoundError(
        f"source {src!r} not found: it is no file, folder or non-empty prefix; check the path "
        "(and storage_options for remote stores)"
    )


def _iter_uri_list(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    # Undecodable bytes (a list written by ``find`` over non-UTF-8 names) stay as lone surrogates.
    with fs.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape") as f:
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

    Only regular files are read. A local file is ``stat``-ed before it is opened and ``fstat``-ed
    after (opened with ``O_NONBLOCK``, so even a FIFO swapped in between never blocks): a FIFO,
    socket, device or directory is refused, never read. Symbolic links are followed, as listing
    does; what counts is the kind of file they lead to. Local paths are opened directly, never
    parsed as fsspec URLs (:func:`local_path`).

    Raises:
        FileNotFoundError: no such file.
        ImageRejected: the file is larger than ``max_bytes``, or not a regular file.
    """
    path = local_path(url)
    if path is not None:
        return _read_local(path, url, max_bytes)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        info = fs.info(path)  # one request: kind and size
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{url}: file not found; check the URL (and storage_options for remote stores)"
        ) from None
    except (NotImplementedError, OSError, TypeError):
        info = {}
    kind, size = info.get("type"), info.get("size")
    if kind not in (None, "file"):
        raise ImageRejected(f"not a regular file ({kind}); only regular files are read", url)
    if not isinstance(size, int):
        size = None
    if size is not None and size > max_bytes:
        raise ImageRejected(f"file is {_human_bytes(size)}, over the {_human_bytes(max_bytes)} limit (max_bytes)", url)
    with fs.open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageRejected(f"file is over the {_human_bytes(max_bytes)} limit (max_bytes)", url)
    return data


def _read_local(path: str, url: str, max_bytes: int) -> bytes:
    """:func:`read_bytes` for a local path: stat, open without blocking, fstat, read."""
    try:
        _require_regular(os.stat(path).st_mode, url)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{url}: file not found; check the path") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        _require_regular(info.st_mode, url)
        if info.st_size > max_bytes:
            raise ImageRejected(
                f"file is {_human_bytes(info.st_size)}, over the {_human_bytes(max_bytes)} limit (max_bytes)", url)
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


def _convert_in_strips(img: Image.Image, convert) -> np.ndarray:
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


# -- fitting to the generator's square --------------------------------------------------------
@dataclass(frozen=True)
class FitInfo:
    """How an image was mapped to the generator's square, enough to map a result back.

    Attributes:
        width, height: the original's size in pixels (after EXIF orientation).
        mode: ``"crop"``, ``"pad"`` or ``"stretch"``.
        box: ``(left, top, right, bottom)`` in the original's pixel coordinates. Version 1: the
            region that became the square (for ``pad`` the centred square of side
            ``max(width, height)``, extending past the image). Version 2 (``pad`` only): the
            whole image, which fills the centred rectangle :func:`pad_placement` of the square.
        resolution: the square's side ``R``.
        version: the record's format (:data:`FIT_INFO_VERSIONS`).
    """

    width: int
    height: int
    mode: str
    box: tuple[int, int, int, int]
    resolution: int
    version: int = FIT_INFO_VERSION

    def to_json(self) -> str:
        """One-line JSON with a format version, stored beside the image's codes."""
        body = {"version": self.version, **dataclasses.asdict(self)}
        body["box"] = list(self.box)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, max_pixels: int | None = None) -> FitInfo:
        """Read :meth:`to_json`'s output back, strictly (:func:`check_fit_record` says what holds).

        Args:
            text: the record.
            max_pixels: the most pixels an original (and a version-2 box) may have; default
                :func:`fit_record_pixel_limit`, the largest image any compress run accepted.

        Raises:
            FitRecordError: with a one-line reason, for anything else.
        """
        try:
            if not isinstance(text, str):
                raise FitRecordError(f"fit record must be JSON text, got {type(text).__name__}")
            if len(text) > _FIT_RECORD_MAX_CHARS:
                raise FitRecordError(f"fit record is {len(text)} characters long, over {_FIT_RECORD_MAX_CHARS}")
            try:
                body = json.loads(text)
            except ValueError as exc:  # JSONDecodeError, and out-of-range numbers
                raise FitRecordError(f"fit record is not JSON ({exc})") from None
            return check_fit_record(body, fit_record_pixel_limit() if max_pixels is None else max_pixels)
        except FitRecordError as exc:
            shown = text[:80] if isinstance(text, str) else text
            raise FitRecordError(f"not a fit-info record: {exc} ({shown!r})") from None


_FIT_RECORD_MAX_CHARS = 1024
MAX_FIT_RESOLUTION = 16384  # the largest generator square a fit record may name (StyleGAN3: 1024)
_FIT_KEYS = frozenset({"version", "width", "height", "mode", "box", "resolution"})


def fit_record_pixel_limit() -> int:
    """The default bound on a fit record's image: the larger of :data:`DEFAULT_MAX_PIXELS` and
    Pillow's decompression-bomb limit, above which no compress run ever decoded an image."""
    return max(DEFAULT_MAX_PIXELS, int(Image.MAX_IMAGE_PIXELS or 0))


def _record_int(body: Mapping, key: str, low: int = 1) -> int:
    value = body[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise FitRecordError(f"fit record field {key!r} must be an integer >= {low}, got {value!r}")
    return value


def check_fit_record(body: object, max_pixels: int) -> FitInfo:
    """A parsed fit record as a :class:`FitInfo`, if it is exactly one this code writes.

    Holds: a JSON object with exactly the keys version, width, height, mode, box, resolution;
    integers (never floats or booleans), positive sizes; ``width × height`` at most
    ``max_pixels``, ``resolution`` at most :data:`MAX_FIT_RESOLUTION`; ``mode`` one of :data:`FIT_MODES`; ``box`` four
    integers. Version 1 crop/stretch: the box lies within the image and is not empty. Version 1
    pad: the box is the centred square of side ``max(width, height)`` (implied by the size, so
    nothing is free to grow; :func:`unfit` never allocates it). Version 2: pad only, the box is
    the whole image.
    """
    if not isinstance(body, dict):
        raise FitRecordError(f"fit record must be a JSON object, got {type(body).__name__}")
    if set(body) != _FIT_KEYS:
        raise FitRecordError(f"fit record keys must be {sorted(_FIT_KEYS)}, got {sorted(map(str, body))}")
    version = body["version"]
    if version not in FIT_INFO_VERSIONS or isinstance(version, bool):
        raise FitRecordError(f"fit record version {version!r}; this code reads versions {list(FIT_INFO_VERSIONS)}")
    width, height, resolution = (_record_int(body, k) for k in ("width", "height", "resolution"))
    if width * height > max_pixels:
        raise FitRecordError(f"fit record image {width}x{height} is over the {_human_pixels(max_pixels)} limit")
    if resolution > MAX_FIT_RESOLUTION:
        raise FitRecordError(f"fit record resolution {resolution} is over {MAX_FIT_RESOLUTION}")
    mode = body["mode"]
    if mode not in FIT_MODES:
        raise FitRecordError(f"fit record mode {mode!r}; expected one of {', '.join(FIT_MODES)}")
    box = body["box"]
    if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
        raise FitRecordError(f"fit record box must be 4 integers, got {box!r}")
    info = FitInfo(width=width, height=height, mode=mode, box=tuple(box), resolution=resolution, version=version)
    _check_box(info)
    return info


def _check_box(info: FitInfo) -> None:
    left, top, right, bottom = info.box
    if info.version == PAD_FIT_INFO_VERSION:
        if info.mode != "pad" or info.box != (0, 0, info.width, info.height):
            raise FitRecordError(f"fit record version 2 must be pad with box [0, 0, width, height], got "
                                 f"{info.mode} {list(info.box)}")
    elif info.mode == "pad":
        if info.box != legacy_pad_box(info.width, info.height):
            raise FitRecordError(f"fit record pad box {list(info.box)} is not the centred square of the "
                                 f"{info.width}x{info.height} image")
    elif not (0 <= left < right <= info.width and 0 <= top < bottom <= info.height):
        raise FitRecordError(f"fit record box {list(info.box)} is not within the {info.width}x{info.height} image")


def legacy_pad_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The version-1 pad box: the centred square of side ``max(width, height)``."""
    side = max(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def pad_placement(width: int, height: int, resolution: int) -> tuple[int, int, int, int]:
    """Where a version-2 pad puts the image in the ``resolution`` square: ``(left, top, right,
    bottom)``, the image scaled so its longer side is ``resolution`` (each side at least 1 pixel,
    rounded), centred (offsets rounded down)."""
    side = max(width, height)
    w = min(resolution, max(1, round(width * resolution / side)))
    h = min(resolution, max(1, round(height * resolution / side)))
    left, top = (resolution - w) // 2, (resolution - h) // 2
    return left, top, left + w, top + h


def fit_to_square(
    rgb: np.ndarray, resolution: int, mode: str = "crop", *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, FitInfo]:
    """Map an image to the generator's ``[R, R, 3]`` input (rules in the module docstring).

    Args:
        rgb: ``[H, W, 3]`` uint8.
        resolution: ``R``, the generator's ``img_resolution``.
        mode: ``"crop"`` (centred square of side min(W, H)), ``"pad"`` (centred square of side
            max(W, H), edge-replicated), or ``"stretch"`` (the whole image, aspect not kept).
        max_pixels: the most pixels any intermediate may have. A pad whose square of side
            max(W, H) would exceed it (a 1×100000 strip) is done at the generator's resolution
            instead: the image is resized to fit ``R`` first, then edge-replicated to the square
            (a version-2 record). Every record's box has at most ``max(W·H, max_pixels)`` pixels.

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
    elif mode == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
    else:
        box = legacy_pad_box(width, height)
        if max(width, height) ** 2 > max_pixels:
            info = FitInfo(width=width, height=height, mode=mode, box=(0, 0, width, height),
                           resolution=resolution, version=PAD_FIT_INFO_VERSION)
            return _pad_at_resolution(rgb, info), info
    info = FitInfo(width=width, height=height, mode=mode, box=box, resolution=resolution)
    return _resize(_take_box(rgb, box), resolution, resolution), info


def _pad_at_resolution(rgb: np.ndarray, info: FitInfo) -> np.ndarray:
    """Version-2 pad: resize into :func:`pad_placement`, then edge-replicate to the square."""
    left, top, right, bottom = pad_placement(info.width, info.height, info.resolution)
    small = _resize(rgb, right - left, bottom - top)
    r = info.resolution
    return np.pad(small, ((top, r - bottom), (left, r - right), (0, 0)), mode="edge")


def refit(rgb: np.ndarray, info: FitInfo, max_pixels: int | None = None) -> np.ndarray:
    """The square ``info``'s fit made from ``rgb`` (the original, decoded again): what the audit
    re-encodes. Follows the record, not today's choice of method.

    Raises:
        FitRecordError: the image is not ``info``'s size, or a version-1 pad would need a square
            over ``max_pixels`` (default :func:`fit_record_pixel_limit`).
    """
    _check_rgb(rgb, "rgb")
    if rgb.shape[:2] != (info.height, info.width):
        raise FitRecordError(f"image is {rgb.shape[1]}x{rgb.shape[0]}, its fit record says {info.width}x{info.height}")
    if info.version == PAD_FIT_INFO_VERSION:
        return _pad_at_resolution(rgb, info)
    left, top, right, bottom = info.box
    limit = fit_record_pixel_limit() if max_pixels is None else max_pixels
    if (right - left) * (bottom - top) > max(limit, info.width * info.height):
        raise FitRecordError(f"fit box {list(info.box)} is over the {_human_pixels(limit)} limit")
    return _resize(_take_box(rgb, info.box), info.resolution, info.resolution)


def unfit(square_rgb: np.ndarray, info: FitInfo) -> np.ndarray:
    """Map a square result back to the original's size: ``[S, S, 3]`` uint8 → ``[H, W, 3]`` uint8.

    The square (any side ``S``, normally ``info.resolution``) is resized to the box and placed at
    it; the canvas outside the box is filled by edge replication of the placed region. A
    version-2 pad, and a version-1 pad box over :func:`fit_record_pixel_limit` (archives made
    before version 2), resample only the part of the square the image occupies, straight to the
    original's size (Pillow's ``resize(box=…)``; within a few levels of resizing the whole square
    to the box and cutting the image out, which smaller boxes still do exactly).

    Memory stays near the output's own 3 bytes a pixel whatever its shape: only the part of the
    box inside the image is resampled, in strips along the long side (:func:`_resample_into`),
    written straight into the output, whose margins are then filled in place. Pillow resampling
    a 1×38,000,000 output in one call would build a table of doubles per output row (~56 bytes a
    pixel).
    """
    _check_rgb(square_rgb, "square_rgb")
    if square_rgb.shape[0] != square_rgb.shape[1]:
        raise ValueError(f"square_rgb must be square, got shape {tuple(square_rgb.shape)}")
    left, top, right, bottom = info.box
    width, height = info.width, info.height
    if right <= max(left, 0) or bottom <= max(top, 0) or left >= width or top >= height:
        raise ValueError(f"fit box {info.box} does not overlap the {width}x{height} image")
    side = square_rgb.shape[0]
    out = np.empty((height, width, 3), dtype=np.uint8)
    if info.mode == "pad" and info.version == PAD_FIT_INFO_VERSION:
        scale = side / info.resolution
        x0, y0, x1, y1 = pad_placement(width, height, info.resolution)
        region = (x0 * scale, y0 * scale, x1 * scale, y1 * scale)
        _resample_into(out, square_rgb, region, (width, height), (0, 0, width, height))
        return out
    box_pixels = (right - left) * (bottom - top)
    if box_pixels > max(fit_record_pixel_limit(), width * height) and left <= 0 and top <= 0 \
            and right >= width and bottom >= height:  # a large version-1 pad box, never allocated
        sx, sy = side / (right - left), side / (bottom - top)
        region = (-left * sx, -top * sy, (width - left) * sx, (height - top) * sy)
        _resample_into(out, square_rgb, region, (width, height), (0, 0, width, height))
        return out
    # the window of the box-sized resize that lies inside the image, in the box's coordinates
    window = (max(0, -left), max(0, -top), min(right, width) - left, min(bottom, height) - top)
    placed = _resample_into(out[max(0, top) : max(0, top) + window[3] - window[1],
                                max(0, left) : max(0, left) + window[2] - window[0]],
                            square_rgb, (0.0, 0.0, float(side), float(side)), (right - left, bottom - top), window)
    _edge_fill(out, (max(0, left), max(0, top), max(0, left) + placed.shape[1], max(0, top) + placed.shape[0]))
    return out


# How :func:`_resample_into` bounds its memory. An output of at most _ONE_CALL_PIXELS pixels and
# _ONE_CALL_LENGTH a side is one Pillow call, as before. Larger ones are cut into strips of at most
# _STRIP_PIXELS output pixels and _STRIP_LENGTH along the cut (each strip's filter table and int64
# sums: a few MB), plus one Pillow pass across of at most _ACROSS_PIXELS pixels.
_ONE_CALL_PIXELS = 1 << 24
_ONE_CALL_LENGTH = 1 << 16
_STRIP_PIXELS = 1 << 18
_STRIP_LENGTH = 1 << 12
_ACROSS_PIXELS = 1 << 24


def _resample_into(out: np.ndarray, rgb: np.ndarray, region: tuple[float, float, float, float],
                   size: tuple[int, int], window: tuple[int, int, int, int]) -> np.ndarray:
    """Write into ``out`` (``[y1-y0, x1-x0, 3]``) the ``window`` ``(x0, y0, x1, y1)`` of ``rgb``'s
    float ``region`` resampled (Lanczos) to ``size`` ``(width, height)``; returns ``out``.

    What one Pillow ``resize(size, LANCZOS, box=region)`` gives, computed in strips: Pillow
    filters rows first, then columns. Along the axis that is cut, :func:`_lanczos_pass` applies
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
            out[start - y0 : stop - y0] = _lanczos_pass(across, 0, (ry0, ry1), size[1], (start, stop))
        return out
    step = max(1, min(_STRIP_LENGTH, _STRIP_PIXELS // max(h, side_y)))  # a very wide image: columns
    if size[1] < side_y:  # Pillow filters columns first when the output is shorter: so do these strips
        side_x = rgb.shape[1]
        down = np.asarray(image.resize((side_x, size[1]), Image.Resampling.LANCZOS, box=(0, ry0, side_x, ry1)))
        down = down[y0:y1]
        for start in range(x0, x1, step):
            stop = min(x1, start + step)
            out[:, start - x0 : stop - x0] = _lanczos_pass(down, 1, (rx0, rx1), size[0], (start, stop))
        return out
    for start in range(x0, x1, step):
        stop = min(x1, start + step)
        columns = Image.fromarray(np.ascontiguousarray(_lanczos_pass(rgb, 1, (rx0, rx1), size[0], (start, stop))))
        down = columns.resize((stop - start, size[1]), Image.Resampling.LANCZOS, box=(0, ry0, stop - start, ry1))
        out[:, start - x0 : stop - x0] = np.asarray(down)[y0:y1]
    return out


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights for 8-bit images


def _lanczos_pass(src: np.ndarray, axis: int, span: tuple[float, float], out_size: int,
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


def _edge_fill(out: np.ndarray, inner: tuple[int, int, int, int]) -> None:
    """Fill ``out`` outside ``inner`` ``(x0, y0, x1, y1)`` by edge replication of ``inner``, in
    place (what ``np.pad(mode="edge")`` gives, without a second copy of the image)."""
    x0, y0, x1, y1 = inner
    out[y0:y1, :x0] = out[y0:y1, x0 : x0 + 1]
    out[y0:y1, x1:] = out[y0:y1, x1 - 1 : x1]
    out[:y0] = out[y0 : y0 + 1]
    out[y1:] = out[y1 - 1 : y1]


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
