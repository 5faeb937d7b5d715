"""The image package (``sg3archive.images``) as one home: it sits below the store, the thumbnail
has one shape, and training reads images through ``load_fitted`` with compress's pixel limit.

Images are real PNG files written with Pillow; the generator is the t64 fixture network.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from PIL import Image

import sg3archive
from sg3archive import images
from sg3archive.store import format as fmt
from sg3archive.training import TrainConfig, TrainResult, train_encoder
from sg3archive.training.data import RealImages, image_to_tensor
from sg3archive.training.trainer import TrainReport

REPO = Path(__file__).resolve().parents[1]


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def t64(sg3_reference_dir):
    return sg3archive.load_network(str(sg3_reference_dir / "t64" / "network-snapshot.pkl"))


def test_the_image_package_imports_neither_the_store_nor_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        import sg3archive.images
        print(sorted(m for m in sys.modules if m.startswith("sg3archive.store") or m == "torch"))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_thumbnail_shape_has_one_home() -> None:
    assert fmt.THUMB_SHAPE is images.THUMB_SHAPE and fmt.THUMB_BYTES == 8 * 8 * 3


def test_fit_modes_are_the_literal_s_values() -> None:
    assert images.FIT_MODES == ("crop", "pad", "stretch") == get_args(images.FitMode)


def test_thumbnail_is_the_rounded_mean_of_each_cell() -> None:
    rgb = noise(64, 64, seed=3)
    x = images.to_tensor(rgb)
    thumb = images.thumbnail(x)
    assert thumb.shape == images.THUMB_SHAPE and thumb.dtype == np.uint8
    cells = x.reshape(3, 8, 8, 8, 8).mean(dim=(2, 4))  # [3, 8 rows, 8 cols]
    expected = (cells * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(thumb, expected)
    assert len(thumb.tobytes()) == fmt.THUMB_BYTES


def test_training_reads_an_image_exactly_as_load_fitted_does() -> None:
    data = png(noise(90, 130, seed=1))
    fitted = images.load_fitted(data, 64, "crop")
    assert torch.equal(image_to_tensor(data, 64), fitted.tensor)
    gray = image_to_tensor(data, 64, channels=1)
    luma = np.asarray(Image.fromarray(images.from_tensor(fitted.tensor)).convert("L"), dtype=np.float32)
    assert gray.shape == (1, 64, 64) and torch.equal(gray, torch.from_numpy(luma)[None] / 127.5 - 1)


def test_training_applies_the_pixel_limit_compress_applies(tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "small.png").write_bytes(png(noise(40, 40)))
    (folder / "large.png").write_bytes(png(noise(100, 100)))  # 10,000 pixels
    with pytest.raises(images.ImageRejected, match="max_pixels"):
        image_to_tensor((folder / "large.png").read_bytes(), 32, max_pixels=5_000)
    real = RealImages(str(folder), 32, max_pixels=5_000)
    x = real(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 3, 32, 32)
    large = next(u for u in real.urls if u.endswith("large.png"))
    assert list(real.bad) == [large] and "max_pixels" in real.bad[large]
    assert RealImages(str(folder), 32).max_pixels == images.DEFAULT_MAX_PIXELS


def test_a_training_run_leaves_its_files_whole_and_no_temporaries(t64, tmp_path) -> None:
    settings = dict(encoder="hierarchical", width=0.25, batch_size=2, lpips_net=None, log_every=1, sample_every=0,
                    checkpoint_every=1, synthetic_pool=4, image_every=0)
    config = TrainConfig(steps=3, **settings)
    report = train_encoder(t64, config, tmp_path, progress=False)
    assert isinstance(report, TrainReport) and TrainResult is TrainReport
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(report, "step", 0)  # noqa: B010
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "metrics.jsonl", "synthetic_pool.safetensors"]
    assert report.checkpoint == tmp_path / "checkpoint" and report.step == 3 and len(report.history) == 3
    pool = (tmp_path / "synthetic_pool.safetensors").stat().st_mtime_ns
    more = train_encoder(t64, TrainConfig(steps=4, **settings), tmp_path, progress=False)  # resumes
    assert more.step == 4 and len(more.history) == 4
    assert (tmp_path / "synthetic_pool.safetensors").stat().st_mtime_ns == pool  # the stored pool was reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "metrics.jsonl", "synthetic_pool.safetensors"]
