"""The audit on a real archive made with the bundled pack: an untouched archive passes; each
kind of tampering is reported precisely and fails it; sources that went missing or changed are
listed by image id with the reason, without failing it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from small_archives import LATENT_ONLY

from sg3archive.assets import default_encoder_url, default_network_url
from sg3archive.audit import Thresholds, run_audit
from sg3archive.audit.accumulators import Stats, WorstN
from sg3archive.audit.history import read_history
from sg3archive.audit.record import audit_and_record
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.store.archive import ArchiveStore

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("audit")
    src = root / "src"
    shutil.copytree(SAMPLES, src, ignore=shutil.ignore_patterns("photos"))  # the latent-sized samples
    compress(CompressJob(source=str(src), destination=str(root / "archive"), device="cpu", shard_size=4,
                         calibration_images=4, **LATENT_ONLY), progress=False)
    return src, root / "archive"


@pytest.fixture()
def archive(pristine, tmp_path) -> Path:
    """A private copy of the archive for a test to tamper with (sources stay where they were)."""
    dest = tmp_path / "archive"
    shutil.copytree(pristine[1], dest)
    return dest


def test_untouched_archive_passes_and_records_history(archive, tmp_path) -> None:
    result, history, report = audit_and_record(str(archive), sample_size=10, seed=1, device="cpu",
                                               report=str(tmp_path / "report.html"))
    assert result.passed, result.problems
    assert result.sampled == 10 and result.compared == 10 and result.shards_checked == 3
    assert result.stats["thumb_diff"].max <= 2 and abs(result.stats["psnr_drop"].mean) < 0.01
    assert len(read_history(str(archive))) == 1 and history.endswith(".parquet")
    page = Path(report).read_text()
    for section in ('id="summary"', 'id="thresholds"', 'id="problems"', 'id="worst"', 'id="distributions"', 'id="trend"'):
        assert section in page
    assert page.count("data:image/png;base64,") == 3 * 8  # worst 8: original | restored | difference


def test_flipped_byte_in_a_shard_is_reported(archive) -> None:
    import hashlib

    store = ArchiveStore.open(str(archive))
    record = store.shards("images")[0]
    path = archive / "shards" / record.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = run_audit(str(archive), sample_size=4, seed=1, device="cpu")
    assert not result.passed
    expected = (f"integrity: shard {record.name}: sha256 mismatch: expected {record.sha256} "
                f"found {hashlib.sha256(bytes(data)).hexdigest()}")
    assert expected in result.problems, result.problems
    assert all(p.count(record.name) == 1 for p in result.problems)  # the shard is named once
    assert result.verdict().startswith("FAILED (thresholds: ")


def test_deleted_shard_is_reported(archive) -> None:
    shard = ArchiveStore.open(str(archive)).shards("images")[1].name
    (archive / "shards" / shard).unlink()
    result = run_audit(str(archive), sample_size=4, seed=1, device="cpu")
    assert not result.passed
    assert any(shard in p and "missing" in p.lower() for p in result.problems), result.problems


def test_swapped_encoder_is_reported(archive, tmp_path, sg3_reference_dir) -> None:
    other = tmp_path / "encoder"
    shutil.copytree(default_encoder_url(), other)
    weights = other / "encoder.safetensors"
    state = safetensors.torch.load_file(str(weights))
    key = sorted(state)[0]
    state[key] = state[key] + 0.01  # another encoder for the same generator, with its own fingerprint
    from sg3archive.checkpoints.encoder_file import load_encoder, save_encoder
    from sg3archive.checkpoints.loader import load_network

    G = load_network(default_network_url())
    enc = load_encoder(default_encoder_url(), generator=G)
    enc.load_state_dict(state)
    save_encoder(enc, str(other), generator_fingerprint=G.fingerprint)
    result = run_audit(str(archive), sample_size=4, seed=1, device="cpu", encoder=str(other))
    assert not result.passed
    assert any(p.startswith("compatibility: encoder fingerprint") for p in result.problems), result.problems


def test_changed_generator_weight_is_reported(archive, tmp_path) -> None:
    net = tmp_path / "net"
    shutil.copytree(default_network_url(), net)
    weights = next(net.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0x10  # one byte of the last weight
    weights.write_bytes(bytes(data))
    result = run_audit(str(archive), sample_size=4, seed=1, device="cpu", network=str(net))
    assert not result.passed
    assert any(p.startswith("compatibility: the generator/encoder do not load") and "fingerprint" in p
               for p in result.problems), result.problems


def test_changed_source_quality_threshold_and_stratified_sample(archive, pristine) -> None:
    result = run_audit(str(archive), sample_size=5, seed=7, device="cpu",
                       thresholds=Thresholds(min_psnr=80.0))
    assert not result.passed and all(p.startswith("quality:") for p in result.problems)
    assert result.sampled == 5
    again = run_audit(str(archive), sample_size=5, seed=7, device="cpu")
    assert again.passed and again.sampled == 5


def test_missing_and_changed_sources_are_listed_by_id(archive, pristine) -> None:
    """A source deleted or edited since encoding is listed (id, URI, reason) in the CLI text and
    the audit record; it is not archive damage, so the audit still passes."""
    from click.testing import CliRunner

    from sg3archive.cli import main

    src = pristine[0]
    ids = dict(zip(*(ArchiveStore.open(str(archive)).read_table("images", columns=["source_uri", "id"])
                     .column(c).to_pylist() for c in ("source_uri", "id"))))
    gone, edited = src / "texture_01.png", src / "texture_02.png"
    gone_uri, edited_uri = (next(u for u in ids if u.endswith(f"/{p.name}")) for p in (gone, edited))
    kept, original = gone.read_bytes(), edited.read_bytes()
    gone.unlink()
    edited.write_bytes(original + b"edited")
    try:
        res = CliRunner().invoke(main, ["audit", str(archive), "--sample", "10", "--seed", "3", "--device", "cpu"])
    finally:
        gone.write_bytes(kept)
        edited.write_bytes(original)
    assert res.exit_code == 0, (res.output, res.exception)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("audit PASSED (thresholds: PSNR drop ≤ 0.5 dB vs encode time, "
                               "thumbnail difference ≤ 2 levels; not checked: min PSNR, min MS-SSIM"), lines
    assert lines[1].startswith("  quality: mean PSNR ") and "over 8 images compared" in lines[1]
    assert "  sources not verified (2; their quality was not measured; not archive damage, so not a failure):" in lines
    assert f"    {ids[gone_uri]}: source missing: {gone_uri}" in lines
    changed = (f"    {ids[edited_uri]}: source changed: {edited_uri}: sha256 expected "
               f"{_sha256(original)} found {_sha256(original + b'edited')}")
    assert changed in lines, lines
    assert "audit: rows" in res.stderr and "10/10" in res.stderr  # the progress bar, on stderr only
    assert "audit: rows" not in res.stdout
    rec = json.loads(_history_records(archive)[-1])
    assert rec["compared"] == 8 and rec["passed"]
    assert sorted((u["id"], u["kind"]) for u in rec["unverified_sources"]) == sorted(
        [(ids[gone_uri], "missing"), (ids[edited_uri], "changed")])
    assert {u["uri"] for u in rec["unverified_sources"]} == {gone_uri, edited_uri}


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _history_records(archive: Path) -> list[str]:
    """The full audit records (JSON) kept in the archive's history, oldest first."""
    import pyarrow.parquet as pq

    return [pq.read_table(p).column("record")[0].as_py() for p in sorted((archive / "_audit").glob("*.parquet"))]


def test_accumulators_are_mergeable_and_bounded() -> None:
    a, b, whole = Stats(0, 10), Stats(0, 10), Stats(0, 10)
    xs = [float(x) for x in torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 10]
    for i, x in enumerate(xs):
        (a if i % 2 else b).add(x)
        whole.add(x)
    a.merge(b)
    assert a.n == whole.n and abs(a.mean - whole.mean) < 1e-9 and abs(a.std - whole.std) < 1e-9
    assert a.hist == whole.hist and a.min == whole.min and a.max == whole.max
    worst = WorstN(3)
    for i, x in enumerate(xs):
        worst.add(x, i)
    assert [s for s, _ in worst.items()] == sorted(xs)[:3]


def test_cli_audit_exit_status(archive) -> None:
    from click.testing import CliRunner

    from sg3archive.cli import main

    res = CliRunner().invoke(main, ["audit", str(archive), "--sample", "3", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)  # stdout alone: --json output is JSON and nothing else
    assert rec["passed"] is True and rec["unverified_sources"] == []
    assert rec["verdict"].startswith("PASSED (thresholds:")
    assert "audit: rows" not in res.stderr  # no progress bar with --json
    shard = ArchiveStore.open(str(archive)).shards("images")[0].name
    (archive / "shards" / shard).unlink()
    res = CliRunner().invoke(main, ["audit", str(archive), "--sample", "3", "--device", "cpu"])
    assert res.exit_code == 1 and "integrity" in res.stdout
    assert res.stdout.startswith("audit FAILED (thresholds: PSNR drop ≤ 0.5 dB vs encode time, thumbnail difference "
                                 "≤ 2 levels; not checked: min PSNR, min MS-SSIM, max LPIPS)\n"), res.stdout
    assert f"    integrity: shard {shard}: file missing (looked for it in " in res.stdout
    assert "report: none (pass --report FILE.html to write one)" in res.stdout


def test_audit_flow_fails_the_run_on_problems(prefect_harness, archive, tmp_path) -> None:
    from prefect.artifacts import Artifact

    from flows.audit import audit_flow

    state = audit_flow(archive=str(archive), sample_size=3, device="cpu", report=str(tmp_path / "r.html"),
                       return_state=True)
    assert state.is_completed(), state
    assert state.result()["passed"] and Path(state.result()["report"]).exists()
    link = (tmp_path / "r.html").resolve().as_uri()
    summary = Artifact.get("audit-report").data
    assert summary.startswith("# Audit PASSED\n\nPASSED against the thresholds: PSNR drop ≤ 0.5 dB")
    assert "None" not in summary
    assert f"]({link})" in summary and f"({link})" in Artifact.get("audit-report-html").data
    (archive / "shards" / ArchiveStore.open(str(archive)).shards("images")[0].name).unlink()
    state = audit_flow(archive=str(archive), sample_size=3, device="cpu", return_state=True)
    assert state.is_failed()
    assert len(read_history(str(archive))) == 2
    summary = Artifact.get("audit-report").data
    assert summary.startswith("# Audit FAILED") and "Report: no HTML report (pass report=… to write one)." in summary


def test_audit_manifest_with_lpips_threshold(archive, tmp_path, lpips_weights_dir, monkeypatch) -> None:
    from click.testing import CliRunner

    from sg3archive.cli import main

    monkeypatch.setenv("SG3ARCHIVE_LPIPS_WEIGHTS", str(lpips_weights_dir))
    manifest = tmp_path / "audit.yaml"
    manifest.write_text(f"archive: {archive}\nsample_size: 3\nseed: 5\ndevice: cpu\n"
                        "thresholds:\n  max_lpips: 0.0001\n  max_psnr_drop: 0.5\n")
    res = CliRunner().invoke(main, ["audit", "--manifest", str(manifest), "--json"])
    assert res.exit_code == 1, res.output
    rec = json.loads(res.stdout)
    assert rec["metrics"]["lpips"]["n"] == 3 and rec["thresholds"]["max_lpips"] == 0.0001
    assert all(p.startswith("quality:") and "LPIPS" in p for p in rec["problems"]) and len(rec["problems"]) == 3
    monkeypatch.setenv("SG3ARCHIVE_LPIPS_WEIGHTS", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SG3ARCHIVE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    import torch.hub

    def offline(url, *a, **k):
        raise OSError(f"offline test: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    res = CliRunner().invoke(main, ["audit", "--manifest", str(manifest), "--json"])
    assert res.stdout.strip(), (res.output, res.exception)
    rec = json.loads(res.stdout)
    assert res.exit_code == 0 and rec["metrics"]["lpips"]["n"] == 0
    assert rec["notes"] and rec["notes"][0].startswith("LPIPS not measured (so max LPIPS is not checked): ")
    assert "sg3archive lpips-weights --fetch" in rec["notes"][0]  # the remedy, not cut off
    assert "max LPIPS (LPIPS not measured)" in rec["verdict"]
