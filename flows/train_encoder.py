"""Prefect flow: train an encoder for a generator (calls ``sg3archive.training.train_encoder``).

Run locally from the repository root::

    python -c "from flows.train_encoder import train_encoder_flow as f; f(out_dir='runs/enc', config={'steps': 200})"

or deploy it from ``infra/prefect.yaml``. Progress is logged to the run log every
``log_every`` steps and published as a Prefect progress artifact, the metrics history as a table artifact, and the final sample grid's path as markdown.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from sg3archive.training import TrainConfig
from sg3archive.training.trainer import train_for_network


@task(name="train-encoder-steps")
def run_training(network: str | None, out_dir: str, export_dir: str | None, device: str,
                 config: dict[str, Any]) -> dict[str, Any]:
    """Load the generator (and its D when the file has one), train, export; returns a summary."""
    cfg = TrainConfig.from_dict(config)
    logger = get_run_logger()
    progress_id = create_progress_artifact(progress=0.0, description=f"encoder training, {cfg.steps} steps")
    logger.info("training an encoder for %s: %d steps of batch %d into %s (resumes from its checkpoint)",
                network or "the bundled network", cfg.steps, cfg.batch_size, out_dir)
    started = time.monotonic()

    def on_log(step: int, record: dict[str, float]) -> None:
        update_progress_artifact(progress_id, progress=100.0 * step / max(1, cfg.steps))
        elapsed = time.monotonic() - started
        losses = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "elapsed_s") and isinstance(v, float))
        logger.info("step %d/%d (%.0f%%, %.0f s): %s", step, cfg.steps, 100.0 * step / max(1, cfg.steps), elapsed,
                    losses)

    result = train_for_network(network, cfg, out_dir, export_dir=export_dir, device=device, progress=False,
                               on_log=on_log)
    if result.history:
        create_table_artifact(key="encoder-training-metrics", table=result.history[-50:],
                              description="last logged training metrics")
    if result.samples:
        create_markdown_artifact(key="encoder-training-samples", markdown=(
            f"# Encoder training\n\nstep {result.step} of {cfg.steps}; checkpoint `{result.checkpoint}`\n\n"
            f"latest input (top) vs reconstruction (bottom) grid: `{result.samples[-1]}`\n"))
    return {"step": result.step, "checkpoint": str(result.checkpoint), "export": export_dir,
            "encoder_fingerprint": result.exported, "last": result.history[-1] if result.history else {}}


@flow(name="train-encoder", log_prints=True)
def train_encoder_flow(out_dir: str, network: str | None = None, export_dir: str | None = None,
                       device: str = "auto", config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) an encoder in ``out_dir``; ``config`` holds ``TrainConfig`` fields."""
    summary = run_training(network, out_dir, export_dir, device, TrainConfig.from_dict(config or {}).to_dict())
    print(f"encoder training reached step {summary['step']}; checkpoint {summary['checkpoint']}")
    return summary
