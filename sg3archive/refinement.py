"""Rate–distortion refinement: encode-time optimization of W+ for what the archive will store.

The encoder's latent is a first guess. Refinement moves it, by Adam steps through the generator,
to lower ``−PSNR + λ · bytes`` of the *coded* latent: the synthesis sees the codec's quantized
values (straight-through rounding, :meth:`~sg3archive.codec.LatentCodec.quantized`) and the rate
is the codec's own code length for those indices, so the result survives quantization and costs
few bytes. Each image keeps the best coded latent any step reached (measured, not predicted: the
objective is evaluated on the quantized values), and an image stops as soon as its coded
reconstruction meets the quality contract's floors at the generator's resolution, or when it is
already met by the first guess.

``λ`` is in dB per byte: a byte is spent only where it buys at least λ dB of PSNR. When the
contract has an LPIPS ceiling and an LPIPS model is given, each 0.01 of LPIPS counts as
:data:`LPIPS_DB` / 100 dB in the distortion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sg3archive.codec.errors import CodecError
from sg3archive.codec.names import DEFAULT_RD_LAMBDA
from sg3archive.metrics import ms_ssim

if TYPE_CHECKING:
    from sg3archive.codec import LatentCodec
    from sg3archive.networks.generator import Generator
    from sg3archive.quality.contract import QualityContract

DEFAULT_LR = 0.01  # Adam step on W+
LPIPS_DB = 100.0  # dB one unit of LPIPS counts as in the distortion


@dataclass(frozen=True)
class Refined:
    """The refined W+ ``[N, num_ws, w_dim]`` (each image's best coded latent) and the steps each
    image ran before it met the contract or the step budget ended."""

    ws: torch.Tensor
    steps: list[int]


def _psnr(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1], differentiable."""
    mse = (recon - images).square().mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


def _meets(contract: QualityContract | None, recon: torch.Tensor, images: torch.Tensor, psnr: torch.Tensor,
           lpips: torch.Tensor | None) -> torch.Tensor:
    """Which images' coded reconstructions (``recon``, already clamped, with their ``psnr``) meet the
    contract's floors at this resolution (never an image the contract cannot judge: no floors,
    lossless, or an LPIPS ceiling without LPIPS)."""
    n = len(images)
    if contract is None or contract.lossless or not contract.floors:
        return torch.zeros(n, dtype=torch.bool)
    met = torch.ones(n, dtype=torch.bool)
    if contract.min_psnr is not None:
        met &= psnr.detach().cpu() >= contract.min_psnr
    if contract.min_ms_ssim is not None:
        met &= ms_ssim(recon.detach(), images).cpu() >= contract.min_ms_ssim
    if contract.max_lpips is not None:
        met &= torch.zeros(n, dtype=torch.bool) if lpips is None else lpips.detach().cpu() <= contract.max_lpips
    return met


def rd_refine(
    G: Generator,
    ws: torch.Tensor,
    images: torch.Tensor,
    codec: LatentCodec,
    *,
    steps: int,
    rd_lambda: float = DEFAULT_RD_LAMBDA,
    lr: float = DEFAULT_LR,
    contract: QualityContract | None = None,
    perceptual: torch.nn.Module | None = None,
) -> Refined:
    """Refine ``ws`` (W+ of ``images [N, 3, R, R]`` in [-1, 1], on G's device) for ``steps`` Adam
    steps on ``−PSNR + rd_lambda · bytes`` of the coded latent (module docstring); with
    ``perceptual`` (an LPIPS model) and an LPIPS ceiling in ``contract``, LPIPS joins the distortion."""
    n = len(ws)
    if steps <= 0 or n == 0:
        return Refined(ws, [0] * n)
    G.requires_grad_(False)
    lpips_model = perceptual if contract is not None and contract.max_lpips is not None else None
    w = ws.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    best = ws.detach().clone()
    best_obj = torch.full((n,), float("inf"), dtype=torch.float64)
    active = torch.ones(n, dtype=torch.bool)
    ran = torch.zeros(n, dtype=torch.long)
    for step in range(steps + 1):
        try:
            w_hat, bits = codec.quantized(w)
        except CodecError:  # a step left the codec's range: keep the best coded latents found so far
            break
        raw = G.synthesis(w_hat)
        # What restore writes is clamped to [-1, 1]; the gradient passes where the clamp cuts, so a
        # pixel beyond the range is still pulled back towards an original inside it.
        recon = raw + (raw.clamp(-1, 1) - raw).detach()
        psnr = _psnr(recon, images)
        lp = lpips_model(recon, images).reshape(n) if lpips_model is not None else None
        obj = -psnr + rd_lambda * bits / 8 + (LPIPS_DB * lp if lp is not None else 0)
        value = obj.detach().to("cpu", torch.float64)
        better = active & (value < best_obj)
        best[better.to(best.device)] = w.detach()[better.to(w.device)]
        best_obj = torch.where(better, value, best_obj)
        met = _meets(contract, recon, images, psnr, lp) & active
        if met.any():  # an image that meets the contract keeps this (already coded) latent
            best[met.to(best.device)] = w.detach()[met.to(w.device)]
            active &= ~met
        if step == steps or not active.any():
            break
        opt.zero_grad(set_to_none=True)
        (obj * active.to(obj.device, obj.dtype)).sum().backward()
        opt.step()
        ran += active
    return Refined(best, ran.tolist())


__all__ = ["LPIPS_DB", "Refined", "rd_refine"]
