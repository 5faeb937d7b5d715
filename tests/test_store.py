"""The archive store against real files: local disk, file://, memory:// and S3 (moto's server via s3fs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from s3server import S3Bucket

from sg3archive.errors import Sg3ArchiveError
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.format import (
    FORMAT_VERSION,
    METADATA_KEY,
    ArchiveMismatchError,
    ArchiveNotFoundError,
    NewerFormatError,
    ShardSchemaError,
    failures_schema,
    image_id,
    images_schema,
    read_metadata,
    table_metadata,
)
from sg3archive.store.manifest import ManifestLog, create_exclusive, generation_name

# Until tests/conftest.py provides them for every test module.

SETTINGS = {
    "num_ws": 16,
    "w_dim": 512,
    "resolution": 256,
    "profile": "balanced",
    "bits": [4.0] * 16,
    "fingerprints": {"generator": "g" * 16, "encoder": "e" * 16},
    "codec_hash": "c" * 64,
}
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def images_table(n: int, start: int = 0, settings_key: str = "key-a") -> pa.Table:
    """``n`` image rows with distinct sources (row i of the whole test run is source i)."""
    rows = []
    for i in range(start, start + n):
        uri = f"s3://photos/{i:05d}.jpg"
        sha = hashlib.sha256(uri.encode()).hexdigest()
        payload = hashlib.sha256(f"payload {i}".encode()).digest() * 4
        rows.append({
            "id": image_id(uri, sha), "source_uri": uri, "source_sha256": sha, "source_size": 10_000 + i,
            "width": 640 + i, "height": 480, "mode": "RGB", "format": "JPEG",
            "fit": json.dumps({"method": "pad", "box": [0, 80, 640, 560]}),
            "payload": payload, "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "bits": [4.0] * 16, "profile": "balanced",
            "transform": [1, 0, 0, 0, 1, 0, 0, 0, 1] if i % 2 else None,
            "psnr": 25.0 + i % 7, "ms_ssim": 0.9 if i % 3 else None, "lpips": 0.3,
            "recon_thumb": bytes([i % 256]) * 192,
            "encoder_fingerprint": "e" * 16, "generator_fingerprint": "g" * 16, "codec_hash": "c" * 64,
            "settings_key": settings_key, "encoded_at": T0 + timedelta(seconds=i),
        })
    return pa.Table.from_pylist(rows, schema=images_schema())


def failures_table(n: int, start: int = 0) -> pa.Table:
    rows = [{
        "source_uri": f"s3://photos/bad-{i}.jpg", "source_size": None if i % 2 else 12,
        "source_sha256": None if i % 2 else "ab" * 32, "stage": "read" if i % 2 else "decode",
        "reason": "truncated file", "settings_key": "key-a", "failed_at": T0,
    } for i in range(start, start + n)]
    return pa.Table.from_pylist(rows, schema=failures_schema())


@pytest.fixture(params=["local", "file", "memory", "s3"])
def archive_location(request, tmp_path):
    """(url, storage_options) of an empty place for an archive, on each backend."""
    if request.param == "local":
        yield str(tmp_path / "archive"), None
    elif request.param == "file":
        yield f"file://{tmp_path}/archive", None
    elif request.param == "memory":
        root = f"/test-{uuid.uuid4().hex}"
        yield f"memory://{root}", None
        fsspec.filesystem("memory").rm(root, recursive=True)
    else:
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        yield f"{bucket.url}/archives/a1", bucket.storage_options


def rows_of(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r["source_uri"], str(r.get("stage"))))


# -- create / open ---------------------------------------------------------------------------------
def test_create_open_and_settings_mismatch(tmp_path):
    url = str(tmp_path / "a")
    with pytest.raises(ArchiveNotFoundError, match=r"does not exist: check the path"):
        ArchiveStore.open(url)
    (tmp_path / "a").mkdir()
    with pytest.raises(ArchiveNotFoundError, match=r"not an sg3archive archive \(no archive.json\)"):
        ArchiveStore.open(url)

    store = ArchiveStore.create(url, SETTINGS)
    assert store.settings == SETTINGS and store.root == url and store.url == url
    doc = json.loads((tmp_path / "a" / "archive.json").read_text())
    assert doc["format"] == "sg3archive" and doc["format_version"] == FORMAT_VERSION and doc["settings"] == SETTINGS
    assert ArchiveStore.open(url).settings == SETTINGS
    assert ArchiveStore.open(url).manifest().generation == 0
    assert store.codec_url.endswith("/a/codec")

    # Same settings (tuples compare equal to the stored lists): resume the archive.
    resumed = ArchiveStore.create(url, {**SETTINGS, "bits": tuple(SETTINGS["bits"])})
    assert resumed.archive_doc["created_at"] == doc["created_at"]

    changed = {**SETTINGS, "profile": "high", "fingerprints": {"generator": "x", "encoder": "e" * 16}, "extra": 1}
    del changed["resolution"]
    with pytest.raises(ArchiveMismatchError) as info:
        ArchiveStore.create(url, changed)
    assert isinstance(info.value, Sg3ArchiveError)
    message = str(info.value)
    for key in ("profile", "fingerprints.generator", "resolution", "extra"):
        assert key in message
    assert "fingerprints.encoder" not in message and "num_ws" not in message


def test_archive_from_a_newer_format_is_refused(tmp_path):
    ArchiveStore.create(str(tmp_path), SETTINGS)
    doc = json.loads((tmp_path / "archive.json").read_text())
    (tmp_path / "archive.json").write_text(json.dumps({**doc, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(NewerFormatError, match="upgrade sg3archive"):
        ArchiveStore.open(str(tmp_path))


# -- the contract on every backend -----------------------------------------------------------------
def test_write_commit_read_round_trip(archive_location):
    url, options = archive_location
    store = ArchiveStore.create(url, SETTINGS, storage_options=options)
    images, failures = images_table(5), failures_table(3)
    rec_images = store.write_shard(images, "images", metadata={"job": "test"})
    rec_failures = store.write_shard(failures, "failures")
    assert (rec_images.rows, rec_failures.rows) == (5, 3) and rec_images.name.startswith("images-")

    # Written but not committed: invisible, and reported as orphans.
    assert store.read_table("images").num_rows == 0
    assert store.committed_keys() == set()
    assert store.orphans() == sorted([rec_images.name, rec_failures.name])

    assert store.commit([rec_images, rec_failures]) == 1
    assert store.orphans() == []
    reader = ArchiveStore.open(url, storage_options=options)
    assert [s.name for s in reader.shards()] == [rec_images.name, rec_failures.name]
    assert reader.shards("images")[0].committed_at is not None
    assert rows_of(reader.read_table("images")) == rows_of(images)
    assert rows_of(reader.read_table("failures")) == rows_of(failures)
    assert reader.read_table("images").schema == images_schema()

    # Columns, filters, named shards, batches.
    only = reader.read_table("images", columns=["id", "psnr"])
    assert only.column_names == ["id", "psnr"] and only.num_rows == 5
    low = reader.read_table("images", columns=["source_uri"], filter=pc.field("psnr") < 27)
    assert sorted(low.column("source_uri").to_pylist()) == ["s3://photos/00000.jpg", "s3://photos/00001.jpg"]
    assert reader.read_table("images", shard_names=[rec_images.name]).num_rows == 5
    with pytest.raises(KeyError):
        reader.read_table("images", shard_names=["images-nope.parquet"])

    assert reader.orphans() == []  # a listing cached by s3fs must not hide shards committed later
    rec_more = store.write_shard(images_table(4, start=5, settings_key="key-b"), "images")
    assert store.commit([rec_more]) == 2
    batches = list(reader.iter_batches("images", columns=["id"], batch_size=3))
    assert all(b.num_rows <= 3 for b in batches) and sum(b.num_rows for b in batches) == 9

    keys = reader.committed_keys()
    assert len(keys) == 9 + 3
    first = images.slice(0, 1).to_pylist()[0]
    assert (first["source_uri"], first["source_sha256"], "key-a") in keys
    assert ("s3://photos/00005.jpg", hashlib.sha256(b"s3://photos/00005.jpg").hexdigest(), "key-b") in keys
    assert ("s3://photos/bad-1.jpg", None, "key-a") in keys

    for record in reader.shards():
        assert reader.verify_shard(record) == []
    # The shard carries the archive settings, the caller's extras, format version and kind.
    with store.fs.open(store.shard_path(rec_images.name), "rb") as f:
        doc = read_metadata(pq.read_schema(f))
    assert doc["kind"] == "images" and doc["format_version"] == FORMAT_VERSION and doc["job"] == "test"
    assert doc["num_ws"] == 16 and doc["fingerprints"] == SETTINGS["fingerprints"]

    # History: every generation stays, each lists everything up to it.
    log = ManifestLog(store.fs, store.root)
    assert log.generations() == [1, 2]
    assert log.read(1).shards == reader.manifest().shards[:2]
    assert log.read(2).parent == 1


def test_concurrent_commits_lose_nothing(archive_location):
    url, options = archive_location
    ArchiveStore.create(url, SETTINGS, storage_options=options)
    writers, per_writer = 4, 2
    barrier = threading.Barrier(writers)
    errors = []

    def writer(w: int) -> None:
        try:
            store = ArchiveStore.open(url, storage_options=options)  # each with its own filesystem view
            records = [store.write_shard(images_table(1, start=10 * w + k), "images") for k in range(per_writer)]
            barrier.wait()
            for record in records:
                store.commit([record])
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = ArchiveStore.open(url, storage_options=options)
    assert len(store.shards("images")) == writers * per_writer
    assert store.read_table("images").num_rows == writers * per_writer
    assert store.orphans() == []
    assert store.manifest().generation == writers * per_writer


def test_two_threads_commit_at_once_locally(tmp_path):
    ArchiveStore.create(str(tmp_path), SETTINGS)
    stores = [ArchiveStore.open(str(tmp_path)) for _ in range(2)]
    records = [s.write_shard(images_table(2, start=2 * i), "images") for i, s in enumerate(stores)]
    barrier = threading.Barrier(2)
    generations = []

    def commit(i: int) -> None:
        barrier.wait()
        generations.append(stores[i].commit([records[i]]))

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(generations) == [1, 2]
    assert {s.name for s in stores[0].shards()} == {r.name for r in records}


def test_s3_conditional_put_against_moto(s3_bucket):
    """moto honours If-None-Match: * (what S3 conditional writes promise): exactly one create wins."""
    fs = fsspec.filesystem("s3", **s3_bucket.storage_options)
    path = f"{s3_bucket.name}/_manifest/{generation_name(1)}"
    assert create_exclusive(fs, path, b"first")
    assert not create_exclusive(fs, path, b"second")
    assert fs.cat_file(path) == b"first"

    racers = [fsspec.filesystem("s3", **s3_bucket.storage_options) for _ in range(6)]
    for trial in range(3):
        target = f"{s3_bucket.name}/race/{trial}.json"
        barrier = threading.Barrier(len(racers))
        winners = []

        def racer(i: int, barrier: threading.Barrier = barrier, target: str = target, winners: list[int] = winners) -> None:
            barrier.wait()
            if create_exclusive(racers[i], target, str(i).encode()):
                winners.append(i)

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(len(racers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        assert fs.cat_file(target) == str(winners[0]).encode()


# -- crashes and damage ----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", [b'{"format": "sg3archive", "generation": 2, "sha', b"", b"[1, 2]"])
def test_partial_or_invalid_generation_is_ignored(tmp_path, caplog, damage):
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    first = store.write_shard(images_table(2), "images")
    store.commit([first])
    (tmp_path / "_manifest" / generation_name(2)).write_bytes(damage)
    (tmp_path / "_manifest" / ".tmp-leftover").write_bytes(b"{")

    with caplog.at_level(logging.WARNING, logger="sg3archive.store.manifest"):
        manifest = store.manifest()
    assert manifest.generation == 1 and [s.name for s in manifest.shards] == [first.name]
    assert "ignoring unreadable manifest generation 2" in caplog.text
    assert store.read_table("images").num_rows == 2

    # The next commit takes the number after the damaged one and builds on the last good one.
    second = store.write_shard(images_table(1, start=2), "images")
    assert store.commit([second]) == 3
    assert store.manifest().parent == 1
    assert store.read_table("images").num_rows == 3


def test_newer_format_generation_is_not_skipped(tmp_path):
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    store.commit([store.write_shard(images_table(1), "images")])
    doc = json.loads((tmp_path / "_manifest" / generation_name(1)).read_text())
    doc.update(generation=2, format_version=FORMAT_VERSION + 1)
    (tmp_path / "_manifest" / generation_name(2)).write_text(json.dumps(doc))
    with pytest.raises(NewerFormatError):
        store.manifest()


def test_verify_shard_finds_damage(tmp_path):
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    records = [store.write_shard(images_table(3, start=3 * i), "images") for i in range(3)]
    store.commit(records)
    flipped, deleted, fine = records
    path = tmp_path / "shards" / flipped.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.remove(tmp_path / "shards" / deleted.name)

    assert any("sha256" in p for p in store.verify_shard(flipped))
    assert store.verify_shard(deleted) == [f"{deleted.name}: missing ({tmp_path}/shards/{deleted.name})"]
    assert store.verify_shard(fine) == []
    problems = store.verify_shard(dataclasses.replace(fine, rows=4))
    assert problems == [f"{fine.name}: 3 rows, record says 4"]
    assert any("kind" in p for p in store.verify_shard(dataclasses.replace(fine, kind="failures")))

    truncated = tmp_path / "shards" / fine.name
    truncated.write_bytes(truncated.read_bytes()[:100])
    problems = store.verify_shard(fine)
    assert any("bytes" in p for p in problems) and any("unreadable" in p for p in problems)


# -- writing rules ---------------------------------------------------------------------------------
def test_write_shard_rejects_tables_off_the_format(tmp_path):
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    good = images_table(2)
    with pytest.raises(ShardSchemaError, match="missing"):
        store.write_shard(good.drop_columns(["lpips"]), "images")
    with pytest.raises(ShardSchemaError, match="width: int64"):
        store.write_shard(good.set_column(4, "width", pa.array([1, 2], pa.int64())), "images")
    with pytest.raises(ShardSchemaError, match="null"):
        store.write_shard(good.set_column(6, "mode", pa.array([None, "RGB"], pa.string())), "images")
    with pytest.raises(ShardSchemaError, match="image_id"):
        store.write_shard(good.set_column(0, "id", pa.array(["0" * 32, "1" * 32])), "images")
    with pytest.raises(ShardSchemaError, match="recon_thumb"):
        store.write_shard(good.set_column(17, "recon_thumb", pa.array([b"x", b"y"])), "images")
    with pytest.raises(ShardSchemaError, match="transform"):
        store.write_shard(good.set_column(13, "transform", pa.array([[1.0], None], pa.list_(pa.float32()))), "images")
    bad_stage = failures_table(1).set_column(3, "stage", pa.array(["upload"]))
    with pytest.raises(ShardSchemaError, match="upload"):
        store.write_shard(bad_stage, "failures")
    with pytest.raises(ShardSchemaError, match="unknown table kind"):
        store.write_shard(good, "thumbnails")
    assert store.orphans() == []

    # Column order is free, and nullable columns without nulls are accepted as required ones.
    loose = pa.Table.from_pylist(list(reversed(good.to_pylist())))
    loose = loose.select(list(reversed(loose.column_names))).cast(
        pa.schema([pa.field(f.name, f.type) for f in reversed(images_schema())]))
    record = store.write_shard(loose, "images")
    assert record.rows == 2


def test_commit_is_idempotent_and_checks_files(tmp_path):
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    record = store.write_shard(images_table(2), "images")
    assert store.commit([record]) == 1
    assert store.commit([record]) == 1  # a retried commit that had landed writes nothing
    assert store.commit([]) == 1
    assert len(store.shards()) == 1
    with pytest.raises(FileNotFoundError, match="do not exist"):
        store.commit([dataclasses.replace(record, name="images-0.parquet")])
    with pytest.raises(ValueError, match="bytes"):
        store.commit([dataclasses.replace(store.write_shard(images_table(1), "images"), bytes=1)])


def test_no_partial_files_and_pickling(tmp_path):
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    store.commit([store.write_shard(images_table(2), "images")])
    leftovers = [n for d in ("shards", "_manifest") for n in os.listdir(tmp_path / d) if n.startswith(".")]
    assert leftovers == []
    clone = pickle.loads(pickle.dumps(store))
    assert clone.read_table("images").num_rows == 2 and clone.settings == SETTINGS


def test_metadata_document_helpers():
    meta = table_metadata({"num_ws": 16}, kind="failures")
    doc = read_metadata(pa.schema([("a", pa.int8())], metadata=meta))
    assert doc == {"num_ws": 16, "kind": "failures", "format": "sg3archive", "format_version": FORMAT_VERSION}
    with pytest.raises(ShardSchemaError):
        table_metadata({"num_ws": 16})
    newer = {METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION + 1}).encode()}
    with pytest.raises(NewerFormatError):
        read_metadata(pa.schema([("a", pa.int8())], metadata=newer))
    assert image_id("u", "s") == hashlib.sha256(b"u\ns").hexdigest()[:32]


# -- other readers ---------------------------------------------------------------------------------
def test_shards_read_with_pyarrow_pandas_and_duckdb(tmp_path):
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    records = [store.write_shard(images_table(4, start=4 * i), "images") for i in range(3)]
    records.append(store.write_shard(failures_table(2), "failures"))
    store.commit(records)
    shard = tmp_path / "shards" / records[0].name

    table = pq.read_table(shard)
    assert table.num_rows == 4 and table.schema.field("encoded_at").type == pa.timestamp("us", tz="UTC")
    doc = json.loads(pq.read_schema(shard).metadata[b"sg3archive"])
    assert doc["kind"] == "images" and doc["format_version"] == FORMAT_VERSION and doc["w_dim"] == 512

    import pandas as pd

    frame = pd.read_parquet(shard)
    assert len(frame) == 4 and frame["payload"].iloc[0] == table.column("payload")[0].as_py()

    import duckdb

    images_glob = str(tmp_path / "shards" / "images-*.parquet")
    assert duckdb.execute(f"select count(*) from '{images_glob}'").fetchone()[0] == 12
    assert duckdb.execute(f"select count(*) from '{tmp_path}/shards/failures-*.parquet' "
                       "where stage = 'read'").fetchone()[0] == 1
    # Through pyarrow.dataset the committed images shards read as one table.
    paths = [str(tmp_path / "shards" / s.name) for s in store.shards("images")]
    assert pads.dataset(paths, format="parquet").count_rows() == 12


# -- scale -----------------------------------------------------------------------------------------
def test_thousand_shards_list_and_keys_in_seconds(tmp_path):
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    records = [store.write_shard(images_table(1, start=i), "images") for i in range(1000)]
    store.commit(records[:500])
    store.commit(records[500:])

    reader = ArchiveStore.open(str(tmp_path))
    start = time.perf_counter()
    shards = reader.shards()
    listed = time.perf_counter() - start
    keys = reader.committed_keys()
    keyed = time.perf_counter() - start - listed
    print(f"\n1,000 shards: manifest {listed * 1e3:.1f} ms, committed_keys {keyed * 1e3:.0f} ms")
    assert len(shards) == 1000 and len(keys) == 1000
    assert listed < 2.0 and keyed < 5.0
