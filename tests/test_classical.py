"""``sg3archive.images.classical``: Pillow AVIF/WebP/JPEG coding and the fewest-bytes search, on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sg3archive.images import ImageRejected
from sg3archive.images.classical import (
    BENCHMARK_CODECS,
    CLASSICAL_CODECS,
    CODEC_SETTINGS,
    decode_rgb,
    encode_rgb,
    smallest_meeting,
)
from sg3archive.metrics.fidelity import measure_fidelity, psnr_uint8

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
FLOOR_DB = 30.0


def _rgb(name: str) -> np.ndarray:
    with Image.open(EXAMPLES / name) as img:
        return np.asarray(img.convert("RGB"))


def _odd(width: int, height: int) -> np.ndarray:
    """The wide photograph resized (Lanczos) to an odd size."""
    with Image.open(EXAMPLES / "more" / "wide.jpg") as img:
        return np.asarray(img.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))


IMAGES = {
    "wide.jpg": lambda: _rgb("more/wide.jpg"),
    "tall.webp": lambda: _rgb("more/tall.webp"),
    "texture_00.png": lambda: _rgb("texture_00.png"),
    "texture_03.png": lambda: _rgb("texture_03.png"),
    "crop 37x211": lambda: np.ascontiguousarray(_rgb("more/wide.jpg")[20:57, :]).repeat(2, axis=1)[:, :211],
    "resize 211x37": lambda: _odd(37, 211),
}


def _meets(original: np.ndarray):
    # psnr_uint8 is the very PSNR measure_fidelity reports, without its MS-SSIM (slow on a busy CPU)
    return lambda restored: psnr_uint8(original, restored) >= FLOOR_DB


def test_tables_agree():
    assert set(CLASSICAL_CODECS) <= set(BENCHMARK_CODECS) == set(CODEC_SETTINGS)


@pytest.mark.parametrize("codec", CLASSICAL_CODECS)
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_search_meets_the_floor_and_one_quality_lower_does_not_save(name, codec):
    rgb = IMAGES[name]()
    found = smallest_meeting(rgb, codec, _meets(rgb))
    assert found is not None and found.codec == codec
    assert np.array_equal(decode_rgb(found.data), found.restored)
    assert measure_fidelity(rgb, found.restored).psnr >= FLOOR_DB
    assert found.restored.shape == rgb.shape and 2 <= found.trials <= 12
    if found.quality >= 1:
        lower = encode_rgb(rgb, codec, found.quality - 1)
        assert measure_fidelity(rgb, decode_rgb(lower)).psnr < FLOOR_DB or len(lower) >= found.size


def test_max_bytes_stops_early():
    rgb = IMAGES["wide.jpg"]()
    full = smallest_meeting(rgb, "webp", _meets(rgb))
    assert full is not None
    calls = []

    def counted(restored: np.ndarray) -> bool:
        calls.append(1)
        return psnr_uint8(rgb, restored) >= 45.0

    mid = encode_rgb(rgb, "webp", 50)  # the binary search's first trial
    assert measure_fidelity(rgb, decode_rgb(mid)).psnr < 45.0
    assert smallest_meeting(rgb, "webp", counted, max_bytes=len(mid) - 1) is None
    assert len(calls) == 1  # quality 50 fails and is already too big: nothing higher is encoded
    calls.clear()
    assert smallest_meeting(rgb, "webp", counted, max_bytes=40) is None  # every coding that meets is bigger
    assert 1 <= len(calls) <= 8
    again = smallest_meeting(rgb, "webp", _meets(rgb), max_bytes=full.size)
    assert again is not None and (again.quality, again.data) == (full.quality, full.data)


def test_a_check_nothing_meets_gives_none_and_anything_gives_quality_0():
    rgb = IMAGES["tall.webp"]()
    assert smallest_meeting(rgb, "avif", lambda restored: False) is None
    anything = smallest_meeting(rgb, "webp", lambda restored: True)
    assert anything is not None and anything.quality == 0


def test_decode_rejects_garbage_and_truncation():
    with pytest.raises(ImageRejected):
        decode_rgb(b"not an image at all")
    data = encode_rgb(IMAGES["wide.jpg"](), "avif", 60)
    with pytest.raises(ImageRejected):
        decode_rgb(data[: len(data) // 2])
    with pytest.raises(ImageRejected, match="limit"):
        decode_rgb(data, max_pixels=100)


@pytest.mark.parametrize("codec", BENCHMARK_CODECS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (37, 211)])
def test_odd_sizes_round_trip(codec, shape):
    rgb = np.ascontiguousarray(_odd(max(shape[1], 2), max(shape[0], 2))[: shape[0], : shape[1]])
    restored = decode_rgb(encode_rgb(rgb, codec, 90))
    assert restored.shape == rgb.shape and restored.dtype == np.uint8
    assert measure_fidelity(rgb, restored).psnr > 25


def test_bad_arguments_are_refused():
    rgb = IMAGES["texture_00.png"]()
    with pytest.raises(ValueError, match="unknown classical codec"):
        encode_rgb(rgb, "jxl", 50)
    with pytest.raises(ValueError, match="0..100"):
        encode_rgb(rgb, "webp", 101)
    wide = np.zeros((1, 16384, 3), np.uint8)
    with pytest.raises(ValueError, match="16383"):
        encode_rgb(wide, "webp", 50)
    assert smallest_meeting(wide, "webp", lambda restored: True) is None
