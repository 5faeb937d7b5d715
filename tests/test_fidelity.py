"""``sg3archive.metrics.fidelity``: PSNR, MS-SSIM and LPIPS at the original size, for any image size."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from photos import photo
from PIL import Image

from sg3archive.metrics.fidelity import (
    LPIPS_TILE,
    Fidelity,
    _mean_similarity,
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


# --- MS-SSIM: our tiled, separable implementation against torchmetrics (quality.ms_ssim) -----------------------

def _reference_ms_ssim(original: np.ndarray, restored: np.ndarray) -> float:
    """torchmetrics' MS-SSIM (the reference implementation), as ms_ssim_uint8 used to call it."""
    with torch.inference_mode():
        a, b = _to_unit_tensor(original, "cpu"), _to_unit_tensor(restored, "cpu")
        return float(ms_ssim(a * 2 - 1, b * 2 - 1)[0])


# (width, height): every scale count (1 at 11 px, 2 from 12, 3 from 44, 4 from 99, 5 from 176), odd and even
# sides (odd rows/columns dropped by the 2x2 pooling), wide and tall, and widths over one 1024-px column tile.
_AGREEMENT_SIZES = [(11, 11), (40, 11), (12, 12), (43, 57), (44, 44), (99, 98), (131, 175), (176, 176), (177, 301),
                    (257, 129), (640, 427), (1100, 90), (90, 700)]


@pytest.mark.parametrize("size", _AGREEMENT_SIZES)
def test_ms_ssim_agrees_with_torchmetrics_on_photos(size, one_thread):
    for name, quality in (("rocket", 30), ("coffee", 75), ("astronaut", 10)):
        original = np.asarray(photo(name, size))
        restored = _jpeg(original, quality)
        reference, ours = _reference_ms_ssim(original, restored), ms_ssim_uint8(original, restored)
        assert 0.0 < ours < 1.0
        assert ours == pytest.approx(reference, abs=1e-4), (name, size)


@pytest.mark.parametrize("size", _AGREEMENT_SIZES)
def test_ms_ssim_agrees_with_torchmetrics_on_random_images(size, one_thread):
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    original = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    for amplitude in (3, 40, 200):
        restored = _noisy(original, amplitude, seed=amplitude)
        reference, ours = _reference_ms_ssim(original, restored), ms_ssim_uint8(original, restored)
        assert ours == pytest.approx(reference, abs=1e-4), (size, amplitude)


def test_ms_ssim_clips_negative_contrast_like_torchmetrics(one_thread):
    """An inverted image has negative contrast-structure at every scale: torchmetrics' relu gives 0, so do we."""
    original = np.asarray(photo("coffee", (300, 200)))
    inverted = 255 - original
    assert _reference_ms_ssim(original, inverted) == 0.0
    assert ms_ssim_uint8(original, inverted) == 0.0


@pytest.mark.parametrize("luminance", [False, True])
def test_ms_ssim_tiles_do_not_change_the_mean(luminance, one_thread):
    """The halo makes tiles seamless: any tile size gives the whole image's mean (up to float32 summation order)."""
    original = np.asarray(photo("rocket", (301, 203)))
    restored = _jpeg(original, 20)
    cpu = torch.device("cpu")
    whole = _mean_similarity(original, restored, 255.0, luminance, cpu, tile=(10_000, 10_000))
    for tile in ((1, 1000), (16, 7), (33, 64), (200, 291)):
        assert _mean_similarity(original, restored, 255.0, luminance, cpu, tile=tile) == pytest.approx(whole, abs=1e-6)


def test_ms_ssim_memory_is_bounded_on_a_large_image(tmp_path):
    """A 3000x2000 pair (6 Mpx): the call adds well under 100 MB (torchmetrics added ~1.2 GB at this size).

    Measured in a fresh process: the kernel's peak-RSS mark (VmHWM) is reset just before the call
    (``/proc/self/clear_refs``), so it is the call's own peak, not the imports' or the parent's.
    """
    original = np.asarray(photo("rocket", (3000, 2000)))
    np.save(tmp_path / "a.npy", original)
    np.save(tmp_path / "b.npy", _noisy(original, 10))
    script = (
        "import sys, numpy as np, torch\n"
        "from sg3archive.metrics.fidelity import ms_ssim_uint8\n"
        "def kb(key): return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))\n"
        "torch.set_num_threads(1)\n"
        "a, b = np.load(sys.argv[1]), np.load(sys.argv[2])\n"
        "ms_ssim_uint8(a[:64, :64].copy(), b[:64, :64].copy())\n"  # lazy imports and allocator warm-up
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = kb('VmRSS')\n"
        "value = ms_ssim_uint8(a, b)\n"
        "print(value, kb('VmHWM') - before)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
                          capture_output=True, text=True, check=True)
    value, added_kb = done.stdout.split()
    assert 0.5 < float(value) < 1.0
    assert int(added_kb) < 100 * 1024
