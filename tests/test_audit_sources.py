"""The audit reads only the archive's own sources (issue 11, item 8): a crafted row naming a
loopback metadata-style URL or a file outside the compressed folder is listed as refused and
never fetched or read; http(s) only when the job allows it and names its root."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from small_archives import LATENT_ONLY

from sg3archive.audit import run_audit
from sg3archive.audit.sources import allowed_source
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import AuditJob, CompressJob
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.format import image_id

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """An archive of two real images plus a shard of crafted rows (copies of a real row whose
    source_uri names an http URL, a file outside the source folder, and a symlink inside it
    leading outside), and a tiny HTTP server counting the requests it receives."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            requests.append(self.path)
            body = b"instance-secret"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    root = tmp_path_factory.mktemp("sources")
    src, outside = root / "src", root / "outside"
    src.mkdir()
    outside.mkdir()
    for path in sorted(SAMPLES.glob("*.png"))[:2]:
        shutil.copy(path, src / path.name)
    archive = root / "archive"
    compress(CompressJob(source=str(src), destination=str(archive), device="cpu", shard_size=2,
                         calibration_images=2, **LATENT_ONLY), progress=False)
    store = ArchiveStore.open(str(archive))
    real = store.read_table("images").slice(0, 1).to_pylist()[0]
    secret = outside / "secret.png"
    shutil.copy(src / real["source_uri"].rsplit("/", 1)[-1], secret)  # the same bytes: a read would "compare"
    (src / "link.png").symlink_to(secret)
    url = f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data"
    uris = {"http": url, "outside": secret.as_uri(), "symlink": (src / "link.png").as_uri()}
    rows = []
    for uri in uris.values():
        sha = hashlib.sha256(secret.read_bytes()).hexdigest()
        rows.append(dict(real, source_uri=uri, source_sha256=sha, id=image_id(uri, sha)))
    table = pa.Table.from_pylist(rows, schema=store.read_table("images").schema)
    store.commit([store.write_shard(table, "images")])
    yield archive, src, uris, requests, server
    server.shutdown()


def _by_uri(result) -> dict[str, dict]:
    return {u["uri"]: u for u in result.unverified_sources}


def test_crafted_rows_are_refused_and_never_fetched(crafted) -> None:
    archive, src, uris, requests, _ = crafted
    result = run_audit(str(archive), sample_size=5, seed=1, device="cpu", lpips=False)
    assert result.sampled == 5 and result.compared == 2  # the two real rows only
    assert requests == []  # no request reached the server
    found = _by_uri(result)
    assert {found[u]["kind"] for u in uris.values()} == {"refused"}
    assert "http(s) URL" in found[uris["http"]]["reason"] and "allow_http_sources" in found[uris["http"]]["reason"]
    assert "outside the archive's recorded source root" in found[uris["outside"]]["reason"]
    assert "through a symlink" in found[uris["symlink"]]["reason"]
    assert result.passed, result.problems  # refused sources are not archive damage


def test_http_sources_only_when_allowed_and_under_a_named_root(crafted) -> None:
    archive, src, uris, requests, _ = crafted
    url = uris["http"]
    root = url.rsplit("/", 1)[0]
    result = run_audit(str(archive), sample_size=5, seed=1, device="cpu", lpips=False,
                       source_roots=[root], allow_http_sources=True)
    assert requests and set(requests) == {"/latest/meta-data"}  # fsspec's http may ask more than once
    found = _by_uri(result)
    assert found[url]["kind"] == "changed"  # fetched: what it served is not the recorded image
    assert found[uris["outside"]]["kind"] == "refused"  # the job's roots replace the recorded ones
    assert "outside the audit job's source_roots" in found[uris["outside"]]["reason"]
    requests.clear()


def test_audit_job_fields() -> None:
    job = AuditJob(archive="a", source_roots=["/data/photos"], allow_http_sources=True)
    assert job.source_roots == ["/data/photos"] and job.allow_http_sources
    assert AuditJob(archive="a").allow_http_sources is False and AuditJob(archive="a").source_roots == []


def test_allowed_source_rules(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"x")
    os.mkfifo(root / "pipe.png")  # would block a reader forever
    base = root.as_uri()
    assert allowed_source(f"{base}/sub/a.png", [base]).read == str(root / "sub" / "a.png")
    assert allowed_source(f"{base}/missing.png", [base]).read is not None  # reading it reports it missing
    refused = {
        f"{base}/../secret.png": "'..'",
        f"{base}/pipe.png": "not a regular file",
        f"{base}x/a.png": "outside",
        "s3://other-bucket/root/a.png": "outside",
        "https://169.254.169.254/latest/meta-data": "http(s)",
        "file://otherhost/etc/passwd": "not a URL the audit reads",
    }
    for uri, words in refused.items():
        decision = allowed_source(uri, [base])
        assert decision.read is None and words in decision.reason, (uri, decision)
    assert allowed_source("s3://b/k/x.png", ["s3://b/k"]).read == "s3://b/k/x.png"
    assert allowed_source("s3://b/kx/x.png", ["s3://b/k"]).read is None
    assert allowed_source("s3://b/k/x.png", ["gs://b/k"]).read is None
    assert allowed_source("s3://b/list/x.png", ["s3://b/list/uris.txt"]).read == "s3://b/list/x.png"
    assert "records no source root" in allowed_source(f"{base}/sub/a.png", []).reason


def test_cli_source_root_replaces_the_recorded_roots(crafted, tmp_path) -> None:
    """`audit --source-root DIR` reads sources only under DIR: the archive's own sources, outside
    it, are listed as refused instead of compared."""
    import json

    from click.testing import CliRunner

    from sg3archive.cli import main

    archive, src, uris, requests, _ = crafted
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = CliRunner().invoke(main, ["audit", str(archive), "--device", "cpu", "--sample", "8", "--json",
                                    "--source-root", str(elsewhere)])
    record = json.loads(res.stdout)
    assert record["compared"] == 0, record
    refused = [u for u in record["unverified_sources"] if u["kind"] == "refused"]
    assert len(refused) == 5 and not requests
    assert all("source_roots" in u["reason"] or "http" in u["reason"] for u in refused), refused
