"""Every file a file system allows is archived, or recorded with its reason (issue 11, items 4, 7, 9).

Real files on disk: names with line breaks, ``::``, non-UTF-8 bytes, NFC/NFD twins; a FIFO, a
socket and a device named ``*.png``; images whose padded square would be enormous; float TIFFs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import tracemalloc
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import (
    DEFAULT_MAX_PIXELS,
    FitInfo,
    FitRecordError,
    decode_image,
    fit_to_square,
    iter_sources,
    read_bytes,
    refit,
    unfit,
)
from sg3archive.pipeline.compress import compress, parse_plan, plan_text
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore

LONG = "L" * 251 + ".png"  # 255 bytes, the longest name most file systems allow
ODD_NAMES = [
    "new\nline.png", "carriage\rreturn.png", "line\u2028separator.png", "next\u0085line.png", "a::b.png",
    "hash#and?query.png", "per%41cent.png", "-leading-dash.png", " spaced  name .png", LONG,
    unicodedata.normalize("NFC", "caf\u00e9.png"), unicodedata.normalize("NFD", "caf\u00e9.png"),
]
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")  # 'caf\udce9.png'


@pytest.fixture
def deadline():
    """Fail (instead of hanging the suite) if the test body runs past 120 s: an open() blocked on
    a FIFO is interrupted by the alarm."""

    def expire(signum, frame):
        raise TimeoutError("compress hung (a FIFO or device was opened for reading)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def png_bytes(seed: int, size: tuple[int, int] = (24, 24)) -> bytes:
    rgb = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def write_exact(folder: Path, name: str, data: bytes) -> None:
    """Create ``folder/name`` by its exact bytes (``os.fsencode``), whatever the name holds."""
    fd = os.open(os.fsencode(str(folder)) + b"/" + os.fsencode(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def job(src, dest, **kw) -> CompressJob:
    kw.setdefault("profile", "balanced")  # odd inputs, not rate control (tests/test_rate_control.py)
    return CompressJob(source=str(src), destination=str(dest), device="cpu", calibration_images=2, **kw)


def rows(dest: Path, kind: str) -> list[dict]:
    return ArchiveStore.open(str(dest)).read_table(kind).to_pylist()


# -- plans --------------------------------------------------------------------------------------
def test_plan_files_round_trip_any_name() -> None:
    uris = [f"file:///data/{name}" for name in ODD_NAMES + [NOT_UTF8]] + ["s3://bucket/k\u2029ey.png"]
    text = plan_text(uris)
    assert text.isascii() and len(text.splitlines()) == len(uris)  # every line break is a separator
    assert parse_plan(text) == uris


# -- odd names, end to end ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """One image per odd name, plus a name that is not UTF-8, plus special files named *.png."""
    root = tmp_path_factory.mktemp("odd")
    content = {name: png_bytes(i) for i, name in enumerate(ODD_NAMES + [NOT_UTF8])}
    for name, data in content.items():
        write_exact(root, name, data)
    os.symlink(root / "a::b.png", root / "link.png")  # a symlink to a regular file is followed
    content["link.png"] = content["a::b.png"]
    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "fifo.png")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(special / "sock.png"))
    os.symlink("/dev/zero", special / "device.png")  # a character device, reached through a link
    yield root, content
    listener.close()


def test_odd_names_archive_and_special_files_fail_with_their_reason(odd_folder, tmp_path, deadline) -> None:
    src, content = odd_folder
    dest = tmp_path / "archive"
    summary = compress(job(src, dest, batch_size=8), progress=False)
    assert summary.images == len(content) and summary.failures == 3

    images = rows(dest, "images")
    by_name = {fmt.exact_name(r): r for r in images}
    assert set(by_name) == set(content)
    for name, data in content.items():
        row = by_name[name]
        path = f"{src}/{name}"
        assert row["source_sha256"] == hashlib.sha256(data).hexdigest()
        assert fmt.exact_uri(row) == "file://" + path and read_bytes(fmt.exact_uri(row)) == data
        if name == NOT_UTF8:  # readable, valid UTF-8 text; the exact bytes beside it
            assert row["source_name"] == "caf%E9.png" and row["source_uri_bytes"] == b"file://" + os.fsencode(path)
            assert os.fsencode(fmt.exact_name(row)) == b"caf\xe9.png"
        else:  # exactly as every earlier version stored it: same text, same id
            assert row["source_uri"] == "file://" + path and row["source_name"] == name
            assert row["source_uri_bytes"] is None
        assert row["id"] == fmt.image_id(fmt.exact_uri(row), row["source_sha256"])
    assert len({r["id"] for r in images}) == len(images)

    reasons = {fmt.exact_uri(r).rsplit("/", 1)[-1]: r["reason"] for r in rows(dest, "failures")}
    assert reasons == {
        "fifo.png": "not a regular file (FIFO); only regular files are read",
        "sock.png": "not a regular file (socket); only regular files are read",
        "device.png": "not a regular file (character device); only regular files are read",
    }

    # A re-run skips everything, matching names exactly; a UTF-8 name whose text equals another
    # name's stored form ("caf%E9.png") and whose bytes are the same is still a new source.
    again = compress(job(src, dest, batch_size=8), progress=False)
    assert again.images == 0 and again.skipped == len(content) and again.failures == 0  # not recorded twice
    write_exact(src, "caf%E9.png", content[NOT_UTF8])
    try:
        third = compress(job(src, dest, batch_size=8), progress=False)
    finally:
        os.unlink(src / "caf%E9.png")
    assert third.images == 1
    assert {fmt.exact_name(r) for r in rows(dest, "images")} == set(content) | {"caf%E9.png"}


def test_single_fifo_source_and_uri_list_entries_never_hang(tmp_path, deadline) -> None:
    fifo = tmp_path / "only.png"
    os.mkfifo(fifo)
    summary = compress(job(fifo, tmp_path / "a1"), progress=False)
    assert summary.images == 0 and summary.failures == 1
    assert rows(tmp_path / "a1", "failures")[0]["reason"].startswith("not a regular file (FIFO)")

    # A URI list naming a FIFO, a 4x400 strip and a square image, archived with --fit pad under a
    # pixel limit the strip's padded 400x400 square would break: the strip is padded at the
    # generator's resolution and every fit record stays within the limit.
    (tmp_path / "strip.png").write_bytes(png_bytes(1, (400, 4)))
    (tmp_path / "square.png").write_bytes(png_bytes(2, (40, 40)))
    (tmp_path / "list.txt").write_text("only.png\nstrip.png\nsquare.png\n")
    limit = 2000
    summary = compress(job(tmp_path / "list.txt", tmp_path / "a2", fit="pad", max_pixels=limit), progress=False)
    assert summary.images == 2 and summary.failures == 1
    fits = {r["source_name"]: FitInfo.from_json(r["fit"], max_pixels=limit) for r in rows(tmp_path / "a2", "images")}
    assert fits["strip.png"].version == 2 and fits["strip.png"].box == (0, 0, 400, 4)
    assert fits["square.png"].version == 1 and fits["square.png"].box == (0, 0, 40, 40)
    for info in fits.values():
        left, top, right, bottom = info.box
        assert (right - left) * (bottom - top) <= limit


def test_uri_list_that_is_a_fifo_is_refused_without_reading(tmp_path, deadline) -> None:
    os.mkfifo(tmp_path / "list.txt")
    with pytest.raises(FileNotFoundError, match="FIFO, not a regular file"):
        iter_sources(str(tmp_path / "list.txt"))


def test_local_paths_are_never_chained_urls(tmp_path) -> None:
    folder = tmp_path / "x::y"
    folder.mkdir()
    (folder / "a::b.png").write_bytes(png_bytes(3))
    assert list(iter_sources(str(folder))) == [f"file://{folder}/a::b.png"]
    assert read_bytes(f"{folder}/a::b.png") == read_bytes(f"file://{folder}/a::b.png") == png_bytes(3)
    assert fmt.source_root(str(folder)) == f"file://{folder}"


# -- fitting in bounded memory ------------------------------------------------------------------
def test_pad_of_an_extreme_strip_stays_within_the_pixel_limit() -> None:
    strip = np.linspace(0, 255, 100_000, dtype=np.float64).astype(np.uint8).reshape(100_000, 1, 1).repeat(3, axis=2)
    tracemalloc.start()
    square, info = fit_to_square(strip, 64, "pad")  # the legacy padded box would be 100000² px (28 GiB)
    back = unfit(square, info)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * strip.nbytes
    assert square.shape == (64, 64, 3) and info.version == 2 and info.box == (0, 0, 1, 100_000)
    left, top, right, bottom = info.box
    assert (right - left) * (bottom - top) <= DEFAULT_MAX_PIXELS
    assert FitInfo.from_json(info.to_json()) == info
    assert back.shape == strip.shape and np.abs(back.astype(int) - strip).mean() < 3  # a smooth ramp survives
    assert np.array_equal(refit(strip, info), square)


def test_pad_results_are_unchanged_where_the_square_fits() -> None:
    rgb = (np.random.RandomState(4).rand(30, 90, 3) * 255).astype(np.uint8)
    square, info = fit_to_square(rgb, 48, "pad")
    assert info.version == 1 and info.box == (0, -30, 90, 60)  # what every earlier version recorded
    assert info.to_json() == '{"version":1,"width":90,"height":30,"mode":"pad","box":[0,-30,90,60],"resolution":48}'
    assert np.array_equal(refit(rgb, info), square)


BAD_RECORDS = {
    "[1, 2]": "JSON object",
    "not json": "not JSON",
    '{"version":1,"width":9,"height":9,"mode":"crop","box":[0,0,9,9]}': "keys",
    '{"version":1,"width":9,"height":9,"mode":"crop","box":[0,0,9,9],"resolution":8,"x":1}': "keys",
    '{"version":3,"width":9,"height":9,"mode":"crop","box":[0,0,9,9],"resolution":8}': "version",
    '{"version":1,"width":9.5,"height":9,"mode":"crop","box":[0,0,9,9],"resolution":8}': "'width' must be an integer",
    '{"version":1,"width":true,"height":9,"mode":"crop","box":[0,0,9,9],"resolution":8}': "'width' must be an integer",
    '{"version":1,"width":NaN,"height":9,"mode":"crop","box":[0,0,9,9],"resolution":8}': "'width' must be an integer",
    '{"version":1,"width":0,"height":9,"mode":"crop","box":[0,0,9,9],"resolution":8}': "'width' must be an integer",
    '{"version":1,"width":100000,"height":100000,"mode":"stretch","box":[0,0,100000,100000],"resolution":8}':
        "over the",
    '{"version":1,"width":9,"height":9,"mode":"crop","box":[0,0,9,9],"resolution":1000000}': "resolution",
    '{"version":1,"width":9,"height":9,"mode":"zoom","box":[0,0,9,9],"resolution":8}': "mode",
    '{"version":1,"width":9,"height":9,"mode":"crop","box":[0,0,9],"resolution":8}': "4 integers",
    '{"version":1,"width":9,"height":9,"mode":"crop","box":[-5,0,9,9],"resolution":8}': "not within",
    '{"version":1,"width":9,"height":9,"mode":"stretch","box":[0,0,90000,9],"resolution":8}': "not within",
    '{"version":1,"width":1,"height":9,"mode":"pad","box":[-50000,0,50000,9],"resolution":8}': "centred square",
    '{"version":2,"width":1,"height":9,"mode":"crop","box":[0,0,1,9],"resolution":8}': "version 2 must be pad",
}


@pytest.mark.parametrize("text", list(BAD_RECORDS))
def test_fit_records_are_read_strictly(text: str) -> None:
    with pytest.raises(FitRecordError, match=BAD_RECORDS[text]) as caught:
        FitInfo.from_json(text)
    assert isinstance(caught.value, Sg3ArchiveError) and "\n" not in str(caught.value)


def test_fit_record_limit_follows_the_caller() -> None:
    text = json.dumps({"version": 1, "width": 40, "height": 40, "mode": "crop", "box": [0, 0, 40, 40],
                       "resolution": 16})
    assert FitInfo.from_json(text).width == 40
    with pytest.raises(FitRecordError, match="over the"):
        FitInfo.from_json(text, max_pixels=1000)


# -- decoding high-depth images in bounded memory -----------------------------------------------
def test_float_tiff_decodes_in_bounded_memory_with_unchanged_values() -> None:
    values = (np.random.RandomState(5).rand(1024, 2048) * 300).astype(np.float32)
    values[0, :5] = [np.nan, np.inf, -np.inf, -3.0, 1e9]
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="TIFF")
    data = buf.getvalue()
    tracemalloc.start()
    img = decode_image(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The range is [0, 65535] (the max is 1e9); values are clipped then scaled, as documented.
    clean = np.where(np.isfinite(values), values, 0).astype(np.float64)
    expected = np.rint(np.clip(clean, 0, 65535.0) * (255.0 / 65535.0)).astype(np.uint8)
    assert img.mode == "F" and np.array_equal(img.rgb, np.repeat(expected[:, :, None], 3, axis=2))
    # The result (6 MiB) plus strip-sized temporaries: never float64 copies of the whole image
    # (the earlier code peaked at 48 MiB here, eight times the result).
    assert peak < img.rgb.nbytes + 6 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_int32_tiff_decodes_in_bounded_memory() -> None:
    values = (np.random.RandomState(6).rand(1024, 2048) * 70000).astype(np.int32)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="TIFF")
    data = buf.getvalue()
    tracemalloc.start()
    img = decode_image(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    expected = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    assert img.mode == "I" and np.array_equal(img.rgb[:, :, 1], expected)
    assert peak < img.rgb.nbytes + 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# -- the stored form of names that are not UTF-8 --------------------------------------------------
def test_stored_names_are_utf8_and_reversible() -> None:
    for name in [NOT_UTF8, os.fsdecode(b"50%\xff\xfe%41.png"), "plain%41.png", "new\nline.png"]:
        columns = fmt.source_columns(None, f"file:///d/{name}")
        stored = columns["source_uri"]
        stored.encode("utf-8")  # valid UTF-8, never a lone surrogate
        row = {**columns, "source_name": fmt.stored_text(name) if columns["source_uri_bytes"] else name}
        assert fmt.exact_uri(row) == f"file:///d/{name}" and fmt.exact_name(row) == name
    assert fmt.source_columns(None, "file:///d/plain%41.png") == {
        "source_uri": "file:///d/plain%41.png", "source_uri_bytes": None}  # UTF-8: as always
    # A writer that knows only the version-2 columns still writes (the new column is null).
    table = pa.table({"source_uri": ["s3://b/x.png"], "source_size": pa.array([None], pa.int64()),
                      "source_sha256": pa.array([None], pa.string()), "stage": ["read"], "reason": ["gone"],
                      "settings_key": ["k"], "failed_at": pa.array([0], pa.timestamp("us", tz="UTC"))})
    assert fmt.conform_table(table, "failures").column("source_uri_bytes").null_count == 1
