"""Images → W+ with a trained encoder, and optional encode-time refinement.

Refinement runs a few Adam steps on W+ itself, starting from the encoder's mean, to lower the
image loss of ``G.synthesis(ws)`` against the input: better fidelity for a stated time cost
(each step is one generator forward and backward pass per batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sg3archive.networks.generator import Generator


@torch.no_grad()
def encode_images(encoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """W+ means ``[N, num_ws, w_dim]`` of ``images [N, C, R, R]`` in [-1, 1] (encoder in eval mode)."""
    out = [encoder(images[i : i + batch_size]).mean for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def refine_latents(
    G: Generator,
    ws: torch.Tensor,
    images: torch.Tensor,
    steps: int = 20,
    lr: float = 0.01,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    perceptual_weight: float = 0.8,
) -> torch.Tensor:
    """W+ after ``steps`` Adam steps minimizing pixel MSE (+ ``perceptual_weight`` × LPIPS when
    a perceptual metric is given) of ``G.synthesis(ws)`` against ``images``."""
    if steps <= 0:
        return ws
    G.requires_grad_(False)
    ws = ws.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=lr)
    for _ in range(steps):
        recon = G.synthesis(ws)
        loss = torch.nn.functional.mse_loss(recon, images)
        if perceptual is not None and perceptual_weight:
            loss = loss + perceptual_weight * perceptual(recon, images).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return ws.detach()
