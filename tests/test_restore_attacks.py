"""Restore against the red team's crafted archives (findings F5, F6, F7, F9, F10).

One real archive of three small images (compressed once, bundled models on CPU); each test builds
a variant of it in real Parquet shards (a failures shard, thousands of copies of one row, a shard
holding a null where the schema requires a value, a tampered shard, names with colons or terminal
escapes) and restores it through the CLI, the library or the flow into real folders.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from small_archives import THREE_SOURCES, archive_rows, three_image_archive

from sg3archive.cli import main as cli
from sg3archive.pipeline.jobs import RestoreJob
from sg3archive.pipeline.restore import _Names, output_name, plan_restore, restore
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.manifest import CODEC_DIR, ShardRecord
from sg3archive.text import printable

SOURCES = THREE_SOURCES
_rows = archive_rows


@pytest.fixture(scope="module")
def archived(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """``(src, archive)``: three real images and their archive (3 rows, one shard)."""
    return three_image_archive(tmp_path_factory.mktemp("attacks"), seed=1)


def _new_archive(archive: Path, out: Path) -> ArchiveStore:
    """An empty archive with ``archive``'s settings and codec."""
    old = ArchiveStore.open(str(archive))
    shutil.copytree(archive / CODEC_DIR, out / CODEC_DIR)
    return ArchiveStore.create(str(out), old.settings)


def _images(store: ArchiveStore, rows: list[dict]) -> ShardRecord:
    return store.write_shard(pa.Table.from_pylist(rows, schema=fmt.images_schema()), "images")


def _raw_images(store: ArchiveStore, rows: list[dict]) -> ShardRecord:
    """An images shard written straight to Parquet, so it may hold nulls in required columns
    (what a crafted archive can hold; the writer refuses them)."""
    schema = pa.schema([f.with_nullable(True) for f in fmt.images_schema()])
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(fmt.table_metadata(store.settings, "images"))
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    name = f"images-{uuid.uuid4().hex}.parquet"
    Path(store.shard_path(name)).write_bytes(data)
    return ShardRecord(name=name, kind="images", sha256=hashlib.sha256(data).hexdigest(), rows=len(rows),
                       bytes=len(data))


def _with_source(row: dict, uri: str, name: str | None) -> dict:
    return dict(row, source_uri=uri, source_name=name, id=fmt.image_id(uri, row["source_sha256"]))


def _cli(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


# -- F5: a source the failures table records is never written over ------------------------------------
def test_a_source_recorded_as_a_failure_is_never_overwritten(archived, tmp_path) -> None:
    """``a.png`` could not be archived (a failures row); the archived ``a.jpg`` restores to
    ``a.png``: restoring into the source folder with --overwrite must leave it alone."""
    _, archive = archived
    folder = tmp_path / "photos"
    folder.mkdir()
    precious = folder / "a.png"
    precious.write_bytes(b"\x89PNG\r\n\x1a\n the only copy, not decodable " * 10)
    odd = folder / "b.png"  # recorded by its exact bytes (source_uri_bytes), source_uri a stand-in
    odd.write_bytes(b"another only copy")
    before = {p.name: p.read_bytes() for p in (precious, odd)}
    rows = _rows(archive)
    store = _new_archive(archive, tmp_path / "arch")
    now = datetime.now(timezone.utc)
    failures = [
        dict(source_uri=precious.as_uri(), source_size=None, source_sha256=None, stage="decode",
             reason="cannot identify image file", settings_key=rows[0]["settings_key"], failed_at=now,
             source_uri_bytes=None),
        dict(source_uri=(folder / "b\ufffd.png").as_uri(), source_size=None, source_sha256=None, stage="decode",
             reason="cannot identify image file", settings_key=rows[0]["settings_key"], failed_at=now,
             source_uri_bytes=str(odd).encode()),
    ]
    store.commit([
        _images(store, [_with_source(rows[0], (folder / "a.jpg").as_uri(), "a.jpg"),
                        _with_source(rows[1], (folder / "b.jpg").as_uri(), "b.jpg"),
                        _with_source(rows[2], (folder / "c.jpg").as_uri(), "c.jpg")]),
        store.write_shard(pa.Table.from_pylist(failures, schema=fmt.failures_schema()), "failures"),
    ])
    result = _cli("restore", str(tmp_path / "arch"), str(folder), "--device", "cpu", "--overwrite")
    assert result.exit_code == 1, result.output
    assert {p.name: p.read_bytes() for p in (precious, odd)} == before
    assert "1 images restored" in result.output and "2 could not be restored" in result.output, result.output
    assert result.output.count("a source file the archive records") == 2
    assert _files(folder) == {"a.png", "b.png", "c.png"}


# -- F6: naming is linear in the number of rows, whatever they repeat ---------------------------------
def test_many_copies_of_one_row_are_named_in_linear_time(archived, tmp_path) -> None:
    _, archive = archived
    copies = 5000
    store = _new_archive(archive, tmp_path / "dup")
    row = _rows(archive)[0]
    rng = np.random.RandomState(2)  # thumbnails that do not compress: a plausible shard, not a bomb
    store.commit([_images(store, [dict(row, recon_thumb=rng.bytes(len(row["recon_thumb"])))
                                  for _ in range(copies)])])
    job = RestoreJob(archive=str(tmp_path / "dup"), destination=str(tmp_path / "out"), device="cpu")
    started = time.perf_counter()
    plan = plan_restore(job)
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0, f"planning {copies} copies took {elapsed:.1f} s"  # quadratic: well over 10 s
    base, rid = output_name(fmt.row_name(row["source_name"], row["source_uri"]), "png"), row["id"]
    stem = base.removesuffix(".png")
    (shard,) = plan.shards
    names = plan.renamed[shard]
    assert plan.total == copies and len(names) == copies - 1 and 0 not in names
    assert [names[1], names[2], names[3], names[copies - 1]] == [
        f"{stem}.{rid[:8]}.png", f"{stem}.{rid}.png", f"{stem}.{rid}-2.png", f"{stem}.{rid}-{copies - 2}.png"]
    assert len(set(names.values())) == copies - 1

    # the rule is unchanged where a numbered name is already taken: the next free one is used
    taken = _Names()
    assert taken.claim(f"d/x.{rid}-3.png", "f" * 32) == f"d/x.{rid}-3.png"
    got = [taken.claim("d/x.png", rid) for _ in range(6)]
    assert got == ["d/x.png", f"d/x.{rid[:8]}.png", f"d/x.{rid}.png", f"d/x.{rid}-2.png", f"d/x.{rid}-4.png",
                   f"d/x.{rid}-5.png"]
    many = _Names()
    started = time.perf_counter()
    for _ in range(20000):
        many.claim("y.png", rid)
    assert time.perf_counter() - started < 2.0


# -- F7: a refused shard or a damaged row never stops the whole restore -------------------------------
def _null_archive(archive: Path, out: Path, column: str) -> None:
    """Two shards: ``good.png``; then ``d1.png`` with a null in ``column`` and ``d2.png``."""
    rows = _rows(archive)
    store = _new_archive(archive, out)
    damaged = [_with_source(rows[1], "file:///x/d1.png", "d1.png"), _with_source(rows[2], "file:///x/d2.png", "d2.png")]
    damaged[0][column] = None
    store.commit([_images(store, [_with_source(rows[0], "file:///x/good.png", "good.png")]),
                  _raw_images(store, damaged)])


@pytest.mark.parametrize("column", ["payload", "id"])
def test_a_shard_with_a_null_required_value_is_refused_and_the_rest_restores(archived, tmp_path, column) -> None:
    _, archive = archived
    _null_archive(archive, tmp_path / "arch", column)
    out = tmp_path / "out"
    result = _cli("restore", str(tmp_path / "arch"), str(out), "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert _files(out) == {"good.png"}, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("not restored: ")]
    assert len(lines) == 1 and " refused: " in lines[0], result.output
    assert result.output.strip().splitlines()[-1].startswith("error: 1 shard of the archive was refused")


@pytest.mark.parametrize("column", ["payload", "payload_sha256", "mode", "fit", "id", "source_uri"])
def test_a_null_row_the_store_lets_through_is_a_bad_row(archived, tmp_path, monkeypatch, column) -> None:
    """Restore's own defence, under the store's: with the store's null check off, a row holding
    a null where a value is required is listed and skipped; the other rows restore."""
    monkeypatch.setattr("sg3archive.store.archive.check_shard_schema", lambda *args, **kwargs: None, raising=False)
    _, archive = archived
    _null_archive(archive, tmp_path / "arch", column)
    out = tmp_path / "out"
    result = _cli("restore", str(tmp_path / "arch"), str(out), "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert _files(out) == {"good.png", "d2.png"}, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("not restored: ")]
    assert len(lines) == 1 and f"{column} is missing" in lines[0] and "d1.png" in lines[0], result.output
    assert lines[0].startswith("not restored: (no id)") == (column == "id")
    assert "1 could not be restored" in result.output


def _two_shard_archive(archive: Path, out: Path) -> tuple[ArchiveStore, ShardRecord]:
    """An archive of two shards (``one.png``; ``two.png`` and ``three.png``), and the second's record."""
    rows = _rows(archive)
    store = _new_archive(archive, out)
    second = _images(store, [_with_source(rows[1], "file:///x/two.png", "two.png"),
                             _with_source(rows[2], "file:///x/three.png", "three.png")])
    store.commit([_images(store, [_with_source(rows[0], "file:///x/one.png", "one.png")]), second])
    return store, second


def test_a_refused_shard_is_one_bad_entry_and_the_others_restore(archived, tmp_path) -> None:
    _, archive = archived
    store, second = _two_shard_archive(archive, tmp_path / "arch")
    with open(store.shard_path(second.name), "ab") as f:  # its size no longer matches the manifest
        f.write(b"tampered")
    out = tmp_path / "out"
    result = _cli("restore", str(tmp_path / "arch"), str(out), "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert _files(out) == {"one.png"}
    lines = [line for line in result.output.splitlines() if line.startswith("not restored: ")]
    assert lines == [f"not restored: shard {second.name} refused: it has {second.bytes + 8} bytes, the manifest "
                     f"says {second.bytes}"], result.output
    assert "1 images restored" in result.output and "1 shard refused" in result.output
    assert "error: 1 shard of the archive was refused" in result.output
    # a selection inside the refused shard is reported the same way, not as "matches nothing"
    only = _cli("restore", str(tmp_path / "arch"), str(tmp_path / "out2"), "--device", "cpu", "--glob", "two.png")
    assert only.exit_code == 1 and f"shard {second.name} refused" in only.output, only.output
    # a selection outside it restores cleanly
    one = fmt.image_id("file:///x/one.png", _rows(archive)[0]["source_sha256"])
    other = _cli("restore", str(tmp_path / "arch"), str(tmp_path / "out3"), "--device", "cpu", "--ids", one)
    assert other.exit_code == 0 and _files(tmp_path / "out3") == {"one.png"}, other.output
    # a shard file that is gone altogether is reported the same way
    os.remove(store.shard_path(second.name))
    gone = _cli("restore", str(tmp_path / "arch"), str(tmp_path / "out4"), "--device", "cpu")
    assert gone.exit_code == 1 and _files(tmp_path / "out4") == {"one.png"}, gone.output
    assert f"not restored: shard {second.name} refused: shard {second.name} of" in gone.output
    assert "is missing" in gone.output and "Traceback" not in gone.output


def test_a_shard_refused_after_planning_is_reported_by_the_task(archived, tmp_path) -> None:
    """The flow plans once and each task reads its shard later: a shard refused then is one bad
    entry, never an exception out of the task."""
    _, archive = archived
    store, second = _two_shard_archive(archive, tmp_path / "arch")
    job = RestoreJob(archive=str(tmp_path / "arch"), destination=str(tmp_path / "out"), device="cpu")
    plan = plan_restore(job)
    with open(store.shard_path(second.name), "ab") as f:
        f.write(b"tampered")
    summary = restore(RestoreJob(**dict(job.model_dump(), shard=second.name)), progress=False,
                      plan=plan.for_shard(second.name))
    assert summary.written == 0 and [b.text() for b in summary.bad] == [
        f"shard {second.name} refused: it has {second.bytes + 8} bytes, the manifest says {second.bytes}"]


# -- F9: names keep every character but a real drive or device prefix -------------------------------
def test_colons_in_names_are_kept() -> None:
    assert output_name("a::b.png", "png") == "a::b.png"
    assert output_name("C:x.png", "png") == "C:x.png"  # on POSIX a file name, not a drive-relative path
    assert output_name("x:y/z.png", "png") == "x:y/z.png"
    assert output_name("a/b:/c.png", "png") == "a/b:/c.png"
    assert output_name("C:/x.png", "png") == "x.png"
    assert output_name("C:\\x.png", "png") == "x.png"
    assert output_name("\\\\?\\C:\\d\\x.png", "png") == "d/x.png"
    assert output_name("\\\\.\\C:\\x.png", "png") == "x.png"
    assert output_name("back\\slash.png", "png") == "back/slash.png"
    with pytest.raises(Exception, match="leave the destination"):
        output_name("C:/../x.png", "png")


# -- F10: nothing from the archive reaches the terminal unescaped ------------------------------------
def test_printable_escapes_controls_and_keeps_unicode() -> None:
    assert printable("\x1b]0;t\x07\x1b[2J\n\t\x7f\x85\x9b") == "\\x1b]0;t\\x07\\x1b[2J\\n\\t\\x7f\\x85\\x9b"
    assert printable("a\u2028b\u2029c\u202ed\u2066e\u200ff\u061c") == "a\\u2028b\\u2029c\\u202ed\\u2066e\\u200ff\\u061c"
    assert printable("bad\udcff.png") == "bad\\udcff.png"
    assert printable("café 日本 🙂 ß") == "café 日本 🙂 ß"


def test_restore_prints_no_escape_sequence_from_the_archive(archived, tmp_path) -> None:
    _, archive = archived
    rows = _rows(archive)
    evil = "\x1b]0;owned\x07\x1b[2J\u202eFAKE: 3 images restored OK\x1b[0m/../x.png"
    store = _new_archive(archive, tmp_path / "arch")
    store.commit([_images(store, [_with_source(rows[0], "file:///x/" + evil, evil), rows[1]])])
    result = _cli("restore", str(tmp_path / "arch"), str(tmp_path / "out"), "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output and "\x07" not in result.output
    assert "\\x1b]0;owned\\x07" in result.output and "\\u202eFAKE" in result.output
