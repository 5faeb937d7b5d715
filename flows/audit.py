"""Prefect flow: the nightly quality audit of an archive (calls ``sg3archive.audit``).

Publishes a table and a markdown artifact, writes the HTML report when asked, appends the
audit record to the archive's history, and FAILS the flow run when the audit finds problems.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sg3archive.audit import Thresholds
from sg3archive.audit.record import audit_and_record


class AuditFailed(Exception):
    """The audit found problems (listed in the message)."""


@task(name="audit-archive")
def audit_task(archive: str, sample_size: int, seed: int | None, network: str | None, encoder: str | None,
               report: str | None, thresholds: dict[str, Any] | None, device: str) -> dict[str, Any]:
    result, history, report_url = audit_and_record(
        archive, sample_size=sample_size, seed=seed, network=network, encoder=encoder, device=device,
        report=report, thresholds=Thresholds(**(thresholds or {})))
    return dict(result.record(), history=history, report=report_url)


@flow(name="audit", log_prints=True)
def audit_flow(archive: str, sample_size: int = 32, seed: int | None = None, network: str | None = None,
               encoder: str | None = None, report: str | None = None, thresholds: dict | None = None,
               device: str = "auto") -> dict[str, Any]:
    """Audit ``archive``; ``thresholds`` holds ``Thresholds`` fields (min_psnr, max_psnr_drop, ...)."""
    rec = audit_task(archive, sample_size, seed, network, encoder, report, thresholds, device)
    m = rec["metrics"]
    create_table_artifact(key="audit-summary", table=[{
        "archive": archive, "passed": rec["passed"], "problems": len(rec["problems"]), "sampled": rec["sampled"],
        "compared": rec["compared"], "mean_psnr": m["psnr"]["mean"], "mean_ms_ssim": m["ms_ssim"]["mean"],
        "max_thumb_diff": m["thumb_diff"]["max"]}], description="nightly audit")
    lines = "\n".join(f"- {p}" for p in rec["problems"][:50]) or "- none"
    create_markdown_artifact(key="audit-report", markdown=(
        f"# Audit {'passed' if rec['passed'] else 'FAILED'}\n\n{archive}: {rec['sampled']} rows sampled, "
        f"{rec['compared']} compared with their sources.\n\n## Problems\n{lines}\n\nReport: {rec['report']}\n"))
    print(f"audit {'passed' if rec['passed'] else 'FAILED'}: {len(rec['problems'])} problems")
    if not rec["passed"]:
        raise AuditFailed(f"{len(rec['problems'])} problems, e.g. {rec['problems'][0]}")
    return rec
