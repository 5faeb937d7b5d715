"""Planning and resuming a compress run, calibration through the compress encode path, LPIPS at
encode time. Real files, real Parquet, the bundled models on CPU."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from sg3archive.codec import LatentCodec
from sg3archive.errors import Sg3ArchiveError
from sg3archive.pipeline.calibrate import calibration_images, calibration_ws
from sg3archive.pipeline.compress import (
    LpipsWeightsMissingError,
    ShardReport,
    Summary,
    compress,
    compress_shard,
    plan_shards,
    prepare,
)
from sg3archive.pipeline.encode import encode_latents
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.pipeline.plans import (
    PLANS_DIR,
    PlanEntry,
    ShardPlan,
    committed_exact_keys,
    parse_plan,
    parse_plan_entries,
    plan_text,
    shard_name,
)
from sg3archive.pipeline.session import cache
from sg3archive.store.archive import ArchiveStore, ShardExistsError
from sg3archive.store.format import failures_schema

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")


def job(src: Path, dest: Path, **kw) -> CompressJob:
    values = dict(source=str(src), destination=str(dest), device="cpu", calibration_images=4, shard_size=3,
                  batch_size=4, profile="balanced")  # planning, not rate control (tests/test_rate_control.py)
    return CompressJob.model_validate({**values, **kw})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The 10 sample images, one under a name that is not UTF-8, and one file that is no image."""
    root = tmp_path_factory.mktemp("planning-src")
    shutil.copytree(SAMPLES, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("photos"))  # the 10 textures
    os.rename(root / "texture_05.png", os.path.join(os.fsencode(root), b"caf\xe9.png"))
    (root / "bad.png").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def archived(folder, tmp_path_factory):
    dest = tmp_path_factory.mktemp("planning") / "archive"
    first = compress(job(folder, dest), progress=False)
    return folder, dest, first


def test_first_run_archives_and_removes_its_plans_even_with_failures(archived) -> None:
    _, dest, first = archived
    assert isinstance(first, Summary) and all(isinstance(r, ShardReport) for r in first.results)
    assert first.images == 10 and first.failures == 1 and first.skipped == 0
    assert not (dest / PLANS_DIR).exists()  # the run completed (one failed source): its plans are gone


def test_plans_carry_the_committed_keys_of_their_uris(archived) -> None:
    src, dest, _ = archived
    store = ArchiveStore.open(str(dest))
    keys = committed_exact_keys(store)
    plans = list(plan_shards(job(src, dest), run_id="carry"))
    assert sum(p.count for p in plans) == 11 and all(p.path.endswith(".jsonl") for p in plans)
    entries = [e for p in plans for e in parse_plan_entries(Path(p.path.removeprefix("file://")).read_text())]
    for entry in entries:
        assert entry.done is not None and len(entry.done) == 1
        (sha, key, kind), = entry.done
        assert (entry.uri, sha, key) in keys[kind]
        assert kind == ("failures" if entry.uri.endswith("bad.png") else "images")
    assert any(e.uri.endswith(NOT_UTF8) for e in entries)  # the exact name, not its readable form
    shutil.rmtree(dest / PLANS_DIR)


def test_a_shard_task_reads_only_its_own_plan(archived, tmp_path) -> None:
    """Once planned, a task decides its skips from its plan: with every committed shard file moved
    away, the tasks still skip every source (and write nothing); the old way read every shard."""
    src, dest, _ = archived
    spec = job(src, dest)
    plans = list(plan_shards(spec, run_id="alone"))
    shards = dest / "shards"
    aside = tmp_path / "shards-aside"
    shutil.move(shards, aside)
    shards.mkdir()
    try:
        reports = [compress_shard(spec, plan) for plan in plans]
    finally:
        shutil.rmtree(shards)
        shutil.move(aside, shards)
    assert sum(r.skipped for r in reports) == 11 and sum(r.failed_before for r in reports) == 1
    assert all(r.images == 0 and r.failures == 0 and r.shard is None and r.failure_shard is None for r in reports)
    shutil.rmtree(dest / PLANS_DIR)


def test_rerun_skips_everything_with_the_same_counts(archived) -> None:
    src, dest, _ = archived
    before = ArchiveStore.open(str(dest)).manifest().generation
    again = compress(job(src, dest), progress=False)
    assert (again.images, again.failures, again.skipped, again.failed_before) == (0, 0, 11, 1)
    assert again.archived_any and "10 already there" in again.text()
    assert ArchiveStore.open(str(dest)).manifest().generation == before
    assert not (dest / PLANS_DIR).exists()


def test_plans_of_earlier_versions_still_resume(archived) -> None:
    """Format-1 plans (a JSON string per line) and legacy ``.txt`` plans carry no committed keys:
    the task reads them from the archive, and skips the same sources."""
    src, dest, _ = archived
    uris = [e.uri for p in plan_shards(job(src, dest), run_id="tmp") for e in
            parse_plan_entries(Path(p.path.removeprefix("file://")).read_text())]
    shutil.rmtree(dest / PLANS_DIR / "tmp")
    old = dest / PLANS_DIR / "old"
    old.mkdir(parents=True)
    (old / "0000000.jsonl").write_text("".join(json.dumps(u) + "\n" for u in uris))
    plain = [u for u in uris if u.isascii() and "\n" not in u]
    (old / "0000001.txt").write_text("".join(u + "\n" for u in plain))
    spec = job(src, dest)
    one = compress_shard(spec, ShardPlan(0, str(old / "0000000.jsonl"), len(uris)))
    two = compress_shard(spec, ShardPlan(1, str(old / "0000001.txt"), len(plain)))
    assert (one.images, one.failures, one.skipped, one.failed_before) == (0, 0, 11, 1)
    assert (two.images, two.failures, two.skipped) == (0, 0, len(plain))
    shutil.rmtree(dest / PLANS_DIR)


def test_plan_lines_round_trip_with_their_entries() -> None:
    entries = [PlanEntry(f"file:///d/{NOT_UTF8}", (("a" * 64, "k1", "images"), (None, "k1", "failures"))),
               PlanEntry("s3://b/new\nline.png", ()), PlanEntry("s3://b/plain.png")]
    text = plan_text(entries)
    assert text.isascii() and len(text.splitlines()) == 3
    assert parse_plan_entries(text) == entries
    assert parse_plan(text) == [e.uri for e in entries]
    with pytest.raises(Exception, match="plan line 1"):
        parse_plan_entries('{"uri": "x", "done": [["a", "k", "thumbnails"]]}\n')


def failures(n: int) -> pa.Table:
    rows = [{"source_uri": f"s3://photos/bad-{i}.jpg", "source_size": None, "source_sha256": None, "stage": "read",
             "reason": "truncated file", "settings_key": "k", "failed_at": datetime(2026, 11, 30, tzinfo=timezone.utc)}
            for i in range(n)]
    return pa.Table.from_pylist(rows, schema=failures_schema())


def _image_rows(dest: Path) -> list[dict]:
    return ArchiveStore.open(str(dest)).read_table("images", columns=["id", "source_uri"]).to_pylist()


def test_a_retried_task_does_not_archive_its_plan_twice(folder, tmp_path, monkeypatch) -> None:
    """A task that died after its commit (Prefect retries it with the same plan) commits nothing
    new and reports the same rows; one that died after writing, before committing, commits once."""
    dest = tmp_path / "archive"
    spec = job(folder, dest)
    prepare(spec)
    plans = list(plan_shards(spec, run_id="retry"))
    assert len(plans) == 4
    first = [compress_shard(spec, plan) for plan in plans[:3]]
    assert [r.shard for r in first] == [shard_name(p, "images") for p in plans[:3]]
    store = ArchiveStore.open(str(dest))
    generation = store.manifest().generation

    again = [compress_shard(spec, plan) for plan in plans[:3]]  # the lost returns, retried
    assert store.manifest().generation == generation
    for one, two in zip(first, again):
        assert (two.shard, two.failure_shard, two.images, two.failures) == (
            one.shard, one.failure_shard, one.images, one.failures)
        assert two.skipped == 0 and two.payload_bytes == one.payload_bytes and two.source_bytes == one.source_bytes

    # The last plan's task dies between writing its shards and committing them.
    def killed(self, records):
        raise RuntimeError("killed before the commit")

    with monkeypatch.context() as patch:
        patch.setattr(ArchiveStore, "commit", killed)
        with pytest.raises(RuntimeError, match="killed"):
            compress_shard(spec, plans[3])
    assert store.orphans() and store.manifest().generation == generation
    last = compress_shard(spec, plans[3])
    assert store.orphans() == [] and store.manifest().generation == generation + 1
    retried = compress_shard(spec, plans[3])
    assert replace(retried, seconds=0.0) == replace(last, seconds=0.0)
    assert store.manifest().generation == generation + 1

    rows = _image_rows(dest)
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10 and len({r["source_uri"] for r in rows}) == 10
    total = sum(r.images for r in [*first, last])
    assert total == 10 and sum(r.failures for r in [*first, last]) == 1
    assert len(store.read_table("failures", columns=["source_uri"])) == 1


def test_a_written_but_uncommitted_shard_is_committed_once(folder, tmp_path) -> None:
    """A shard written under the plan's name (write_shard, no commit) is what a rerun of the plan
    commits: once, without reading a source; a damaged one is refused by name."""
    src_a, src_b = tmp_path / "a", tmp_path / "b"
    src_a.mkdir()
    for name in ("texture_00.png", "texture_01.png"):
        shutil.copy(folder / name, src_a / name)
    dest_a, dest_b = tmp_path / "archive-a", tmp_path / "archive-b"
    compress(job(src_a, dest_a), progress=False)
    table = ArchiveStore.open(str(dest_a)).read_table("images")
    # The same archive settings, another archive: its plan's shard is written, never committed.
    shutil.copytree(dest_a, dest_b, ignore=shutil.ignore_patterns("_manifest", "shards"))
    spec = job(src_a, dest_b)
    store = ArchiveStore.open(str(dest_b))
    (plan,) = plan_shards(spec, run_id="lost", store=store)
    written = store.write_shard(table, "images", name=shard_name(plan, "images"))
    with pytest.raises(ShardExistsError, match="already exists"):
        store.write_shard(table, "images", name=shard_name(plan, "images"))
    shutil.move(src_a, src_b)
    report = compress_shard(spec, plan)  # the sources are gone: nothing is read
    assert (report.shard, report.images, report.failures, report.skipped) == (written.name, 2, 0, 0)
    assert store.manifest().shards == (replace(written, committed_at=store.manifest().committed_at),)
    assert compress_shard(spec, plan).images == 2 and store.manifest().generation == 1
    assert len(_image_rows(dest_b)) == 2

    (damaged,) = plan_shards(job(src_b, dest_b), run_id="damaged", store=store)
    (dest_b / "shards" / shard_name(damaged, "failures")).write_bytes(b"not parquet")
    with pytest.raises(Sg3ArchiveError, match=r"failures-damaged-0000000\.parquet .*damaged.*delete it and rerun"):
        compress_shard(spec, damaged)
    shutil.rmtree(dest_b / PLANS_DIR)


@pytest.mark.parametrize("backend", ["local", "memory", "s3"])
def test_named_shards_are_checked_and_never_replaced(backend, tmp_path, request) -> None:
    url, options = str(tmp_path / "archive"), None
    if backend == "memory":
        url = f"memory://named-{tmp_path.name}"
    elif backend == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        url, options = f"{bucket.url}/a", bucket.storage_options
    store = ArchiveStore.create(url, {"num_ws": 16}, options)
    table = failures(1)
    record = store.write_shard(table, "failures", name="failures-run-0000001.parquet")
    with pytest.raises(ShardExistsError):
        store.write_shard(failures(2), "failures", name=record.name)
    assert store.written_shard(record.name, "failures") == record
    assert store.written_shard("failures-run-0000002.parquet", "failures") is None
    for bad in ("images-x.parquet", "failures-.parquet", "failures-a/b.parquet", ".failures-x.parquet",
                "failures-x.json"):
        with pytest.raises(ValueError, match="not a plain file name"):
            store.write_shard(table, "failures", name=bad)
    store.commit([record])
    again = store.written_shard(record.name, "failures")
    assert again is not None
    store.commit([again])  # a repeated commit lists it once
    assert [s.name for s in store.shards()] == [record.name]
    assert store.orphans() == []


def test_calibration_codes_are_the_encoders_latents_and_refinement_needs_the_codec(folder) -> None:
    """The codec is fitted on the encoder's latents (the starting point of every image), even with
    refinement on: refinement optimizes each latent for that fitted codec, so it runs only with one."""
    spec = job(folder, folder / "unused", refine_steps=2, calibration_images=3)
    models = cache.models(None, None, "cpu")
    images = calibration_images(spec, models.resolution)
    assert len(images) == 3
    ws = calibration_ws(spec, models)
    x = torch.stack(images)
    raw = encode_latents(models, x, spec)
    assert torch.allclose(ws[:3], raw.cpu(), atol=1e-5)
    assert len(ws) == 3 + 512  # plus the mapping-network samples
    codec = LatentCodec.fit(ws, 3)
    refined = encode_latents(models, x, spec, codec)
    assert not torch.allclose(refined.detach().cpu(), raw.cpu(), atol=1e-4)


def test_lpips_is_refused_without_weights_before_anything_is_made(folder, tmp_path) -> None:
    os.environ.pop("SG3ARCHIVE_LPIPS_WEIGHTS", None)
    dest = tmp_path / "archive"
    with pytest.raises(LpipsWeightsMissingError, match="lpips: true.*lpips-weights"):
        compress(job(folder, dest, lpips=True), progress=False)
    assert not dest.exists()


def test_lpips_is_recorded_per_row_when_asked(folder, tmp_path, lpips_weights_dir, monkeypatch) -> None:
    monkeypatch.setenv("SG3ARCHIVE_LPIPS_WEIGHTS", str(lpips_weights_dir))
    dest = tmp_path / "archive"
    with_lpips = compress(job(folder, dest, lpips=True, shard_size=8), progress=False)
    assert with_lpips.images == 10
    rows = ArchiveStore.open(str(dest)).read_table("images", columns=["fidelity_lpips", "lpips",
                                                                      "representation"]).to_pylist()
    # at the original size on every row; the generator-square diagnostic on latent rows
    assert all(r["fidelity_lpips"] is not None and 0 <= r["fidelity_lpips"] <= 1 for r in rows)
    assert len({round(r["fidelity_lpips"], 6) for r in rows}) > 1  # measured per image
    assert all((r["lpips"] is not None and math.isfinite(r["lpips"])) == (r["representation"] == "latent") for r in rows)
    plain = tmp_path / "plain"
    compress(job(folder, plain, shard_size=8), progress=False)
    assert all(r["lpips"] is None and r["fidelity_lpips"] is None for r in ArchiveStore.open(str(plain)).read_table(
        "images", columns=["lpips", "fidelity_lpips"]).to_pylist())


def test_flow_from_a_manifest_with_overrides_removes_its_plans(prefect_harness, tmp_path) -> None:
    from flows.compress import compress_flow

    dest = tmp_path / "archive"
    manifest = tmp_path / "compress.yaml"
    manifest.write_text(f"source: {SAMPLES}\ndestination: {dest}\ndevice: cpu\ncalibration_images: 4\nshard_size: 3\n")
    state = compress_flow(manifest=str(manifest), overrides={"shard_size": 5}, return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["images"] == 13 and summary["shards"] == 3  # the override's shard size, not the manifest's
    assert not (dest / PLANS_DIR).exists()
