"""Shared test fixtures: where the StyleGAN3 reference data (official-code outputs) lives."""

from __future__ import annotations

from pathlib import Path

import pytest

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
