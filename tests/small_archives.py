"""Small real archives that several test files build the same way (one home for the recipe)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.store.archive import ArchiveStore

# Archives whose rows must all be latent (tests of the payload path: codec, synthesis, thumbnails): the
# latent representation only, under no contract (the default contract would store noise images as files),
# with the guide's table (these tests are about the archive, not the rate control of profile matched,
# which tests/test_rate_control.py and tests/test_quality_contract.py run).
LATENT_ONLY = {"representations": ["latent"], "quality": "none", "profile": "balanced"}

THREE_SOURCES = {"a.png": (64, 48), "b.jpg": (48, 64), "c.png": (64, 64)}  # name -> (width, height)


def three_image_archive(root: Path, seed: int) -> tuple[Path, Path]:
    """``(src, archive)`` under ``root``: three real random images (from ``seed``) and their archive
    (3 rows, one shard), compressed on the CPU with the bundled models."""
    src = root / "src"
    src.mkdir()
    rng = np.random.RandomState(seed)
    for name, (width, height) in THREE_SOURCES.items():
        Image.fromarray(rng.randint(0, 255, (height, width, 3), dtype=np.uint8)).save(src / name)
    dest = root / "archive"
    summary = compress(CompressJob(source=str(src), destination=str(dest), device="cpu", calibration_images=3, **LATENT_ONLY,
                                   batch_size=8), progress=False)
    assert summary.images == len(THREE_SOURCES) and summary.failures == 0
    return src, dest


def archive_rows(archive: Path) -> list[dict]:
    """Every committed images row of ``archive``, in archive order."""
    return ArchiveStore.open(str(archive)).read_table("images").to_pylist()
