"""Job manifests carry a version: none means 1, a newer one is refused with a clear message —
from a manifest, through the CLI, and from flows' and Python's values alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

import sg3archive
from sg3archive.cli import main
from sg3archive.pipeline.jobs import JOB_VERSION, AuditJob, CompressJob, JobError, RestoreJob, load_job, make_job
from sg3archive.training import TrainJob

REQUIRED: dict[type, str] = {
    CompressJob: "source: src\ndestination: dest\n",
    RestoreJob: "archive: arc\ndestination: out\n",
    AuditJob: "archive: arc\n",
    TrainJob: "out_dir: run\n",
}


def manifest(tmp_path: Path, kind: type, extra: str = "") -> Path:
    path = tmp_path / f"{kind.__name__}.yaml"
    path.write_text(REQUIRED[kind] + extra)
    return path


@pytest.mark.parametrize("kind", list(REQUIRED))
def test_a_manifest_without_version_is_version_1(tmp_path, kind) -> None:
    assert JOB_VERSION == 1
    assert load_job(manifest(tmp_path, kind), kind).version == 1
    assert load_job(manifest(tmp_path, kind, "version: 1\n"), kind).version == 1


@pytest.mark.parametrize("kind", list(REQUIRED))
def test_a_newer_manifest_is_refused_with_the_upgrade_hint(tmp_path, kind) -> None:
    path = manifest(tmp_path, kind, "version: 2\n")
    with pytest.raises(JobError) as info:
        load_job(path, kind)
    assert str(info.value) == (f"manifest {path} is job version 2; this sg3archive {sg3archive.__version__} reads "
                               "versions up to 1: upgrade sg3archive (pip install -U sg3archive)")


@pytest.mark.parametrize("value", ["0", "-1", "true", "'2'", "1.5"])
def test_versions_below_1_or_not_whole_numbers_are_refused(tmp_path, value) -> None:
    with pytest.raises(JobError, match="version"):
        load_job(manifest(tmp_path, CompressJob, f"version: {value}\n"), CompressJob)


@pytest.mark.parametrize(("command", "kind"), [("compress", CompressJob), ("restore", RestoreJob),
                                               ("audit", AuditJob), ("train", TrainJob)])
def test_the_cli_refuses_a_newer_manifest_in_one_line(tmp_path, command, kind) -> None:
    path = manifest(tmp_path, kind, "version: 3\n")
    res = CliRunner().invoke(main, [command, "--manifest", str(path)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: manifest {path} is job version 3; this sg3archive {sg3archive.__version__} reads "
                      "versions up to 1: upgrade sg3archive (pip install -U sg3archive)"]


def test_python_and_flow_values_are_checked_too() -> None:
    assert CompressJob(source="s", destination="d").version == 1
    with pytest.raises(ValidationError, match="job version 2; this sg3archive .* reads versions up to 1"):
        CompressJob(source="s", destination="d", version=2)
    with pytest.raises(JobError, match="this job is job version 5"):
        make_job(RestoreJob, {"archive": "a", "destination": "d", "version": 5})
    with pytest.raises(JobError, match="job version 2"):
        TrainJob(version=2)
    with pytest.raises(ValidationError, match="job version 2"):  # how Prefect validates a flow's job parameter
        AuditJob.model_validate({"archive": "a", "version": 2})


def test_the_train_flow_reads_the_version_of_its_values(tmp_path) -> None:
    from flows.train_encoder import train_job

    assert train_job(out_dir=str(tmp_path), config={"steps": 3}).version == 1
    with pytest.raises(JobError, match="job version 2"):
        train_job(out_dir=str(tmp_path), config={"version": 2})
    with pytest.raises(JobError, match="job version 2"):
        train_job(TrainJob.model_construct(version=2), out_dir=str(tmp_path))


@pytest.mark.parametrize(("name", "kind"), [("example-compress.yaml", CompressJob), ("example-restore.yaml", RestoreJob),
                                            ("example-audit.yaml", AuditJob), ("example-train.yaml", TrainJob)])
def test_the_example_manifests_are_version_1_and_spell_every_default(name, kind) -> None:
    path = Path(__file__).resolve().parents[1] / "manifests" / name
    job = load_job(path, kind)
    assert job.version == 1
    if kind is TrainJob:  # every field, each with its default
        assert job.model_fields_set == set(TrainJob.model_fields)
        assert job.model_dump(exclude={"out_dir"}) == TrainJob().model_dump(exclude={"out_dir"})
