"""Run an audit and keep its results: the history row in the archive and the HTML report."""

from __future__ import annotations

from pathlib import Path

import fsspec

from sg3archive.audit.checks import AuditResult, Thresholds, run_audit
from sg3archive.audit.history import append_record, read_history
from sg3archive.audit.report import render_report


def audit_and_record(archive: str, *, report: str | None = None, thresholds: Thresholds | None = None,
                     storage_options: dict | None = None, **kwargs) -> tuple[AuditResult, str, str | None]:
    """``(result, history file URL, report URL or None)``; ``kwargs`` go to :func:`run_audit`."""
    result = run_audit(archive, thresholds=thresholds, storage_options=storage_options, **kwargs)
    history_url = append_record(result, storage_options)
    report_url = None
    if report:
        page = render_report(result, read_history(archive, storage_options))
        with fsspec.open(str(report), "w", encoding="utf-8") as f:
            f.write(page)
        report_url = str(Path(report).resolve()) if "://" not in str(report) else str(report)
    return result, history_url, report_url


def audit_job(job) -> tuple[AuditResult, str, str | None]:
    """Run an :class:`~sg3archive.pipeline.jobs.AuditJob` (a manifest, the CLI or the flow)."""
    return audit_and_record(
        job.archive, report=job.report, thresholds=Thresholds(**job.thresholds.model_dump()),
        storage_options=job.storage_options or None, sample_size=job.sample_size, seed=job.seed,
        network=job.network, encoder=job.encoder, device=job.device, lpips=job.lpips,
        source_storage_options=job.source_storage_options or None)
