"""Archives written before the quality contract (latent rows only, shard format version 3) keep
working: the committed golden archive inspects, restores to the very pixels the old code restored
(at the original size and at the generator's), and passes its audit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sg3archive.cli import main as cli

GOLDEN = Path(__file__).parent / "golden" / "format1"


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    """A copy of the golden archive (restore and audit may write plans or history into it)."""
    dest = tmp_path / "archive"
    shutil.copytree(GOLDEN / "archive", dest)
    return dest


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert(img.mode))


@pytest.mark.parametrize("size", ["original", "generator"])
def test_format1_archive_restores_bit_identically(archive: Path, tmp_path: Path, size: str) -> None:
    out = tmp_path / "restored"
    result = CliRunner().invoke(cli, ["restore", str(archive), str(out), "--size", size, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    expected = GOLDEN / "expected" / size
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        got, want = _pixels(out / name), _pixels(expected / name)
        assert got.shape == want.shape, name
        assert np.array_equal(got, want), f"{name}: {int(np.abs(got.astype(int) - want).max())} levels off"


def test_format1_archive_inspects(archive: Path) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(archive), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["images"] == 3


def test_format1_archive_passes_its_audit(archive: Path) -> None:
    result = CliRunner().invoke(cli, ["audit", str(archive), "--sample", "3", "--device", "cpu", "--no-lpips",
                                      "--source-root", str(GOLDEN / "sources")])
    assert result.exit_code == 0, result.output
