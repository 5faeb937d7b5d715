"""End to end: folder → archive → restore with the bundled pack, on CPU, with real files."""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sg3archive.errors import Sg3ArchiveError
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.inspect import inspect_archive
from sg3archive.pipeline.jobs import CompressJob, JobError, RestoreJob, load_job
from sg3archive.pipeline.restore import output_name, restore
from sg3archive.store.archive import ArchiveStore

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "examples" / "images"


def job(src, dest, **kw) -> CompressJob:
    kw.setdefault("profile", "balanced")  # the pipeline, not rate control (tests/test_rate_control.py)
    return CompressJob(source=str(src), destination=str(dest), device="cpu", calibration_images=8, **kw)


def _forged_png(width: int, height: int) -> bytes:
    """A real 1×1 PNG whose header then claims ``width × height`` (CRC fixed): a decompression bomb."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> Path:
    """Good images in odd modes and shapes, and bad files of every kind."""
    root = tmp_path_factory.mktemp("messy")
    shutil.copytree(SAMPLES, root / "good")
    rng = np.random.RandomState(0)
    rgb = (rng.rand(48, 80, 3) * 255).astype(np.uint8)
    odd = root / "odd"
    odd.mkdir()
    Image.fromarray(rgb).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray((rng.rand(40, 40) * 65535).astype(np.uint16)).save(odd / "sixteen.png")
    Image.fromarray(rgb).convert("P").save(odd / "palette.png")
    Image.fromarray(rgb).convert("LA").save(odd / "gray_alpha.png")
    bad = root / "bad"
    bad.mkdir()
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    (bad / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("this is not an image\n")
    (bad / "bomb.png").write_bytes(_forged_png(100_000, 100_000))
    return root


@pytest.fixture(scope="module")
def archived(messy_folder, tmp_path_factory):
    dest = tmp_path_factory.mktemp("arch") / "archive"
    summary = compress(job(messy_folder, dest, shard_size=5, batch_size=8), progress=False)
    return messy_folder, dest, summary


def test_messy_folder_completes_and_records_every_bad_file(archived) -> None:
    src, dest, summary = archived
    good = len(list((src / "good").rglob("*.*"))) + len(list((src / "odd").iterdir()))
    assert summary.images == good and summary.failures == 4
    info = inspect_archive(str(dest))
    reasons = {Path(f["source_uri"]).name: f["reason"] for f in info["failure_list"]}
    assert set(reasons) == {"truncated.png", "empty.jpg", "notes.png", "bomb.png"}
    assert "truncated" in reasons["truncated.png"]
    assert "empty" in reasons["empty.jpg"]
    assert "not a readable image" in reasons["notes.png"]
    assert "Mpx" in reasons["bomb.png"] or "limit" in reasons["bomb.png"]
    assert info["images"] == good and info["orphans"] == []
    assert info["settings"]["num_ws"] == 16 and len(info["settings"]["bits"]) == 16
    assert info["quality"]["fidelity"]["psnr_worst"] > 15  # restored vs original at the original size


def test_archive_reads_back_with_plain_pyarrow_and_duckdb(archived) -> None:
    _, dest, summary = archived
    store = ArchiveStore.open(str(dest))
    files = [str(dest / "shards" / r.name) for r in store.shards("images")]
    table = pq.read_table(files[0])
    assert {"id", "source_uri", "payload", "bits", "psnr", "recon_thumb"} <= set(table.column_names)
    assert b"sg3archive" in pq.read_schema(files[0]).metadata
    duckdb = pytest.importorskip("duckdb")
    count = duckdb.execute(f"select count(*) from read_parquet({files!r})").fetchone()[0]
    assert count == summary.images


def test_restore_writes_every_image_at_original_size_inside_dest(archived, tmp_path) -> None:
    src, dest, summary = archived
    out = tmp_path / "restored"
    result = restore(RestoreJob(archive=str(dest), destination=str(out), device="cpu"), progress=False)
    assert result.written == summary.images
    files = sorted(out.rglob("*.png"))
    assert len(files) == summary.images and all(out in f.parents for f in files)
    # DEST/<path relative to the compressed folder>, suffix set to the format
    assert {f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file()} == {
        p.relative_to(src).with_suffix(".png").as_posix()
        for p in src.rglob("*") if p.is_file() and p.parent.name != "bad"}
    assert Image.open(out / "good" / "more" / "wide.png").size == (160, 80)  # original size of more/wide.jpg
    assert Image.open(out / "good" / "more" / "gray.png").mode == "L"
    again = restore(RestoreJob(archive=str(dest), destination=str(out), device="cpu"), progress=False)
    assert again.written == 0 and again.skipped == summary.images  # resumable
    sel = restore(RestoreJob(archive=str(dest), destination=str(tmp_path / "sel"), device="cpu", glob="odd/*",
                             size="generator", format="webp"), progress=False)
    assert sel.written == 4 and all(Image.open(f).size == (64, 64) for f in (tmp_path / "sel").rglob("*.webp"))


def test_rerun_skips_what_is_archived(archived) -> None:
    src, dest, _ = archived
    before = ArchiveStore.open(str(dest)).manifest().generation
    summary = compress(job(src, dest, shard_size=5, batch_size=8), progress=False)
    assert summary.images == 0 and summary.failures == 0 and summary.skipped > 0
    assert ArchiveStore.open(str(dest)).manifest().generation == before


def test_restore_refuses_other_models_and_unsafe_names(archived, tmp_path, sg3_reference_dir) -> None:
    _, dest, _ = archived
    with pytest.raises(Sg3ArchiveError):
        restore(RestoreJob(archive=str(dest), destination=str(tmp_path / "x"), device="cpu",
                           network=str(sg3_reference_dir / "t64" / "network-snapshot.pkl")), progress=False)
    assert output_name("s3://bucket/a/b.jpg", "png") == "bucket/a/b.png"
    assert output_name("/data/x/y.png", "webp") == "data/x/y.webp"
    for bad in ("/data/../../etc/passwd", "s3://b/../x.png", "../x.png"):
        with pytest.raises(Sg3ArchiveError):
            output_name(bad, "png")
    with pytest.raises(ValueError):
        RestoreJob(archive="a", destination="b", ids=["../../etc"])


def test_job_manifests_validate(tmp_path) -> None:
    spec = load_job(REPO / "manifests" / "example-compress.yaml", CompressJob, destination=str(tmp_path / "a"))
    assert spec.source == "examples/images" and spec.profile == "matched"
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: x\ndestination: y\nshard_size: 0\nprofile: ultra\nunknown: 1\n")
    with pytest.raises(JobError) as info:
        load_job(bad, CompressJob)
    text = str(info.value)
    assert "shard_size" in text and "profile" in text and "unknown" in text


def test_sigkill_mid_run_then_rerun_archives_each_image_once(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):  # 24 images, 2 per shard: many commits to interrupt
        for f in SAMPLES.glob("*.png"):
            shutil.copy(f, src / f"{i}_{f.name}")
    dest = tmp_path / "archive"
    cmd = [sys.executable, "-m", "sg3archive.cli", "compress", str(src), str(dest), "--shard-size", "2",
           "--batch-size", "2", "--device", "cpu"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    manifests = dest / "_manifest"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(manifests.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ArchiveStore.open(str(dest)).read_table("images", columns=["source_uri"]).num_rows
    assert 0 < partial < 24
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    uris = ArchiveStore.open(str(dest)).read_table("images", columns=["source_uri"])["source_uri"].to_pylist()
    assert len(uris) == 24 and len(set(uris)) == 24
