"""The archive audit: integrity, compatibility, determinism, quality; history and HTML report."""

from sg3archive.audit.checks import AuditResult, Thresholds, nightly_seed, run_audit

__all__ = ["AuditResult", "Thresholds", "nightly_seed", "run_audit"]
