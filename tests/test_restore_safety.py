"""Restore treats archives as untrusted input (issue 11: items 1, 2, 3 and the restore parts of 7
and 10).

One real archive of three small images (compressed once, bundled models on CPU); variants of it
are made by rewriting its images table the way a damaged or crafted archive would be, and restored
through the CLI (or the library / the flow) into real folders: links, source folders, a bucket on
a loopback S3 server, a file-size limit that makes the disk "full".
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from small_archives import LATENT_ONLY, THREE_SOURCES, archive_rows, three_image_archive

from sg3archive.cli import main as cli
from sg3archive.codec import LatentCodec, PayloadError, bitstream
from sg3archive.codec.entropy import encode_stream
from sg3archive.codec.quantize import MAX_INDEX
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import CompressJob, RestoreJob
from sg3archive.pipeline.restore import output_name, restore
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.manifest import CODEC_DIR

SOURCES = THREE_SOURCES
_rows = archive_rows


@pytest.fixture(scope="module")
def archived(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """``(src, archive)``: three real images and their archive (3 rows, one shard)."""
    return three_image_archive(tmp_path_factory.mktemp("safety"), seed=0)


def _variant(archive: Path, out: Path, edit: Callable[[list[dict]], list[dict]]) -> Path:
    """A copy of ``archive`` whose images table is ``edit(rows)`` (rows in archive order)."""
    old = ArchiveStore.open(str(archive))
    rows = edit(old.read_table("images").to_pylist())
    shutil.copytree(archive / CODEC_DIR, out / CODEC_DIR)
    store = ArchiveStore.create(str(out), old.settings)
    store.commit([store.write_shard(pa.Table.from_pylist(rows, schema=fmt.images_schema()), "images")])
    return out


def _with_source(row: dict, uri: str, name: str | None) -> dict:
    """``row`` recorded as coming from ``uri`` (its id follows), named ``name``."""
    return dict(row, source_uri=uri, source_name=name, id=fmt.image_id(uri, row["source_sha256"]))


def _cli(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


# -- 1: nothing outside DEST, nothing through a link, never over a source ----------------------------
def test_a_source_folder_as_dest_never_gets_its_sources_replaced(archived) -> None:
    src, archive = archived
    before = _digest(src / "a.png")
    for extra in ([], ["--overwrite"]):
        result = _cli("restore", str(archive), str(src), "--device", "cpu", "--glob", "a.png", *extra)
        assert result.exit_code == 1, result.output
        assert "0 images restored" in result.output and "already there" in result.output
        assert "0 already there" in result.output  # a source is not "already there": it is refused
        assert "a source file the archive records" in result.output and len(_error_lines(result.output)) == 1
        assert _digest(src / "a.png") == before
    assert sorted(os.listdir(src)) == sorted(SOURCES)  # no temporary files either


def test_a_double_slash_source_restored_into_its_root_is_refused(archived, tmp_path) -> None:
    """``compress //data/photos`` records ``file:////data/photos/a.png``; a row without a
    source_name restores under that path, which with DEST ``/`` is the original itself."""
    src, archive = archived
    target = src / "a.png"
    uri = "file:///" + target.resolve().as_posix()  # four slashes
    assert uri.startswith("file:////")
    crafted = _variant(archive, tmp_path / "v1", lambda rows: [_with_source(rows[0], uri, None)])
    rid = _rows(crafted)[0]["id"]
    assert output_name(fmt.row_name(None, uri), "png") == target.resolve().as_posix().lstrip("/")
    before = _digest(target)
    result = _cli("restore", str(crafted), "/", "--device", "cpu", "--ids", rid, "--overwrite")
    assert result.exit_code == 1 and "a source file the archive records" in result.output, result.output
    assert _digest(target) == before and sorted(os.listdir(src)) == sorted(SOURCES)


def test_links_inside_dest_are_never_followed(archived, tmp_path) -> None:
    _, archive = archived
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.png"
    victim.write_bytes(b"not an image, must stay")
    crafted = _variant(archive, tmp_path / "links", lambda rows: [
        _with_source(rows[0], "file:///x/sub/a.png", "sub/a.png"),  # sub is a link to outside/
        _with_source(rows[1], "file:///x/top.jpg", "top.jpg"),  # top.png is a link to the victim
        _with_source(rows[2], "file:///x/ok/c.png", "ok/c.png"),
    ])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    (dest / "top.png").symlink_to(victim)
    result = _cli("restore", str(crafted), str(dest), "--device", "cpu", "--overwrite")
    assert result.exit_code == 1, result.output
    assert "2 images restored" in result.output and "1 could not be restored" in result.output
    assert "sub/a.png" in result.output and "outside DEST" in result.output
    assert sorted(os.listdir(outside)) == ["victim.png"] and victim.read_bytes() == b"not an image, must stay"
    assert not (dest / "top.png").is_symlink() and Image.open(dest / "top.png").size == (48, 64)  # the link replaced
    assert Image.open(dest / "ok" / "c.png").size == (64, 64)


def test_writer_refuses_links_and_keeps_existing_files(tmp_path) -> None:
    from sg3archive.pipeline.destination import LocalDestination, UnsafeTargetError

    dest = LocalDestination(str(tmp_path / "d"))
    dest.prepare()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "d" / "in").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(UnsafeTargetError, match="symbolic link"):
        dest.write("in/x.png", b"data")
    assert not (tmp_path / "elsewhere" / "x.png").exists()
    assert dest.write("x.png", b"one") and not dest.write("x.png", b"two")  # exclusive
    assert (tmp_path / "d" / "x.png").read_bytes() == b"one"
    assert dest.write("x.png", b"three", overwrite=True) and (tmp_path / "d" / "x.png").read_bytes() == b"three"
    name = "caf\udce9.png"  # a non-UTF-8 file name as os.fsdecode gives it
    assert dest.write(name, b"bytes")
    assert b"caf\xe9.png" in os.listdir(os.fsencode(tmp_path / "d"))
    assert [n for n in os.listdir(tmp_path / "d") if n.startswith(".")] == []


# -- 2: every selected row gets its own file, and the count is what was written ------------------------
def test_clashing_names_each_get_their_own_file(archived, tmp_path) -> None:
    _, archive = archived
    crafted = _variant(archive, tmp_path / "clash", lambda rows: [
        _with_source(rows[0], "file:///x/photo", "photo"),  # → photo.png
        _with_source(rows[1], "file:///x/PHOTO.jpg", "PHOTO.jpg"),  # → PHOTO.png: the same file on some disks
        _with_source(rows[2], "file:///x/photo.png/inner.jpg", "photo.png/inner.jpg"),  # a folder named photo.png
    ])
    out = tmp_path / "out"
    result = _cli("restore", str(crafted), str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    files = _files(out)
    assert len(files) == 3 and "3 images restored" in result.output, (files, result.output)
    assert len({f.casefold() for f in files}) == 3 and "photo.png" in files
    again = _cli("restore", str(crafted), str(out), "--device", "cpu")
    assert again.exit_code == 0 and "0 images restored" in again.output and "3 already there" in again.output


# -- 7: bad rows are listed and skipped, the rest restore -------------------------------------------
def _out_of_range_payload(archive: Path, good: bytes) -> bytes:
    """A well-formed payload (valid CRC, this codec's header) whose first index is beyond the codec's range."""
    codec = LatentCodec.load(ArchiveStore.open(str(archive)).codec_url)
    header, _ = bitstream.unpack(good)
    k = np.zeros((1, codec.num_ws * codec.w_dim), dtype=np.int64)
    k[0, codec.layouts[0].positions[0]] = MAX_INDEX + 1000
    return bitstream.pack(header, encode_stream(k, codec.layouts, codec._models, codec.coder)[0])


def test_damaged_rows_are_listed_and_skipped(archived, tmp_path) -> None:
    _, archive = archived
    good = _rows(archive)

    def damage(rows: list[dict]) -> list[dict]:
        forged = _out_of_range_payload(archive, rows[1]["payload"])
        return [
            dict(rows[0], payload_sha256="0" * 64),
            dict(rows[1], payload=forged, payload_sha256=hashlib.sha256(forged).hexdigest()),
            dict(rows[2], fit='{"version": 1}'),
            _with_source(rows[0], "file:///x/fine.png", "fine.png"),
        ]

    crafted = _variant(archive, tmp_path / "bad", damage)
    out = tmp_path / "out"
    result = _cli("restore", str(crafted), str(out), "--device", "cpu", "--batch-size", "4")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert "1 images restored" in result.output and "3 could not be restored" in result.output
    bad = [line for line in lines if line.startswith("not restored: ")]
    assert len(bad) == 3 and lines[-1].startswith("error: 3 of the selected images could not be restored")
    assert good[0]["id"] in bad[0] and "payload_sha256" in bad[0]
    assert good[1]["id"] in bad[1] and "outside the codec's range" in bad[1]
    assert good[2]["id"] in bad[2] and "cannot be rebuilt" in bad[2]
    assert _files(out) == {"fine.png"}


def test_codec_refuses_out_of_range_indices_and_non_finite_transforms() -> None:
    rng = np.random.RandomState(0)
    codec = LatentCodec.fit(rng.normal(size=(64, 4, 8)), profile=8)
    payload = codec.compress(rng.normal(size=(1, 4, 8)))[0]
    header, _ = bitstream.unpack(payload)
    k = np.zeros((1, 32), dtype=np.int64)
    k[0, 0] = MAX_INDEX + 1
    far = bitstream.pack(header, encode_stream(k, codec.layouts, codec._models, codec.coder)[0])
    with pytest.raises(PayloadError, match="outside the codec's range"):
        codec.decompress([far])
    nan = np.eye(3, dtype=np.float32)
    nan[0, 2] = np.nan
    forged = bitstream.pack(bitstream.PayloadHeader(header.coder, header.model_hash, header.num_ws,
                                                    header.profile_code, nan), bitstream.unpack(payload)[1])
    with pytest.raises(PayloadError, match="NaN or infinite"):
        codec.decode([forged])


def test_the_flow_reports_bad_rows_and_fails(archived, tmp_path, prefect_harness) -> None:
    from flows.restore import restore_flow

    _, archive = archived
    crafted = _variant(archive, tmp_path / "bad", lambda rows: [dict(rows[0], payload_sha256="0" * 64), rows[1]])
    state = restore_flow(job=dict(archive=str(crafted), destination=str(tmp_path / "out"), device="cpu"),
                         return_state=True)
    assert state.is_failed()
    assert "1 of the selected images could not be restored" in str(state.message)
    assert _files(tmp_path / "out") == {"b.png"}


# -- 3: a bucket DEST gets its own storage options ---------------------------------------------------
def test_restore_into_a_bucket_uses_destination_storage_options(archived, tmp_path, s3_bucket, monkeypatch) -> None:
    _, archive = archived
    # Ambient settings that would send requests elsewhere: only the manifest's options can work.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ambient-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    manifest = tmp_path / "restore.yaml"
    manifest.write_text(yaml.safe_dump({"archive": str(archive), "destination": f"{s3_bucket.url}/out",
                                        "device": "cpu", "destination_storage_options": s3_bucket.storage_options}))
    result = _cli("restore", "--manifest", str(manifest))
    assert result.exit_code == 0 and "3 images restored" in result.output, result.output
    fs = fsspec.filesystem("s3", **s3_bucket.storage_options)
    keys = sorted(k.rsplit("/", 1)[-1] for k in fs.find(f"{s3_bucket.name}/out"))
    assert keys == ["a.png", "b.png", "c.png"]
    with fs.open(f"{s3_bucket.name}/out/b.png", "rb") as f:
        assert Image.open(f).size == SOURCES["b.jpg"]


# -- 10: a full or unwritable DEST is one line, nothing half-written ------------------------------------
def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_a_full_disk_stops_with_one_line(archived, tmp_path) -> None:
    _, archive = archived
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("sg3archive")), "restore", str(archive), str(out), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_limit_file_size, env=env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith(f"error: DEST {out} ") and "free space or choose another DEST" in lines[-1]
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no partial image, no temporary file


def test_a_read_only_dest_stops_with_one_line(archived, tmp_path) -> None:
    _, archive = archived
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        (out / "probe").touch()
    except PermissionError:
        pass
    else:  # root (with CAP_DAC_OVERRIDE) writes into read-only folders
        out.chmod(0o700)
        pytest.skip("this user can write into a read-only folder")
    try:
        result = _cli("restore", str(archive), str(out), "--device", "cpu")
    finally:
        out.chmod(0o700)
    assert result.exit_code == 1 and _error_lines(result.output) == [result.output.strip().splitlines()[-1]]
    assert "is not writable" in result.output and "choose another DEST" in result.output
    assert list(out.iterdir()) == []


# -- names that are not UTF-8 -------------------------------------------------------------------------
def test_a_name_that_is_not_utf8_restores_byte_exact_or_is_refused(tmp_path, s3_bucket, one_thread) -> None:
    src = tmp_path / "src"
    src.mkdir()
    raw = os.fsencode(src) + b"/caf\xe9.png"  # Latin-1 "café.png": not UTF-8
    Image.fromarray(np.random.RandomState(1).randint(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    os.rename(tmp_path / "x.png", raw)
    archive = tmp_path / "archive"
    assert compress(CompressJob(source=str(src), destination=str(archive), device="cpu", calibration_images=2, **LATENT_ONLY),
                    progress=False).images == 1
    summary = restore(RestoreJob(archive=str(archive), destination=str(tmp_path / "out"), device="cpu"), progress=False)
    assert summary.written == 1 and os.listdir(os.fsencode(tmp_path / "out")) == [b"caf\xe9.png"]
    again = restore(RestoreJob(archive=str(archive), destination=str(src), device="cpu", overwrite=True), progress=False)
    assert again.written == 0 and len(again.bad) == 1 and "source file" in again.bad[0].reason
    remote = restore(RestoreJob(archive=str(archive), destination=f"{s3_bucket.url}/out", device="cpu",
                                destination_storage_options=s3_bucket.storage_options), progress=False)
    assert remote.written == 0 and len(remote.bad) == 1 and "not valid UTF-8" in remote.bad[0].reason
    assert "\\udce9" in remote.bad_text()  # printable
