"""Every everyday mistake ends in one line on stderr that says what was wrong and what to do, and
a non-zero exit status — never a traceback; runs that did nothing never say they succeeded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sg3archive.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "images"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(res, *fragments: str, code: int = 1) -> str:
    """The command failed with ``code``, printed exactly one ``error:`` line on stderr (with each
    fragment in it) and no traceback anywhere."""
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), f"a Python exception escaped: {res.exception!r}"
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, lines
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("texture_00.png", "texture_01.png", "texture_02.png"):
        (src / name).write_bytes((EXAMPLES / name).read_bytes())
    return src


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sources) -> Path:
    """A small archive of three sample images (bundled pack)."""
    dest = tmp_path_factory.mktemp("arch") / "archive"
    res = run("compress", str(sources), str(dest), "--device", "cpu")
    assert res.exit_code == 0, res.output
    return dest


# -- item 4: one line per mistake ---------------------------------------------------------------
@no_cuda
@pytest.mark.parametrize("command", ["compress", "restore", "audit"])
def test_device_cuda_without_a_gpu(command, archive, tmp_path) -> None:
    args = {"compress": ["compress", str(EXAMPLES), str(tmp_path / "a")],
            "restore": ["restore", str(archive), str(tmp_path / "r")],
            "audit": ["audit", str(archive), "--sample", "1"]}[command]
    res = run(*args, "--device", "cuda")
    assert_one_line_error(res, "device 'cuda'", "no CUDA device", "use cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "r").exists()


def test_bad_device_name_in_a_manifest(tmp_path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(f"source: {EXAMPLES}\ndestination: {tmp_path / 'a'}\ndevice: gpu\n")
    res = run("compress", "--manifest", str(manifest))
    assert_one_line_error(res, "--device", f"device: in {manifest}", "'gpu' is not a device name", "cuda:N")


def test_missing_source_folder(tmp_path) -> None:
    res = run("compress", str(tmp_path / "no-such-folder"), str(tmp_path / "a"), "--device", "cpu")
    assert_one_line_error(res, "SRC", "no-such-folder", "not found", "check the path")
    assert not (tmp_path / "a").exists()


def test_destination_is_a_file(tmp_path) -> None:
    dest = tmp_path / "notes.txt"
    dest.write_text("keep me")
    res = run("compress", str(EXAMPLES), str(dest), "--device", "cpu")
    assert_one_line_error(res, "DEST", str(dest), "is a file")
    assert dest.read_text() == "keep me"


def test_missing_arguments_speak_of_arguments_not_models(tmp_path) -> None:
    line = assert_one_line_error(run("compress", str(EXAMPLES)), "DEST is required", "sg3archive compress --help")
    assert "CompressJob" not in line and "Field required" not in line
    line = assert_one_line_error(run("restore"), "ARCHIVE is required", "DEST is required")
    assert "RestoreJob" not in line
    assert_one_line_error(run("compress", str(EXAMPLES), str(tmp_path / "a"), "--shard-size", "0"), "--shard-size")


def test_manifest_typo_names_the_key(tmp_path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(f"source: {EXAMPLES}\ndestination: {tmp_path / 'a'}\nshard_sise: 4\n")
    assert_one_line_error(run("compress", "--manifest", str(manifest)), "shard_sise", "not a setting", str(manifest))


@pytest.mark.parametrize("command", ["restore", "audit", "inspect"])
def test_archive_that_is_not_one(command, tmp_path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = {"restore": ["restore", str(afile), str(tmp_path / "out")], "audit": ["audit", str(afile)],
            "inspect": ["inspect", str(afile)]}[command]
    assert_one_line_error(run(*args), f"archive {afile} is a file", "sg3archive compress SRC")
    args[1] = str(tmp_path / "missing")
    assert_one_line_error(run(*args), "does not exist", "check the path")
    assert "create one with ArchiveStore" not in run(*args).output


def test_negative_audit_seed(archive) -> None:
    assert_one_line_error(run("audit", str(archive), "--seed", "-3"), "--seed")


def test_generate_refuses_absurd_values() -> None:
    res = run("generate", "--seeds", "0-4000000000")
    assert res.exit_code == 2 and "Traceback" not in res.output and "several runs" in res.output
    res = run("generate", "--seeds", "0", "--translate", "nan,0")
    assert res.exit_code == 2 and "finite" in res.output


def test_unexpected_errors_are_one_line_and_v_shows_the_traceback(monkeypatch, tmp_path) -> None:
    import sg3archive.pipeline.compress as compress_mod

    def boom(job):
        raise KeyError("surprise")

    monkeypatch.setattr(compress_mod, "check_job_paths", boom)
    res = run("compress", str(EXAMPLES), str(tmp_path / "a"), "--device", "cpu")
    assert_one_line_error(res, "unexpected KeyError", "rerun with -v")
    res = run("-v", "compress", str(EXAMPLES), str(tmp_path / "a"), "--device", "cpu")
    assert res.exit_code == 1 and "Traceback" in res.stderr


# -- item 5: runs that did nothing do not say they succeeded -------------------------------------
def test_empty_source_is_refused_and_creates_nothing(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not an image")
    res = run("compress", str(tmp_path / "empty"), str(tmp_path / "a"), "--device", "cpu")
    assert_one_line_error(res, "holds no image files", "nothing to archive")
    assert not (tmp_path / "a").exists()


def test_all_files_failing_exits_non_zero_without_nan(tmp_path) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.png").write_text("not a png")
    (src / "b.jpg").write_bytes(b"")
    for _attempt in range(2):  # the rerun skips the recorded failures and still says nothing was archived
        res = run("compress", str(src), str(tmp_path / "a"), "--device", "cpu")
        assert_one_line_error(res, "could be archived", "sg3archive inspect")
        assert "nan" not in res.output.lower()
    assert "2 failed" in res.output or "2 more failed in an earlier run" in res.output
    info = run("inspect", str(tmp_path / "a"))
    assert "FAILED" in info.output and "a.png" in info.output and "b.jpg" in info.output


def test_summary_of_a_rerun_has_no_nan(archive, sources) -> None:
    res = run("compress", str(sources), str(archive), "--device", "cpu")  # everything is already there
    assert res.exit_code == 0, res.output
    assert "0 images archived" in res.stdout and "3 already there" in res.stdout
    assert "nan" not in res.output.lower()


def test_ctrl_c_says_how_to_resume(tmp_path) -> None:
    """SIGINT in the middle of a compress: the message says a rerun resumes, exit 130, no traceback."""
    src = tmp_path / "many"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "sg3archive.cli", "compress", str(src), str(tmp_path / "a"),
                             "--device", "cpu", "--shard-size", "4", "--batch-size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    manifests = tmp_path / "a" / "_manifest"
    while time.monotonic() < deadline and proc.poll() is None:  # interrupt once something is committed
        if manifests.is_dir() and any(manifests.iterdir()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "interrupted — rerun the same command to resume" in err
    assert "Traceback" not in err and "Aborted!" not in err


def test_restore_destination_is_a_file(archive, tmp_path) -> None:
    dest = tmp_path / "notes.txt"
    dest.write_text("keep me")
    assert_one_line_error(run("restore", str(archive), str(dest), "--device", "cpu"), "DEST", "is a file")
    assert dest.read_text() == "keep me"


def test_compress_onto_a_full_disk_is_one_line_and_resumable(sources, tmp_path) -> None:
    """A destination that refuses writes (here: a file-size limit, EFBIG, as a full disk gives
    ENOSPC) ends compress in one line naming DEST; the rerun archives every image once."""
    import resource

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    dest = tmp_path / "archive"
    cmd = [sys.executable, "-m", "sg3archive.cli", "compress", str(sources), str(dest), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, preexec_fn=limited, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"DEST {dest}" in errors[0] and "rerun" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Errno" not in proc.stderr
    res = run("compress", str(sources), str(dest), "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    assert run("inspect", str(dest), "--rows").output.count("texture_0") == 3
