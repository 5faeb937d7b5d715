"""The deployment files in infra/: checked as files, then used end to end as an operator would.

The end-to-end test starts a real ``prefect server``, creates the work pools, deploys every
deployment in ``infra/prefect.yaml``, starts ``compress`` and then ``audit`` with ``prefect
deployment run`` and lets one ``prefect worker`` (a separate process, as in production) run
them; 60–85 s on 2 CPU cores. Deselect it with ``-m "not deployment"``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


# -- end to end ------------------------------------------------------------------------------------
def _prefect_executable() -> str | None:
    beside = Path(sys.executable).parent / "prefect"
    return str(beside) if beside.exists() else shutil.which("prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"


class _Background:
    """A long-running CLI process (server, worker) in its own process group, output to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group: also a flow run the worker started
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._out.close()


@pytest.fixture
def prefect_server(tmp_path):
    """A real ``prefect server start`` on a free port, with its own PREFECT_HOME (SQLite)."""
    prefect = _prefect_executable()
    if prefect is None:
        pytest.skip("the prefect executable is not installed (pip install -e '.[flows]')")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1", PREFECT_LOGGING_LEVEL="INFO", PREFECT_WORKER_QUERY_SECONDS="2", COLUMNS="200",
        SG3ARCHIVE_REPO=str(REPO),  # read by the deployments' pull step when a run starts
    )
    # the scheduler would add tonight's audit run: not wanted here
    server = _Background([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui",
                          "--no-scheduler"], env, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not become healthy:\n{_tail(server.log)}")
            time.sleep(0.5)
        yield prefect, api, env
    finally:
        server.stop()


def _cli(prefect: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([prefect, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _run_deployment(prefect: str, env: dict[str, str], name: str, parameters: dict) -> str:
    out = _cli(prefect, env, "deployment", "run", name, "--params", json.dumps(parameters))
    match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert match, f"no flow run id in the output of prefect deployment run:\n{out}"
    return match.group(1)


def _wait_until_final(client, run_id: str, worker: _Background, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            break
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(1)
    if run.state is None or not run.state.is_completed():
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        lines = "\n".join(log.message for log in logs[-40:])
        pytest.fail(f"flow run {run.name} ({run_id}) ended {run.state!r}\nrun logs:\n{lines}\n"
                    f"worker log:\n{_tail(worker.log)}")
    return run


@pytest.mark.deployment
def test_compress_then_audit_through_deployments_and_a_worker(prefect_server, tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    import pyarrow.parquet as pq

    from sg3archive.store.archive import ArchiveStore

    prefect, api, env = prefect_server
    source, archive = tmp_path / "images", tmp_path / "archive"
    shutil.copytree(SAMPLE_IMAGES, source)
    env = dict(env, SG3ARCHIVE_AUDIT_ARCHIVE=str(archive))  # the nightly schedule's archive, read at deploy time

    _cli(prefect, env, "work-pool", "create", "sg3archive-local", "--type", "process")
    # the server validates the Kubernetes template (every placeholder declared) when the pool is made
    _cli(prefect, env, "work-pool", "create", "sg3archive-gpu", "--type", "kubernetes",
         "--base-job-template", str(K8S_TEMPLATE))
    _cli(prefect, env, "work-pool", "set-concurrency-limit", "sg3archive-gpu", "2")  # = number of GPUs
    _cli(prefect, env, "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE.relative_to(REPO)))

    with SyncPrefectClient(api) as client:
        audit = client.read_deployment_by_name("audit/audit")
        (schedule,) = audit.schedules
        assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC" and schedule.active
        assert schedule.parameters["archive"] == str(archive)
        gpu = client.read_deployment_by_name("compress/compress-gpu")
        assert gpu.work_pool_name == "sg3archive-gpu"
        pool = client.read_work_pool("sg3archive-gpu")
        assert pool.concurrency_limit == 2
        assert pool.base_job_template["variables"]["properties"]["image"]["default"] == "sg3archive:latest"

        compress_id = _run_deployment(prefect, env, "compress/compress", {"job": {
            "source": str(source), "destination": str(archive), "device": "cpu", "shard_size": 4,
            "calibration_images": 4}})
        worker = _Background([prefect, "worker", "start", "--pool", "sg3archive-local", "--limit", "1"], env,
                             tmp_path / "worker.log")
        try:
            _wait_until_final(client, compress_id, worker, timeout=300)
            store = ArchiveStore.open(str(archive))
            shards = store.manifest().shards_of("images")
            assert len(shards) == 3  # 10 images, 4 per shard
            assert all(store.fs.isfile(store.shard_path(s.name)) for s in shards)
            assert sum(s.rows for s in shards) == store.read_table("images").num_rows == 10

            audit_id = _run_deployment(prefect, env, "audit/audit", {"archive": str(archive), "sample_size": 4})
            _wait_until_final(client, audit_id, worker, timeout=300)
        finally:
            worker.stop()

    (record,) = sorted((archive / "_audit").glob("*.parquet"))
    (row,) = pq.read_table(record).to_pylist()
    assert row["passed"] is True and row["sampled"] == 4
