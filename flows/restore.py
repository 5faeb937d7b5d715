"""Prefect flow: restore images from an archive — plan once (selection and names, from the id
and name columns), then one task per shard that has selected rows. Rows that cannot be restored,
and shards the store refuses to read, are listed in the report artifact and the run ends failed
(``RestoreIncompleteError``) after the others are written. Text from the archive (names, reasons)
is printed and reported with control characters escaped (``sg3archive.text.printable``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from sg3archive.pipeline.jobs import RestoreJob, load_job, make_job
from sg3archive.pipeline.restore import (
    BadRow,
    RestoreIncompleteError,
    RestorePlan,
    incomplete_cause,
    incomplete_text,
    not_restored_text,
    plan_restore,
    restore,
)
from sg3archive.store.archive import ArchiveStore
from sg3archive.text import printable


@task(name="restore-shard", retries=1, retry_delay_seconds=5)
def restore_shard_task(job: dict[str, Any], shard: str, plan: RestorePlan) -> dict[str, Any]:
    """Restore one shard's selected rows under the names the flow's plan gave them."""
    summary = restore(RestoreJob(**dict(job, shard=shard)), progress=False, plan=plan)
    d = asdict(summary)
    d.pop("files")
    return d


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


@flow(name="restore", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def restore_flow(job: dict[str, Any] | None = None, manifest: str | None = None) -> dict[str, Any]:
    """Restore per ``job`` (RestoreJob fields) and/or a YAML ``manifest``.

    Raises:
        RestoreIncompleteError: some rows could not be restored (after the others were).
    """
    spec = load_job(manifest, RestoreJob, **(job or {})) if manifest else make_job(RestoreJob, job or {})
    store = ArchiveStore.open(spec.archive, storage_options=spec.storage_options)
    plan = plan_restore(spec, store)  # raises on a selection that matches nothing
    shards = list(plan.shards)
    values = spec.model_dump()
    parts = [plan.for_shard(s) for s in shards]
    results = [f.result() for f in restore_shard_task.map(unmapped(values), shards, parts)]
    written, skipped = sum(r["written"] for r in results), sum(r["skipped"] for r in results)
    bad = plan.refused_shard_rows() + [BadRow(**b) for r in results for b in r["bad"]]
    warnings = list(dict.fromkeys(w for r in results for w in r["warnings"]))
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
