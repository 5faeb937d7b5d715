"""The audit opens a source only by an allowlist of schemes (red-team finding F3): a crafted row
naming ``simplecache::http://``, ``ftp://``, ``sftp://``, ``memory://``, ``blockcache::file://`` or
``data:`` (each with a matching recorded root) is listed as refused, naming its scheme, and no
connection is ever made; any error while reading one allowed source is that source's
``unreadable`` entry, and the audit goes on."""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import threading
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
from small_archives import LATENT_ONLY

from sg3archive.audit import run_audit
from sg3archive.audit.sources import OBJECT_STORE_SCHEMES, allowed_source
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.format import image_id

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts. By default it greets
    each one with an FTP-style banner (so an FTP client would log in) and closes it after the
    first bytes; with ``truncate`` it answers HTTP: a HEAD promises 1000 bytes, a GET sends 10 and
    hangs up (the client's error is no OSError)."""

    def __init__(self, truncate: bool = False) -> None:
        self.truncate = truncate
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the accept timeout, or the socket closed
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    if not self.truncate:
                        conn.sendall(b"220 hi\r\n")
                    request = conn.recv(4096)
                    if self.truncate:
                        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
                        conn.sendall(head if request.startswith(b"HEAD") else head + b"0123456789")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """An archive of two real images plus a shard of crafted rows (copies of a real row, whose
    source bytes are the real image's, so a read would "compare"), each naming a scheme the audit
    must never open and a matching recorded ``source_root``; plus one plain ``http://`` row on a
    listener that sends a truncated body (read only with allow_http_sources)."""
    trap, garbage = Listener(), Listener(truncate=True)
    root = tmp_path_factory.mktemp("schemes")
    src = root / "src"
    src.mkdir()
    for path in sorted(SAMPLES.glob("*.png"))[:2]:
        shutil.copy(path, src / path.name)
    archive = root / "archive"
    compress(CompressJob(source=str(src), destination=str(archive), device="cpu", shard_size=2,
                         calibration_images=2, **LATENT_ONLY), progress=False)
    store = ArchiveStore.open(str(archive))
    real = store.read_table("images").slice(0, 1).to_pylist()[0]
    data = (src / real["source_uri"].rsplit("/", 1)[-1]).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    memory = fsspec.filesystem("memory")
    memory.pipe("/sg3-audit-schemes/d.png", data)  # a read of the memory:// row would succeed
    local = src.as_uri()  # file:///…/src
    host = f"127.0.0.1:{trap.port}"
    refused = {  # uri: (recorded root, the scheme its reason must name)
        f"simplecache::http://{host}/a.png": (f"simplecache::http://{host}", "simplecache::http"),
        f"ftp://{host}/b.png": (f"ftp://{host}", "ftp"),
        f"sftp://{host}/c.png": (f"sftp://{host}", "sftp"),
        "memory://sg3-audit-schemes/d.png": ("memory://sg3-audit-schemes", "memory"),
        f"blockcache::{local}/{real['source_uri'].rsplit('/', 1)[-1]}": (f"blockcache::{local}", "blockcache::file"),
        "data:image/png;base64," + base64.b64encode(data).decode(): ("data:image", "data"),
    }
    http = f"http://127.0.0.1:{garbage.port}/e.png"
    rows = [dict(real, source_uri=uri, source_root=root_, source_sha256=sha, id=image_id(uri, sha))
            for uri, (root_, _) in [*refused.items(), (http, (f"http://127.0.0.1:{garbage.port}", "http"))]]
    table = pa.Table.from_pylist(rows, schema=store.read_table("images").schema)
    store.commit([store.write_shard(table, "images")])
    yield archive, refused, http, trap, garbage
    trap.close()
    garbage.close()
    memory.rm("/sg3-audit-schemes", recursive=True)


def _by_uri(result) -> dict[str, dict]:
    return {u["uri"]: u for u in result.unverified_sources}


def test_unlisted_schemes_and_chains_are_refused_and_never_opened(crafted) -> None:
    archive, refused, http, trap, garbage = crafted
    result = run_audit(str(archive), sample_size=9, seed=1, device="cpu", lpips=False)
    assert result.sampled == 9 and result.compared == 2, result.unverified_sources  # the real rows only
    assert trap.connections == 0 and garbage.connections == 0  # not one request, login or probe
    found = _by_uri(result)
    for uri, (_, scheme) in refused.items():
        assert found[uri]["kind"] == "refused", found[uri]
        assert scheme in found[uri]["reason"], found[uri]
    assert found[http]["kind"] == "refused" and "allow_http_sources" in found[http]["reason"]
    assert result.passed, result.problems  # refused sources are not archive damage


def test_a_failing_read_is_one_unreadable_source_and_the_audit_goes_on(crafted) -> None:
    """With allow_http_sources the plain http row is read; its server hangs up mid-body, and the
    client's error (not an OSError) is that row's ``unreadable`` entry. Chains stay refused."""
    archive, refused, http, trap, garbage = crafted
    result = run_audit(str(archive), sample_size=9, seed=1, device="cpu", lpips=False, allow_http_sources=True)
    assert result.sampled == 9 and result.compared == 2
    assert trap.connections == 0 and garbage.connections > 0
    found = _by_uri(result)
    assert found[http]["kind"] == "unreadable", found[http]
    assert found[http]["reason"].startswith(f"source unreadable: {http}: ")
    assert {found[u]["kind"] for u in refused} == {"refused"}


def test_allowed_source_scheme_table(tmp_path) -> None:
    (tmp_path / "a::b.png").write_bytes(b"x")
    base = tmp_path.as_uri()
    for scheme in OBJECT_STORE_SCHEMES:
        assert allowed_source(f"{scheme}://b/k/x.png", [f"{scheme}://b/k"]).read == f"{scheme}://b/k/x.png"
    assert allowed_source(f"{base}/a::b.png", [base]).read == str(tmp_path / "a::b.png")  # '::' in a file name
    assert allowed_source(str(tmp_path / "a::b.png"), [base]).read == str(tmp_path / "a::b.png")
    assert allowed_source("local://" + str(tmp_path / "a::b.png"), [base]).read == str(tmp_path / "a::b.png")
    assert allowed_source("http://h/x.png", ["http://h"], allow_http=True).read == "http://h/x.png"
    refused = {  # uri: (its matching root, what the reason names)
        "ftp://h/x.png": ("ftp://h", "ftp://"),
        "sftp://h/x.png": ("sftp://h", "sftp://"),
        "ssh://h/x.png": ("ssh://h", "ssh://"),
        "smb://h/s/x.png": ("smb://h/s", "smb://"),
        "hdfs://h/x.png": ("hdfs://h", "hdfs://"),
        "webhdfs://h/x.png": ("webhdfs://h", "webhdfs://"),
        "github://o:r@main/x.png": ("github://o:r@main", "github://"),
        "git://repo/x.png": ("git://repo", "git://"),
        "memory://b/x.png": ("memory://b", "memory://"),
        "simplecache::http://h/x.png": ("simplecache::http://h", "simplecache::http"),
        "simplecache::s3://b/k/x.png": ("simplecache::s3://b/k", "simplecache::s3"),
        f"blockcache::{base}/a::b.png": (f"blockcache::{base}", "blockcache::file"),
        "s3://b/k/x.png::http://h/y": ("s3://b/k", "'::'"),
        "data:image/png;base64,AAAA": ("data:image", "data:"),
        "https://h/x.png": ("https://h", "allow_http_sources"),
        "relative/x.png": ("file:///", "not a URL the audit reads"),
    }
    for uri, (root, words) in refused.items():
        decision = allowed_source(uri, [root])
        assert decision.read is None and words in decision.reason, (uri, decision)
    # a chained or unlisted root admits nothing, even for a source that would be read elsewhere
    assert allowed_source("http://h/x.png", ["simplecache::http://h"], allow_http=True).read is None
    assert allowed_source("s3://b/k/x.png", ["simplecache::s3://b/k"]).read is None
