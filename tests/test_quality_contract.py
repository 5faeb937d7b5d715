"""The quality contract end to end, through the CLI: generator images and real photographs of odd
sizes compressed under ``--min-psnr 30`` restore, at their original sizes, at 30 dB or better, and
the archive is no larger than the smallest AVIF files that meet 30 dB; the contract is recorded in
the archive; ``--representations`` restricts the choice; an LPIPS ceiling without LPIPS weights is
refused before anything is made."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from photos import write_photos

from sg3archive.cli import main as cli
from sg3archive.images import decode_image
from sg3archive.images.classical import decode_rgb, encode_rgb
from sg3archive.metrics.fidelity import psnr_uint8
from sg3archive.quality import QualityContract
from sg3archive.store.archive import ArchiveStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
FLOOR = 30.0


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _original(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes()).rgb


def _smallest_avif(rgb: np.ndarray, floor: float) -> int:
    """The fewest bytes of a Pillow AVIF of ``rgb`` meeting ``floor`` dB: every quality from 0 up
    to the first that meets it (AVIF's bytes grow with quality), independent of the product's search."""
    for quality in range(101):
        data = encode_rgb(rgb, "avif", quality)
        if psnr_uint8(rgb, decode_rgb(data)) >= floor:
            return len(data)
    raise AssertionError("no AVIF quality meets the floor")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("contract") / "src"
    src.mkdir()
    for name in ("texture_00.png", "texture_01.png", "texture_02.png"):
        shutil.copy(EXAMPLES / name, src / name)
    write_photos(src, [("coffee", (512, 384), "png"), ("rocket", (300, 1000), "jpg")])
    return src


@pytest.fixture(scope="module")
def contract_archive(sources: Path, tmp_path_factory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("contract") / "archive"
    out = _run("compress", str(sources), str(dest), "--min-psnr", str(FLOOR), "--device", "cpu",
               "--calibration-images", "5", "--json")
    return dest, json.loads(out)


def test_every_image_restores_above_the_floor_at_its_original_size(sources, contract_archive, tmp_path) -> None:
    dest, summary = contract_archive
    assert summary["images"] == 5 and summary["failures"] == 0
    restored = tmp_path / "restored"
    _run("restore", str(dest), str(restored), "--device", "cpu")
    for path in sorted(sources.iterdir()):
        original = _original(path)
        out = restored / (path.stem + ".png")
        got = _original(out)
        assert got.shape == original.shape, path.name
        assert psnr_uint8(original, got) >= FLOOR, path.name
    rows = ArchiveStore.open(str(dest)).read_table("images").to_pylist()
    for row in rows:
        contract = QualityContract.from_json(row["contract"])
        assert contract.min_psnr == FLOOR and row["contract_met"] is True
        assert row["fidelity_psnr"] >= FLOOR
        assert row["latent_bytes"] + row["image_bytes"] == len(row["payload"]) + len(row["image_data"] or b"")
    assert summary["quality"]["representations"]  # the mix is reported


def test_the_archive_is_no_larger_than_avif_alone_at_the_same_floor(sources, contract_archive) -> None:
    dest, summary = contract_archive
    rows = ArchiveStore.open(str(dest)).read_table("images", columns=["latent_bytes", "image_bytes"]).to_pylist()
    stored = sum(r["latent_bytes"] + r["image_bytes"] for r in rows)
    avif = sum(_smallest_avif(_original(p), FLOOR) for p in sorted(sources.iterdir()))
    assert stored == summary["quality"]["stored_bytes"]
    assert stored <= avif, (stored, avif)


def test_the_contract_is_recorded_in_the_archive(contract_archive) -> None:
    dest, _ = contract_archive
    settings = ArchiveStore.open(str(dest)).settings
    assert settings["quality"]["min_psnr"] == FLOOR and settings["quality"]["name"] == "custom"
    assert sorted(settings["representations"]) == ["classical", "latent", "original"]


def test_representations_latent_stores_only_payloads(sources, tmp_path) -> None:
    dest = tmp_path / "latent"
    out = _run("compress", str(sources), str(dest), "--representations", "latent", "--quality", "none",
               "--device", "cpu", "--calibration-images", "5", "--json")
    summary = json.loads(out)
    assert set(summary["quality"]["representations"]) == {"latent"}
    rows = ArchiveStore.open(str(dest)).read_table("images").to_pylist()
    assert {r["representation"] for r in rows} == {"latent"}
    assert all(r["image_data"] is None and r["contract_met"] for r in rows)


def test_a_contract_nothing_allowed_meets_is_recorded_as_missed(sources, tmp_path) -> None:
    dest = tmp_path / "missed"
    out = _run("compress", str(sources), str(dest), "--representations", "latent", "--min-psnr", "60",
               "--device", "cpu", "--calibration-images", "5")
    assert "BELOW" in out
    rows = ArchiveStore.open(str(dest)).read_table("images").to_pylist()
    assert len(rows) == 5 and not any(r["contract_met"] for r in rows)


def test_lossless_stores_the_originals(sources, tmp_path) -> None:
    dest = tmp_path / "lossless"
    _run("compress", str(sources), str(dest), "--quality", "lossless", "--device", "cpu", "--calibration-images", "0")
    rows = ArchiveStore.open(str(dest)).read_table("images").to_pylist()
    assert {r["representation"] for r in rows} == {"original"}
    for row in rows:
        assert row["image_sha256"] == row["source_sha256"] and row["fidelity_psnr"] == float("inf")


def test_an_lpips_ceiling_without_weights_is_refused_before_any_work(sources, tmp_path) -> None:
    os.environ.pop("SG3ARCHIVE_LPIPS_WEIGHTS", None)
    dest = tmp_path / "lpips"
    result = CliRunner().invoke(cli, ["compress", str(sources), str(dest), "--max-lpips", "0.1", "--device", "cpu"])
    assert result.exit_code != 0
    assert "--max-lpips" in result.output and "lpips-weights" in result.output
    assert not dest.exists()


def test_unknown_and_unbuilt_representations_are_refused_in_one_line(sources, tmp_path) -> None:
    for value, words in (("latent+residual", "not available"), ("jpeg", "unknown representation")):
        result = CliRunner().invoke(cli, ["compress", str(sources), str(tmp_path / "x"), "--representations", value])
        assert result.exit_code != 0 and words in result.output and "Traceback" not in result.output
