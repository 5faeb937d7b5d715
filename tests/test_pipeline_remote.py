"""The pipeline against a real S3-compatible server (moto on 127.0.0.1, through s3fs), and the
compress/restore flows under Prefect's test harness, with the thread and Dask task runners."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
from PIL import Image

from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.inspect import inspect_archive
from sg3archive.pipeline.jobs import CompressJob, RestoreJob
from sg3archive.pipeline.restore import restore
from sg3archive.store.archive import ArchiveStore

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def test_bucket_to_bucket_archive_and_local_restore(s3_bucket, tmp_path) -> None:
    fs = fsspec.filesystem("s3", **s3_bucket.storage_options)
    for f in sorted(p for p in SAMPLES.rglob("*.*") if "photos" not in p.parts):  # the 10 textures
        fs.put_file(str(f), f"{s3_bucket.url}/photos/{f.relative_to(SAMPLES).as_posix()}")
    opts = s3_bucket.storage_options
    job = CompressJob(source=f"{s3_bucket.url}/photos/", destination=f"{s3_bucket.url}/archive", device="cpu",
                      shard_size=4, calibration_images=4, storage_options=opts, source_storage_options=opts)
    summary = compress(job, progress=False)
    assert summary.images == 10 and summary.failures == 0 and summary.shards == 3
    info = inspect_archive(job.destination, storage_options=opts)
    assert info["images"] == 10 and info["orphans"] == []
    out = tmp_path / "restored"
    result = restore(RestoreJob(archive=job.destination, destination=str(out), device="cpu", storage_options=opts),
                     progress=False)
    assert result.written == 10
    wide = out / "more" / "wide.png"  # DEST/<path under the source prefix>
    assert Image.open(wide).size == (160, 80)


def test_compress_and_restore_flows(prefect_harness, tmp_path) -> None:
    from flows.compress import compress_flow
    from flows.restore import restore_flow

    job = dict(source=str(SAMPLES), destination=str(tmp_path / "archive"), device="cpu", shard_size=4,
               calibration_images=4)
    state = compress_flow(job=job, return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["images"] == 13 and summary["shards"] == 4 and summary["ratio"] > 1
    assert summary["quality"]["below_contract"] == 0 and summary["quality"]["avif_baseline"]["ratio"]
    state = restore_flow(job=dict(archive=job["destination"], destination=str(tmp_path / "out"), device="cpu"),
                         return_state=True)
    assert state.is_completed() and state.result()["written"] == 13
    bad = compress_flow(job=dict(job, shard_size=0), return_state=True)
    assert bad.is_failed()


def test_compress_flow_on_a_local_dask_cluster(prefect_harness, tmp_path) -> None:
    pytest.importorskip("prefect_dask")
    from flows.compress import run_compress

    job = dict(source=str(SAMPLES), destination=str(tmp_path / "archive"), device="cpu", shard_size=3,
               calibration_images=4, task_runner="dask", workers=2)
    summary = run_compress(job=job)
    assert summary["images"] == 13 and summary["shards"] == 5
    store = ArchiveStore.open(job["destination"])
    uris = store.read_table("images", columns=["source_uri"])["source_uri"].to_pylist()
    assert len(set(uris)) == 13
