"""The audit of format-4 rows (the quality contract) at the original size, on real archives.

A real archive is compressed from three real images, then its rows are rewritten through the
store as the compress side writes rows that are not latent: two ``classical`` rows (real WebP/AVIF
files of the real sources, at the lowest quality meeting the contract) and one ``original`` row
(the source's bytes). The audit restores each row as restore would, compares it with its source at
the original size, checks its image's integrity and its recorded contract, and fails, naming the
row, when a forged row breaks its contract.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image
from small_archives import THREE_SOURCES, archive_rows

from sg3archive.audit import run_audit
from sg3archive.cli import main as cli
from sg3archive.images import decode_image
from sg3archive.images.classical import decode_rgb, encode_rgb, smallest_meeting
from sg3archive.metrics.fidelity import measure_fidelity
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.quality.choose import as_written, restored_thumb
from sg3archive.quality.contract import QualityContract
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.manifest import CODEC_DIR

CONTRACT = QualityContract(name="standard", min_psnr=30.0, min_ms_ssim=0.95)
CODECS = {"a.png": "webp", "b.jpg": "avif"}  # c.png is stored as the original


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _as_classical(row: dict, source: bytes, codec: str) -> dict:
    """``row`` rewritten as compress writes a classical row: the smallest ``codec`` file meeting
    :data:`CONTRACT`, its fidelity at the original size, the thumbnail of what restore writes."""
    original = decode_image(source).rgb

    def meets(restored) -> bool:
        f = measure_fidelity(original, as_written(restored, row["mode"]))
        return CONTRACT.meets(f.psnr, f.ms_ssim, f.lpips)

    found = smallest_meeting(original, codec, meets)
    assert found is not None
    return _with_image(row, found.data, codec, found.quality, original)


def _with_image(row: dict, data: bytes, codec: str, quality: int | None, original) -> dict:
    restored = as_written(decode_rgb(data), row["mode"])
    f = measure_fidelity(original, restored)
    return dict(row, representation="original" if quality is None else "classical", image_data=data,
                image_sha256=_sha(data), image_codec=codec, image_quality=quality, payload=b"",
                payload_sha256=_sha(b""), latent_bytes=0, image_bytes=len(data), psnr=None, ms_ssim=None, lpips=None,
                recon_thumb=restored_thumb(restored).tobytes(), contract=CONTRACT.to_json(),
                contract_met=CONTRACT.meets(f.psnr, f.ms_ssim, f.lpips), fidelity_psnr=f.psnr,
                fidelity_ms_ssim=f.ms_ssim, fidelity_lpips=None, avif_bytes=None, avif_quality=None)


def real_archive(root: Path, seed: int) -> tuple[Path, Path]:
    """``(src, archive)``: :data:`small_archives.THREE_SOURCES` as real smooth images (gradients and
    a disc, from ``seed``) compressed on the CPU with the bundled models into latent rows, with a
    fixed bit table (``balanced``) so the fixture's cost does not depend on the default profile's
    calibration."""
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(seed)
    for name, (width, height) in THREE_SOURCES.items():
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, min(width, height) / 4
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < r * r)[..., None] * rng.uniform(40, 90, 3)
        base = np.stack([x / width * 200, y / height * 200, (x + y) / (width + height) * 120], axis=-1)
        noise = rng.normal(0, 4, (height, width, 3))
        Image.fromarray(np.clip(base + disc + noise + 20, 0, 255).astype(np.uint8)).save(src / name, quality=92)
    dest = root / "archive"
    summary = compress(CompressJob(source=str(src), destination=str(dest), device="cpu", calibration_images=3,
                                   batch_size=8, profile="balanced", baseline_images=0,
                                   representations=["latent"]), progress=False)
    assert summary.images == len(THREE_SOURCES) and summary.failures == 0
    return src, dest


def _write(dest: Path, base: Path, rows: list[dict]) -> Path:
    """A new archive at ``dest`` with ``base``'s settings and codec, holding ``rows`` (one shard)."""
    shutil.copytree(base / CODEC_DIR, dest / CODEC_DIR)
    store = ArchiveStore.create(str(dest), ArchiveStore.open(str(base)).settings)
    table = pa.Table.from_pylist(rows, schema=fmt.images_schema())
    store.commit([store.write_shard(table, "images")])
    return dest


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """``(src, a real archive of format-4 rows that are not latent, its rows)``."""
    root = tmp_path_factory.mktemp("contract")
    src, latent = real_archive(root, seed=13)
    rows = []
    for row in archive_rows(latent):
        name = row["source_name"]
        source = (src / name).read_bytes()
        if name in CODECS:
            rows.append(_as_classical(row, source, CODECS[name]))
        else:
            rows.append(_with_image(row, source, "png", None, decode_image(source).rgb))
    return src, _write(root / "contract", latent, rows), rows


def _forged(made, tmp_path: Path, change) -> tuple[Path, dict]:
    """A copy of the archive whose first row is ``change(row)``; returns it and the changed row."""
    _, archive, rows = made
    rows = [dict(r) for r in rows]
    rows[0] = change(rows[0])
    return _write(tmp_path / "forged", archive, rows), rows[0]


def test_classical_and_original_rows_pass_at_the_original_size(made, tmp_path) -> None:
    _, archive, rows = made
    assert [fmt.row_representation(r) for r in rows] == ["classical", "classical", "original"]
    result = run_audit(str(archive), sample_size=3, seed=1, device="cpu", lpips=False)
    assert result.passed, result.problems
    assert result.sampled == 3 and result.compared == 3
    # measured at the original size: the recorded figures come back (the original row is identical)
    assert result.stats["psnr"].n == 2 and abs(result.stats["psnr_drop"].mean) < 1e-9
    assert min(result.stats["psnr"].min, result.stats["ms_ssim"].min * 100) >= 30
    sizes = {(r["width"], r["height"]) for r in rows}
    assert {item["original"].shape[1::-1] for _, item in result.worst} <= sizes
    summary = result.summary
    assert summary.images == 3 and summary.mix["classical"][0] == 2 and summary.mix["original"][0] == 1
    assert summary.stored_bytes == sum(len(r["image_data"]) for r in rows)
    rec = result.record()
    assert rec["sample_summary"]["representations"]["original"]["images"] == 1
    assert any("every image meets it" in line for line in rec["sample_summary_lines"])


def test_forged_row_breaking_its_contract_fails_the_cli_audit(made, tmp_path) -> None:
    """An image swapped for a much lower quality coding of its own source, its checksums, sizes and
    thumbnail recomputed: the audit exits 1 with a contract line naming the row."""
    src = made[0]

    def worse(row: dict) -> dict:
        original = decode_image((src / row["source_name"]).read_bytes()).rgb
        data = encode_rgb(original, "webp", 0)
        restored = as_written(decode_rgb(data), row["mode"])
        forged = measure_fidelity(original, restored)
        assert not CONTRACT.meets(forged.psnr, forged.ms_ssim, None), forged  # the forgery breaks the contract
        return dict(row, image_data=data, image_sha256=_sha(data), image_bytes=len(data), image_quality=0,
                    recon_thumb=restored_thumb(restored).tobytes())

    archive, row = _forged(made, tmp_path, worse)
    res = CliRunner().invoke(cli, ["audit", str(archive), "--sample", "3", "--seed", "1", "--device", "cpu",
                                   "--no-lpips"])
    assert res.exit_code == 1, (res.output, res.exception)
    lines = [line.strip() for line in res.stdout.splitlines()]
    mine = [line for line in lines if line.startswith(f"contract: row {row['id']} ({row['source_uri']}): ")]
    assert len(mine) == 1, lines
    assert f"restored at {row['width']}×{row['height']} misses its contract {CONTRACT.text()}: PSNR " in mine[0]
    assert not any(line.startswith("integrity:") or line.startswith("determinism:") for line in lines), lines
    assert any(line.startswith("  sampled rows: bytes/image ") for line in res.stdout.splitlines())


def test_recorded_fidelity_below_the_contract_fails_without_the_source(made, tmp_path) -> None:
    """A row whose recorded fidelity misses its contract fails, whatever contract_met says, even
    where no source can be read."""
    archive, row = _forged(made, tmp_path, lambda r: dict(r, fidelity_psnr=24.1, contract_met=True))
    result = run_audit(str(archive), sample_size=3, seed=1, device="cpu", lpips=False,
                       source_roots=[str(tmp_path / "no-sources-here")])
    assert result.compared == 0 and not result.passed
    assert result.problems_of("contract") == [
        f"contract: row {row['id']} ({row['source_uri']}): as recorded at encode time, restored at "
        f"{row['width']}×{row['height']} misses its contract {CONTRACT.text()}: PSNR 24.10 dB < 30 dB"]


def test_image_integrity_checks(made, tmp_path) -> None:
    _, archive, rows = made
    bad = [dict(r) for r in rows]
    flipped = bytearray(bad[0]["image_data"])
    flipped[len(flipped) // 2] ^= 0x10
    bad[0]["image_data"] = bytes(flipped)  # its sha256 not recomputed
    bad[1] = dict(bad[1], image_data=b"not an image", image_sha256=_sha(b"not an image"), image_bytes=12)
    copy = bad[2]["image_data"] + b"\0"  # an "original" that is not the source
    bad[2] = dict(bad[2], image_data=copy, image_sha256=_sha(copy), image_bytes=len(copy))
    result = run_audit(str(_write(tmp_path / "bad", archive, bad)), sample_size=3, seed=1, device="cpu", lpips=False)
    problems = result.problems_of("integrity")
    assert len(problems) == 3 and not result.passed, result.problems
    assert f"row {bad[0]['id']}" in problems[0] and "image sha256 mismatch: expected" in problems[0]
    assert f"row {bad[1]['id']}" in problems[1] and "image does not decode" in problems[1]
    assert f"row {bad[2]['id']}" in problems[2] and "an original row whose image is not its source" in problems[2]


def test_an_unmeasured_lpips_ceiling_is_a_note(made, tmp_path) -> None:
    lpips_contract = QualityContract(name="custom", min_psnr=30.0, max_lpips=0.3)

    def with_lpips(row: dict) -> dict:
        return dict(row, contract=lpips_contract.to_json(), fidelity_lpips=0.01)

    archive, row = _forged(made, tmp_path, with_lpips)
    result = run_audit(str(archive), sample_size=3, seed=1, device="cpu", lpips=False)
    assert result.passed, result.problems
    assert any(n.startswith("contract: the LPIPS ceiling of custom (PSNR ≥ 30 dB, LPIPS ≤ 0.3) was not re-measured")
               for n in result.notes), result.notes
    # the recorded LPIPS still counts: over the ceiling, it fails
    archive2, row2 = _forged(made, tmp_path / "2", lambda r: dict(with_lpips(r), fidelity_lpips=0.5))
    failed = run_audit(str(archive2), sample_size=3, seed=1, device="cpu", lpips=False)
    assert [p for p in failed.problems if p.startswith(f"contract: row {row2['id']}")], failed.problems
    assert "LPIPS 0.5000 > 0.3" in failed.problems_of("contract")[0]


def test_report_shows_the_sampled_rows_at_the_original_size(made, tmp_path) -> None:
    _, archive, _ = made
    copy = tmp_path / "archive"
    shutil.copytree(archive, copy)
    report = tmp_path / "report.html"
    res = CliRunner().invoke(cli, ["audit", str(copy), "--sample", "3", "--device", "cpu", "--no-lpips",
                                   "--report", str(report), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["sample_summary"]["images"] == 3
    page = report.read_text()
    assert 'id="sample"' in page and "representations: classical 2 (" in page
    assert "Worst reconstructions at the original size" in page and "a diagnostic" in page
