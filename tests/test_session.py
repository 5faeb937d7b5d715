"""ArchiveSession and the store's own folders, against real files and real processes: the codec
written content-addressed (two first runs cannot overwrite each other's), fingerprints checked at
open (compress included), the bounded model cache, and the store's ``_plans/`` and ``_audit/``."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from small_archives import LATENT_ONLY

from sg3archive.assets import default_encoder_url, default_network_url
from sg3archive.codec import LatentCodec
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.pipeline.session import ArchiveSession, ModelCache, Models, cache
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.bounded import UnsafeArchiveFileError
from sg3archive.store.format import (
    EXACT_KEY_COLUMNS,
    ArchiveFormatError,
    ArchiveMismatchError,
    exact_keys,
    failures_schema,
    image_id,
    images_schema,
    source_columns,
)
from sg3archive.store.layout import AUDIT_DIR, CODEC_DIR, PLANS_DIR, TEMP_PREFIX

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "examples" / "images"


# -- helpers ---------------------------------------------------------------------------------------
def fitted_codec(seed: int, profile: str = "balanced") -> LatentCodec:
    """A real codec fitted on random W+ codes (seconds, no images needed)."""
    ws = torch.randn(64, 16, 512, generator=torch.Generator().manual_seed(seed))
    return LatentCodec.fit(ws, profile=profile)


def archive_settings(models: Models | None, codec: LatentCodec, **changes) -> dict:
    settings = {
        "generator_fingerprint": models.G.fingerprint if models else "g" * 64,
        "encoder_fingerprint": models.encoder.fingerprint if models else "e" * 64,
        "codec_hash": codec.hash, "profile": codec.model.profile, "bits": [float(b) for b in codec.bits],
        "num_ws": codec.num_ws, "w_dim": codec.w_dim, "resolution": models.resolution if models else 64,
        "fit": "crop", "refine_steps": 0,
    }
    settings.update(changes)
    return settings


def codec_entries(archive: Path) -> list[str]:
    return sorted(os.listdir(archive / CODEC_DIR))


def archive_doc(archive: Path) -> dict:
    return json.loads((archive / "archive.json").read_text())


@pytest.fixture(scope="module")
def codecs() -> tuple[LatentCodec, LatentCodec]:
    return fitted_codec(0), fitted_codec(1)


@pytest.fixture(scope="module")
def models() -> Models:
    return cache.models(None, None, "cpu")


@pytest.fixture(scope="module")
def other_encoder(tmp_path_factory, models) -> Path:
    """The bundled encoder with one weight changed: loads with the bundled generator, but has its
    own fingerprint."""
    from sg3archive.checkpoints.encoder_file import load_encoder, save_encoder

    other = tmp_path_factory.mktemp("other") / "encoder"
    shutil.copytree(default_encoder_url(), other)
    state = safetensors.torch.load_file(str(other / "encoder.safetensors"))
    key = sorted(state)[0]
    state[key] = state[key] + 0.01
    enc = load_encoder(default_encoder_url(), generator=models.G)
    enc.load_state_dict(state)
    save_encoder(enc, str(other), generator_fingerprint=models.G.fingerprint)
    return other


# -- the codec, content-addressed ------------------------------------------------------------------
def test_create_writes_the_codec_content_addressed_and_names_it(tmp_path, codecs) -> None:
    codec = codecs[0]
    dest = tmp_path / "a"
    store = ArchiveStore.create(str(dest), archive_settings(None, codec), codec=codec)
    assert archive_doc(dest)["codec"] == f"codec/{codec.hash}"
    assert codec_entries(dest) == [codec.hash]  # no temporary folder left
    assert store.codec_url.endswith(f"/a/codec/{codec.hash}")
    assert ArchiveStore.open(str(dest)).codec_url == store.codec_url
    assert LatentCodec.load(store.codec_url).hash == codec.hash
    # resuming with the same codec keeps the one folder
    again = ArchiveStore.create(str(dest), archive_settings(None, codec), codec=codec)
    assert again.settings == store.settings and codec_entries(dest) == [codec.hash]


def test_a_creator_that_lost_the_race_takes_the_archives_codec_and_removes_its_own(tmp_path, codecs) -> None:
    winner, loser = codecs
    dest = tmp_path / "a"
    ArchiveStore.create(str(dest), archive_settings(None, winner), codec=winner)
    store = ArchiveStore.create(str(dest), archive_settings(None, loser), codec=loser)
    assert store.settings["codec_hash"] == winner.hash and store.settings["bits"] == [float(b) for b in winner.bits]
    assert codec_entries(dest) == [winner.hash] and store.codec_url.endswith(winner.hash)
    # another setting than the codec's own is still refused, and the loser's codec still removed
    with pytest.raises(ArchiveMismatchError, match="fit"):
        ArchiveStore.create(str(dest), archive_settings(None, loser, fit="pad"), codec=loser)
    assert codec_entries(dest) == [winner.hash]


def test_the_codec_is_content_addressed_in_memory_too(codecs) -> None:
    winner, loser = codecs
    url = f"memory://session-test-{os.getpid()}/a"
    try:
        ArchiveStore.create(url, archive_settings(None, winner), codec=winner)
        store = ArchiveStore.create(url, archive_settings(None, loser), codec=loser)
        fs = fsspec.filesystem("memory")
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{store.root}/codec", detail=False))
        assert names == [winner.hash]
        assert LatentCodec.load(store.codec_url).hash == winner.hash
    finally:
        fsspec.filesystem("memory").rm(f"/session-test-{os.getpid()}", recursive=True)


def test_the_codec_entry_of_archive_json_cannot_point_elsewhere(tmp_path, codecs) -> None:
    dest = tmp_path / "a"
    ArchiveStore.create(str(dest), archive_settings(None, codecs[0]), codec=codecs[0])
    doc = archive_doc(dest)
    for bad in ("../../etc", "codec/../../x", f"codec/{codecs[0].hash.upper()}", f"/tmp/{codecs[0].hash}", 7):
        (dest / "archive.json").write_text(json.dumps(dict(doc, codec=bad)))
        with pytest.raises(ArchiveFormatError, match="is damaged: its 'codec' entry"):
            ArchiveStore.open(str(dest))


def test_a_codec_folder_that_is_a_link_is_refused(tmp_path, codecs) -> None:
    dest, victim = tmp_path / "a", tmp_path / "victim"
    victim.mkdir()
    (dest / CODEC_DIR).mkdir(parents=True)
    (dest / CODEC_DIR / codecs[0].hash).symlink_to(victim, target_is_directory=True)
    with pytest.raises(UnsafeArchiveFileError, match="is a symlink"):
        ArchiveStore.create(str(dest), archive_settings(None, codecs[0]), codec=codecs[0])
    assert not (dest / "archive.json").exists() and os.listdir(victim) == []


def _create_rounds(root: str, rounds: int, seed: int, barrier, results) -> None:
    """One of two racing creators: in each round, wait for the other, then create the same new archive."""
    codec = LatentCodec.load(f"{root}/codec-{seed}")
    for r in range(rounds):
        barrier.wait(timeout=120)
        store = ArchiveStore.create(f"{root}/archive-{r}", archive_settings(None, codec), codec=codec)
        results.put((r, seed, store.settings["codec_hash"], store.codec_url))


def test_two_processes_creating_the_same_new_archive_end_with_one_codec(tmp_path, codecs) -> None:
    for seed, codec in enumerate(codecs):
        codec.save(str(tmp_path / f"codec-{seed}"))
    rounds = 4
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_create_rounds, args=(str(tmp_path), rounds, seed, barrier, results))
             for seed in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in range(2 * rounds)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in range(rounds):
        dest = tmp_path / f"archive-{r}"
        named = archive_doc(dest)["codec"]
        assert codec_entries(dest) == [named.split("/", 1)[1]]  # one codec folder, the named one
        codec = LatentCodec.load(str(dest / named))
        assert archive_doc(dest)["settings"]["codec_hash"] == codec.hash
        assert {h for rr, _, h, _ in got if rr == r} == {codec.hash}  # both runs use the archive's codec
        assert all(url.endswith(named) for rr, _, _, url in got if rr == r)


# -- the session -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def old_layout_archive(tmp_path_factory, models, codecs) -> Path:
    """An archive as written before the codec was content-addressed: codec/ itself, no key."""
    dest = tmp_path_factory.mktemp("old") / "archive"
    codecs[0].save(str(dest / CODEC_DIR))
    ArchiveStore.create(str(dest), archive_settings(models, codecs[0]))
    assert "codec" not in archive_doc(dest)
    return dest


def test_session_opens_an_archive_of_the_old_layout(old_layout_archive, models: Models, codecs) -> None:
    session = ArchiveSession.open(str(old_layout_archive), device="cpu")
    assert session.store.codec_url.endswith("/archive/codec")
    assert session.codec.hash == codecs[0].hash and session.mismatches == []
    assert session.models is models and session.device == torch.device("cpu")
    assert session.settings == session.store.settings and session.resolution == models.resolution
    light = ArchiveSession.open(str(old_layout_archive), device="cpu", need_models=False)
    assert light.models is None and light.resolution == models.resolution
    assert light.codec is session.codec  # one cached instance per codec URL and content


def test_session_refuses_another_encoder_at_open(old_layout_archive, other_encoder) -> None:
    with pytest.raises(ArchiveMismatchError) as caught:
        ArchiveSession.open(str(old_layout_archive), encoder=str(other_encoder), device="cpu")
    message = str(caught.value)
    assert "\n" not in message and str(old_layout_archive) in message
    assert "encoder fingerprint" in message and "--encoder" in message and "--network" not in message
    lenient = ArchiveSession.open(str(old_layout_archive), encoder=str(other_encoder), device="cpu", check=False)
    assert len(lenient.mismatches) == 1 and lenient.mismatches[0].startswith("encoder fingerprint")


def test_session_refuses_a_changed_codec_at_open(tmp_path, models, codecs) -> None:
    dest = tmp_path / "a"
    codecs[1].save(str(dest / CODEC_DIR))  # not the codec the settings record
    ArchiveStore.create(str(dest), archive_settings(models, codecs[0]))
    with pytest.raises(ArchiveMismatchError, match="codec model fingerprint .*restore it from a copy"):
        ArchiveSession.open(str(dest), device="cpu", need_models=False)


def test_the_model_cache_is_bounded(tmp_path, old_layout_archive) -> None:
    urls = []
    for i in range(3):  # three URLs of the same encoder: three cache keys, all matching the archive
        shutil.copytree(default_encoder_url(), tmp_path / f"enc{i}")
        urls.append(str(tmp_path / f"enc{i}"))
    for url in urls:
        ArchiveSession.open(str(old_layout_archive), encoder=url, device="cpu")
        assert len(cache.model_keys()) <= 2
    assert cache.model_keys()[-1] == (default_network_url(), urls[-1], "cpu")
    assert all(key[1] != urls[0] for key in cache.model_keys())  # the least recently used went first


def test_the_codec_cache_is_bounded(tmp_path, codecs) -> None:
    small = ModelCache(max_models=1, max_codecs=2)
    for i, codec in enumerate([*codecs, fitted_codec(2)]):
        codec.save(str(tmp_path / f"c{i}"))
        assert small.codec(str(tmp_path / f"c{i}")).hash == codec.hash
    assert [url for url, _ in small.codec_keys()] == [str(tmp_path / "c1"), str(tmp_path / "c2")]
    small.clear()
    assert small.codec_keys() == [] and small.model_keys() == []


# -- the store's own folders ------------------------------------------------------------------------
def test_plans_folders_are_the_stores(tmp_path, codecs) -> None:
    dest = tmp_path / "a"
    store = ArchiveStore.create(str(dest), archive_settings(None, codecs[0]), codec=codecs[0])
    one = store.plans_folder("20261130T204500000001")
    assert one == f"{store.root}/{PLANS_DIR}/20261130T204500000001" and os.path.isdir(one)
    Path(one, "0000000.jsonl").write_text('"file:///x.png"\n')
    two = store.plans_folder("run2")
    store.remove_plans("20261130T204500000001")
    assert not os.path.exists(one) and os.path.isdir(two)  # another run's plans stay
    store.remove_plans("run2")
    assert not (dest / PLANS_DIR).exists()  # _plans itself goes once empty
    store.remove_plans("run2")  # nothing left: nothing to do
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError, match="not a plain name"):
            store.plans_folder(bad)


def test_plans_and_audit_folders_never_lead_out(tmp_path, codecs) -> None:
    dest, victim = tmp_path / "a", tmp_path / "victim"
    (victim / "run1").mkdir(parents=True)
    (victim / "run1" / "keep.txt").write_text("mine")
    store = ArchiveStore.create(str(dest), archive_settings(None, codecs[0]), codec=codecs[0])
    (dest / PLANS_DIR).symlink_to(victim, target_is_directory=True)
    with pytest.raises(UnsafeArchiveFileError, match="_plans is a symlink"):
        store.plans_folder("run1")
    store.remove_plans("run1")
    assert (victim / "run1" / "keep.txt").read_text() == "mine"
    assert store.audit_folder(create=False) == f"{store.root}/{AUDIT_DIR}" and not (dest / AUDIT_DIR).exists()
    assert os.path.isdir(store.audit_folder())
    (dest / AUDIT_DIR).rmdir()
    (dest / AUDIT_DIR).symlink_to(victim, target_is_directory=True)
    with pytest.raises(UnsafeArchiveFileError, match="_audit is a symlink"):
        store.audit_folder()


def _image_rows(uris: list[str], key: str) -> pa.Table:
    rows = []
    for i, uri in enumerate(uris):
        sha = f"{i:064x}"
        rows.append({
            "id": image_id(uri, sha), **source_columns(None, uri), "source_sha256": sha, "source_size": 10, "width": 8,
            "height": 8, "mode": "RGB", "format": "PNG", "fit": json.dumps({"method": "crop"}), "payload": b"p" * 40,
            "payload_sha256": "0" * 64, "bits": [4.0] * 16, "profile": "balanced", "transform": None, "psnr": 20.0,
            "ms_ssim": None, "lpips": None, "recon_thumb": b"\0" * 192, "encoder_fingerprint": "e" * 64,
            "generator_fingerprint": "g" * 64, "codec_hash": "c" * 64, "settings_key": key,
            "encoded_at": pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py()})
    return pa.Table.from_pylist(rows, schema=images_schema())


def test_committed_exact_keys_in_one_pass(tmp_path, codecs) -> None:
    store = ArchiveStore.create(str(tmp_path / "a"), archive_settings(None, codecs[0]), codec=codecs[0])
    assert store.committed_exact_keys() == {"images": set(), "failures": set()}
    odd = "file:///src/caf\udce9.png"  # a name that is not UTF-8: compared exactly
    records = [store.write_shard(_image_rows(["file:///src/a.png", odd], "k1"), "images"),
               store.write_shard(_image_rows(["file:///src/b.png"], "k2"), "images"),
               store.write_shard(pa.Table.from_pylist([{
                   "source_uri": "file:///src/bad.png", "source_size": None, "source_sha256": None, "stage": "read",
                   "reason": "unreadable", "settings_key": "k1",
                   "failed_at": pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py()}], schema=failures_schema()),
                   "failures")]
    store.commit(records)
    assert sorted(os.listdir(tmp_path / "a" / "shards")) == sorted(r.name for r in records)  # no temp files
    keys = ArchiveStore.open(str(tmp_path / "a")).committed_exact_keys()
    assert keys["failures"] == {("file:///src/bad.png", None, "k1")}
    assert keys["images"] == {("file:///src/a.png", f"{0:064x}", "k1"), (odd, f"{1:064x}", "k1"),
                              ("file:///src/b.png", f"{0:064x}", "k2")}
    assert keys["images"] == exact_keys(store.read_table("images", columns=list(EXACT_KEY_COLUMNS)))


# -- compress opens a session (needs sg3archive.pipeline.compress to use it) -----------------------------
def compress_job(src: Path, dest: Path, **kw) -> CompressJob:
    return CompressJob.model_validate(dict(source=str(src), destination=str(dest), device="cpu", calibration_images=2,
                                           **kw))


@pytest.fixture(scope="module")
def small_sources(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sources")
    for part, names in (("one", ["texture_00.png", "texture_01.png"]), ("two", ["texture_02.png", "texture_03.png"])):
        (root / part).mkdir()
        for name in names:
            shutil.copy(SAMPLES / name, root / part / name)
    return root / "one", root / "two"


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_compress_refuses_another_encoder_at_open(tmp_path, small_sources, other_encoder) -> None:
    from sg3archive.cli import main
    from sg3archive.pipeline.compress import compress

    one, two = small_sources
    dest = tmp_path / "archive"
    compress(compress_job(one, dest), progress=False)
    before = _tree(dest)
    assert not any(p.startswith(PLANS_DIR) for p in before)  # the completed run removed its plans
    with pytest.raises(ArchiveMismatchError, match=r"encoder fingerprint .*--encoder"):
        compress(compress_job(two, dest, encoder=str(other_encoder)), progress=False)
    assert _tree(dest) == before  # nothing written: no shard, no plan, no manifest generation
    res = CliRunner().invoke(main, ["compress", str(two), str(dest), "--device", "cpu", "--encoder",
                                    str(other_encoder)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1 and "encoder fingerprint" in errors[0] and "--encoder" in errors[0], res.stderr
    assert _tree(dest) == before


def _compress_when_both_ready(src: str, dest: str, calibration: int, barrier) -> None:
    from sg3archive.pipeline.compress import compress

    job = CompressJob.model_validate(dict(source=src, destination=dest, device="cpu", calibration_images=calibration,
                                          **LATENT_ONLY))  # every row a payload: each is decoded below
    barrier.wait(timeout=300)
    compress(job, progress=False)


def test_two_compress_runs_creating_one_new_archive(tmp_path, small_sources) -> None:
    one, two = small_sources
    dest = tmp_path / "archive"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    # Different calibration sets: the two runs fit different codecs.
    procs = [ctx.Process(target=_compress_when_both_ready, args=(str(src), str(dest), n, barrier))
             for src, n in ((one, 1), (two, 2))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    named = archive_doc(dest)["codec"]
    assert [f"{CODEC_DIR}/{name}" for name in codec_entries(dest)] == [named]
    assert not any(name.startswith(TEMP_PREFIX) for name in codec_entries(dest))
    session = ArchiveSession.open(str(dest), device="cpu", need_models=False)
    table = session.store.read_table("images", columns=["source_uri", "payload", "codec_hash"])
    assert set(table.column("codec_hash").to_pylist()) == {session.codec.hash}
    decoded = session.codec.decompress(table.column("payload").to_pylist())
    assert decoded.shape == (table.num_rows, session.codec.num_ws, session.codec.w_dim)
    names = {uri.rsplit("/", 1)[-1] for uri in table.column("source_uri").to_pylist()}
    assert names == {"texture_00.png", "texture_01.png", "texture_02.png", "texture_03.png"}
