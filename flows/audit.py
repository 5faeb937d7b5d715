"""Prefect flow: the nightly quality audit of an archive (calls ``sg3archive.audit``).

Publishes a table, a markdown summary (verdict with its thresholds, problems, unverified
sources, notes, a link to the report) and, when a report was written, a link artifact to it;
appends the audit record to the archive's history, and FAILS the flow run when the audit finds
problems.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from sg3archive.audit.record import audit_job, report_link, summary_markdown
from sg3archive.pipeline.jobs import AuditJob, load_job, make_job


class AuditFailed(Exception):
    """The audit found problems (listed in the message)."""


@task(name="audit-archive")
def audit_task(job: dict[str, Any]) -> dict[str, Any]:
    result, history, report_url = audit_job(AuditJob(**job))
    return dict(result.record(), history=history, report=report_url)


@flow(name="audit", log_prints=True)
def audit_flow(archive: str | None = None, sample_size: int = 32, seed: int | None = None, network: str | None = None,
               encoder: str | None = None, report: str | None = None, thresholds: dict | None = None,
               device: str = "auto", manifest: str | None = None, source_roots: list[str] | None = None,
               allow_http_sources: bool | None = None) -> dict[str, Any]:
    """Audit ``archive`` (or per a YAML ``manifest``; given parameters override it); ``thresholds``
    holds ``AuditThresholds`` fields (min_psnr, max_psnr_drop, min_ms_ssim, max_lpips, thumb_tolerance).
    Sources are read only under the archive's recorded source roots, or ``source_roots`` when
    given; http(s) sources only with ``allow_http_sources``. A damaged newest manifest generation
    or audit history record is a problem: it fails the run."""
    values = {k: v for k, v in dict(archive=archive, seed=seed, network=network, encoder=encoder, report=report,
                                    thresholds=thresholds, source_roots=source_roots,
                                    allow_http_sources=allow_http_sources).items() if v is not None}
    if manifest:
        job = load_job(manifest, AuditJob, **values)
    else:
        job = make_job(AuditJob, dict(values, sample_size=sample_size, device=device))
    archive = job.archive
    rec = audit_task(job.model_dump())
    m = rec["metrics"]
    create_table_artifact(key="audit-summary", table=[{
        "archive": archive, "passed": rec["passed"], "problems": len(rec["problems"]), "sampled": rec["sampled"],
        "compared": rec["compared"], "unverified_sources": len(rec["unverified_sources"]),
        "mean_psnr": m["psnr"]["mean"], "mean_ms_ssim": m["ms_ssim"]["mean"],
        "max_thumb_diff": m["thumb_diff"]["max"]}], description="nightly audit")
    create_markdown_artifact(key="audit-report", markdown=summary_markdown(rec, rec["report"]),
                             description=f"audit {rec['verdict']}")
    if rec["report"]:
        create_link_artifact(key="audit-report-html", link=report_link(rec["report"]), link_text="HTML audit report",
                             description=f"audit of {archive}")
    print(f"audit {rec['verdict']}: {len(rec['problems'])} problems, "
          f"{len(rec['unverified_sources'])} sources not verified")
    if not rec["passed"]:
        raise AuditFailed(f"{len(rec['problems'])} problems, e.g. {rec['problems'][0]}")
    return rec
