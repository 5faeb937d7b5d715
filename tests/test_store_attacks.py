"""Red-team attacks on the archive store, each with real files and real Parquet: dictionary bombs
(F1), writes through symlinked archive folders (F4), nulls in required columns (F7, shard level),
and NaN/Infinity or wrongly typed values in a checksummed manifest generation (F8)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import types
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_store import SETTINGS, failures_table, images_table

from sg3archive.audit.history import AUDIT_DIR, append_record
from sg3archive.pipeline.compress import PLANS_DIR, plan_shards
from sg3archive.pipeline.inspect import inspect_archive
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.bounded import ShardRefusedError, UnsafeArchiveFileError
from sg3archive.store.format import ArchiveFormatError, conform_table, failures_schema, images_schema
from sg3archive.store.manifest import MANIFEST_DIR, SHARDS_DIR, ShardRecord, _canonical


def _commit_raw(store: ArchiveStore, table: pa.Table, kind: str, **write_options) -> ShardRecord:
    """Write ``table`` as a shard of ``kind`` exactly as given (no conforming: an attacker's file)
    with the store's metadata, commit it, and return its record."""
    sink = io.BytesIO()
    doc = {**SETTINGS, "kind": kind, "format": "sg3archive", "format_version": 3}
    table = table.replace_schema_metadata({b"sg3archive": json.dumps(doc).encode()})
    pq.write_table(table, sink, compression="zstd", **write_options)
    data = sink.getvalue()
    name = f"{kind}-{uuid.uuid4().hex}.parquet"
    with open(store.shard_path(name), "wb") as f:
        f.write(data)
    record = ShardRecord(name=name, kind=kind, sha256=hashlib.sha256(data).hexdigest(), rows=table.num_rows,
                         bytes=len(data))
    store.commit([record])
    return record


def _bomb(base: pa.Table, column: str, value, rows: int) -> pa.Table:
    """``base``'s first row repeated ``rows`` times (the format's schema: required columns stay
    required), with ``column`` one dictionary value."""
    index = pa.array(np.zeros(rows, dtype=np.int32))
    fields, arrays = [], []
    for field in base.schema:
        if field.name == column:
            arrays.append(pa.DictionaryArray.from_arrays(index, pa.array([value], field.type)))
            fields.append(pa.field(field.name, arrays[-1].type, nullable=field.nullable))
        else:
            arrays.append(base.column(field.name).combine_chunks().take(index))
            fields.append(field)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _images(n: int) -> pa.Table:
    return conform_table(images_table(n), "images").replace_schema_metadata(None)


def _failures(n: int) -> pa.Table:
    return conform_table(failures_table(n), "failures").replace_schema_metadata(None)


# -- F1: dictionary bombs ------------------------------------------------------------------------
def test_dictionary_bomb_in_images_is_refused_before_rows_are_read(tmp_path) -> None:
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    good = store.write_shard(images_table(3), "images")
    store.commit([good])
    # 60 KiB (under source_name's cap) x 400 rows = 23 MiB as read, from a file of a few KiB.
    bomb = _commit_raw(store, _bomb(_images(1), "source_name", "x" * (60 << 10), 400), "images",
                       dictionary_pagesize_limit=1 << 30)
    assert bomb.bytes < 64 << 10
    reader = ArchiveStore.open(str(tmp_path))
    with pytest.raises(ShardRefusedError, match="expand to over") as err:
        reader.read_table("images")
    assert bomb.name in str(err.value) and "\n" not in str(err.value)
    assert reader.read_table("images", shard_names=[good.name]).num_rows == 3  # the good shard still reads
    assert any("refused" in p for p in reader.verify_shard(bomb))


def test_value_over_its_column_cap_is_refused(tmp_path) -> None:
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    _commit_raw(store, _bomb(_images(1), "source_name", "y" * (100 << 10), 2), "images")
    with pytest.raises(ShardRefusedError, match="'source_name' holds a value of 100 KiB"):
        ArchiveStore.open(str(tmp_path)).read_table("images", columns=["id"])


def test_dictionary_bomb_in_failure_reasons_stops_inspect_cleanly(tmp_path) -> None:
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    store.commit([store.write_shard(images_table(2), "images")])
    _commit_raw(store, _bomb(_failures(1), "reason", "r" * (50 << 10), 600), "failures",
                dictionary_pagesize_limit=1 << 30)
    with pytest.raises(ShardRefusedError, match="expand to over"):
        inspect_archive(str(tmp_path))


# -- F7: nulls in required columns ---------------------------------------------------------------
@pytest.mark.parametrize("column", ["payload", "mode", "id", "source_uri"])
def test_null_in_required_column_is_refused(tmp_path, column) -> None:
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    rows = _images(3).to_pylist()
    rows[1][column] = None
    # Only this column made nullable: the null is what is found (the footer's null count).
    nullable = pa.schema([f.with_nullable(f.nullable or f.name == column) for f in images_schema()])
    _commit_raw(store, pa.Table.from_pylist(rows, schema=nullable), "images")
    with pytest.raises(ShardRefusedError, match=f"column '{column}'"):
        ArchiveStore.open(str(tmp_path)).read_table("images")


def test_required_column_declared_optional_is_refused_even_without_nulls(tmp_path) -> None:
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    nullable = pa.schema([f.with_nullable(True) for f in failures_schema()])
    _commit_raw(store, _failures(2).cast(nullable), "failures")
    with pytest.raises(ShardRefusedError, match="may hold nulls"):
        ArchiveStore.open(str(tmp_path)).read_table("failures")


# -- F8: NaN/Infinity and wrong types in a checksummed manifest ----------------------------------
@pytest.mark.parametrize("rows", [float("inf"), True, -1, "3", 2.0])
def test_bad_value_in_newest_manifest_is_a_damaged_generation(tmp_path, rows) -> None:
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    store.commit([store.write_shard(images_table(3), "images")])
    doc = json.loads((tmp_path / MANIFEST_DIR / "0000000001.json").read_text())
    doc.update(generation=2, parent=1)
    doc.pop("checksum")
    doc["shards"][0]["rows"] = rows
    doc["checksum"] = "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    (tmp_path / MANIFEST_DIR / "0000000002.json").write_text(json.dumps(doc, indent=1))
    reader = ArchiveStore.open(str(tmp_path))
    assert reader.manifest().generation == 1
    assert len(reader.damage) == 1 and "generation 2" in reader.damage[0]
    assert reader.read_table("images").num_rows == 3
    assert inspect_archive(str(tmp_path))["problems"] == reader.damage


def test_a_shard_listed_twice_is_a_damaged_generation(tmp_path) -> None:
    """A generation naming one shard many times (red team: 10,000 times made inspect count 30,000
    images and restore run for hours) is damage: reported, and the previous generation is read."""
    store = ArchiveStore.create(str(tmp_path), SETTINGS)
    store.commit([store.write_shard(images_table(3), "images")])
    doc = json.loads((tmp_path / MANIFEST_DIR / "0000000001.json").read_text())
    doc.update(generation=2, parent=1)
    doc.pop("checksum")
    doc["shards"] = doc["shards"] * 1000
    doc["checksum"] = "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    (tmp_path / MANIFEST_DIR / "0000000002.json").write_text(json.dumps(doc, indent=1))
    reader = ArchiveStore.open(str(tmp_path))
    assert reader.manifest().generation == 1 and len(reader.shards("images")) == 1
    assert len(reader.damage) == 1 and "more than once" in reader.damage[0]
    assert inspect_archive(str(tmp_path))["images"] == 3


def test_archive_json_with_infinity_is_refused(tmp_path) -> None:
    ArchiveStore.create(str(tmp_path), SETTINGS)
    path = tmp_path / "archive.json"
    doc = json.loads(path.read_text())
    doc["settings"]["w_dim"] = float("inf")
    path.write_text(json.dumps(doc))
    with pytest.raises(ArchiveFormatError, match="Infinity"):
        ArchiveStore.open(str(tmp_path))


# -- F4: writes through symlinked folders --------------------------------------------------------
def _link_out(archive, folder: str, victim) -> None:
    """Replace the archive's ``folder`` by a symlink to ``victim`` (outside the archive)."""
    victim.mkdir(parents=True, exist_ok=True)
    target = archive / folder
    if target.exists():
        for entry in target.iterdir():
            entry.rename(victim / entry.name)
        target.rmdir()
    target.symlink_to(victim, target_is_directory=True)


def test_writers_refuse_symlinked_archive_folders(tmp_path) -> None:
    archive, victim = tmp_path / "archive", tmp_path / "victim"
    store = ArchiveStore.create(str(archive), SETTINGS)
    record = store.write_shard(images_table(2), "images")
    store.commit([record])

    _link_out(archive, SHARDS_DIR, victim / "shards")
    before = set(os.listdir(victim / "shards"))
    with pytest.raises(UnsafeArchiveFileError, match=r"shards is a symlink \(to .*remove the link"):
        store.write_shard(images_table(1, start=5), "images")
    assert set(os.listdir(victim / "shards")) == before
    with pytest.raises(UnsafeArchiveFileError, match="symlink"):
        ArchiveStore.create(str(archive), SETTINGS)  # a resume refuses it too

    _link_out(archive, MANIFEST_DIR, victim / "manifest")
    with pytest.raises(UnsafeArchiveFileError, match="_manifest is a symlink"):
        store.log.commit([record])

    _link_out(archive, AUDIT_DIR, victim / "audit")
    with pytest.raises(UnsafeArchiveFileError, match=r"_audit is a symlink \(to .*an archive's folders must be"):
        append_record(types.SimpleNamespace(archive=str(archive)))
    assert os.listdir(victim / "audit") == []

    (archive / PLANS_DIR).symlink_to(victim, target_is_directory=True)
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.png").write_bytes(b"not really a png")
    job = CompressJob(source=str(source), destination=str(archive))
    with pytest.raises(UnsafeArchiveFileError, match="_plans is a symlink"):
        list(plan_shards(job, run_id="run1"))
    assert not (victim / "run1").exists()

    from sg3archive.store.bounded import own_folder  # here: the module imports without it before the fix

    _link_out(archive, "codec", victim / "codec")
    with pytest.raises(UnsafeArchiveFileError, match="codec is a symlink"):
        own_folder(store.fs, store.root, "codec", str(archive))


def test_own_folder_refuses_a_nested_link_and_creates_real_folders(tmp_path) -> None:
    from sg3archive.store.bounded import own_folder

    archive = tmp_path / "archive"
    archive.mkdir()
    fs = ArchiveStore.create(str(archive), SETTINGS).fs
    path = own_folder(fs, str(archive), f"{PLANS_DIR}/run2")
    assert os.path.isdir(path) and not os.path.islink(path)
    (archive / PLANS_DIR / "run3").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UnsafeArchiveFileError, match="run3 is a symlink"):
        own_folder(fs, str(archive), f"{PLANS_DIR}/run3")
