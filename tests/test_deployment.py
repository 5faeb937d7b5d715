"""The deployment files in infra/: checked as files, then used end to end as infra/README.md says.

The end-to-end test runs the README's own commands, read from its bash blocks, in order: the local
section's whole block (a real ``prefect server``, the process pool, the deployments, one ``prefect
worker`` process, then compress, compress from a manifest, audit and restore with ``prefect
deployment run --watch``), then the commands of the other sections that need no Docker, cluster,
GPU or bucket (Dask scheduler and workers, the Kubernetes pool and the -gpu deployments on the same
server, the nightly-audit schedule switch, the compose section's cp). SUBSTITUTIONS lists every
difference from pasting them; NOT_RUN lists the commands no test runs, with the reason, and a fast
test fails on a README command that is in neither. 230-285 s measured on 2 CPU cores shared with
other jobs (load 3-4), 3.5-4 min of CPU time; deselect it with ``-m "not deployment"``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
PREFECT_FILE = INFRA / "prefect.yaml"
K8S_TEMPLATE = INFRA / "k8s" / "base-job-template.json"
SAMPLE_IMAGES = REPO / "examples" / "images"
FLOWS = {"compress": "compress", "restore": "restore", "train-encoder": "train_encoder", "audit": "audit"}


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}


# -- the files -------------------------------------------------------------------------------------
def test_prefect_yaml_has_a_local_and_a_gpu_deployment_of_every_flow():
    deployments = _deployments()
    assert set(deployments) == set(FLOWS) | {f"{name}-gpu" for name in FLOWS}
    for name, module in FLOWS.items():
        for deployment, pool in ((name, "sg3archive-local"), (f"{name}-gpu", "sg3archive-gpu")):
            d = deployments[deployment]
            path, function = d["entrypoint"].split(":")
            assert path == f"flows/{module}.py"
            if (REPO / path).exists():  # flows/audit.py may arrive after this file
                tree = ast.parse((REPO / path).read_text())
                assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, d["entrypoint"]
            assert d["work_pool"]["name"] == pool
    assert "image" not in deployments["compress-gpu"]["work_pool"]["job_variables"]  # the pool's image


def test_prefect_yaml_schedules_the_nightly_audit_and_holds_no_credentials():
    doc = yaml.safe_load(PREFECT_FILE.read_text())
    (nightly,) = _deployments()["audit"]["schedules"]
    assert nightly["cron"] == "0 2 * * *" and nightly["timezone"] == "UTC"
    assert "archive" in nightly["parameters"]
    (paused,) = _deployments()["audit-gpu"]["schedules"]
    assert paused["active"] is False  # one nightly audit, not two
    (step,) = doc["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $SG3ARCHIVE_REPO }}"
    text = PREFECT_FILE.read_text().lower()
    for word in ("aws_secret", "aws_access", "password", "secret_key", "api_key"):
        assert word not in text


def test_kubernetes_template_asks_for_a_gpu_and_takes_s3_keys_from_a_secret():
    template = json.loads(K8S_TEMPLATE.read_text())
    config, properties = template["job_configuration"], template["variables"]["properties"]
    used = set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", json.dumps(config)))
    assert used <= set(properties), f"undeclared template variables: {used - set(properties)}"
    pod = config["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert properties["gpu_count"]["default"] == 1
    assert pod["nodeSelector"] == "{{ node_selector }}" and properties["node_selector"]["default"]
    assert pod["tolerations"] == "{{ tolerations }}"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in properties["tolerations"]["default"]
    assert properties["image"]["default"] == "sg3archive:latest"
    env = {e["name"]: e for e in container["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["key"] == name
    uid = re.search(r"^ARG APP_UID=(\d+)$", (INFRA / "Dockerfile").read_text(), re.M).group(1)
    assert pod["securityContext"]["runAsUser"] == int(uid) and pod["securityContext"]["runAsNonRoot"]


def test_dockerfile_copies_only_what_exists_and_runs_as_a_numeric_non_root_user():
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:\S+-cuda\d+\.\d+-cudnn\d+-runtime$", text, re.M)
    assert 'pip install -c /tmp/base-torch.txt ".[flows,s3]"' in text
    assert "sg3archive lpips-weights --fetch" in text
    assert re.search(r"^USER \$\{APP_UID\}:\$\{APP_UID\}$", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), f"COPY source {source} does not exist"
    kept = (INFRA / "Dockerfile.dockerignore").read_text()
    for source in ("pyproject.toml", "README.md", "sg3archive/", "flows/", "manifests/", "infra/prefect.yaml"):
        assert f"!{source}" in kept


def test_compose_wires_server_worker_and_store_with_an_uncommitted_env_file():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"prefect-server", "s3", "deploy", "worker"} <= set(services)
    assert services["prefect-server"]["image"].startswith("prefecthq/prefect:3")
    worker = services["worker"]
    assert worker["build"] == {"context": "..", "dockerfile": "infra/Dockerfile"}
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["env_file"] == ".env"
    assert ".env" in (INFRA / ".gitignore").read_text().split()
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SG3ARCHIVE_AUDIT_ARCHIVE"} <= set(example)


# -- the commands of infra/README.md ---------------------------------------------------------------
README = INFRA / "README.md"
LOCAL_SECTION = "1. One machine"  # its bash block is run whole, in order, by the end-to-end test

# README commands of the other sections that the end-to-end test runs too (after the local block,
# against the same server), keyed as _key() spells them, with what the test checks afterwards.
RUN_FROM_OTHER_SECTIONS = {
    "dask scheduler --port 8786 &": "the scheduler the four workers join",
    "for i in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$i dask worker tcp://127.0.0.1:8786 --nworkers 1 --nthreads 1 & done":
        "four single-threaded workers, each seeing one CUDA_VISIBLE_DEVICES index",
    'jq .variables.properties.image.default = "registry.example.com/sg3archive:0.1.0" '
    "infra/k8s/base-job-template.json > /tmp/sg3archive-gpu-template.json": "the pool's image default",
    "prefect work-pool create sg3archive-gpu --type kubernetes --base-job-template /tmp/sg3archive-gpu-template.json":
        "the server accepts the template (it validates every placeholder)",
    "prefect work-pool set-concurrency-limit sg3archive-gpu 8": "the pool's concurrency limit",
    "SG3ARCHIVE_AUDIT_ARCHIVE=s3://bucket/archives/photos prefect --no-prompt deploy --prefect-file "
    "infra/prefect.yaml --name *-gpu": "four -gpu deployments on sg3archive-gpu, audit-gpu's schedule paused",
    'prefect deployment run compress/compress-gpu --params {"job": {"source": "s3://bucket/photos/", '
    '"destination": "s3://bucket/archives/photos", "device": "cuda"}}':
        "the run is created and waits for the GPU pool (no Kubernetes worker here: it never starts)",
    "python -c from prefect.client.orchestration import get_client with get_client(sync_client=True) as client: "
    'for name, active in (("audit/audit-gpu", True), ("audit/audit", False)): '
    "deployment = client.read_deployment_by_name(name) for schedule in deployment.schedules: "
    "# parameters given back, or they are cleared client.update_deployment_schedule(deployment.id, schedule.id, "
    "active=active, parameters=schedule.parameters)":
        "audit-gpu's schedule active, audit's paused, both still with their `archive`",
    "prefect deployment schedule ls audit/audit-gpu": "runs (the swap is checked through the API)",
    "prefect deployment schedule ls audit/audit": "runs (the swap is checked through the API)",
    "cp infra/.env.example infra/.env": "infra/.env (in the temporary checkout) is the example",
}

# README commands that no test runs, and why. A command added to the README fails
# test_every_readme_command_is_run_or_excused until it is run by the end-to-end test or listed here.
NOT_RUN = {
    "docker build -f infra/Dockerfile -t registry.example.com/sg3archive:0.1.0 .":
        "needs a Docker daemon and the CUDA base image (the Dockerfile's COPY sources are checked above)",
    "docker push registry.example.com/sg3archive:0.1.0": "needs the built image and a registry",
    "kubectl create namespace sg3archive": "needs a Kubernetes cluster",
    "kubectl -n sg3archive create secret generic sg3archive-s3 --from-literal=AWS_ACCESS_KEY_ID=... "
    "--from-literal=AWS_SECRET_ACCESS_KEY=... --from-literal=AWS_DEFAULT_REGION=eu-west-1":
        "needs a Kubernetes cluster",
    "helm repo add prefect https://prefecthq.github.io/prefect-helm": "needs helm and the internet",
    "helm install sg3archive-worker prefect/prefect-worker -n sg3archive --set worker.config.workPool=sg3archive-gpu "
    "--set worker.config.type=kubernetes --set worker.apiConfig=selfHostedServer "
    "--set worker.selfHostedServerApiConfig.apiUrl=http://prefect-server.prefect.svc.cluster.local:4200/api":
        "needs helm and a Kubernetes cluster",
    "docker compose -f infra/compose.yaml up --build -d": "needs a Docker daemon",
    "docker compose -f infra/compose.yaml logs deploy worker": "needs a Docker daemon (the compose services)",
    'docker compose -f infra/compose.yaml exec worker prefect deployment run compress/compress --params {"job": '
    '{"source": "/data/images", "destination": "s3://sg3archive/archives/examples", "device": "cpu", '
    '"shard_size": 4, "calibration_images": 4}}': "needs a Docker daemon (the compose worker and its moto bucket)",
    "docker compose -f infra/compose.yaml exec worker prefect deployment run audit/audit "
    '--param archive="s3://sg3archive/archives/examples" --param sample_size=4':
        "needs a Docker daemon (the compose worker and its moto bucket)",
    "docker compose -f infra/compose.yaml down": "needs a Docker daemon",
}

# How the end-to-end test runs a README command: the only differences from pasting the README's
# blocks into bash in the repository root, all applied in _Shell below.
#   (the README, the test, why)
SUBSTITUTIONS = (
    ("port 4200 (server, PREFECT_API_URL), 8786 (Dask scheduler)", "free ports",
     "no clash with a developer's server or scheduler, or with another test run"),
    ("`pip install -e '.[flows,s3]'`", "skipped", "already installed: the tests run in that environment"),
    ("`export VAR=value`", "VAR set in the environment of every later command", "a shell's state, without a shell"),
    ("`VAR=value command`", "VAR set for that command only", "as bash does"),
    ("a trailing `&`", "started in the background in its own process group, stopped when the test ends",
     "a shell job; the test cleans up after itself"),
    ("the repository root (working directory, `$PWD`, relative paths)",
     "a temporary directory: symlinks to flows/, manifests/, examples/ and a copy of infra/",
     "the runs write out/archive and out/restored, and cp writes infra/.env, there, not in the checkout"),
    ("`~/.prefect` (the server's SQLite, the CLI's profiles)", "a temporary PREFECT_HOME",
     "a fresh database; the developer's is never touched"),
    ("\"in the project's venv\"", "the directory of this Python's executables first on PATH, as activating it does",
     "`prefect`, `dask`, `python` (also those the `for` loop starts) are the environment under test"),
    ("`/tmp/sg3archive-gpu-template.json`", "a file in the test's temporary directory",
     "no shared /tmp file between test runs"),
    ("`> file`", "the command's stdout written to that file", "a shell redirect, without a shell"),
    ("`for i in 0 1 2 3; do … & done`", "that line run by `bash -c`, in the background",
     "shell syntax: the loop is the command"),
    ("(environment) PREFECT_WORKER_QUERY_SECONDS=2", "the worker polls every 2 s, not every 10 s",
     "up to 40 s less waiting for four runs"),
    ("(environment) PREFECT_LOGGING_LEVEL=INFO", "INFO logs (conftest sets WARNING)",
     "the worker's and the server's logs explain a failure"),
)


def _bash_blocks(text: str) -> list[tuple[str, str]]:
    """(section heading, body) of every ```bash block, in order."""
    section, blocks, lines = "", [], iter(text.splitlines())
    for line in lines:
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.strip() == "```bash":
            body = []
            for inner in lines:
                if inner.strip() == "```":
                    break
                body.append(inner)
            blocks.append((section, "\n".join(body)))
    return blocks


def _command_texts(block: str) -> list[str]:
    """A bash block's commands, each as its source text: a line ending in a backslash is joined to the
    next one (backslash-newline removed, as bash does), and so is a line that leaves a quote open
    (shlex tells when a command is complete). Blank and comment-only lines are left out."""
    commands, pending = [], ""
    for line in block.splitlines():
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        pending += line + "\n"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # "No closing quotation": the command goes on on the next line
            continue
        if words:
            commands.append(pending)
        pending = ""
    assert not pending.strip(), f"unterminated command at the end of a README block:\n{pending}"
    return commands


def _words(text: str) -> list[str]:
    return shlex.split(text, comments=True)


def _key(text: str) -> str:
    """A command as one line: its words (quotes removed), whitespace collapsed."""
    return " ".join(" ".join(_words(text)).split())


def _readme_commands() -> list[tuple[str, str]]:
    """(section, command text) of every command in every bash block of infra/README.md, in order."""
    return [(section, text) for section, block in _bash_blocks(README.read_text())
            for text in _command_texts(block)]


def _runs_here(section: str, text: str) -> bool:
    return section.startswith(LOCAL_SECTION) or _key(text) in RUN_FROM_OTHER_SECTIONS


def test_every_readme_command_is_run_or_excused():
    commands = _readme_commands()
    keys = [_key(text) for _, text in commands]
    local = [_key(text) for section, text in commands if section.startswith(LOCAL_SECTION)]
    assert len(local) >= 8, f"the local section's bash block was not found in {README}"
    undecided = [k for (section, text), k in zip(commands, keys) if not _runs_here(section, text) and k not in NOT_RUN]
    assert not undecided, ("README commands neither run by the end-to-end test nor listed in NOT_RUN (decide: add "
                           "them to RUN_FROM_OTHER_SECTIONS, or to NOT_RUN with a reason):\n" + "\n".join(undecided))
    assert not set(NOT_RUN) & (set(local) | set(RUN_FROM_OTHER_SECTIONS))
    stale = (set(RUN_FROM_OTHER_SECTIONS) | set(NOT_RUN)) - set(keys)
    assert not stale, "entries for commands that are no longer in the README:\n" + "\n".join(sorted(stale))
    shell = _Shell(Path("/nonexistent"), Path("/nonexistent"), {})
    for section, text in commands:
        if _runs_here(section, text):
            shell.plan(text)  # the end-to-end test knows how to run it (raises otherwise)


def test_readme_parameters_are_json_and_local_runs_wait_for_each_other():
    for section, text in _readme_commands():
        words = _words(text)
        for flag, value in zip(words, words[1:]):
            if flag == "--params":
                assert isinstance(json.loads(value), dict), text
            elif flag == "--param":
                json.loads(value.split("=", 1)[1])  # prefect reads a --param value as JSON
        # pasted in order, the runs must not overlap: the audit reads what compress wrote
        if section.startswith(LOCAL_SECTION) and words[1:3] == ["deployment", "run"]:
            assert "--watch" in words, text


def test_prefect_schedule_pause_and_resume_clear_the_schedules_parameters():
    """Why the README swaps the nightly schedules with the client and passes ``parameters`` back: the
    CLI's ``prefect deployment schedule pause/resume`` sends only ``active``, and the Prefect 3.9
    server reads the missing ``parameters`` as ``{}`` and stores that. If this fails, Prefect keeps
    them now, and the README can go back to those two commands."""
    from prefect.client.schemas.actions import DeploymentScheduleUpdate as Sent
    from prefect.server.schemas.actions import DeploymentScheduleUpdate as Received

    sent = Sent(active=False).model_dump(mode="json", exclude_unset=True)  # as the CLI's client sends it
    assert sent == {"active": False}
    # as the server's update_deployment_schedule stores it
    stored = Received.model_validate(sent).model_dump(exclude_none=True, exclude={"replaces"})
    assert stored == {"active": False, "parameters": {}}


# -- end to end ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"


class _Background:
    """A long-running process (server, worker, scheduler) in its own process group, output to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        """SIGTERM to the group (also a flow run the worker started, or the processes a shell loop left
        behind after it exited), SIGKILL to what is left after 30 s."""
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        try:
            self.proc.wait(timeout=30)
            while time.monotonic() < deadline:
                os.killpg(pgid, 0)  # ProcessLookupError once the whole group is gone
                time.sleep(0.2)
            os.killpg(pgid, signal.SIGKILL)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self._out.close()


class _Plan(NamedTuple):
    what: str  # "skip", "export", "run"
    argv: list[str]
    env: dict[str, str]  # this command's own VAR=value prefixes
    background: bool
    stdout: str | None  # the target of a `>` redirect


class _Shell:
    """Runs README commands one at a time as bash does when they are pasted in order, with
    SUBSTITUTIONS applied (and only those)."""

    def __init__(self, root: Path, tmp: Path, env: dict[str, str]) -> None:
        self.root, self.tmp, self.env = root, tmp, env
        self.ports = {"4200": _free_port(), "8786": _free_port()}
        self.jobs: list[_Background] = []
        self.outputs: dict[str, str] = {}  # command key -> its stdout

    def substitute(self, text: str) -> str:
        for port, free in self.ports.items():
            text = re.sub(rf"\b{port}\b", str(free), text)
        text = text.replace("/tmp/sg3archive-gpu-template.json", str(self.tmp / "sg3archive-gpu-template.json"))
        return text.replace("$PWD", shlex.quote(str(self.root)))

    def plan(self, text: str) -> _Plan:
        text = self.substitute(text)
        words = _words(text)
        if words[:2] == ["pip", "install"]:
            return _Plan("skip", words, {}, False, None)
        if words[0] == "export":
            return _Plan("export", [], dict(w.split("=", 1) for w in words[1:]), False, None)
        if words[0] == "for":  # a shell loop: bash runs it (its `&` inside puts each worker in the background)
            assert words[-1] == "done", text
            return _Plan("run", ["bash", "-c", text], {}, True, None)
        env = {}
        while re.fullmatch(r"[A-Za-z_]\w*=.*", words[0], re.S):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        background = words[-1] == "&"
        words = words[:-1] if background else words
        stdout = None
        if ">" in words:
            at = words.index(">")
            words, stdout = words[:at], words[at + 1]
        if words[:2] != ["python", "-c"]:
            left = [w for w in words if set(w) & set("|;<>`$")]
            assert not left, f"shell syntax the test does not handle: {left} in {text}"
        return _Plan("run", words, env, background, stdout)

    def run(self, text: str) -> None:
        key, plan = _key(text), self.plan(text)
        if plan.what == "skip":
            return
        if plan.what == "export":
            self.env.update(plan.env)
            return
        executable = shutil.which(plan.argv[0], path=self.env.get("PATH"))
        if executable is None:
            pytest.fail(f"{plan.argv[0]} is not installed here; the README command cannot run: {key}")
        argv, env = [executable, *plan.argv[1:]], dict(self.env, **plan.env)
        if plan.background:
            log = self.tmp / f"job{len(self.jobs) + 1}-{plan.argv[0]}.log"
            self.jobs.append(_Background(argv, env, log, self.root))
            return
        started = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=480,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"timed out after {exc.timeout} s: {key}\n{exc.stdout}\n{exc.stderr}\n{self.logs()}")
        if done.returncode != 0:
            pytest.fail(f"exit {done.returncode}: {key}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}\n{self.logs()}")
        self.outputs[key] = done.stdout
        print(f"{time.monotonic() - started:6.1f} s  {key[:110]}")
        if plan.stdout is not None:
            (self.root / plan.stdout).write_text(done.stdout)

    def logs(self) -> str:
        return "\n".join(f"--- {job.log.name}:\n{_tail(job.log)}" for job in self.jobs)

    def stop(self) -> None:
        for job in reversed(self.jobs):
            job.stop()


def _checkout(root: Path) -> Path:
    """A stand-in for the repository root: what the commands and the deployments read (entrypoints in
    flows/, manifests/, examples/) as symlinks, and infra/ as a copy (cp writes infra/.env into it)."""
    root.mkdir()
    for name in ("flows", "manifests", "examples"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    shutil.copytree(INFRA, root / "infra", ignore=shutil.ignore_patterns(".env"))
    return root


def _uuid_in(output: str) -> str:
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, f"no flow run id in the output of prefect deployment run:\n{output}"
    return match.group(1)


@pytest.mark.deployment
def test_readme_commands_run_as_written(tmp_path):
    """Every README command that runs without Docker, a cluster, a GPU or a bucket, as written and in
    order (SUBSTITUTIONS aside): the local section's whole block, then the Dask, GPU-pool, nightly
    audit and compose commands in RUN_FROM_OTHER_SECTIONS against the same server."""
    import pyarrow.parquet as pq
    from PIL import Image

    from sg3archive.store.archive import ArchiveStore

    root = _checkout(tmp_path / "checkout")
    venv = str(Path(sys.executable).parent)  # the README's commands run "in the project's venv"
    env = dict(os.environ, PATH=os.pathsep.join([venv, os.environ.get("PATH", os.defpath)]),
               PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_WORKER_QUERY_SECONDS="2",
               PREFECT_LOGGING_LEVEL="INFO")
    env.pop("PREFECT_API_URL", None)  # the README exports it
    shell = _Shell(root, tmp_path, env)
    try:
        for section, text in _readme_commands():
            if _runs_here(section, text):
                shell.run(text)
            else:
                assert _key(text) in NOT_RUN, f"undecided README command: {_key(text)}"
        _check_server(shell)
        _check_dask(shell)
    finally:
        shell.stop()

    # compress: 13 images (10 textures, 3 photos), 4 per shard; the second compress (the manifest)
    # resumed the archive and skipped every image, so nothing is there twice
    store = ArchiveStore.open(str(root / "out" / "archive"))
    shards = store.manifest().shards_of("images")
    assert len(shards) == 4
    assert all(store.fs.isfile(store.shard_path(s.name)) for s in shards)
    assert sum(s.rows for s in shards) == store.read_table("images").num_rows == 13
    # audit: one record, passed, 8 rows sampled
    (record,) = sorted((root / "out" / "archive" / "_audit").glob("*.parquet"))
    (row,) = pq.read_table(record).to_pylist()
    assert row["passed"] is True and row["sampled"] == 8
    # restore: every source image back as a PNG under its name relative to the source, at its size
    sources = {p.relative_to(SAMPLE_IMAGES).with_suffix(".png").as_posix(): Image.open(p).size
               for p in SAMPLE_IMAGES.rglob("*") if p.is_file()}
    restored_dir = root / "out" / "restored"
    restored = {}
    for p in sorted(restored_dir.rglob("*")):
        if p.is_file():
            with Image.open(p) as img:
                img.load()
                restored[p.relative_to(restored_dir).as_posix()] = img.size
    assert restored == sources
    # the compose section's cp
    assert (root / "infra" / ".env").read_text() == (INFRA / ".env.example").read_text()


def _check_server(shell: _Shell) -> None:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(shell.env["PREFECT_API_URL"]) as client:
        pools = {d.name: d.work_pool_name for d in client.read_deployments()}
        assert pools == {**{name: "sg3archive-local" for name in FLOWS},
                         **{f"{name}-gpu": "sg3archive-gpu" for name in FLOWS}}
        # SG3ARCHIVE_AUDIT_ARCHIVE was read at deploy time; the nightly section moved the audit to the GPU
        # pool and both schedules kept their parameters
        (nightly,) = client.read_deployment_by_name("audit/audit").schedules
        assert nightly.schedule.cron == "0 2 * * *" and nightly.schedule.timezone == "UTC"
        assert nightly.parameters["archive"] == "s3://my-bucket/archives/main" and not nightly.active
        (gpu_nightly,) = client.read_deployment_by_name("audit/audit-gpu").schedules
        assert gpu_nightly.parameters["archive"] == "s3://bucket/archives/photos" and gpu_nightly.active
        pool = client.read_work_pool("sg3archive-gpu")
        assert pool.type == "kubernetes" and pool.concurrency_limit == 8
        image = pool.base_job_template["variables"]["properties"]["image"]["default"]
        assert image == "registry.example.com/sg3archive:0.1.0"  # jq's edit
        (key,) = [k for k in shell.outputs if k.startswith("prefect deployment run compress/compress-gpu ")]
        waiting = client.read_flow_run(_uuid_in(shell.outputs[key]))
        assert waiting.work_pool_name == "sg3archive-gpu" and waiting.state.is_scheduled()


def _check_dask(shell: _Shell) -> None:
    from distributed import Client

    with Client(f"tcp://127.0.0.1:{shell.ports['8786']}", timeout=60) as client:
        client.wait_for_workers(4, timeout=120)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert sorted(w["nthreads"] for w in workers.values()) == [1, 1, 1, 1]
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == ["0", "1", "2", "3"]
