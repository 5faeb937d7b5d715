"""Prefect flow: train an encoder for a generator (calls ``sg3archive.training.train_for_network``).

Run locally from the repository root::

    python -c "from flows.train_encoder import train_encoder_flow as f; f(out_dir='runs/enc', config={'steps': 200})"

or deploy it from ``infra/prefect.yaml``. The flow's ``job`` parameter is a
:class:`~sg3archive.training.TrainJob` (Prefect renders its form and refuses a bad value before any
work); the older parameters (``out_dir``, ``network``, ``export_dir``, ``device``, ``config`` with
training settings) still work and are laid over it. Progress is logged to the run log every
``log_every`` steps and published as a Prefect progress artifact, the metrics history as a table
artifact, and the final sample grid's path as markdown.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from sg3archive.pipeline import JobError
from sg3archive.training import TrainJob, train_for_network


def train_job(job: TrainJob | None = None, *, out_dir: str | None = None, network: str | None = None,
              export_dir: str | None = None, device: str | None = None,
              config: dict[str, Any] | None = None) -> TrainJob:
    """The job a run does: ``job`` (or the defaults) with ``config``'s training settings and the
    location parameters that are given laid over it."""
    base = job.model_dump(exclude_unset=True) if job is not None else {}
    location = {k: v for k, v in dict(out_dir=out_dir, network=network, export_dir=export_dir, device=device).items()
                if v is not None}
    merged = TrainJob.from_dict({**base, **(config or {}), **location})
    if not merged.out_dir:
        raise JobError("train_encoder_flow needs out_dir (the run directory), as a parameter or in the job")
    return merged


@task(name="train-encoder-steps")
def run_training(job: TrainJob) -> dict[str, Any]:
    """Load the generator (and its D when the file has one), train, export; returns a summary."""
    logger = get_run_logger()
    progress_id = create_progress_artifact(progress=0.0, description=f"encoder training, {job.steps} steps")
    logger.info("training an encoder for %s: %d steps of batch %d into %s (resumes from its checkpoint)",
                job.network or "the bundled network", job.steps, job.batch_size, job.out_dir)
    started = time.monotonic()

    def on_log(step: int, record: dict[str, float]) -> None:
        update_progress_artifact(progress_id, progress=100.0 * step / max(1, job.steps))  # type: ignore[arg-type]
        elapsed = time.monotonic() - started
        losses = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "elapsed_s") and isinstance(v, float))
        logger.info("step %d/%d (%.0f%%, %.0f s): %s", step, job.steps, 100.0 * step / max(1, job.steps), elapsed,
                    losses)

    assert job.out_dir is not None  # train_job checked it
    result = train_for_network(job.network, job, job.out_dir, export_dir=job.export_dir, device=job.device,
                               resume=job.resume, progress=False, on_log=on_log, init_from=job.init_encoder)
    if result.history:
        create_table_artifact(key="encoder-training-metrics", table=result.history[-50:],
                              description="last logged training metrics")
    if result.samples:
        create_markdown_artifact(key="encoder-training-samples", markdown=(
            f"# Encoder training\n\nstep {result.step} of {job.steps}; checkpoint `{result.checkpoint}`\n\n"
            f"latest input (top) vs reconstruction (bottom) grid: `{result.samples[-1]}`\n"))
    return {"step": result.step, "checkpoint": str(result.checkpoint), "export": job.export_dir,
            "encoder_fingerprint": result.exported, "last": result.history[-1] if result.history else {}}


@flow(name="train-encoder", log_prints=True)
def train_encoder_flow(out_dir: str | None = None, network: str | None = None, export_dir: str | None = None,
                       device: str | None = None, config: dict[str, Any] | None = None,
                       job: TrainJob | None = None) -> dict[str, Any]:
    """Train (or resume) an encoder in ``out_dir``: ``job`` is the whole run as a TrainJob;
    ``config`` holds TrainJob training settings (e.g. ``{"steps": 200}``)."""
    summary = run_training(train_job(job, out_dir=out_dir, network=network, export_dir=export_dir, device=device,
                                     config=config))
    print(f"encoder training reached step {summary['step']}; checkpoint {summary['checkpoint']}")
    return summary
