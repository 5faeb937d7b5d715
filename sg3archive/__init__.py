"""sg3archive: archive image collections as entropy-coded StyleGAN3 W+ codes.

The library works without Prefect; ``flows/`` only orchestrates it. Subpackages import only
what they need (``sg3archive.codec`` never imports the networks), so the top-level name
``load_network`` is resolved lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_network"]


def __getattr__(name: str) -> Any:
    if name == "load_network":
        from sg3archive.checkpoints.loader import load_network

        return load_network
    raise AttributeError(f"module 'sg3archive' has no attribute {name!r}")
