"""Issue 12's audit: run_audit's named steps on a real archive, its frozen AuditReport, the
source comparison through images.load_fitted, the session-opened models (a damaged codec is a
compatibility problem, not an error), history records written whole, and the typed flow job."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sg3archive.audit import AuditReport, AuditResult, AuditRunReport, Thresholds, audit_and_record, run_audit
from sg3archive.audit.history import History, HistoryReport, append_record, load_history
from sg3archive.audit.sources import SourcePolicy, reachable_source, recorded_max_pixels
from sg3archive.images import DEFAULT_MAX_PIXELS, load_fitted
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import AuditJob, CompressJob
from sg3archive.store.archive import ArchiveStore

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit-steps")
    src = root / "src"
    src.mkdir()
    for p in sorted(SAMPLES.glob("texture_0[0-3].png")):
        shutil.copy(p, src / p.name)
    compress(CompressJob.model_validate({"source": str(src), "destination": str(root / "archive"), "device": "cpu",
                                         "shard_size": 2, "calibration_images": 4}), progress=False)
    return root / "archive"


@pytest.fixture()
def archive(pristine, tmp_path) -> Path:
    dest = tmp_path / "archive"
    shutil.copytree(pristine, dest)
    return dest


def _png(width: int, height: int, seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _row(path: Path, data: bytes, fit: str, root: Path) -> dict:
    return {"id": "img-1", "source_uri": path.as_uri(), "source_sha256": hashlib.sha256(data).hexdigest(), "fit": fit,
            "source_root": root.as_uri(), "source_uri_bytes": None}


# -- the source comparison: the same bytes -> tensor path as compress --------------------------
def test_reachable_source_is_what_load_fitted_makes(tmp_path) -> None:
    data = _png(40, 24)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    fitted = load_fitted(data, 16, "pad")
    source, unverified = reachable_source(_row(path, data, fitted.fit.to_json(), tmp_path), None, SourcePolicy())
    assert unverified is None and source is not None
    assert torch.equal(source, fitted.tensor)


def test_a_source_that_fits_otherwise_than_recorded_is_not_compared(tmp_path) -> None:
    data = _png(40, 24)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    other = load_fitted(_png(24, 40), 16, "crop").fit  # a record of another image's square
    source, unverified = reachable_source(_row(path, data, other.to_json(), tmp_path), None, SourcePolicy())
    assert source is None and unverified is not None
    assert unverified["kind"] == "unreadable" and "not as recorded at encode time" in unverified["reason"]


def test_the_pixel_limit_is_the_archives(tmp_path) -> None:
    data = _png(40, 24)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    row = _row(path, data, load_fitted(data, 16, "crop").fit.to_json(), tmp_path)
    source, unverified = reachable_source(row, None, SourcePolicy(max_pixels=40 * 24 - 1))
    assert source is None and unverified is not None and unverified["kind"] == "unreadable"
    assert "max_pixels" in unverified["reason"] or "limit" in unverified["reason"]
    assert recorded_max_pixels({"max_pixels": 40 * 24 - 1}) == 40 * 24 - 1
    assert recorded_max_pixels({}) == recorded_max_pixels({"max_pixels": True}) == DEFAULT_MAX_PIXELS


# -- run_audit: its steps on a real archive ---------------------------------------------------
def test_run_audit_returns_a_frozen_report(archive) -> None:
    report = run_audit(str(archive), sample_size=4, seed=3, device="cpu", lpips=False)
    assert isinstance(report, AuditReport) and report.passed, report.problems
    assert report.sampled == 4 and report.compared == 4 and report.shards_checked == 2
    assert isinstance(report.problems, tuple) and len(report.worst) == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.sampled = 0  # type: ignore[misc]
    again = run_audit(str(archive), sample_size=4, seed=3, device="cpu", lpips=False)
    keep = ("problems", "sampled", "compared", "metrics", "verdict", "quality")
    assert {k: again.record()[k] for k in keep} == {k: report.record()[k] for k in keep}


def test_collected_findings_freeze_into_the_same_record() -> None:
    found = AuditResult("/a", "2026-11-30T03:00:00+00:00", 1, 4, Thresholds.model_validate({"min_psnr": 30.0}))
    found.problems.append("integrity: x")
    found.sampled = 3
    report = found.report()
    assert isinstance(report, AuditReport) and report.record() == found.record()
    assert report.verdict().startswith("FAILED (thresholds: ") and not report.passed
    found.problems.clear()
    assert report.problems == ("integrity: x",)  # the report does not change with the collector


def test_a_damaged_codec_is_a_compatibility_problem(archive) -> None:
    codec_url = ArchiveStore.open(str(archive)).codec_url
    codec_dir = Path(codec_url.removeprefix("file://"))
    victim = next(p for p in sorted(codec_dir.rglob("*")) if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"tampered")
    report = run_audit(str(archive), sample_size=2, seed=1, device="cpu", lpips=False)
    assert not report.passed and report.sampled == 0  # nothing synthesized with a codec that is not the archive's
    assert any(p.startswith("compatibility: the archive's codec model does not load") for p in report.problems) \
        or any(p.startswith("compatibility: codec model fingerprint") for p in report.problems), report.problems
    assert report.shards_checked == 2  # integrity was still checked


def test_history_records_are_written_whole(archive) -> None:
    report = run_audit(str(archive), sample_size=0, seed=1, device="cpu", lpips=False)
    url = append_record(report)
    folder = archive / "_audit"
    assert [p.name for p in folder.iterdir()] == [url.rsplit("/", 1)[-1]]  # no temporary sibling left
    history = load_history(str(archive))
    assert isinstance(history, HistoryReport) and History is HistoryReport
    assert len(history.rows) == 1 and history.rows[0]["checksum"] == "verified" and history.problems == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        history.rows = ()  # type: ignore[misc]


def test_audit_and_record_is_a_named_report_that_unpacks(archive, tmp_path) -> None:
    run = audit_and_record(str(archive), sample_size=2, seed=1, device="cpu", lpips=False,
                           report=str(tmp_path / "r.html"))
    assert isinstance(run, AuditRunReport) and run.result.passed
    result, history, report_url = run
    assert result is run.result and history == run.history and report_url == run.report_url
    assert Path(report_url).read_text().count('id="summary"') == 1


# -- the flow takes a typed job ---------------------------------------------------------------
def test_flow_parameters_are_typed() -> None:
    from flows.audit import audit_flow, resolve_job

    params = audit_flow.validate_parameters({"job": {"archive": "/a", "sample_size": 5},
                                             "thresholds": {"min_psnr": 30}})
    assert isinstance(params["job"], AuditJob) and isinstance(params["thresholds"], Thresholds)
    job = resolve_job(params["job"], None, {"seed": 7, "thresholds": params["thresholds"].model_dump()}, 32, "auto")
    assert (job.archive, job.sample_size, job.seed, job.thresholds.min_psnr) == ("/a", 5, 7, 30.0)
    plain = resolve_job(None, None, {"archive": "/a"}, 3, "cpu")
    assert (plain.sample_size, plain.device) == (3, "cpu")


def test_flow_audits_a_typed_job(prefect_harness, archive) -> None:
    from flows.audit import audit_flow

    job = AuditJob.model_validate({"archive": str(archive), "sample_size": 2, "seed": 1, "device": "cpu",
                                   "lpips": False})
    state = audit_flow(job=job, return_state=True)
    assert state.is_completed(), state
    rec = state.result()
    assert rec["passed"] and rec["sampled"] == 2 and rec["seed"] == 1 and rec["history"].endswith(".parquet")
