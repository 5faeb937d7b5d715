"""Prefect flow: the nightly quality audit of an archive (calls ``sg3archive.audit``).

Publishes a table, a markdown summary (verdict with its thresholds, the sampled rows' quality
summary — bytes per image, fidelity at the original size, representations, contract, AVIF
baseline —, problems, unverified sources, notes, a link to the report) and, when a report was written, a link artifact to it;
appends the audit record to the archive's history, and FAILS the flow run when the audit finds
problems.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from sg3archive.audit import Thresholds, audit_job, report_link, summary_markdown
from sg3archive.pipeline import AuditJob, make_job
from sg3archive.pipeline import resolve_job as resolve_job_of


class AuditFailed(Exception):
    """The audit found problems (listed in the message)."""


@task(name="audit-archive")
def audit_task(job: AuditJob) -> dict[str, Any]:
    run = audit_job(job)
    return dict(run.result.record(), history=run.history, report=run.report_url)


def resolve_job(job: AuditJob | None, manifest: str | None, values: dict[str, Any], sample_size: int,
                device: str) -> AuditJob:
    """The job a flow run audits: the ``manifest`` (its fields replaced by those ``job`` sets,
    then by ``values``), else ``job`` with ``values`` over it, else ``values`` with
    ``sample_size`` and ``device`` (which apply only then, as before jobs were typed)."""
    if manifest or job is not None:
        return resolve_job_of(AuditJob, job, manifest, values, caller="audit_flow")
    return make_job(AuditJob, dict(values, sample_size=sample_size, device=device))


@flow(name="audit", log_prints=True)
def audit_flow(archive: str | None = None, sample_size: int = 32, seed: int | None = None, network: str | None = None,
               encoder: str | None = None, report: str | None = None, thresholds: Thresholds | None = None,
               device: str = "auto", manifest: str | None = None, source_roots: list[str] | None = None,
               allow_http_sources: bool | None = None, job: AuditJob | None = None) -> dict[str, Any]:
    """Audit ``archive``, or per a typed ``job`` (AuditJob) or a YAML ``manifest``: given parameters
    override them (``sample_size`` and ``device`` only when neither is given). ``thresholds``
    holds the ``Thresholds`` fields (min_psnr, max_psnr_drop, min_ms_ssim, max_lpips, thumb_tolerance).
    Sources are read only under the archive's recorded source roots, or ``source_roots`` when
    given; http(s) sources only with ``allow_http_sources``. A damaged newest manifest generation
    or audit history record is a problem: it fails the run."""
    values = {k: v for k, v in dict(archive=archive, seed=seed, network=network, encoder=encoder, report=report,
                                    thresholds=thresholds.model_dump() if thresholds is not None else None,
                                    source_roots=source_roots, allow_http_sources=allow_http_sources).items()
              if v is not None}
    spec = resolve_job(job, manifest, values, sample_size, device)
    archive = spec.archive
    rec = audit_task(spec)
    m = rec["metrics"]
    sample = rec.get("sample_summary") or {}
    create_table_artifact(key="audit-summary", table=[{
        "archive": archive, "passed": rec["passed"], "problems": len(rec["problems"]), "sampled": rec["sampled"],
        "compared": rec["compared"], "unverified_sources": len(rec["unverified_sources"]),
        "mean_psnr": m["psnr"]["mean"], "mean_ms_ssim": m["ms_ssim"]["mean"],
        "max_thumb_diff": m["thumb_diff"]["max"], "bytes_per_image": sample.get("bytes_per_image"),
        "below_contract": sample.get("below_contract")}],
        description="nightly audit (PSNR and MS-SSIM at the original size; bytes per image of the sampled rows)")
    create_markdown_artifact(key="audit-report", markdown=summary_markdown(rec, rec["report"]),
                             description=f"audit {rec['verdict']}")
    link = report_link(rec["report"])
    if link:
        create_link_artifact(key="audit-report-html", link=link, link_text="HTML audit report",
                             description=f"audit of {archive}")
    print(f"audit {rec['verdict']}: {len(rec['problems'])} problems, "
          f"{len(rec['unverified_sources'])} sources not verified")
    if not rec["passed"]:
        raise AuditFailed(f"{len(rec['problems'])} problems, e.g. {rec['problems'][0]}")
    return rec
