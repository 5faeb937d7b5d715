"""Job manifests mean exactly what they say: YAML 1.2 scalars, no anchors/aliases/duplicate keys,
no silent type conversion; and the CLI refuses destinations that vanish when it exits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sg3archive.cli import main
from sg3archive.pipeline.jobs import AuditJob, CompressJob, JobError, RestoreJob, load_job, make_job
from sg3archive.pipeline.strict_yaml import MAX_MANIFEST_BYTES

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text("source: src\ndestination: dest\n" + text)
    return path


@pytest.mark.parametrize("value", ["yes", "no", "on", "off", "y", "Yes"])
def test_yaml_11_booleans_stay_words(tmp_path, value) -> None:
    """`profile: yes` was read as True and then as 1 bit per layer."""
    with pytest.raises(JobError) as info:
        load_job(write(tmp_path, f"profile: {value}\n"), CompressJob)
    assert f"unknown profile '{value}'" in str(info.value) and "--profile" in str(info.value)


@pytest.mark.parametrize(("text", "field", "fragment"), [
    ("profile: true\n", "--profile", "got True"),
    ("shard_size: true\n", "--shard-size", "expected a whole number, got True"),
    ("shard_size: 2.5\n", "--shard-size", "got 2.5"),
    ("shard_size: '8'\n", "--shard-size", "got '8'"),
    ("lpips: 'yes'\n", "--lpips", "expected true or false"),
    ("refine_steps: 1_0\n", "--refine-steps", "got '1_0'"),
    ("shard_size: 0x10\n", "--shard-size", "got '0x10'"),
    ("destination: 2026-01-01\n", None, None),  # a YAML 1.1 date stays text: a valid folder name
])
def test_values_are_never_converted(tmp_path, text, field, fragment) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text("source: src\n" + ("" if text.startswith("destination") else "destination: d\n") + text)
    if field is None:
        assert load_job(manifest, CompressJob).destination == "2026-01-01"
        return
    with pytest.raises(JobError) as info:
        load_job(manifest, CompressJob)
    assert field in str(info.value) and fragment in str(info.value), str(info.value)


def test_decimal_integers_are_decimal(tmp_path) -> None:
    """YAML 1.1 reads 010 as octal 8; a manifest means ten."""
    assert load_job(write(tmp_path, "shard_size: 010\n"), CompressJob).shard_size == 10


def test_anchors_aliases_and_merge_keys_are_refused(tmp_path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi"))
    manifest = write(tmp_path, bomb)
    started = time.perf_counter()
    with pytest.raises(JobError) as info:
        load_job(manifest, CompressJob)
    assert time.perf_counter() - started < 2
    assert "anchors and aliases" in str(info.value) and "line 3" in str(info.value)
    with pytest.raises(JobError, match="anchors and aliases"):
        load_job(write(tmp_path, "thresholds: &t {min_psnr: 20}\n"), AuditJob)
    with pytest.raises(JobError, match="not a setting"):
        load_job(write(tmp_path, "<<: {shard_size: 4}\n"), CompressJob)


def test_duplicate_keys_are_refused(tmp_path) -> None:
    with pytest.raises(JobError, match="'shard_size' appears twice"):
        load_job(write(tmp_path, "shard_size: 4\nshard_size: 8\n"), CompressJob)


def test_oversize_and_non_text_manifests(tmp_path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("source: s\ndestination: d\n#" + "x" * MAX_MANIFEST_BYTES + "\n")
    with pytest.raises(JobError, match="larger than 1 MiB"):
        load_job(big, CompressJob)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"source: \xff\xfe\n")
    with pytest.raises(JobError, match="not UTF-8"):
        load_job(binary, CompressJob)
    with pytest.raises(JobError, match="is a folder"):
        load_job(tmp_path, CompressJob)


def test_python_and_flow_values_are_strict_too() -> None:
    with pytest.raises(JobError, match="--batch-size: expected a whole number, got 3.0"):
        make_job(CompressJob, dict(source="s", destination="d", batch_size=3.0))
    with pytest.raises(JobError, match="--overwrite: expected true or false"):
        make_job(RestoreJob, dict(archive="a", destination="d", overwrite="no"))


def test_shipped_manifests_still_validate() -> None:
    for path, kind in (("example-compress.yaml", CompressJob), ("example-restore.yaml", RestoreJob),
                       ("example-audit.yaml", AuditJob)):
        load_job(REPO / "manifests" / path, kind)


@pytest.mark.parametrize("args", [
    ["compress", str(REPO / "examples" / "images"), "memory://archive"],
    ["compress", str(REPO / "examples" / "images"), "simplecache::memory://archive"],
    ["restore", "some-archive", "memory://out"],
    ["audit", "some-archive", "--report", "memory://report.html"],
])
def test_cli_refuses_destinations_in_memory(args) -> None:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "would vanish when this command exits" in res.stderr and "Traceback" not in res.output


@pytest.mark.parametrize(("text", "fragment"), [
    ("batch_size: " + "9" * 6000 + "\n", "a number of 6000 digits"),
    ("storage_options: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
    ("storage_options: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested more than"),
    ("~: 1\n", "None is not a setting name"),
    ("? [a, b]\n: 1\n", "a key must be a plain value"),
])
def test_hostile_manifests_end_in_one_plain_line(tmp_path, text, fragment) -> None:
    """Values Python itself refuses (huge integers, deep nesting, non-text keys) are manifest
    errors, not internal ones."""
    res = CliRunner().invoke(main, ["compress", "--manifest", str(write(tmp_path, text))])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert fragment in res.stderr and "bug" not in res.stderr and "Traceback" not in res.output, res.stderr
