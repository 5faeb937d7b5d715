"""Prefect flow: compress a folder or bucket into an archive — one task per shard.

The flow prepares the archive (codec model, settings), plans shards from a streamed listing,
maps ``compress-shard`` over the plans (each task loads the models once per worker, batches its
images on the worker's device, writes and commits one shard) and publishes a summary. Choose the
task runner with the job's ``task_runner``: Prefect's thread pool (default) or Dask.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from sg3archive.pipeline.compress import ShardPlan, ShardResult, Summary, compress_shard, plan_shards, prepare
from sg3archive.pipeline.jobs import CompressJob, load_job, make_job


def _job(job: dict[str, Any] | None, manifest: str | None) -> CompressJob:
    if manifest:
        return load_job(manifest, CompressJob, **(job or {}))
    return make_job(CompressJob, job or {})


@task(name="prepare-archive")
def prepare_task(job: dict[str, Any]) -> dict[str, Any]:
    return prepare(CompressJob(**job))


@task(name="plan-shards")
def plan_task(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [asdict(p) for p in plan_shards(CompressJob(**job))]


@task(name="compress-shard", retries=1, retry_delay_seconds=5)
def shard_task(job: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    return asdict(compress_shard(CompressJob(**job), ShardPlan(**plan)))


@flow(name="compress-shards", log_prints=True)
def compress_shards_flow(values: dict[str, Any]) -> dict[str, Any]:
    """The work of a compress run, under the task runner the job selected (see ``compress_flow``)."""
    spec = CompressJob(**values)
    started = time.perf_counter()
    prepare_task(values)
    plans = plan_task(values)
    progress = create_progress_artifact(progress=0.0, description=f"compress {spec.source} -> {spec.destination}")
    summary = Summary(spec.destination)
    futures = shard_task.map(unmapped(values), plans)
    for n, future in enumerate(futures, 1):
        summary.add(ShardResult(**future.result()))
        update_progress_artifact(progress, progress=100.0 * n / max(1, len(plans)))
    summary.seconds = time.perf_counter() - started
    d = summary.to_dict()
    create_table_artifact(key="compress-summary", table=[{k: d[k] for k in (
        "archive", "shards", "images", "failures", "skipped", "payload_bytes", "source_bytes", "ratio",
        "images_per_s")}], description="compress run summary")
    create_markdown_artifact(key="compress-report", markdown=f"# Compress\n\n{summary.text()}\n")
    print(summary.text())
    return d


@flow(name="compress", log_prints=True)
def compress_flow(job: dict[str, Any] | None = None, manifest: str | None = None) -> dict[str, Any]:
    """Compress per ``job`` (CompressJob fields) and/or a YAML ``manifest`` (job fields override it).

    The shard tasks run in a subflow whose task runner is the job's choice: ``task_runner:
    thread`` (``workers`` threads) or ``dask`` (a local Dask cluster of ``workers`` workers), so a
    deployment selects it through its parameters.
    """
    spec = _job(job, manifest)
    return compress_shards_flow.with_options(task_runner=task_runner_for(spec))(spec.model_dump())


def task_runner_for(spec: CompressJob):
    """The task runner a job asks for: a thread pool of ``workers``, a running Dask scheduler
    (``dask_address``), or a local Dask cluster with ``workers`` single-threaded workers."""
    if spec.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if spec.dask_address:
            return DaskTaskRunner(address=spec.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": spec.workers, "processes": False, "threads_per_worker": 1})
    return ThreadPoolTaskRunner(max_workers=spec.workers)


def run_compress(job: dict[str, Any] | None = None, manifest: str | None = None) -> dict[str, Any]:
    """Run the compress flow (its task runner follows the job's ``task_runner`` and ``workers``)."""
    return compress_flow(job=job, manifest=manifest)
