"""``sg3archive inspect`` on an archive mixing format-4 rows (classical, original) with latent rows
written before the quality contract: the whole archive's quality summary (stored bytes, fidelity at
the original size, representations, contract) in text and ``--json`` beside every earlier key, the
per-row listing, and the image bytes never read (their sizes are recorded)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from small_archives import archive_rows
from test_audit_contract import CODECS, CONTRACT, _as_classical, _with_image, real_archive

from sg3archive.cli import main as cli
from sg3archive.images import decode_image
from sg3archive.pipeline.inspect import inspect_archive, iter_rows
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.manifest import CODEC_DIR

OLD_KEYS = {"archive", "generation", "problems", "shards", "images", "failures", "payload_bytes", "bytes_per_image",
            "source_bytes", "ratio", "mean_psnr", "mean_ms_ssim", "settings", "failure_list", "orphans"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, list[dict], list[dict]]:
    """``(archive, its format-4 rows, its older latent rows)``: one shard of each."""
    import shutil

    root = tmp_path_factory.mktemp("inspect-contract")
    src, latent = real_archive(root, seed=21)
    old = archive_rows(latent)
    new = []
    for row in old:
        name = row["source_name"]
        source = (src / name).read_bytes()
        uri = row["source_uri"].replace(f"/{name}", f"/v4/{name}")  # another source of the same bytes
        row = dict(row, source_uri=uri, source_name=f"v4/{name}", id=fmt.image_id(uri, row["source_sha256"]))
        new.append(_as_classical(row, source, CODECS[name]) if name in CODECS
                   else _with_image(row, source, "png", None, decode_image(source).rgb))
    dest = root / "mixed"
    shutil.copytree(latent / CODEC_DIR, dest / CODEC_DIR)
    store = ArchiveStore.create(str(dest), ArchiveStore.open(str(latent)).settings)
    older = pa.Table.from_pylist(old, schema=fmt.images_schema())
    older = older.drop_columns(list(fmt.CONTRACT_COLUMNS))  # as written before format 4
    store.commit([store.write_shard(older, "images"),
                  store.write_shard(pa.Table.from_pylist(new, schema=fmt.images_schema()), "images")])
    return dest, new, old


def test_json_keeps_every_key_and_adds_the_quality_summary(mixed) -> None:
    archive, new, old = mixed
    res = CliRunner().invoke(cli, ["inspect", str(archive), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert OLD_KEYS <= set(doc) and doc["images"] == 6
    assert doc["mean_psnr"] == pytest.approx(sum(r["psnr"] for r in old) / 3, abs=1e-3)  # the square, latent rows
    quality = doc["quality"]
    stored = sum(len(r["payload"]) for r in old) + sum(len(r["image_data"]) for r in new)
    assert quality["images"] == 6 and quality["stored_bytes"] == stored
    assert quality["representations"] == {
        "classical": {"images": 2, "bytes": sum(len(r["image_data"]) for r in new[:2])},
        "latent": {"images": 3, "bytes": sum(len(r["payload"]) for r in old)},
        "original": {"images": 1, "bytes": len(new[2]["image_data"])}}
    finite = [r["fidelity_psnr"] for r in new if math.isfinite(r["fidelity_psnr"])]
    assert doc["fidelity"]["psnr_worst"] == pytest.approx(min(finite))
    assert doc["fidelity"]["identical"] == 1 and doc["fidelity"]["unmeasured"] == 3
    assert quality["contracts"] == [CONTRACT.text()] and quality["below_contract"] == 0
    text = CliRunner().invoke(cli, ["inspect", str(archive)]).stdout
    assert "representations: classical 2 (" in text and "latent 3 (" in text and "original 1 (" in text
    assert "fidelity at original size: PSNR mean" in text and "1 identical" in text
    assert f"contract: {CONTRACT.text()}; every image meets it" in text
    assert "diagnostic at the generator's square (latent rows, encode time): mean PSNR " in text


def test_rows_list_representation_bytes_fidelity_and_contract(mixed) -> None:
    archive, new, old = mixed
    rows = {r["id"]: r for r in iter_rows(str(archive))}
    for row in old:
        got = rows[row["id"]]
        assert (got["representation"], got["stored_bytes"], got["fidelity_psnr"], got["contract_met"]) == (
            "latent", len(row["payload"]), None, None)
    for row in new:
        got = rows[row["id"]]
        assert got["representation"] == row["representation"] and got["stored_bytes"] == len(row["image_data"])
        assert got["fidelity_psnr"] == row["fidelity_psnr"] and got["contract_met"] is True
        assert got["payload_bytes"] == 0 and got["psnr"] is None
    listing = CliRunner().invoke(cli, ["inspect", str(archive), "--rows"]).stdout.splitlines()
    assert "repr" in listing[0] and "fid_psnr" in listing[0] and "contract" in listing[0]
    line = next(x for x in listing if x.startswith(new[2]["id"]))
    assert line.split()[1:5] == ["original", str(len(new[2]["image_data"])), "inf", "yes"]
    line = next(x for x in listing if x.startswith(old[0]["id"]))
    assert line.split()[1:5] == ["latent", str(len(old[0]["payload"])), "-", "-"]


def test_the_summary_never_reads_image_data(mixed, tmp_path) -> None:
    """Garbage in the image_data pages of the format-4 shard: the summary does not notice (it
    reads the recorded sizes), while reading the column fails."""
    import shutil

    archive = tmp_path / "archive"
    shutil.copytree(mixed[0], archive)
    record = ArchiveStore.open(str(archive)).shards("images")[1]
    path = archive / "shards" / record.name
    meta = pq.read_metadata(path)
    data = bytearray(path.read_bytes())
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for column in ("image_data", "payload"):
            chunk = next(group.column(j) for j in range(group.num_columns)
                         if group.column(j).path_in_schema == column)
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            for i in range(start + 40, start + chunk.total_compressed_size - 8):
                data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    # the store checks a shard's sha256 only in the audit; readers read what the manifest lists
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(path, columns=["image_data"])
    info = inspect_archive(str(archive))
    assert info["images"] == 6 and info["quality"]["stored_bytes"] == inspect_archive(str(mixed[0]))["quality"][
        "stored_bytes"]
