"""The archive audit: integrity, compatibility, determinism, quality; history and HTML report.

Modules: :mod:`~sg3archive.audit.checks` (the audit's steps and its findings),
:mod:`~sg3archive.audit.sources` (which sources may be read, and reading them),
:mod:`~sg3archive.audit.thresholds` (when an audit fails), :mod:`~sg3archive.audit.history`
(the records under ``_audit/``), :mod:`~sg3archive.audit.report` (the HTML report) and
:mod:`~sg3archive.audit.record` (run, record, summarize: what the CLI and the flow call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sg3archive.lazy import lazy_exports

__all__ = [
    "QUALITY_THRESHOLDS", "THRESHOLD_TEXT", "AuditFindings", "AuditReport", "AuditResult", "AuditRunReport",
    "Thresholds", "audit_and_record", "audit_job", "nightly_seed", "report_link", "run_audit", "summary_lines",
    "summary_markdown",
]
_EXPORTS = {
    **dict.fromkeys(["AuditFindings", "AuditReport", "AuditResult", "nightly_seed", "run_audit"], ".checks"),
    **dict.fromkeys(["AuditRunReport", "audit_and_record", "audit_job", "report_link", "summary_lines",
                     "summary_markdown"], ".record"),
    **dict.fromkeys(["Thresholds", "THRESHOLD_TEXT", "QUALITY_THRESHOLDS"], ".thresholds"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from sg3archive.audit.checks import AuditFindings, AuditReport, AuditResult, nightly_seed, run_audit
    from sg3archive.audit.record import (
        AuditRunReport,
        audit_and_record,
        audit_job,
        report_link,
        summary_lines,
        summary_markdown,
    )
    from sg3archive.audit.thresholds import QUALITY_THRESHOLDS, THRESHOLD_TEXT, Thresholds
