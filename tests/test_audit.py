"""The audit on a real archive made with the bundled pack: an untouched archive passes; each
kind of tampering is reported precisely and fails it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

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
    shutil.copytree(SAMPLES, src)
    compress(CompressJob(source=str(src), destination=str(root / "archive"), device="cpu", shard_size=4,
                         calibration_images=4), progress=False)
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
    store = ArchiveStore.open(str(archive))
    shard = store.shards("images")[0].name
    path = archive / "shards" / shard
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = run_audit(str(archive), sample_size=4, seed=1, device="cpu")
    assert not result.passed
    assert any(p.startswith(f"integrity: shard {shard}") and "sha256" in p for p in result.problems), result.problems


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
    assert json.loads(res.output)["passed"] is True
    (archive / "shards" / ArchiveStore.open(str(archive)).shards("images")[0].name).unlink()
    res = CliRunner().invoke(main, ["audit", str(archive), "--sample", "3", "--device", "cpu"])
    assert res.exit_code == 1 and "FAILED" in res.output and "integrity" in res.output


def test_audit_flow_fails_the_run_on_problems(prefect_harness, archive, tmp_path) -> None:
    from flows.audit import audit_flow

    state = audit_flow(archive=str(archive), sample_size=3, device="cpu", report=str(tmp_path / "r.html"),
                       return_state=True)
    assert state.is_completed(), state
    assert state.result()["passed"] and Path(state.result()["report"]).exists()
    (archive / "shards" / ArchiveStore.open(str(archive)).shards("images")[0].name).unlink()
    state = audit_flow(archive=str(archive), sample_size=3, device="cpu", return_state=True)
    assert state.is_failed()
    assert len(read_history(str(archive))) == 2


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
    assert rec["notes"] and rec["notes"][0].startswith("LPIPS not measured")
