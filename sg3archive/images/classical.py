"""Classical codecs (AVIF, WebP, JPEG through Pillow) and the search for the fewest-bytes coding that meets a check.

The quality contract gives each image the cheapest representation that meets its floor; the
``classical`` representation is the smallest Pillow AVIF or WebP file whose decoded pixels pass the
caller's check (for instance ``measure_fidelity(original, restored).psnr >= 30``). Compress chooses
among :data:`CLASSICAL_CODECS`; benchmarks may also plot JPEG (:data:`BENCHMARK_CODECS`).

Every encoder setting lives in :data:`CODEC_SETTINGS`, the one table compress, the baseline and the
benchmarks share: Pillow's defaults except ``quality`` (AVIF: default speed and 4:2:0 chroma
subsampling; WebP: ``method=6``, which measured 4–8 % fewer bytes than the default 4 at quality 50
and 75 on three photos of 0.25–0.37 Mpx, for 1.9–3.1x the encode time, 0.17–0.40 s; JPEG: defaults). Decoding goes through
:func:`sg3archive.images.decode.decode_image`, the project's one safe decoder.

:func:`smallest_meeting` searches the quality scale. Bytes and fidelity grow with quality almost,
but not strictly, monotonically, so it binary-searches for the lowest quality that meets the check,
then also tries the :data:`BELOW_BOUNDARY` qualities just under that boundary, and keeps the
fewest-bytes coding among every trial that met the check (ties: the lower quality). Measured against
an exhaustive scan of qualities 0..100 on scikit-image's photos (WebP: 9 photos, AVIF: 6; PSNR floors
28–40 dB), the search found the same fewest bytes in every case, in 7–10 trials.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sg3archive.images.decode import decode_image
from sg3archive.images.limits import DEFAULT_MAX_PIXELS
from sg3archive.images.rgb import check_rgb

CLASSICAL_CODECS: tuple[str, ...] = ("avif", "webp")  # what compress may choose
BENCHMARK_CODECS: tuple[str, ...] = ("avif", "webp", "jpeg")  # what benchmarks may also plot

# The one table of encoder settings: Pillow's save() format and keyword arguments besides quality.
CODEC_SETTINGS: dict[str, dict[str, Any]] = {
    "avif": {"format": "AVIF"},  # Pillow defaults: speed 6, subsampling "4:2:0"
    "webp": {"format": "WEBP", "method": 6},  # lossy; method 6: slowest, smallest
    "jpeg": {"format": "JPEG"},  # Pillow defaults: 4:2:0, baseline, no optimize
}
# Largest side each codec can encode (WebP's format limit); others are bounded by the pixel limit.
MAX_SIDE: dict[str, int] = {"webp": 16383, "jpeg": 65535}
# Qualities tried just below the binary search's boundary, where non-monotone bytes/fidelity hide.
BELOW_BOUNDARY = 4
QUALITY_RANGE = range(0, 101)


@dataclass(frozen=True, eq=False)
class ClassicalCoding:
    """One encoded image found by :func:`smallest_meeting` (compared by identity: it holds an array).

    Attributes:
        codec: ``"avif"``, ``"webp"`` or ``"jpeg"``.
        quality: the Pillow quality (0..100) it was encoded at.
        data: the encoded file.
        restored: ``[H, W, 3]`` uint8 decoded from ``data``.
        trials: how many qualities the search encoded and checked to find it.
    """

    codec: str
    quality: int
    data: bytes
    restored: np.ndarray
    trials: int

    @property
    def size(self) -> int:
        """Bytes of the encoded file."""
        return len(self.data)


def _check_codec(codec: str) -> None:
    if codec not in CODEC_SETTINGS:
        raise ValueError(f"unknown classical codec {codec!r}; expected one of {', '.join(BENCHMARK_CODECS)}")


def can_encode(codec: str, height: int, width: int) -> bool:
    """Whether ``codec`` can hold an image of this size (WebP stops at 16383 px a side)."""
    _check_codec(codec)
    return max(height, width) <= MAX_SIDE.get(codec, max(height, width))


def encode_rgb(rgb: np.ndarray, codec: str, quality: int) -> bytes:
    """``rgb`` (``[H, W, 3]`` uint8) encoded with ``codec`` at Pillow ``quality`` under :data:`CODEC_SETTINGS`.

    Raises:
        ValueError: not an RGB uint8 array, an unknown codec, a quality outside 0..100, or a size the codec cannot hold.
    """
    check_rgb(rgb, "rgb")
    _check_codec(codec)
    if not isinstance(quality, int) or quality not in QUALITY_RANGE:
        raise ValueError(f"quality must be an integer in 0..100, got {quality!r}")
    if not can_encode(codec, rgb.shape[0], rgb.shape[1]):
        raise ValueError(f"{codec} cannot hold a {rgb.shape[1]}x{rgb.shape[0]} image "
                         f"(at most {MAX_SIDE[codec]} px a side)")
    settings = dict(CODEC_SETTINGS[codec])
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, format=settings.pop("format"), quality=quality,
                                                            **settings)
    return buffer.getvalue()


def decode_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``[H, W, 3]`` uint8 pixels of an encoded file, through :func:`~sg3archive.images.decode.decode_image`.

    Raises:
        ImageRejected: not a readable image, truncated, or over ``max_pixels``.
    """
    return decode_image(data, max_pixels=max_pixels).rgb


def smallest_meeting(rgb: np.ndarray, codec: str, meets: Callable[[np.ndarray], bool], *,
                     max_bytes: int | None = None) -> ClassicalCoding | None:
    """The fewest-bytes coding of ``rgb`` with ``codec`` whose decoded pixels satisfy ``meets(restored)``.

    Binary search over quality 0..100 for the lowest quality that meets (assuming monotonicity),
    then the :data:`BELOW_BOUNDARY` qualities under it; among all trials that met, the one with
    fewest bytes (ties: lower quality). Each trial is one encode, one decode and one call of ``meets``.

    Returns ``None`` when nothing meets the check (not even quality 100), when the codec cannot hold
    the image's size, or when every coding found that meets is larger than ``max_bytes``. With
    ``max_bytes``, a trial that fails the check and is already larger than ``max_bytes`` ends the
    search at once: a coding that meets needs a higher quality, hence (nearly always) more bytes,
    and a cheaper representation already exists.
    """
    check_rgb(rgb, "rgb")
    _check_codec(codec)
    if not can_encode(codec, rgb.shape[0], rgb.shape[1]):
        return None
    trials: dict[int, tuple[bytes, np.ndarray, bool]] = {}

    def trial(quality: int) -> tuple[bytes, np.ndarray, bool]:
        if quality not in trials:
            data = encode_rgb(rgb, codec, quality)
            restored = decode_rgb(data, max_pixels=max(DEFAULT_MAX_PIXELS, rgb.shape[0] * rgb.shape[1]))
            trials[quality] = (data, restored, bool(meets(restored)))
        return trials[quality]

    lo, hi = QUALITY_RANGE[0], QUALITY_RANGE[-1]
    while lo < hi:
        mid = (lo + hi) // 2
        data, _, ok = trial(mid)
        if ok:
            hi = mid
        elif max_bytes is not None and len(data) > max_bytes:
            return None
        else:
            lo = mid + 1
    data, _, ok = trial(lo)
    if not ok:
        return None
    for quality in range(lo - 1, max(QUALITY_RANGE[0], lo - BELOW_BOUNDARY) - 1, -1):
        trial(quality)
    met = [(len(data), quality) for quality, (data, _, ok) in trials.items() if ok]
    size, quality = min(met)
    if max_bytes is not None and size > max_bytes:
        return None
    data, restored, _ = trials[quality]
    return ClassicalCoding(codec=codec, quality=quality, data=data, restored=restored, trials=len(trials))
