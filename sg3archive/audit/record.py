"""Run an audit and keep its results: the history row in the archive and the HTML report."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

from sg3archive.audit.checks import UNVERIFIED_POLICY, AuditReport, Thresholds, run_audit
from sg3archive.audit.history import append_record, load_history
from sg3archive.audit.report import render_report
from sg3archive.text import printable

if TYPE_CHECKING:
    from sg3archive.pipeline.jobs import AuditJob


@dataclass(frozen=True)
class AuditRunReport:
    """One recorded audit: ``result`` (what it found), ``history`` (the URL of its history
    record) and ``report_url`` (the HTML report, or None). Unpacks as the tuple
    ``(result, history, report_url)`` that callers used before it had a name."""

    result: AuditReport
    history: str
    report_url: str | None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.result, self.history, self.report_url))


def audit_and_record(archive: str, *, report: str | None = None, thresholds: Thresholds | None = None,
                     storage_options: dict | None = None, **kwargs: Any) -> AuditRunReport:
    """Audit, append the record to the archive's history and write the HTML report (when
    ``report`` is given); ``kwargs`` go to :func:`run_audit`."""
    result = run_audit(archive, thresholds=thresholds, storage_options=storage_options, **kwargs)
    history_url = append_record(result, storage_options)
    report_url = None
    if report:
        page = render_report(result, list(load_history(archive, storage_options).rows))  # damaged: in problems
        with fsspec.open(str(report), "w", encoding="utf-8") as f:
            f.write(page)
        report_url = str(Path(report).resolve()) if "://" not in str(report) else str(report)
    return AuditRunReport(result, history_url, report_url)


def audit_job(job: AuditJob, progress: bool = False) -> AuditRunReport:
    """Run an :class:`~sg3archive.pipeline.jobs.AuditJob` (a manifest, the CLI or the flow);
    ``progress`` shows tqdm bars on stderr."""
    return audit_and_record(
        job.archive, report=job.report, thresholds=job.thresholds,
        storage_options=job.storage_options or None, sample_size=job.sample_size, seed=job.seed,
        network=job.network, encoder=job.encoder, device=job.device, lpips=job.lpips,
        source_storage_options=job.source_storage_options or None, progress=progress,
        source_roots=list(job.source_roots) or None, allow_http_sources=job.allow_http_sources)


def summary_lines(rec: dict, report_url: str | None = None, limit: int = 10) -> list[str]:
    """The audit record (:meth:`AuditReport.record`) as text: the verdict with its thresholds, the
    absolute quality, what was checked, the sampled rows as recorded (bytes, fidelity at the
    original size, representations, contract, AVIF baseline), every problem, up to ``limit`` unverified sources (then
    "… and K more"), the notes (in full: they say what to do) and where the report is."""
    lines = [f"audit {rec['verdict']}", f"  quality: {rec['quality']}",
             f"  checked: {rec['shards_checked']} shards verified, {rec['sampled']} rows sampled, {rec['compared']} "
             f"compared with their sources, {len(rec['orphans'])} uncommitted shard files, {rec['seconds']:.1f} s"]
    lines += [f"  sampled rows: {line}" for line in rec.get("sample_summary_lines", [])]
    problems = rec["problems"]
    lines.append(f"  problems ({len(problems)}):" if problems else "  problems: none")
    lines += [f"    {printable(p)}" for p in problems]  # problems quote names from the archive
    unverified = rec["unverified_sources"]
    if unverified:
        lines.append(f"  sources not verified ({len(unverified)}; their quality was not measured; "
                     "not archive damage, so not a failure):")
        lines += [f"    {printable(u['id'])}: {printable(u['reason'])}" for u in unverified[:limit]]
        if len(unverified) > limit:
            lines.append(f"    … and {len(unverified) - limit} more (all in --json and the HTML report)")
    for note in rec["notes"]:
        first, *rest = note.splitlines()
        lines += [f"  note: {first}"] + [f"        {line}" for line in rest]
    lines.append(f"report: {report_url}" if report_url else "report: none (pass --report FILE.html to write one)")
    return lines


def report_link(report_url: str | None) -> str | None:
    """A URL for the report: ``file://`` for a local path, the fsspec URL otherwise."""
    if not report_url:
        return None
    return report_url if "://" in report_url else Path(report_url).resolve().as_uri()


NO_REPORT = "no HTML report (pass report=… to write one)"


def summary_markdown(rec: dict, report_url: str | None = None, limit: int = 20) -> str:
    """The audit record as Markdown (the flow's artifact): verdict and thresholds, quality, the
    sampled rows as recorded, every problem (up to 50), up to ``limit`` unverified sources, notes, and a link to the report."""
    head, _, against = rec["verdict"].partition(" (")
    link = report_link(report_url)
    lines = [f"# Audit {head}", "", f"{head} against the {against.rstrip(')')}.", "",
             f"Quality: {rec['quality']}.", "",
             f"`{rec['archive']}`: {rec['shards_checked']} shards verified, {rec['sampled']} rows sampled, "
             f"{rec['compared']} compared with their sources.", "",
             *[f"- sampled rows: {line}" for line in rec.get("sample_summary_lines", [])],
             *([""] if rec.get("sample_summary_lines") else []),
             f"Report: [{report_url}]({link})" if link else f"Report: {NO_REPORT}.", "",
             f"## Problems ({len(rec['problems'])})"]
    lines += [f"- {p}" for p in rec["problems"][:50]] or ["- none"]
    if len(rec["problems"]) > 50:
        lines.append(f"- … and {len(rec['problems']) - 50} more")
    unverified = rec["unverified_sources"]
    if unverified:
        lines += ["", f"## Sources not verified ({len(unverified)})", "", f"These are {UNVERIFIED_POLICY}.", ""]
        lines += [f"- `{u['id']}`: {u['reason']}" for u in unverified[:limit]]
        if len(unverified) > limit:
            lines.append(f"- … and {len(unverified) - limit} more (listed in the audit record and the HTML report)")
    if rec["notes"]:
        lines += ["", "## Notes", ""] + [f"```\n{n}\n```" for n in rec["notes"]]
    return "\n".join(lines) + "\n"
