"""Restore layout, selection and modes; inspect's row and shard listings.

Real files made with Pillow in a nested folder, compressed with the bundled default pack on CPU,
restored and inspected through the CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from PIL import Image
from small_archives import LATENT_ONLY

from sg3archive.cli import main as cli
from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import restored_mode, to_restored_image
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import CompressJob, RestoreJob
from sg3archive.pipeline.restore import RestorePlan, output_name, plan_restore, restore
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.manifest import CODEC_DIR

# relative path → (PIL mode, size); "dup/a.jpg" and "dup/a.png" both want "dup/a.png"
SOURCES = {
    "top.jpg": ("RGB", (64, 48)),
    "more/gray.png": ("L", (50, 64)),
    "more/gray_alpha.png": ("LA", (64, 64)),
    "more/deep/rgba.png": ("RGBA", (70, 60)),
    "dup/a.jpg": ("RGB", (64, 64)),
    "dup/a.png": ("RGB", (64, 64)),
}


def _picture(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], axis=2)
    rgb = np.clip(rgb + rng.randint(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode in ("LA", "RGBA"):
        image = image.convert(mode)
        image.putalpha(Image.fromarray((xx * 255 // width).astype(np.uint8)))
        return image
    return image.convert(mode)


@pytest.fixture(scope="module")
def archived(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("layout")
    src = root / "src"
    for seed, (rel, (mode, size)) in enumerate(SOURCES.items()):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        _picture(mode, size, seed).save(src / rel)
    dest = root / "archive"
    summary = compress(CompressJob(source=str(src), destination=str(dest), device="cpu", calibration_images=4,
                                   shard_size=2, batch_size=8, **LATENT_ONLY), progress=False)
    assert summary.images == len(SOURCES) and summary.failures == 0 and summary.shards == 3
    return src, dest


def _run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output
    return result


def _rows(dest: Path) -> list[dict]:
    result = _run("inspect", str(dest), "--rows", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["rows"]


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_rows_record_names_relative_to_the_source_root(archived) -> None:
    src, dest = archived
    table = ArchiveStore.open(str(dest)).read_table("images", columns=["source_uri", "source_name", "source_root"])
    root = fmt.source_root(str(src))
    assert set(table.column("source_name").to_pylist()) == set(SOURCES)
    assert set(table.column("source_root").to_pylist()) == {root} and root == src.resolve().as_uri()
    for uri, name in zip(table.column("source_uri").to_pylist(), table.column("source_name").to_pylist()):
        assert uri == f"{root}/{name}"


def test_restore_writes_dest_relative_paths_and_nothing_else(archived, tmp_path) -> None:
    _, dest = archived
    out = tmp_path / "restored"
    result = _run("restore", str(dest), str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"{len(SOURCES)} images restored" in result.output and "nan" not in result.output
    rows = {r["name"]: r for r in _rows(dest)}
    # listing order: a.jpg comes first, keeps the name; a.png gets its id before the suffix
    expected = {str(Path(n).with_suffix(".png")) for n in SOURCES if n != "dup/a.png"}
    expected.add(f"dup/a.{rows['dup/a.png']['id'][:8]}.png")
    assert _files(out) == expected
    for name, (mode, size) in SOURCES.items():
        if name == "dup/a.png":
            continue
        with Image.open(out / Path(name).with_suffix(".png")) as image:
            assert image.size == size  # original size (default --size original)
            assert image.mode == mode  # L stays L, LA stays LA, RGBA stays RGBA, JPEG's RGB stays RGB
            if mode in ("LA", "RGBA"):
                assert image.getchannel("A").getextrema() == (255, 255)  # alpha is not archived: opaque
    again = _run("restore", str(dest), str(out), "--device", "cpu")
    assert again.exit_code == 0 and "0 images restored" in again.output and "nan" not in again.output
    assert f"{len(SOURCES)} already there" in again.output


def test_glob_selects_by_relative_name_and_by_uri(archived, tmp_path) -> None:
    _, dest = archived
    out = tmp_path / "more"
    result = _run("restore", str(dest), str(out), "--device", "cpu", "--glob", "more/*", "--format", "jpeg")
    assert result.exit_code == 0, result.output
    assert _files(out) == {"more/gray.jpg", "more/gray_alpha.jpg", "more/deep/rgba.jpg"}
    with Image.open(out / "more/gray_alpha.jpg") as la, Image.open(out / "more/deep/rgba.jpg") as rgba:
        assert (la.mode, rgba.mode) == ("L", "RGB")  # JPEG holds no alpha
    plan = plan_restore(RestoreJob(archive=str(dest), destination=str(tmp_path / "x"), glob="*/src/more/deep/*"))
    assert plan.total == 1  # the full source URI still matches
    ids = [r["id"] for r in _rows(dest) if r["name"] in ("top.jpg", "dup/a.jpg")]
    assert plan_restore(RestoreJob(archive=str(dest), destination="x", ids=ids)).total == 2


def test_selections_matching_nothing_fail_with_one_line(archived, tmp_path) -> None:
    _, dest = archived
    out = tmp_path / "none"
    shard = ArchiveStore.open(str(dest)).shards("images")[0].name
    cases = [
        (["--glob", "nothing/*"], "--glob 'nothing/*' matches no image"),
        (["--ids", "0123456789abcdef0123456789abcdef"], "not in"),
        (["--ids", _rows(dest)[0]["id"] + ",00ff"], "1 of the --ids are not in"),
        (["--shard", "images-nope.parquet"], "--shards` lists them"),
        (["--shard", shard, "--glob", "more/deep/*"], "matches no image"),
    ]
    for args, words in cases:
        result = _run("restore", str(dest), str(out), "--device", "cpu", *args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert words in lines[0] and "sg3archive inspect" in lines[0]
    assert not out.exists() or _files(out) == set()


def test_inspect_lists_rows_and_shards(archived) -> None:
    _, dest = archived
    store = ArchiveStore.open(str(dest))
    rows = _rows(dest)
    ids = store.read_table("images", columns=["id"]).column("id").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(ids) and {r["name"] for r in rows} == set(SOURCES)
    assert all(r["payload_bytes"] > 0 and r["psnr"] > 0 and r["source_uri"].startswith("file://") for r in rows)
    names = [r.name for r in store.shards()]
    text = _run("inspect", str(dest), "--shards")
    assert text.exit_code == 0 and [line.split()[0] for line in text.output.splitlines()] == names
    doc = json.loads(_run("inspect", str(dest), "--shards", "--json").output)
    assert [s["name"] for s in doc["shards"]] == names and sum(s["rows"] for s in doc["shards"]) == len(SOURCES)
    listing = _run("inspect", str(dest), "--rows").output.splitlines()
    assert len(listing) == len(SOURCES) + 1 and all(any(r["id"] in line for line in listing) for r in rows)
    default = _run("inspect", str(dest))
    assert default.exit_code == 0 and f"images {len(SOURCES)} in 3 shards" in default.output


def test_archive_without_source_names_restores_under_the_uri_path(archived, tmp_path) -> None:
    """Rows of format version 1 have no source_name: the URI's path names them."""
    _, dest = archived
    old = ArchiveStore.open(str(dest))
    table = old.read_table("images").slice(0, 1)
    nulls = pa.nulls(1, pa.string())
    table = table.set_column(table.schema.get_field_index("source_name"), "source_name", nulls)
    table = table.set_column(table.schema.get_field_index("source_root"), "source_root", nulls)
    copy = tmp_path / "v1"
    shutil.copytree(dest / CODEC_DIR, copy / CODEC_DIR)
    store = ArchiveStore.create(str(copy), old.settings)
    store.commit([store.write_shard(table, "images")])
    uri = table.column("source_uri")[0].as_py()
    assert pc.all(pc.is_null(store.read_table("images", columns=["source_name"]).column(0))).as_py()
    out = tmp_path / "out"
    summary = restore(RestoreJob(archive=str(copy), destination=str(out), device="cpu", size="generator"),
                      progress=False)
    assert summary.written == 1
    assert _files(out) == {output_name(uri, "png")} == {str(Path(fmt.uri_path(uri)).with_suffix(".png"))}


def test_names_stay_inside_dest() -> None:
    assert output_name("more/gray.png", "png") == "more/gray.png"
    assert output_name("more//x.jpg", "jpeg") == "more/x.jpg"
    assert output_name("/abs/x.png", "webp") == "abs/x.webp"
    assert output_name("C:\\photos\\x.png", "png") == "photos/x.png"
    assert output_name("file:///C:/photos/x.png", "png") == "photos/x.png"
    assert output_name("s3://bucket/a/b.jpg", "png") == "bucket/a/b.png"
    for bad in ("../x.png", "a/../../x.png", "s3://b/../x.png", "./", "", "a/\x00/b.png"):
        with pytest.raises(Sg3ArchiveError):
            output_name(bad, "png")


def test_relative_names_for_each_kind_of_source() -> None:
    root = "file:///data/photos"
    assert fmt.relative_source_name(root, "file:///data/photos/a/b.png") == "a/b.png"
    assert fmt.relative_source_name("file:///data/photos/b.png", "file:///data/photos/b.png") == "b.png"
    assert fmt.relative_source_name("s3://bucket", "s3://bucket/x/y.png") == "x/y.png"
    lst = "file:///data/list.txt"  # a URI list: entries under its folder, else scheme stripped
    assert fmt.relative_source_name(lst, "file:///data/photos/a.png") == "photos/a.png"
    assert fmt.relative_source_name(lst, "s3://bucket/k/a.png") == "bucket/k/a.png"
    assert fmt.relative_source_name(lst, "file:///elsewhere/a.png") == "elsewhere/a.png"
    assert fmt.row_name(None, "file:///data/x.png") == "data/x.png"


def test_restored_modes() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 1] = 200  # a green tint
    expected = {  # source mode → PNG, JPEG, WEBP
        "L": ("L", "L", "RGB"), "1": ("L", "L", "RGB"), "I;16": ("L", "L", "RGB"), "F": ("L", "L", "RGB"),
        "LA": ("LA", "L", "RGBA"), "RGBA": ("RGBA", "RGB", "RGBA"), "PA": ("RGBA", "RGB", "RGBA"),
        "RGB": ("RGB", "RGB", "RGB"), "P": ("RGB", "RGB", "RGB"), "CMYK": ("RGB", "RGB", "RGB"),
    }
    for source, modes in expected.items():
        assert tuple(restored_mode(source, f) for f in ("PNG", "JPEG", "WEBP")) == modes, source
    gray = np.asarray(to_restored_image(rgb, "L", "WEBP"))
    assert gray.shape == (4, 5, 3) and (gray[..., 0] == gray[..., 1]).all()  # gray, no tint
    rgba = np.asarray(to_restored_image(rgb, "RGBA", "PNG"))
    assert (rgba[..., 3] == 255).all() and (rgba[..., :3] == rgb).all()


def test_plan_for_shard_keeps_renames(archived) -> None:
    _, dest = archived
    plan = plan_restore(RestoreJob(archive=str(dest), destination="x"))
    assert plan.total == len(SOURCES) and sum(plan.shards.values()) == len(SOURCES)
    (shard, renamed), = plan.renamed.items()
    part = plan.for_shard(shard)
    assert part.renamed == {shard: renamed} and part.total == plan.shards[shard]
    assert plan.for_shard("images-nope.parquet") == RestorePlan()
