"""Restore at the original size in bounded memory, and one row that cannot be written never stops
the others (red-team round 2: F1, F3, F6).

Real archives compressed on CPU with the bundled models: three small images, plus a 1×100000 and
a 100000×1 PNG compressed with ``--fit pad`` (genuine version-2 pad rows); variants are written
as real Parquet shards (a fit record claiming a 1×20,000,000 original, a name part of 256
bytes) and restored through the CLI into real folders.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image
from small_archives import LATENT_ONLY

from sg3archive.cli import main as cli
from sg3archive.images import FitInfo, unfit
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.manifest import CODEC_DIR


def _compress(root: Path, sources: dict[str, np.ndarray], fit: str) -> Path:
    src = root / "src"
    src.mkdir()
    for name, pixels in sources.items():
        Image.fromarray(pixels).save(src / name)
    dest = root / "archive"
    summary = compress(CompressJob(source=str(src), destination=str(dest), device="cpu", calibration_images=len(sources),
                                   batch_size=8, fit=fit, **LATENT_ONLY), progress=False)
    assert summary.images == len(sources) and summary.failures == 0
    return dest


@pytest.fixture(scope="module")
def small(tmp_path_factory, one_thread) -> Path:
    """An archive of three small images (3 rows, one shard)."""
    rng = np.random.RandomState(3)
    return _compress(tmp_path_factory.mktemp("small"), {
        f"{n}.png": rng.randint(0, 255, (48, 64, 3), dtype=np.uint8) for n in ("a", "b", "c")}, "crop")


@pytest.fixture(scope="module")
def strips(tmp_path_factory, one_thread) -> Path:
    """An archive of a 1×100000 and a 100000×1 gradient, compressed with ``--fit pad``."""
    ramp = (np.arange(100000) * 255 // 99999).astype(np.uint8)
    tall = np.repeat(ramp[:, None, None], 3, axis=2)
    return _compress(tmp_path_factory.mktemp("strips"), {"tall.png": tall, "wide.png": tall.transpose(1, 0, 2)}, "pad")


def _rows(archive: Path) -> list[dict]:
    return ArchiveStore.open(str(archive)).read_table("images").to_pylist()


def _variant(archive: Path, out: Path, rows: list[dict]) -> Path:
    """A new archive with ``archive``'s settings and codec holding ``rows`` (one shard)."""
    old = ArchiveStore.open(str(archive))
    shutil.copytree(archive / CODEC_DIR, out / CODEC_DIR)
    store = ArchiveStore.create(str(out), old.settings)
    store.commit([store.write_shard(pa.Table.from_pylist(rows, schema=fmt.images_schema()), "images")])
    return out


def _cli(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# -- F1: a thin, tall original costs ~3 bytes a pixel, not ~56 ----------------------------------------
def test_unfit_of_a_one_pixel_wide_original_stays_near_the_output_size() -> None:
    """1×20,000,000 (60 MB of output): measured in a forked child, its peak RSS rise must stay far
    under what one Pillow call costs (~1.1 GB: a table of doubles per output row)."""
    height = 20_000_000
    info = FitInfo(width=1, height=height, mode="stretch", box=(0, 0, 1, height), resolution=64, version=1)
    square = np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report, exit without running pytest's teardown
        try:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out = unfit(square, info)
            grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            os.write(write, json.dumps({"grew_kb": grew, "shape": list(out.shape),
                                        "ends": [int(out[0, 0, 0]), int(out[-1, 0, 0])]}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = json.loads(pipe.read() or "{}")
    os.waitpid(pid, 0)
    assert report["shape"] == [height, 1, 3]
    assert report["grew_kb"] < 400 * 1024, f"peak RSS grew {report['grew_kb'] // 1024} MB"


def test_strips_give_what_one_resize_gives() -> None:
    """Cutting the work into strips changes no pixel (against one Pillow call, for shapes that
    take each path: tall, wide and shorter than the square, wide and taller, and a pad window)."""
    rng = np.random.RandomState(1)
    square = rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(square)
    for width, height in [(1, 300000), (300000, 1), (200000, 100), (7, 300000)]:
        info = FitInfo(width=width, height=height, mode="stretch", box=(0, 0, width, height), resolution=64, version=1)
        one = np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))
        assert np.array_equal(unfit(square, info), one), (width, height)


def test_a_row_too_large_for_memory_is_a_bad_row_with_a_reason(small, tmp_path, monkeypatch) -> None:
    """A MemoryError rebuilding one row names the size and the way out; the others restore."""
    import sg3archive.pipeline.restore as restore_module

    rows = _rows(small)
    rows[0] = dict(rows[0], fit=json.dumps({"version": 1, "width": 1, "height": 38_000_000, "mode": "stretch",
                                            "box": [0, 0, 1, 38_000_000], "resolution": 64}, separators=(",", ":")))
    arch = _variant(small, tmp_path / "arch", rows)
    real = restore_module.unfit

    def unfit_or_run_out(square, info):
        if info.height == 38_000_000:
            raise MemoryError()
        return real(square, info)

    monkeypatch.setattr(restore_module, "unfit", unfit_or_run_out)
    result = _cli("restore", str(arch), str(tmp_path / "out"), "--device", "cpu", "--size", "original")
    assert result.exit_code == 1
    assert "2 images restored" in result.output, result.output
    assert ("its original size 1×38000000 needs more memory than this machine has; restore it with --size "
            "generator") in result.output
    assert "1 row could not be written (see above)" in result.output
    assert "damaged" not in result.output.splitlines()[-1]


# -- F3: one name too long for the file system is one bad row --------------------------------------
def test_a_name_part_over_255_bytes_is_one_bad_row(small, tmp_path) -> None:
    rows = _rows(small)
    rows[1] = dict(rows[1], source_name="e" * 256 + ".png")
    arch = _variant(small, tmp_path / "arch", rows)
    out = tmp_path / "out"
    result = _cli("restore", str(arch), str(out), "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "2 images restored" in result.output, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("not restored:"))
    assert rows[1]["id"] in line and "cannot write" in line and "file name too long" in line
    assert len([p for p in out.rglob("*") if p.is_file()]) == 2
    assert "1 row could not be written (see above)" in result.output.splitlines()[-1]
    assert "audit" not in result.output.splitlines()[-1]


# -- F6: genuine wide and tall images in WebP and JPEG -------------------------------------------------
@pytest.mark.parametrize("format_, limit", [("webp", 16383), ("jpeg", 65500)])
def test_a_size_over_the_format_limit_is_a_bad_row_not_damage(strips, tmp_path, format_, limit) -> None:
    out = tmp_path / "out"
    result = _cli("restore", str(strips), str(out), "--device", "cpu", "--size", "original", "--format", format_)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("not restored:")]
    assert len(lines) == 2, result.output
    for line in lines:
        assert f"is larger than {format_.upper()} can hold ({limit} px a side); restore it with --format png" in line
    assert any("original size 1×100000" in line for line in lines)
    assert any("original size 100000×1" in line for line in lines)
    assert "2 rows could not be written (see above)" in result.output.splitlines()[-1]
    assert "damaged" not in result.output.splitlines()[-1] and "audit" not in result.output.splitlines()[-1]
    assert "libjpeg" not in result.output.lower() and "broken data stream" not in result.output


def test_wide_and_tall_pad_rows_restore_as_png_at_their_size(strips, tmp_path) -> None:
    out = tmp_path / "out"
    result = _cli("restore", str(strips), str(out), "--device", "cpu", "--size", "original")
    assert result.exit_code == 0, result.output
    with Image.open(out / "tall.png") as tall, Image.open(out / "wide.png") as wide:
        assert tall.size == (1, 100000) and wide.size == (100000, 1)
