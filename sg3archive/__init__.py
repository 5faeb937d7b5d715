"""sg3archive: archive image collections as entropy-coded StyleGAN3 W+ codes.

The library works without Prefect; ``flows/`` only orchestrates it.
"""

__version__ = "0.1.0"

from sg3archive.checkpoints.loader import load_network  # noqa: E402

__all__ = ["__version__", "load_network"]
