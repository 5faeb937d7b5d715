"""``sg3archive.metrics.fidelity``: PSNR, MS-SSIM and LPIPS at the original size, for any image size."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sg3archive.metrics.fidelity import (
    LPIPS_TILE,
    Fidelity,
    _small_ssim,
    _to_unit_tensor,
    lpips_uint8,
    measure_fidelity,
    ms_ssim_uint8,
    psnr_uint8,
)
from sg3archive.metrics.quality import ms_ssim

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _photo(width: int, height: int) -> np.ndarray:
    """A real photograph from the examples, resized to ``width`` x ``height`` (Lanczos)."""
    with Image.open(EXAMPLES / "more" / "wide.jpg") as img:
        return np.asarray(img.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _noisy(rgb: np.ndarray, amplitude: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, rgb.shape)
    return np.clip(rgb.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def test_identical_images_are_inf_and_one():
    rgb = _photo(160, 80)
    fid = measure_fidelity(rgb, rgb.copy())
    assert fid.psnr == math.inf and fid.ms_ssim == 1.0 and fid.lpips is None and fid.identical
    assert fid.to_dict() == {"psnr": None, "identical": True, "ms_ssim": 1.0, "lpips": None}


def test_constant_offset_gives_the_known_psnr():
    rgb = np.clip(_photo(160, 80), 0, 250)
    fid = measure_fidelity(rgb, rgb + 5)
    assert fid.psnr == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)
    assert 0.0 < fid.ms_ssim < 1.0 and not fid.identical


def test_psnr_sums_exactly():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (299, 1001, 3), dtype=np.uint8)
    b = rng.integers(0, 256, a.shape, dtype=np.uint8)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    assert psnr_uint8(a, b) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-13)
    one = np.zeros((1, 1, 3), np.uint8)
    assert psnr_uint8(one, one + 255) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 2), (3, 500), (5, 300), (7, 7), (10, 64), (11, 40), (299, 1001)])
def test_any_size_has_a_fidelity(shape):
    rgb = np.ascontiguousarray(_photo(max(shape[1], 8), max(shape[0], 8))[: shape[0], : shape[1]])
    assert measure_fidelity(rgb, rgb.copy()).ms_ssim == 1.0
    slight, strong = measure_fidelity(rgb, _noisy(rgb, 4)), measure_fidelity(rgb, _noisy(rgb, 60))
    for fid in (slight, strong):
        assert math.isfinite(fid.psnr) and 0.0 <= fid.ms_ssim <= 1.0
    assert slight.psnr > strong.psnr
    assert slight.ms_ssim > strong.ms_ssim


@pytest.mark.parametrize("shape", [(11, 11), (11, 40), (40, 11)])
def test_small_side_rule_equals_ms_ssim_where_they_meet(shape):
    rgb = np.ascontiguousarray(_photo(160, 80)[: shape[0], : shape[1]])
    a, b = _to_unit_tensor(rgb, "cpu"), _to_unit_tensor(_noisy(rgb, 20), "cpu")
    assert _small_ssim(a, b) == pytest.approx(float(ms_ssim(a * 2 - 1, b * 2 - 1)[0]), abs=2e-4)  # float32 rounding


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(80, 160, 3\) and \(80, 159, 3\)"):
        measure_fidelity(np.zeros((80, 160, 3), np.uint8), np.zeros((80, 159, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ms_ssim_uint8(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32))


def test_to_dict_is_json_and_reads_back():
    fid = Fidelity(psnr=31.5, ms_ssim=0.97, lpips=0.12)
    text = json.dumps(fid.to_dict(), allow_nan=False)
    assert Fidelity.from_dict(json.loads(text)) == fid
    same = Fidelity(psnr=math.inf, ms_ssim=1.0, lpips=None)
    assert Fidelity.from_dict(json.loads(json.dumps(same.to_dict(), allow_nan=False))) == same
    with pytest.raises(ValueError, match="identical"):
        Fidelity.from_dict({"psnr": None, "identical": False, "ms_ssim": 1.0})


def test_lpips_tiled_agrees_with_whole_image(lpips_alex, one_thread):
    original = _photo(600, 400)
    restored = _jpeg(original, 20)
    with torch.inference_mode():
        whole = float(lpips_alex(_to_unit_tensor(original, "cpu") * 2 - 1, _to_unit_tensor(restored, "cpu") * 2 - 1)[0])
    assert LPIPS_TILE >= 600
    fid = measure_fidelity(original, restored, perceptual=lpips_alex)  # one tile: the whole image
    assert whole > 0.05
    assert fid.lpips == pytest.approx(whole, rel=1e-5)
    tiled = lpips_uint8(original, restored, lpips_alex, tile=512)  # two 300x400 tiles
    assert tiled != whole
    assert tiled == pytest.approx(whole, rel=0.05)


@pytest.mark.parametrize("shape", [(1, 1), (5, 300), (30, 30), (300, 20)])
def test_lpips_of_tiny_images_is_defined(lpips_alex, one_thread, shape):
    rgb = np.ascontiguousarray(_photo(max(shape[1], 8), max(shape[0], 8))[: shape[0], : shape[1]])
    assert measure_fidelity(rgb, rgb.copy(), perceptual=lpips_alex).lpips == 0.0
    slight = lpips_uint8(rgb, _noisy(rgb, 4), lpips_alex)
    strong = lpips_uint8(rgb, _noisy(rgb, 80), lpips_alex)
    assert 0.0 < slight < strong
