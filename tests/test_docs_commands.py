"""The commands the docs show are the commands that work.

Every shell command in README.md, flows/README.md and manifests/README.md is extracted and looked
up in :data:`PLAN`, which says how this test runs it on a 2-core CPU without a GPU or a bucket: as
written, with a stated substitution (smaller sizes, ``--device cpu``, a reference network in place
of the user's own pickle), or not at all, with the reason. A command added to a doc without an
entry here fails :func:`test_every_documented_command_has_a_plan`; a command whose entry says to run
it is run, in document order, in a scratch folder that mirrors the checkout, by
:func:`test_documented_commands_run`. infra/README.md's commands are checked by
tests/test_deployment.py the same way.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "flows/README.md", "manifests/README.md")
FIXTURE_PICKLE = REPO.parent / "shared" / "fixtures" / "sg3_reference" / "t64" / "network-snapshot.pkl"

RUN = "run"  # as written


def skip(reason: str) -> tuple[str, str]:
    return ("skip", reason)


def instead(command: str, why: str) -> tuple[str, str]:
    return ("instead", command, why)  # type: ignore[return-value]


# How each documented command is run here. Keys are the commands as the docs show them (continuation
# lines joined, comments dropped); values: RUN, instead(replacement, why), or skip(reason).
PLAN: dict[str, object] = {
    # README.md: the two set-up commands
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/sg3archive compress examples/images "
    "out/archive && .venv/bin/sg3archive restore out/archive out/restored":
        instead(".venv/bin/sg3archive compress examples/images out/archive && "
                ".venv/bin/sg3archive restore out/archive out/restored",
                "the install already happened (this test runs inside it); the rest as written"),
    ".venv/bin/python -m pytest -q": skip("the test suite itself"),
    # README.md: the quality contract
    "sg3archive compress photos/ out/archive-30db --min-psnr 30":
        skip("run by tests/test_quality_contract.py on generator images and real photographs of odd sizes, with "
             "every restored image checked at its original size"),
    "sg3archive compress photos/ out/archive-hq --quality high":
        skip("named contracts through the CLI: tests/test_quality_contract.py (lossless, none)"),
    "sg3archive compress photos/ out/archive-rd --refine-steps 30 --lambda 0.01":
        skip("run by tests/test_rd_refine.py::test_compress_cli_refines_for_the_rate_and_records_lambda (4 steps, "
             "lambda 0 and 0.3: the larger lambda stores fewer bytes)"),
    "sg3archive compress photos/ out/archive-lat --representations latent --quality none":
        skip("run by tests/test_quality_contract.py::test_representations_latent_stores_only_payloads"),
    # README.md: networks
    "sg3archive compress s3://bucket/photos/ s3://bucket/archive --device cuda": skip("needs a bucket and a GPU"),
    "sg3archive inspect s3://bucket/archive": skip("needs a bucket"),
    "sg3archive inspect s3://bucket/archive --rows": skip("needs a bucket"),
    "sg3archive restore s3://bucket/archive out/restored --glob 'cats/*' --format webp": skip("needs a bucket"),
    "sg3archive import-network stylegan3-t-ffhq-1024x1024.pkl nets/ffhq-t":
        instead(f"sg3archive import-network {FIXTURE_PICKLE} nets/ffhq-t",
                "NVIDIA's pickle is the user's; an official-format reference pickle (64x64) stands in"),
    "sg3archive generate --network nets/ffhq-t --seeds 0-7 --trunc 0.7 --out out/ffhq --device cuda":
        instead("sg3archive generate --network nets/ffhq-t --seeds 0-7 --trunc 0.7 --out out/ffhq --device cpu",
                "no GPU here"),
    "sg3archive generate --seeds 0-3 --translate 0.1,0 --rotate 15": RUN,
    "sg3archive network-info nets/ffhq-t --json": RUN,
    ".venv/bin/sg3archive init-network nets/default-network --config stylegan3-t --resolution 64 --z-dim 128 "
    "--w-dim 128 --channel-base 4096 --channel-max 128 --seed 0 --no-discriminator":
        skip("run by tests/test_init_network.py::test_readme_recreation_of_the_bundled_network, which extracts it "
             "from this README and checks the claim made beside it"),
    "sg3archive init-network nets/random-r256 --config stylegan3-r --resolution 256":
        instead("sg3archive init-network nets/random-r32 --config stylegan3-r --resolution 32 --channel-base 8192 "
                "--channel-max 64", "the full-size network at 256 takes ~20 min on 2 cores; the same config, small"),
    # README.md: encoder training (GPU-sized examples, run small)
    "sg3archive train --network nets/ffhq-t --out runs/ffhq-enc --export nets/ffhq-enc --device cuda --steps 20000 "
    "--batch-size 16 --lr 2e-4 --preset high_quality --kl-start 2000 --kl-ramp 2000 --progressive 0,2000,4000 "
    "--data s3://bucket/faces/ --real-fraction 0.5":
        instead("sg3archive train --network nets/ffhq-t --out runs/ffhq-enc --export nets/ffhq-enc --device cpu "
                "--steps 4 --batch-size 2 --lr 2e-4 --preset high_quality --kl-start 2 --kl-ramp 2 --progressive 0,1,2 "
                "--data examples/images --real-fraction 0.5 --width 0.25 --sample-every 4",
                "a GPU-sized run: 4 small steps on CPU, the sample images for the bucket"),
    "sg3archive evaluate-encoder --network nets/ffhq-t --encoder nets/ffhq-enc --images 64":
        instead("sg3archive evaluate-encoder --network nets/ffhq-t --encoder nets/ffhq-enc --images 4",
                "fewer images"),
    # README.md: archives
    "sg3archive compress photos/ out/archive --profile high_quality --shard-size 256 --device cuda":
        instead("sg3archive compress examples/images out/archive-hq --profile high_quality --shard-size 256 --device cpu",
                "the sample images for photos/, no GPU; a new archive (out/archive has the default profile)"),
    "sg3archive inspect out/archive": RUN,
    "sg3archive inspect out/archive --shards": RUN,
    "sg3archive restore out/archive out/restored --size original --format png": RUN,
    "sg3archive audit out/archive --sample 64 --report out/audit.html":
        instead("sg3archive audit out/archive --sample 8 --report out/audit.html", "a smaller sample"),
    # flows/README.md
    "python -c \"from flows.compress import compress_flow as f; f(manifest='manifests/example-compress.yaml')\"": RUN,
    "python -c \"from flows.restore import restore_flow as f; f(manifest='manifests/example-restore.yaml')\"": RUN,
    "python -c \"from flows.compress import compress_flow as f; f(manifest='manifests/example-compress.yaml', "
    "overrides={'shard_size': 4})\"":
        skip("the manifest run above with one field laid over it: tests/test_planning.py runs compress_flow with "
             "manifest= and overrides= on Prefect's test harness"),
    "python -c \"from flows.train_encoder import train_encoder_flow as f; f(out_dir='runs/enc', "
    "config={'steps': 2, 'batch_size': 4, 'width': 0.25})\"": RUN,
    # manifests/README.md
    "sg3archive compress --manifest manifests/example-compress.yaml": RUN,
    "sg3archive restore --manifest manifests/example-restore.yaml": RUN,
}

# What each command must leave behind or print (checked after it ran), besides exit status 0.
EXPECT: dict[str, list[str]] = {
    "sg3archive import-network stylegan3-t-ffhq-1024x1024.pkl nets/ffhq-t": ["nets/ffhq-t/network.json"],
    "sg3archive generate --seeds 0-3 --translate 0.1,0 --rotate 15": ["out/generated/seed0003.png"],
    "sg3archive restore out/archive out/restored --size original --format png": ["out/restored/more"],
    "sg3archive audit out/archive --sample 64 --report out/audit.html": ["out/audit.html"],
}


def _commands(text: str) -> list[str]:
    """The commands of every ```bash block: comments dropped, continuations and multi-line quotes
    joined (a command ends where shlex can split it)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.strip().startswith("#")):
                continue
            pending = f"{pending} {line.strip()}" if pending else line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            out.append(_strip_comment(pending))
            pending = ""
        assert not pending, f"unterminated command in a bash block: {pending!r}"
    return out


def _strip_comment(command: str) -> str:
    """``command`` without a trailing ``# comment`` (the first `` #`` outside quotes), whitespace folded."""
    for match in re.finditer(r"\s#", command):
        try:
            shlex.split(command[:match.start()])  # quotes balanced: this '#' is not inside a string
        except ValueError:
            continue
        command = command[:match.start()]
        break
    return " ".join(command.split())


def documented_commands() -> list[tuple[str, str]]:
    return [(doc, cmd) for doc in DOCS for cmd in _commands((REPO / doc).read_text())]


def test_every_documented_command_has_a_plan() -> None:
    found = documented_commands()
    missing = [f"{doc}: {cmd}" for doc, cmd in found if cmd not in PLAN]
    assert not missing, "documented commands without an entry in PLAN:\n" + "\n".join(missing)
    stale = sorted(set(PLAN) - {cmd for _, cmd in found})
    assert not stale, "PLAN entries no doc shows any more:\n" + "\n".join(stale)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch folder that looks like the checkout (the docs run from the repository root)."""
    root = tmp_path_factory.mktemp("docs-workdir")
    for name in ("examples", "manifests", "flows", "infra", "sg3archive"):
        (root / name).symlink_to(REPO / name)
    (root / ".venv").symlink_to(Path(sys.prefix))
    return root


def _environment(workdir: Path, lpips_weights: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SG3ARCHIVE_LPIPS_WEIGHTS"] = str(lpips_weights)  # provisioned in the session's temporary cache
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env["PYTHONPATH"] = str(workdir)  # `from flows.x import ...` as from the repository root
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_documented_commands_run(workdir: Path, lpips_weights_dir: Path) -> None:
    if not FIXTURE_PICKLE.is_file():
        pytest.fail(f"reference fixtures not found at {FIXTURE_PICKLE}; check out shared/ beside the repository")
    env = _environment(workdir, lpips_weights_dir)
    timings = []
    for doc, command in documented_commands():
        plan = PLAN.get(command)
        if plan is None or (plan != RUN and plan[0] == "skip"):  # no plan: test_every_..._has_a_plan fails
            continue
        actual = command if plan == RUN else plan[1]
        started = time.monotonic()
        done = subprocess.run(["bash", "-c", actual], cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
        timings.append((time.monotonic() - started, actual))
        assert done.returncode == 0, (f"{doc}: `{actual}` exited {done.returncode}\nstdout:\n{done.stdout[-3000:]}\n"
                                      f"stderr:\n{done.stderr[-3000:]}")
        assert "Traceback" not in done.stderr, f"{doc}: `{actual}` printed a traceback:\n{done.stderr[-3000:]}"
        for path in EXPECT.get(command, []):
            assert (workdir / path).exists(), f"{doc}: `{actual}` did not make {path}"
    print("\n".join(f"{s:6.1f} s  {c}" for s, c in timings))
