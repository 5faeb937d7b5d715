"""Issue 12 for restore: the frozen RestoreReport, the plan as the one home of a row's output
name, and the restore flow's typed job (with ``overrides``), on a real archive of real images."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import CompressJob, RestoreJob
from sg3archive.pipeline.restore import RestoreReport, RestoreSummary, output_name, plan_restore, restore
from sg3archive.store.archive import ArchiveStore

# a.png and a.jpg both restore to a.png: the later row is renamed by the plan.
SOURCES = {"a.png": (40, 30), "a.jpg": (32, 32), "more/b.png": (24, 48)}


@pytest.fixture(scope="module")
def archive(tmp_path_factory, one_thread) -> Path:
    root = tmp_path_factory.mktemp("report")
    src = root / "src"
    rng = np.random.RandomState(3)
    for name, (width, height) in SOURCES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 255, (height, width, 3), dtype=np.uint8)).save(src / name)
    dest = root / "archive"
    values: dict[str, Any] = dict(source=str(src), destination=str(dest), device="cpu", calibration_images=3,
                                  batch_size=8)
    done = compress(CompressJob(**values), progress=False)
    assert done.images == len(SOURCES)
    return dest


def _job(**values: Any) -> RestoreJob:
    return RestoreJob(**values)


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_restore_returns_a_frozen_report_of_what_it_wrote(archive, tmp_path) -> None:
    out = tmp_path / "out"
    job = _job(archive=str(archive), destination=str(out), device="cpu", size="generator")
    report = restore(job, progress=False)
    assert RestoreSummary is RestoreReport and isinstance(report, RestoreReport)
    assert (report.written, report.skipped, report.bad) == (3, 0, ())
    assert sorted(Path(f.removeprefix("file://")).name for f in report.files) == sorted(
        Path(f).name for f in _files(out))
    assert all(Path(f.removeprefix("file://")).is_file() for f in report.files)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.written = 0  # type: ignore[misc]
    again = restore(job, progress=False)
    assert (again.written, again.skipped, again.files) == (0, 3, ())
    assert again.text().startswith(f"0 images restored to {out}, 3 already there")


def test_the_plan_names_every_file_restore_writes(archive, tmp_path) -> None:
    job = _job(archive=str(archive), destination=str(tmp_path / "out"), device="cpu", size="generator")
    store = ArchiveStore.open(str(archive))
    plan = plan_restore(job, store)
    (shard,) = plan.shards
    names = [row["source_name"] for row in store.read_table("images", columns=["source_name"]).to_pylist()]
    planned = {plan.output_for(shard, i, name, "png") for i, name in enumerate(names)}
    assert len(planned) == 3 and len(plan.renamed[shard]) == 1  # a.png and a.jpg would clash
    (index, renamed), = plan.renamed[shard].items()
    assert plan.output_for(shard, index, names[index], "png") == renamed != output_name(names[index], "png")
    restore(job, progress=False, plan=plan)
    assert _files(tmp_path / "out") == planned


def test_the_flow_takes_a_typed_job_and_overrides(archive, tmp_path, prefect_harness) -> None:
    from flows.restore import restore_flow

    job = _job(archive=str(archive), destination=str(tmp_path / "all"), device="cpu", size="generator")
    state = restore_flow(job=job, overrides={"glob": "more/*", "destination": str(tmp_path / "some")},
                         return_state=True)
    assert state.is_completed(), state
    assert state.result() == {"written": 1, "skipped": 0, "shards": 1}
    assert _files(tmp_path / "some") == {"more/b.png"} and not (tmp_path / "all").exists()
    bad = restore_flow(job=dict(archive=str(archive), destination=str(tmp_path / "bad"), batch_size="8"),
                       return_state=True)
    assert bad.is_failed() and "batch_size" in str(bad.message)
    assert not (tmp_path / "bad").exists()  # refused before any work
