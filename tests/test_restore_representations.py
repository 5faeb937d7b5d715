"""Issue 13 for restore: every representation is restored at the original size.

The archives here are real: the committed golden archive (three latent rows compressed by an older
sg3archive from the real files in ``tests/golden/format1/sources``) rewritten through the store into
a format-4 archive whose rows are ``classical`` (real AVIF and WebP files of those sources, made by
``sg3archive.images.classical.encode_rgb``), ``original`` (a source's own bytes) and ``latent`` (the
golden rows, restored to the golden pixels). Restores run through the library and the CLI into real
folders; what they write is read back with Pillow and compared with an independent decode of the
stored file. The last test is the issue's acceptance test end to end: real photos of odd sizes
compressed under ``--min-psnr 30``, restored, and measured against their originals at the
original size.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from photos import PhotoSpec, write_photos
from PIL import Image

from sg3archive.cli import main as cli
from sg3archive.images import FitInfo, refit
from sg3archive.images.classical import decode_rgb, encode_rgb
from sg3archive.metrics.fidelity import measure_fidelity
from sg3archive.pipeline.jobs import RestoreJob
from sg3archive.pipeline.restore import ImageData, restore
from sg3archive.quality.choose import as_written
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.manifest import CODEC_DIR, ShardRecord

GOLDEN = Path(__file__).parent / "golden" / "format1"
SOURCES = GOLDEN / "sources"
EMPTY_SHA = hashlib.sha256(b"").hexdigest()
# What each golden source becomes in the format-4 archive: (representation, codec, quality).
STORED = {"wide.jpg": ("classical", "avif", 50), "gray.png": ("classical", "webp", 70),
          "texture_00.png": ("original", None, None)}


def _golden_rows() -> dict[str, dict[str, Any]]:
    rows = ArchiveStore.open(str(GOLDEN / "archive")).read_table("images").to_pylist()
    return {row["source_name"]: row for row in rows}


def _source_rgb(name: str) -> np.ndarray:
    return decode_rgb((SOURCES / name).read_bytes())


def _stored(row: dict[str, Any], representation: str, data: bytes, codec: str | None,
            quality: int | None) -> dict[str, Any]:
    """``row`` rewritten as a classical or original row holding ``data`` (format version 4)."""
    return dict(row, representation=representation, image_data=data, image_sha256=hashlib.sha256(data).hexdigest(),
                image_codec=codec, image_quality=quality, payload=b"", payload_sha256=EMPTY_SHA, latent_bytes=0,
                image_bytes=len(data), psnr=None, ms_ssim=None, lpips=None)


def _renamed(row: dict[str, Any], name: str) -> dict[str, Any]:
    uri = f"file:///tmp/g1/{name}"
    return dict(row, source_uri=uri, source_name=name, id=fmt.image_id(uri, row["source_sha256"]))


def _stored_rows() -> list[dict[str, Any]]:
    """The golden sources as classical and original rows, with their latent rows beside them
    under ``latent/`` (one shard, in this order)."""
    golden = _golden_rows()
    rows = []
    for name, (representation, codec, quality) in STORED.items():
        if representation == "original":
            data = (SOURCES / name).read_bytes()
            codec = golden[name]["format"].lower()
        else:
            assert codec is not None and quality is not None
            data = encode_rgb(_source_rgb(name), codec, quality)
        rows.append(_stored(golden[name], representation, data, codec, quality))
    rows += [_renamed(golden[name], f"latent/{name}") for name in STORED]
    return rows


def _archive(out: Path, rows: list[dict[str, Any]]) -> Path:
    """A format-4 archive with the golden archive's settings and codec holding ``rows`` (one shard)."""
    old = ArchiveStore.open(str(GOLDEN / "archive"))
    shutil.copytree(GOLDEN / "archive" / CODEC_DIR, out / CODEC_DIR)
    store = ArchiveStore.create(str(out), old.settings)
    store.commit([store.write_shard(pa.Table.from_pylist(rows, schema=fmt.images_schema()), "images")])
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, one_thread) -> Path:
    return _archive(tmp_path_factory.mktemp("mixed") / "archive", _stored_rows())


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _decoded(data: bytes, mode: str) -> np.ndarray:
    """The file ``data`` decoded by Pillow alone, in ``mode``."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert(mode))


def _cli(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_every_representation_restores_at_the_original_size(mixed, tmp_path) -> None:
    out = tmp_path / "out"
    report = restore(RestoreJob(archive=str(mixed), destination=str(out), device="cpu", batch_size=2), progress=False)
    assert (report.written, report.skipped, report.bad) == (6, 0, ())
    assert report.representations == (("latent", 3), ("classical", 2), ("original", 1))
    assert (report.written_as("latent"), report.written_as("classical"), report.written_as("original")) == (3, 2, 1)
    assert "6 images restored to" in report.text() and "(3 latent, 2 classical, 1 original)" in report.text()
    rows = {row["source_name"]: row for row in _stored_rows()}
    # classical: the pixels of the AVIF / WebP file as written (a gray source through luma)
    assert np.array_equal(_pixels(out / "wide.png"), _decoded(rows["wide.jpg"]["image_data"], "RGB"))
    gray = _pixels(out / "gray.png")
    assert gray.shape == (64, 64) and np.array_equal(gray, _decoded(rows["gray.png"]["image_data"], "L"))
    # original: the source's own pixels
    assert np.array_equal(_pixels(out / "texture_00.png"), _decoded((SOURCES / "texture_00.png").read_bytes(), "RGB"))
    # latent: what the golden archive restores to, bit for bit
    for name in ("gray", "texture_00", "wide"):
        assert np.array_equal(_pixels(out / "latent" / f"{name}.png"),
                              _pixels(GOLDEN / "expected" / "original" / f"{name}.png")), name


def test_generator_size_fits_stored_images_as_compress_did(mixed, tmp_path) -> None:
    out = tmp_path / "out"
    result = _cli("restore", str(mixed), str(out), "--device", "cpu", "--size", "generator")
    assert result.exit_code == 0, result.output
    rows = {row["source_name"]: row for row in _stored_rows()}
    for name, out_name in (("wide.jpg", "wide.png"), ("gray.png", "gray.png"), ("texture_00.png", "texture_00.png")):
        row = rows[name]
        square = refit(decode_rgb(row["image_data"]), FitInfo.from_json(row["fit"]))
        got = np.asarray(Image.open(out / out_name).convert("RGB"))
        assert got.shape == (64, 64, 3), name
        assert np.array_equal(got, as_written(square, row["mode"])), name
    for name in ("gray", "texture_00", "wide"):
        assert np.array_equal(_pixels(out / "latent" / f"{name}.png"),
                              _pixels(GOLDEN / "expected" / "generator" / f"{name}.png")), name


@pytest.mark.parametrize("format_, suffix", [("jpeg", ".jpg"), ("webp", ".webp")])
def test_lossy_output_formats_write_every_representation(mixed, tmp_path, format_, suffix) -> None:
    out = tmp_path / "out"
    result = _cli("restore", str(mixed), str(out), "--device", "cpu", "--format", format_)
    assert result.exit_code == 0, result.output
    assert "(3 latent, 2 classical, 1 original)" in result.output
    rows = {row["source_name"]: row for row in _stored_rows()}
    for name in STORED:
        stem = Path(name).stem
        with Image.open(out / f"{stem}{suffix}") as img:
            assert img.format == format_.upper() and img.size == (rows[name]["width"], rows[name]["height"])
            got = np.asarray(img.convert("RGB")).astype(float)
        want = as_written(decode_rgb(rows[name]["image_data"]), rows[name]["mode"]).astype(float)
        psnr = 10 * np.log10(255.0**2 / max(float(np.mean((got - want) ** 2)), 1e-12))
        assert psnr > 30, (name, psnr)  # the stored image, through a quality-95 lossy file
        assert (out / "latent" / f"{stem}{suffix}").is_file()


def _tampered(rows: list[dict[str, Any]], name: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> list:
    return [change(row) if row["source_name"] == name else row for row in rows]


def test_tampered_image_data_is_refused_and_reported(tmp_path) -> None:
    def flip(row: dict[str, Any]) -> dict[str, Any]:
        data = bytearray(row["image_data"])
        data[len(data) // 2] ^= 0xFF
        return dict(row, image_data=bytes(data))  # image_sha256 left as it was

    rows = _tampered(_stored_rows(), "wide.jpg", flip)
    arch = _archive(tmp_path / "arch", rows)
    out = tmp_path / "out"
    result = _cli("restore", str(arch), str(out), "--device", "cpu")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("not restored:")]
    assert len(lines) == 1 and rows[0]["id"] in lines[0], result.output
    assert "its image_data does not match the image_sha256 recorded beside it (the archive is damaged)" in lines[0]
    assert "5 images restored" in result.output and "1 could not be restored" in result.output
    assert not (out / "wide.png").exists() and (out / "gray.png").is_file() and (out / "texture_00.png").is_file()
    assert "audit" in result.output.splitlines()[-1]  # damage, not a row this machine cannot write
    # an output already there is skipped unread: its image_data is only read for rows being written
    (out / "wide.png").write_bytes(b"placed by hand")
    again = _cli("restore", str(arch), str(out), "--device", "cpu")
    assert again.exit_code == 0 and "0 images restored" in again.output and "6 already there" in again.output


def test_stored_image_of_another_size_than_its_row_is_damage(tmp_path) -> None:
    """image_data whose sha256 matches but which decodes to another size than the row's
    width×height (a forged row) is never written."""
    other = encode_rgb(_source_rgb("gray.png")[:32], "webp", 70)  # 64×32, the row says 64×64
    rows = _tampered(_stored_rows(), "gray.png",
                     lambda row: dict(row, image_data=other, image_sha256=hashlib.sha256(other).hexdigest()))
    arch = _archive(tmp_path / "arch", rows)
    report = restore(RestoreJob(archive=str(arch), destination=str(tmp_path / "out"), device="cpu"), progress=False)
    (bad,) = report.bad
    assert bad.name == "gray.png" and not bad.unwritable
    assert bad.reason == "its image_data decodes to 64×32, not the 64×64 its row records (the archive is damaged)"
    assert report.written == 5 and not (tmp_path / "out" / "gray.png").exists()


def test_image_data_that_is_not_an_image_is_damage(tmp_path) -> None:
    junk = b"not an image at all"
    rows = _tampered(_stored_rows(), "texture_00.png",
                     lambda row: dict(row, image_data=junk, image_sha256=hashlib.sha256(junk).hexdigest()))
    report = restore(RestoreJob(archive=str(_archive(tmp_path / "arch", rows)), destination=str(tmp_path / "out"),
                                device="cpu"), progress=False)
    (bad,) = report.bad
    assert bad.name == "texture_00.png" and bad.reason.startswith("its image_data does not decode: ")
    assert report.written == 5


def test_a_classical_row_too_wide_for_webp_is_unwritable_before_it_is_decoded(tmp_path) -> None:
    """The format's limit is checked on the row's size first: a row claiming 20000 px a side is
    refused as unwritable in WebP (its data is never decoded), and PNG is offered."""
    rows = _tampered(_stored_rows(), "wide.jpg", lambda row: dict(row, width=20000))
    report = restore(RestoreJob(archive=str(_archive(tmp_path / "arch", rows)), destination=str(tmp_path / "out"),
                                device="cpu", format="webp"), progress=False)
    (bad,) = report.bad
    assert bad.unwritable and "its original size 20000×80 is larger than WEBP can hold" in bad.reason
    assert "restore it with --format png" in bad.reason


def test_a_representation_this_version_does_not_know_is_damage(tmp_path) -> None:
    """A shard written straight to Parquet (the writer refuses it) whose row names an unknown
    representation: that row is reported, the others restore."""
    rows = _tampered(_stored_rows(), "gray.png", lambda row: dict(row, representation="latent+residual"))
    old = ArchiveStore.open(str(GOLDEN / "archive"))
    arch = tmp_path / "arch"
    shutil.copytree(GOLDEN / "archive" / CODEC_DIR, arch / CODEC_DIR)
    store = ArchiveStore.create(str(arch), old.settings)
    table = pa.Table.from_pylist(rows, schema=fmt.images_schema())
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(fmt.table_metadata(store.settings, "images")), sink)
    name = f"images-{uuid.uuid4().hex}.parquet"
    Path(store.shard_path(name)).write_bytes(sink.getvalue())
    store.commit([ShardRecord(name=name, kind="images", sha256=hashlib.sha256(sink.getvalue()).hexdigest(),
                              rows=len(rows), bytes=len(sink.getvalue()))])
    report = restore(RestoreJob(archive=str(arch), destination=str(tmp_path / "out"), device="cpu"), progress=False)
    (bad,) = report.bad
    assert bad.name == "gray.png" and "its representation 'latent+residual' is not one this version restores" in bad.reason
    assert report.written == 5


def test_image_data_is_read_forward_across_batches(tmp_path) -> None:
    """The shard's image_data column read for chosen rows only, in one forward pass over more
    rows than one read batch holds."""
    base = _stored_rows()[0]
    datas = [encode_rgb(np.full((8, 8 + i, 3), i, dtype=np.uint8), "webp", 50) for i in range(40)]
    rows = [_renamed(_stored(base, "classical", data, "webp", 50), f"r{i:02d}.jpg") for i, data in enumerate(datas)]
    store = ArchiveStore.open(str(_archive(tmp_path / "arch", rows)))
    (record,) = store.shards("images")
    reader = ImageData(store, record.name)
    for position in (0, 3, 17, 18, 39):
        assert reader.at(position) == datas[position]
    with pytest.raises(ValueError, match="forward only"):
        reader.at(5)


def test_compressed_photos_restore_to_the_contract_at_their_original_size(tmp_path, one_thread) -> None:
    """Acceptance (issue 13): real photos of odd sizes, compressed with ``--min-psnr 30``, restore
    to files that are each at least 30 dB against the original at the original size, and to the
    fidelity their rows record. (A fixed profile and no AVIF baseline keep compress short; neither
    changes what an image must meet.)"""
    specs = [PhotoSpec("coffee", (512, 384), "png"), PhotoSpec("rocket", (300, 1000), "jpg")]
    sources = write_photos(tmp_path / "src", specs)
    arch, out = tmp_path / "archive", tmp_path / "out"
    done = _cli("compress", str(tmp_path / "src"), str(arch), "--device", "cpu", "--min-psnr", "30",
                "--profile", "balanced", "--calibration-images", "2", "--baseline-images", "0")
    assert done.exit_code == 0, done.output
    rows = {row["source_name"]: row for row in ArchiveStore.open(str(arch)).read_table("images").to_pylist()}
    result = _cli("restore", str(arch), str(out), "--device", "cpu")
    assert result.exit_code == 0 and "2 images restored" in result.output, result.output
    for source in sources:
        original = decode_rgb(source.read_bytes())
        restored = decode_rgb((out / f"{source.stem}.png").read_bytes())
        assert restored.shape == original.shape, source.name
        fidelity = measure_fidelity(original, restored)
        assert fidelity.psnr >= 30, (source.name, fidelity)
        assert abs(fidelity.psnr - rows[source.name]["fidelity_psnr"]) < 1e-3, (source.name, fidelity)
        assert rows[source.name]["contract_met"] is True
