"""A real S3 endpoint for tests: moto's server on 127.0.0.1, reached through s3fs like any S3.

Use the fixtures (in tests/conftest.py)::

    def test_something(s3_bucket):            # a fresh, empty bucket per test
        url, storage_options = s3_bucket.url, s3_bucket.storage_options

or, outside pytest, ``with moto_s3_server() as server: url = create_bucket(server)``.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

REGION = "eu-west-1"  # moto rejects us-east-1 as an explicit location constraint
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


class S3Endpoint(NamedTuple):
    """A running S3 server: its URL and the s3fs storage_options that reach it (unpacks as a pair)."""

    endpoint_url: str
    storage_options: dict[str, Any]


class S3Bucket(NamedTuple):
    """A bucket on an S3Endpoint: ``url`` is ``s3://<bucket>`` (unpacks as url, storage_options, name)."""

    url: str
    storage_options: dict[str, Any]
    name: str


def storage_options_for(endpoint_url: str) -> dict[str, Any]:
    """s3fs options for a local S3 endpoint with dummy credentials (never the environment's)."""
    return {
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "client_kwargs": {"endpoint_url": endpoint_url, "region_name": REGION},
        "skip_instance_cache": True,
    }


@contextlib.contextmanager
def moto_s3_server() -> Iterator[S3Endpoint]:
    """Run moto's S3 server on 127.0.0.1 on a free port for the duration of the block."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        yield S3Endpoint(endpoint_url=endpoint_url, storage_options=storage_options_for(endpoint_url))
    finally:
        server.stop()


def create_bucket(endpoint: S3Endpoint, name: str | None = None) -> S3Bucket:
    """Create a bucket (a fresh random name unless given) in REGION and return it."""
    import s3fs

    name = name or f"test-{uuid.uuid4().hex[:16]}"
    fs = s3fs.S3FileSystem(**endpoint.storage_options)
    fs.mkdir(name, region_name=REGION)
    return S3Bucket(url=f"s3://{name}", storage_options=dict(endpoint.storage_options), name=name)


def s3_server_fixture(scope: str = "session"):
    """A pytest fixture yielding an S3Endpoint for the whole ``scope``: ``s3_server = s3_server_fixture()``."""

    @pytest.fixture(scope=scope)
    def s3_server() -> Iterator[S3Endpoint]:
        with moto_s3_server() as endpoint:
            yield endpoint

    return s3_server


def s3_bucket_fixture(server_fixture: str = "s3_server"):
    """A function-scoped pytest fixture giving a fresh S3Bucket on the server fixture of that name."""

    @pytest.fixture
    def s3_bucket(request: pytest.FixtureRequest) -> S3Bucket:
        return create_bucket(request.getfixturevalue(server_fixture))

    return s3_bucket
