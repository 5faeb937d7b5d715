"""How well an encoder reconstructs held-out synthetic images, against the mean-latent image.

The baseline ``G(w_avg)`` is what a generator gives with no information about the image; an
encoder is only useful well above it. Held-out images use their own seed, disjoint from the
seeds training draws from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from sg3archive.encoding import encode_images
from sg3archive.metrics import ms_ssim, psnr
from sg3archive.networks.generator import Generator
from sg3archive.training.data import SyntheticPairs

HELD_OUT_SEED = 1_000_003


@torch.no_grad()
def evaluate_encoder(G: torch.nn.Module, encoder: torch.nn.Module, num_images: int = 64, *,
                     seed: int = HELD_OUT_SEED, batch_size: int = 16, truncation_psi: float = 0.7,
                     lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     progress: bool = False) -> dict[str, dict]:
    """Mean PSNR (dB), MS-SSIM and LPIPS (when ``lpips`` is given) of ``G(E(x))`` and of
    ``G(w_avg)`` against ``num_images`` synthetic images ``x`` (style-mixed, ψ = ``truncation_psi``).
    ``progress`` shows a bar (stderr) over the images. ``G`` is a StyleGAN3 :class:`Generator`
    (what :func:`sg3archive.load_network` returns)."""
    if not isinstance(G, Generator):
        raise TypeError(f"G must be a StyleGAN3 Generator (from sg3archive.load_network), got {type(G).__name__}")
    pairs = SyntheticPairs(G, truncation_psi=truncation_psi)
    gen = torch.Generator().manual_seed(seed)
    device = G.mapping.w_avg.device
    sums: dict[str, dict[str, float]] = {"encoder": {}, "mean_latent": {}}
    mean_image = G.synthesis(G.mapping.w_avg.to(device).expand(1, G.num_ws, -1)).clamp(-1, 1)  # the same for all
    bar = tqdm(total=num_images, desc="evaluate encoder", unit="img", disable=not progress)
    for start in range(0, num_images, batch_size):
        x, _ = pairs(min(batch_size, num_images - start), gen)
        bar.update(len(x))
        ws = encode_images(encoder, x, batch_size)
        recon = {"encoder": G.synthesis(ws).clamp(-1, 1), "mean_latent": mean_image.expand(len(x), -1, -1, -1)}
        for name, y in recon.items():
            vals = {"psnr": psnr(y, x), "ms_ssim": ms_ssim(y, x)}
            if lpips is not None:
                vals["lpips"] = lpips(y, x)
            for k, v in vals.items():
                sums[name][k] = sums[name].get(k, 0.0) + float(v.sum())
    bar.close()
    return {name: {k: v / num_images for k, v in vals.items()} for name, vals in sums.items()}
