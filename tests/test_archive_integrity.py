"""Archives are untrusted input (issue 11, item 7): a real archive made by compress, then tampered
with on disk. Metadata files are read with size caps and never through a symlink; a manifest
cannot name a shard outside shards/; a shard whose footer declares absurd rows or sizes is refused
before any row is decoded; inspect takes its figures from the footers and never decodes payloads;
a damaged newest manifest generation is reported (not silently rolled back); a changed byte in an
audit history record is reported."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from small_archives import LATENT_ONLY

from sg3archive.cli import main as cli
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.inspect import inspect_archive
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.bounded import ShardRefusedError, UnsafeArchiveFileError
from sg3archive.store.manifest import Manifest, ManifestLog, ShardRecord, encode_manifest, generation_name

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """Four sample images compressed into two shards (two manifest generations)."""
    root = tmp_path_factory.mktemp("integrity")
    src = root / "src"
    src.mkdir()
    for path in sorted(SAMPLES.glob("*.png"))[:4]:
        shutil.copy(path, src / path.name)
    compress(CompressJob(source=str(src), destination=str(root / "archive"), device="cpu", shard_size=2,
                         calibration_images=4, **LATENT_ONLY), progress=False)
    return root / "archive"


@pytest.fixture()
def archive(pristine, tmp_path) -> Path:
    dest = tmp_path / "archive"
    shutil.copytree(pristine, dest)
    return dest


def _run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output
    return result


def _newest(archive: Path) -> Path:
    return sorted((archive / "_manifest").glob("*.json"))[-1]


def _commit_crafted(archive: Path, shards: list[ShardRecord]) -> int:
    """A new, well-formed generation listing ``shards`` after the committed ones (what a writer
    of a hostile archive would produce); returns its number."""
    log = ManifestLog(ArchiveStore.open(str(archive)).fs, str(archive))
    base = log.latest()
    manifest = Manifest(generation=base.generation + 1, parent=base.generation, committed_at=base.committed_at,
                        shards=base.shards + tuple(shards))
    (archive / "_manifest" / generation_name(manifest.generation)).write_bytes(encode_manifest(manifest))
    return manifest.generation


def _raw_record(name: str, path: Path, rows: int, kind: str = "images") -> dict:
    data = path.read_bytes()
    return {"name": name, "kind": kind, "sha256": hashlib.sha256(data).hexdigest(), "rows": rows, "bytes": len(data)}


# -- metadata files: caps, regular files, inside the archive ---------------------------------------
def test_oversize_archive_json_is_refused_before_it_is_read(archive) -> None:
    path = archive / "archive.json"
    doc = path.read_bytes()
    path.write_bytes(doc + b" " * (2 << 20))  # still valid JSON, but 2 MiB
    with pytest.raises(UnsafeArchiveFileError, match="archive.json"):
        ArchiveStore.open(str(archive))
    res = _run("inspect", str(archive))
    assert res.exit_code == 1 and res.stderr.startswith("error: archive.json") and "over the 1 MiB" in res.stderr


def test_symlinked_metadata_is_not_followed(archive, tmp_path) -> None:
    newest = _newest(archive)
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(newest.read_bytes())  # a good manifest, but not the archive's file
    newest.unlink()
    newest.symlink_to(outside)
    store = ArchiveStore.open(str(archive))
    assert store.manifest().generation == 1
    assert len(store.damage) == 1 and "is a symlink" in store.damage[0] and "using generation 1" in store.damage[0]

    (archive / "archive.json").rename(tmp_path / "archive.json")
    (archive / "archive.json").symlink_to(tmp_path / "archive.json")
    with pytest.raises(UnsafeArchiveFileError, match="symlink"):
        ArchiveStore.open(str(archive))


def test_manifest_cannot_name_a_shard_outside_shards(archive, tmp_path) -> None:
    store = ArchiveStore.open(str(archive))
    secret = tmp_path / "secret.parquet"
    shutil.copy(archive / "shards" / store.shards()[0].name, secret)
    doc = json.loads(_newest(archive).read_text())
    doc["generation"] += 1
    doc["shards"].append(_raw_record("../../" + secret.name, secret, 2))
    doc.pop("checksum", None)
    (archive / "_manifest" / generation_name(doc["generation"])).write_text(json.dumps(doc))
    fresh = ArchiveStore.open(str(archive))
    assert [s.name for s in fresh.shards()] == [s.name for s in store.shards()]  # the crafted generation is not used
    assert len(fresh.damage) == 1 and "not a plain file name" in fresh.damage[0]
    with pytest.raises(UnsafeArchiveFileError):
        fresh.shard_path("../../etc/passwd")

    # A shard file that is a symlink out of the archive is refused, never read through.
    victim = store.shards()[0]
    shard = archive / "shards" / victim.name
    shard.unlink()
    shard.symlink_to(secret)
    with pytest.raises(UnsafeArchiveFileError, match="symlink"):
        ArchiveStore.open(str(archive)).read_table("images")
    assert ArchiveStore.open(str(archive)).verify_shard(victim)[0].startswith(f"{victim.name}: refused: ")


# -- shards: the footer is checked before anything is decoded --------------------------------------
@pytest.mark.parametrize("craft", ["rows", "decoded"])
def test_shard_with_an_absurd_footer_is_refused(archive, tmp_path, craft) -> None:
    fake = tmp_path / "fake.parquet"
    if craft == "rows":  # 5 million rows declared in a few kilobytes (all nulls)
        rows = 5_000_000
        pq.write_table(pa.table({"id": pa.nulls(rows, pa.string())}), fake, compression="zstd")
    else:  # one row decoding to 32 MiB from a few kilobytes
        rows = 1
        pq.write_table(pa.table({"id": pa.array([b"\0" * (32 << 20)])}), fake, compression="zstd",
                       use_dictionary=False)
    assert fake.stat().st_size < 100_000
    name = "images-" + "f" * 32 + ".parquet"
    shutil.copy(fake, archive / "shards" / name)
    _commit_crafted(archive, [ShardRecord.from_json(_raw_record(name, fake, rows))])

    store = ArchiveStore.open(str(archive))
    record = store.shards()[-1]
    with pytest.raises(ShardRefusedError, match=name):
        store.read_table("images", columns=["id"])
    problems = store.verify_shard(record)
    assert problems and problems[0].startswith(f"{name}: refused: its footer declares ")
    for args in (["inspect", str(archive)], ["inspect", str(archive), "--rows"], ["inspect", str(archive), "--shards"]):
        res = _run(*args)
        assert res.exit_code == 1 and f"error: shard {name} is refused: " in res.stderr, (args, res.output)


def test_inspect_never_decodes_payloads(archive) -> None:
    """Garbage in the payload column's pages: inspect's summary and --shards do not notice (they
    use the footers); reading the payloads does."""
    store = ArchiveStore.open(str(archive))
    expected_images = sum(r.rows for r in store.shards("images"))
    for record in store.shards("images"):
        path = archive / "shards" / record.name
        meta = pq.read_metadata(path)
        group = meta.row_group(0)
        chunk = next(group.column(j) for j in range(group.num_columns) if group.column(j).path_in_schema == "payload")
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        data = bytearray(path.read_bytes())
        for i in range(start + 40, start + chunk.total_compressed_size - 8):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
        with pytest.raises((OSError, pa.ArrowException)):
            pq.read_table(path, columns=["payload"])
    info = inspect_archive(str(archive))
    assert info["images"] == expected_images and info["payload_bytes"] > 0 and info["mean_psnr"] > 10
    assert info["problems"] == []
    res = _run("inspect", str(archive), "--shards", "--json")
    assert res.exit_code == 0 and sum(s["rows"] for s in json.loads(res.stdout)["shards"]) == expected_images


# -- a damaged newest manifest generation is reported, not silently rolled back -------------------
def test_flipped_byte_in_the_newest_manifest_is_reported(archive) -> None:
    newest = _newest(archive)
    generation = int(newest.stem)
    data = bytearray(newest.read_bytes())
    at = data.index(b'"rows": 2') + len(b'"rows": ')
    data[at] ^= 0x01  # 2 -> 3: still valid JSON, a plausible manifest
    newest.write_bytes(bytes(data))

    store = ArchiveStore.open(str(archive))
    assert store.manifest().generation == generation - 1  # the fallback stays (a killed commit is safe)
    assert store.damage == [
        f"manifest generation {generation} (_manifest/{newest.name}) is damaged (checksum mismatch) — using "
        f"generation {generation - 1}; the shards it added are not visible; rerun the compress that wrote it"]
    for args in (["inspect", str(archive)], ["inspect", str(archive), "--rows"], ["inspect", str(archive), "--shards"]):
        res = _run(*args)
        assert res.exit_code == 0
        assert f"warning: manifest generation {generation} (_manifest/{newest.name}) is damaged" in res.stderr, args
        assert "warning:" not in res.stdout
    doc = json.loads(_run("inspect", str(archive), "--json").stdout)
    assert doc["generation"] == generation - 1 and doc["problems"] == store.damage
    assert json.loads(_run("inspect", str(archive), "--rows", "--json").stdout)["problems"] == store.damage


def test_generation_being_written_is_not_called_damage(archive) -> None:
    newest = _newest(archive)
    generation = int(newest.stem)
    partial = newest.read_bytes()[:100]
    newest.write_bytes(partial)  # cut off, moments ago: a commit still being written
    store = ArchiveStore.open(str(archive))
    assert store.damage == [] and len(store.pending) == 1 and "incomplete" in store.pending[0]
    old = time.time() - 3600
    os.utime(newest, (old, old))  # cut off an hour ago: nobody is writing it any more
    store = ArchiveStore.open(str(archive))
    assert store.pending == [] and len(store.damage) == 1 and f"generation {generation} " in store.damage[0]


# -- the audit history gets the same integrity check ----------------------------------------------
def test_flipped_byte_in_an_audit_record_is_reported(archive) -> None:
    from sg3archive.audit.accumulators import Stats
    from sg3archive.audit.checks import AuditResult, Thresholds
    from sg3archive.audit.history import AuditHistoryDamagedError, append_record, load_history, read_history

    results = [AuditResult(str(archive), f"2026-11-2{i}T03:00:00+00:00", seed=i, sample_size=0,
                           thresholds=Thresholds()) for i in range(3)]
    for r in results:
        r.stats = {k: Stats(0.0, 1.0) for k in ("psnr", "ms_ssim", "thumb_diff")}
        append_record(r)
    assert [row["checksum"] for row in read_history(str(archive))] == ["verified"] * 3

    # A record from before names carried a checksum is read, as unverified.
    first = sorted((archive / "_audit").glob("*.parquet"))[0]
    legacy = archive / "_audit" / (first.name[: -len(".parquet")].rsplit("-", 1)[0] + ".parquet")
    first.rename(legacy)
    assert sorted(row["checksum"] for row in read_history(str(archive))) == ["unverified", "verified", "verified"]

    victim = sorted((archive / "_audit").glob("*.parquet"))[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    history = load_history(str(archive))
    assert len(history.rows) == 2 and len(history.problems) == 1
    assert history.problems[0].startswith(f"audit history record _audit/{victim.name} is damaged (checksum mismatch")
    with pytest.raises(AuditHistoryDamagedError, match=re.escape(victim.name)):
        read_history(str(archive))


def test_audit_fails_on_a_damaged_manifest_and_history(archive) -> None:
    from sg3archive.audit import run_audit
    from sg3archive.audit.history import append_record

    newest = _newest(archive)
    data = bytearray(newest.read_bytes())
    data[data.index(b'"rows": 2') + len(b'"rows": ')] ^= 0x01
    newest.write_bytes(bytes(data))
    first = run_audit(str(archive), sample_size=1, seed=1, device="cpu", lpips=False)
    damage = ArchiveStore.open(str(archive)).damage
    assert not first.passed and f"integrity: {damage[0]}" in first.problems, first.problems
    record = Path(append_record(first).removeprefix("file://"))
    data = bytearray(record.read_bytes())
    data[len(data) // 3] ^= 0x01
    record.write_bytes(bytes(data))
    second = run_audit(str(archive), sample_size=1, seed=1, device="cpu", lpips=False)
    assert any(p.startswith(f"integrity: audit history record _audit/{record.name} is damaged") for p in second.problems), \
        second.problems


def test_shard_record_names_are_plain() -> None:
    good = {"name": "images-" + "a" * 32 + ".parquet", "kind": "images", "sha256": "0" * 64, "rows": 1, "bytes": 1}
    assert ShardRecord.from_json(good).name == good["name"]
    for bad in ("../../etc/passwd", "..", "a\\..\\b.parquet", "x\x00.parquet", "", ".hidden"):
        with pytest.raises(Exception, match="plain file name"):
            ShardRecord.from_json(dict(good, name=bad))
    assert dataclasses.replace(ShardRecord.from_json(good), rows=2).rows == 2
