"""sg3archive: archive image collections as entropy-coded StyleGAN3 W+ codes.

The library works without Prefect; ``flows/`` only orchestrates it. Subpackages import only
what they need (``sg3archive.codec`` never imports the networks), so the top-level names are
resolved lazily (:mod:`sg3archive.lazy`).

Where things live (each package's docstring lists its modules):

* ``networks/``, ``ops/``, ``checkpoints/``: StyleGAN3 networks and encoders, their ops, reading
  official pickles and our own network files (``load_network``).
* ``codec/``: the latent codec (``LatentCodec``), its coder and profile names.
* ``images/``: sources, decoding, fitting to the square and back, tensors, thumbnails.
* ``store/``: the archive on disk or any fsspec URL — format, manifest, shards, codec, ``_plans/``, ``_audit/``.
* ``pipeline/``: job models, ``ArchiveSession``, compress, restore, inspect.
* ``audit/``: the nightly audit, its thresholds, history and report.
* ``training/``: ``TrainJob`` and the encoder's training loop; ``metrics/``: PSNR, MS-SSIM, LPIPS.
* ``settings.py`` (the only reader of environment variables), ``errors.py`` (the base error),
  ``atomic.py`` (whole-or-nothing writes), ``text.py`` (printing untrusted text), ``cli.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sg3archive.lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["__version__", "load_network", "printable"]
__getattr__, __dir__ = lazy_exports(__name__, {"load_network": ".checkpoints.loader", "printable": ".text"})

if TYPE_CHECKING:
    from sg3archive.checkpoints.loader import load_network
    from sg3archive.text import printable
