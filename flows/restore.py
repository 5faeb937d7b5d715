"""Prefect flow: restore images from an archive — plan once (selection and names, from the id
and name columns), then one task per shard that has selected rows. Rows that cannot be restored
are listed in the report artifact and the run ends failed (``RestoreIncompleteError``) after the
others are written."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from sg3archive.pipeline.jobs import RestoreJob, load_job, make_job
from sg3archive.pipeline.restore import RestoreIncompleteError, RestorePlan, plan_restore, printable, restore
from sg3archive.store.archive import ArchiveStore


@task(name="restore-shard", retries=1, retry_delay_seconds=5)
def restore_shard_task(job: dict[str, Any], shard: str, plan: RestorePlan) -> dict[str, Any]:
    """Restore one shard's selected rows under the names the flow's plan gave them."""
    summary = restore(RestoreJob(**dict(job, shard=shard)), progress=False, plan=plan)
    d = asdict(summary)
    d.pop("files")
    return d


def _report(text: str, bad: list[dict[str, str]], warnings: list[str]) -> str:
    """The run's markdown report: the counts, the archive's warnings, every row not restored."""
    lines = ["# Restore", "", text, ""]
    lines += [f"- warning: {printable(w)}" for w in warnings]
    if bad:
        lines += ["", "## Not restored", "", "| id | name | reason |", "|---|---|---|"]
        lines += [f"| {b['id']} | {printable(b['name'])} | {printable(b['reason'])} |".replace("\n", " ") for b in bad]
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
    bad = [b for r in results for b in r["bad"]]
    warnings = list(dict.fromkeys(w for r in results for w in r["warnings"]))
    text = f"{written} images restored to {spec.destination} from {len(shards)} shards, {skipped} already there"
    if bad:
        text += f", {len(bad)} could not be restored"
    create_markdown_artifact(key="restore-report", markdown=_report(text, bad, warnings))
    for w in warnings:
        print(f"warning: {printable(w)}")
    print(text)
    for b in bad:
        print(printable(f"not restored: {b['id']}  {b['name']}: {b['reason']}"))
    if bad:
        raise RestoreIncompleteError(f"{len(bad)} of the selected images could not be restored (listed in the "
                                     "restore-report artifact; the others were)")
    return {"written": written, "skipped": skipped, "shards": len(shards)}
