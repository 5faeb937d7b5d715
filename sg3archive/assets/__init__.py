"""Files shipped inside the package: the default network used when a command names none."""

from __future__ import annotations

from pathlib import Path

DEFAULT_NETWORK_DIR = Path(__file__).resolve().parent / "default_network"

# How DEFAULT_NETWORK_DIR was made, and what re-running that command gives: README.md ("Networks").


def default_network_url() -> str:
    """Path of the bundled default network directory (a generator G_ema with random, seeded weights)."""
    return str(DEFAULT_NETWORK_DIR)


DEFAULT_ENCODER_DIR = Path(__file__).resolve().parent / "default_encoder"


def default_encoder_url() -> str:
    """Path of the bundled default encoder, trained against the bundled default network (see
    ``DEFAULT_ENCODER_COMMAND`` in ``sg3archive/assets/default_encoder/README.md``)."""
    return str(DEFAULT_ENCODER_DIR)
