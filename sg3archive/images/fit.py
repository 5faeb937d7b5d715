"""Fitting an image to the generator's square and back, and the record of how it was fitted.

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
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from PIL import Image

from sg3archive.images.errors import FitRecordError
from sg3archive.images.limits import DEFAULT_MAX_PIXELS, human_pixels
from sg3archive.images.resample import resample_into, resize
from sg3archive.images.rgb import check_rgb

FitMode = Literal["crop", "pad", "stretch"]  # how an image is mapped to the square
DEFAULT_FIT: FitMode = "crop"  # what compress does unless told otherwise
FIT_MODES: tuple[FitMode, ...] = get_args(FitMode)
FIT_INFO_VERSION = 1  # crop, stretch, and pad whose padded square fits in max_pixels
PAD_FIT_INFO_VERSION = 2  # pad at the generator's resolution: box = the whole image
FIT_INFO_VERSIONS = (FIT_INFO_VERSION, PAD_FIT_INFO_VERSION)


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
        raise FitRecordError(f"fit record image {width}x{height} is over the {human_pixels(max_pixels)} limit")
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
    rgb: np.ndarray, resolution: int, mode: str = DEFAULT_FIT, *, max_pixels: int = DEFAULT_MAX_PIXELS
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
    check_rgb(rgb, "rgb")
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
    return resize(_take_box(rgb, box), resolution, resolution), info


def _pad_at_resolution(rgb: np.ndarray, info: FitInfo) -> np.ndarray:
    """Version-2 pad: resize into :func:`pad_placement`, then edge-replicate to the square."""
    left, top, right, bottom = pad_placement(info.width, info.height, info.resolution)
    small = resize(rgb, right - left, bottom - top)
    r = info.resolution
    return np.pad(small, ((top, r - bottom), (left, r - right), (0, 0)), mode="edge")


def refit(rgb: np.ndarray, info: FitInfo, max_pixels: int | None = None) -> np.ndarray:
    """The square ``info``'s fit made from ``rgb`` (the original, decoded again): what the audit
    re-encodes. Follows the record, not today's choice of method.

    Raises:
        FitRecordError: the image is not ``info``'s size, or a version-1 pad would need a square
            over ``max_pixels`` (default :func:`fit_record_pixel_limit`).
    """
    check_rgb(rgb, "rgb")
    if rgb.shape[:2] != (info.height, info.width):
        raise FitRecordError(f"image is {rgb.shape[1]}x{rgb.shape[0]}, its fit record says {info.width}x{info.height}")
    if info.version == PAD_FIT_INFO_VERSION:
        return _pad_at_resolution(rgb, info)
    left, top, right, bottom = info.box
    limit = fit_record_pixel_limit() if max_pixels is None else max_pixels
    if (right - left) * (bottom - top) > max(limit, info.width * info.height):
        raise FitRecordError(f"fit box {list(info.box)} is over the {human_pixels(limit)} limit")
    return resize(_take_box(rgb, info.box), info.resolution, info.resolution)


def unfit(square_rgb: np.ndarray, info: FitInfo) -> np.ndarray:
    """Map a square result back to the original's size: ``[S, S, 3]`` uint8 → ``[H, W, 3]`` uint8.

    The square (any side ``S``, normally ``info.resolution``) is resized to the box and placed at
    it; the canvas outside the box is filled by edge replication of the placed region. A
    version-2 pad, and a version-1 pad box over :func:`fit_record_pixel_limit` (archives made
    before version 2), resample only the part of the square the image occupies, straight to the
    original's size (Pillow's ``resize(box=…)``; within a few levels of resizing the whole square
    to the box and cutting the image out, which smaller boxes still do exactly).

    Memory stays near the output's own 3 bytes a pixel whatever its shape: only the part of the
    box inside the image is resampled, in strips along the long side (:func:`resample_into`),
    written straight into the output, whose margins are then filled in place. Pillow resampling
    a 1×38,000,000 output in one call would build a table of doubles per output row (~56 bytes a
    pixel).
    """
    check_rgb(square_rgb, "square_rgb")
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
        resample_into(out, square_rgb, region, (width, height), (0, 0, width, height))
        return out
    box_pixels = (right - left) * (bottom - top)
    if box_pixels > max(fit_record_pixel_limit(), width * height) and left <= 0 and top <= 0 \
            and right >= width and bottom >= height:  # a large version-1 pad box, never allocated
        sx, sy = side / (right - left), side / (bottom - top)
        region = (-left * sx, -top * sy, (width - left) * sx, (height - top) * sy)
        resample_into(out, square_rgb, region, (width, height), (0, 0, width, height))
        return out
    # the window of the box-sized resize that lies inside the image, in the box's coordinates
    window = (max(0, -left), max(0, -top), min(right, width) - left, min(bottom, height) - top)
    placed = resample_into(out[max(0, top) : max(0, top) + window[3] - window[1],
                                max(0, left) : max(0, left) + window[2] - window[0]],
                            square_rgb, (0.0, 0.0, float(side), float(side)), (right - left, bottom - top), window)
    _edge_fill(out, (max(0, left), max(0, top), max(0, left) + placed.shape[1], max(0, top) + placed.shape[0]))
    return out


# How :func:`resample_into` bounds its memory. An output of at most _ONE_CALL_PIXELS pixels and
# _ONE_CALL_LENGTH a side is one Pillow call, as before. Larger ones are cut into strips of at most
# _STRIP_PIXELS output pixels and _STRIP_LENGTH along the cut (each strip's filter table and int64


def _take_box(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The box's pixels; where the box extends past the image, edge-replicated."""
    height, width = rgb.shape[:2]
    left, top, right, bottom = box
    inside = rgb[max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
    pads = ((max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width)), (0, 0))
    return np.pad(inside, pads, mode="edge")



def _edge_fill(out: np.ndarray, inner: tuple[int, int, int, int]) -> None:
    """Fill ``out`` outside ``inner`` ``(x0, y0, x1, y1)`` by edge replication of ``inner``, in
    place (what ``np.pad(mode="edge")`` gives, without a second copy of the image)."""
    x0, y0, x1, y1 = inner
    out[y0:y1, :x0] = out[y0:y1, x0 : x0 + 1]
    out[y0:y1, x1:] = out[y0:y1, x1 - 1 : x1]
    out[:y0] = out[y0 : y0 + 1]
    out[y1:] = out[y1 - 1 : y1]
