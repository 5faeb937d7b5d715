"""Prefect flow: restore images from an archive — plan once (selection and names, from the id
and name columns), then one task per shard that has selected rows. Rows that cannot be restored,
and shards the store refuses to read, are listed in the report artifact and the run ends failed
(``RestoreIncompleteError``) after the others are written. Text from the archive (names, reasons)
is printed and reported with control characters escaped (``sg3archive.text.printable``).

The flow's ``job`` parameter is a :class:`RestoreJob`: Prefect renders its form and refuses a bad
value before any work. Each task receives that job (its ``shard`` set) and its shard's part of
the plan, and returns that shard's :class:`RestoreReport`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from sg3archive import printable
from sg3archive.pipeline import (
    BadRow,
    RestoreIncompleteError,
    RestoreJob,
    RestorePlan,
    RestoreReport,
    incomplete_cause,
    incomplete_text,
    not_restored_text,
    plan_restore,
    resolve_job,
    restore_images,
)


@task(name="restore-shard", retries=1, retry_delay_seconds=5)
def restore_shard_task(job: RestoreJob, plan: RestorePlan) -> RestoreReport:
    """Restore one shard's selected rows (``job.shard``) under the names the flow's plan gave
    them; the report leaves out the list of files written (it grows with the shard)."""
    return replace(restore_images(job, progress=False, plan=plan), files=())


def _cell(text: str) -> str:
    """Archive text as one markdown table cell (escaped, no column break)."""
    return printable(text).replace("|", "\\|")


def _report(text: str, bad: list[BadRow], warnings: list[str]) -> str:
    """The run's markdown report: the counts, the archive's warnings, every row (or refused
    shard) not restored."""
    lines = ["# Restore", "", text, ""]
    lines += [f"- warning: {printable(w)}" for w in warnings]
    if bad:
        lines += ["", "## Not restored", "", "| id | name | reason |", "|---|---|---|"]
        lines += [f"| {_cell(b.id)} | {_cell(b.name)} | {_cell(b.reason)} |" for b in bad]
    return "\n".join(lines) + "\n"


def restore_job(job: RestoreJob | None, manifest: str | None, overrides: dict[str, Any] | None) -> RestoreJob:
    """The job a run does (:func:`sg3archive.pipeline.resolve_job`)."""
    return resolve_job(RestoreJob, job, manifest, overrides, caller="restore_flow")


@flow(name="restore", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]
def restore_flow(job: RestoreJob | None = None, manifest: str | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restore per ``job`` and/or a YAML ``manifest`` (``overrides``: fields over either).

    Raises:
        RestoreIncompleteError: some rows could not be restored (after the others were).
    """
    spec = restore_job(job, manifest, overrides)
    plan = plan_restore(spec)  # raises on a selection that matches nothing
    shards = list(plan.shards)
    futures = [restore_shard_task.submit(spec.model_copy(update={"shard": s}), plan.for_shard(s)) for s in shards]
    results: list[RestoreReport] = [f.result() for f in futures]
    written, skipped = sum(r.written for r in results), sum(r.skipped for r in results)
    bad = plan.refused_shard_rows() + [b for r in results for b in r.bad]
    warnings = list(dict.fromkeys(w for r in results for w in r.warnings))
    text = printable(f"{written} images restored to {spec.destination} from {len(shards)} shards, "
                     f"{skipped} already there{not_restored_text(bad)}")
    create_markdown_artifact(key="restore-report", markdown=_report(text, bad, warnings))
    for w in warnings:
        print(f"warning: {printable(w)}")
    print(text)
    for b in bad:
        print(f"not restored: {b.text()}")
    if bad:
        raise RestoreIncompleteError(f"{incomplete_text(bad)} (listed in the restore-report artifact; "
                                     f"the others were restored): {incomplete_cause(bad)}")
    return {"written": written, "skipped": skipped, "shards": len(shards)}
