"""Prefect flow: compress a folder or bucket into an archive — one task per shard.

The flow prepares the archive (codec model, settings; another generator or encoder than the
archive's is refused here), plans shards from a streamed listing (the archive's committed keys are
read once, into the plans), maps ``compress-shard`` over the plans (each task loads the models once
per worker, reads only its own plan, batches its images on the worker's device, writes and commits
one shard), removes the run's plans and publishes a summary. Choose the task runner with the job's
``task_runner``: Prefect's thread pool (default) or Dask.

The flow's ``job`` parameter is a :class:`CompressJob`: Prefect renders its form and refuses a bad
value before any work. Tasks receive that job and their :class:`ShardPlan`.
"""

from __future__ import annotations

import time
from typing import Any, cast
from uuid import UUID

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from sg3archive.pipeline import (
    CompressJob,
    CompressReport,
    ShardPlan,
    ShardReport,
    compress_shard,
    new_run_id,
    plan_shards,
    prepare,
    remove_plans,
    resolve_job,
)


def compress_job(job: CompressJob | None, manifest: str | None, overrides: dict[str, Any] | None) -> CompressJob:
    """The job a run does (:func:`sg3archive.pipeline.resolve_job`)."""
    return resolve_job(CompressJob, job, manifest, overrides, caller="compress_flow")


@task(name="prepare-archive")
def prepare_task(job: CompressJob) -> dict[str, Any]:
    return prepare(job)


@task(name="plan-shards")
def plan_task(job: CompressJob, run_id: str) -> list[ShardPlan]:
    return list(plan_shards(job, run_id))


@task(name="compress-shard", retries=1, retry_delay_seconds=5)
def shard_task(job: CompressJob, plan: ShardPlan) -> ShardReport:
    return compress_shard(job, plan)


@task(name="remove-plans")
def remove_plans_task(job: CompressJob, run_id: str) -> None:
    remove_plans(job, run_id)


@flow(name="compress-shards", log_prints=True)
def compress_shards_flow(job: CompressJob) -> dict[str, Any]:
    """The work of a compress run, under the task runner the job selected (see ``compress_flow``)."""
    started = time.perf_counter()
    prepare_task(job)
    run_id = new_run_id()
    plans = plan_task(job, run_id)
    progress = cast(UUID, create_progress_artifact(progress=0.0,  # sync call: the artifact's id
                                                   description=f"compress {job.source} -> {job.destination}"))
    results: list[ShardReport] = []
    futures = shard_task.map(unmapped(job), plans)
    for n, future in enumerate(futures, 1):
        results.append(future.result())
        update_progress_artifact(progress, progress=100.0 * n / max(1, len(plans)))
    remove_plans_task(job, run_id)  # the run completed (failed sources included): its plans go
    summary = CompressReport.of(job.destination, results, time.perf_counter() - started)
    d = summary.to_dict()
    q = d["quality"]
    create_table_artifact(key="compress-summary", table=[{**{k: d[k] for k in (
        "archive", "shards", "images", "failures", "skipped", "payload_bytes", "source_bytes", "ratio",
        "images_per_s")}, "bytes_per_image": q["bytes_per_image"],
        "psnr_mean_original_size": q["fidelity"]["psnr_mean"], "psnr_worst_original_size": q["fidelity"]["psnr_worst"],
        "ms_ssim_mean_original_size": q["fidelity"]["ms_ssim_mean"],
        "ms_ssim_worst_original_size": q["fidelity"]["ms_ssim_worst"],
        "representations": ", ".join(f"{k} {v['images']} ({v['bytes']} B)" for k, v in q["representations"].items()),
        "below_contract": q["below_contract"], "x_smaller_than_avif": q["avif_baseline"]["ratio"]}],
        description="compress run summary (fidelity restored vs original at the original size)")
    first, *quality = summary.text().split("\n")
    create_markdown_artifact(key="compress-report", markdown="# Compress\n\n" + first + "\n\n"
                             + "".join(f"- {line.strip()}\n" for line in quality))
    print(summary.text())
    return d


@flow(name="compress", log_prints=True)
def compress_flow(job: CompressJob | None = None, manifest: str | None = None,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compress per ``job`` and/or a YAML ``manifest`` (``overrides``: CompressJob fields over either).

    The shard tasks run in a subflow whose task runner is the job's choice: ``task_runner:
    thread`` (``workers`` threads) or ``dask`` (a local Dask cluster of ``workers`` workers), so a
    deployment selects it through its parameters.
    """
    spec = compress_job(job, manifest, overrides)
    return compress_shards_flow.with_options(task_runner=task_runner_for(spec))(spec)


def task_runner_for(spec: CompressJob) -> Any:
    """The task runner a job asks for: a thread pool of ``workers``, a running Dask scheduler
    (``dask_address``), or a local Dask cluster with ``workers`` single-threaded workers."""
    if spec.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if spec.dask_address:
            return DaskTaskRunner(address=spec.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": spec.workers, "processes": False, "threads_per_worker": 1})
    return ThreadPoolTaskRunner(max_workers=spec.workers)


def run_compress(job: CompressJob | dict[str, Any] | None = None, manifest: str | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the compress flow (its task runner follows the job's ``task_runner`` and ``workers``)."""
    return compress_flow(job=job, manifest=manifest, overrides=overrides)  # type: ignore[arg-type]
