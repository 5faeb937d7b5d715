"""How strongly each W+ layer of a generator moves its images: weights for bit allocation."""

from __future__ import annotations

import numpy as np
import torch

from sg3archive.networks.generator import Generator


@torch.no_grad()
def layer_sensitivity(G: Generator, ws: torch.Tensor, scale: float = 0.05, seed: int = 0) -> np.ndarray:
    """Image MSE per unit of W-space MSE when one layer of ``ws [N, num_ws, w_dim]`` is perturbed.

    Each layer in turn gets Gaussian noise of standard deviation ``scale``; the ratio of the
    images' mean squared change to ``scale**2`` is that layer's weight ``[num_ws]``. Pass it as
    ``layer_weights`` to ``LatentCodec.fit(..., profile="auto")``.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    device = next(G.parameters()).device
    ws = ws.to(device)
    base = G.synthesis(ws)
    out = np.empty(G.num_ws)
    for layer in range(G.num_ws):
        noise = torch.zeros_like(ws)
        noise[:, layer] = scale * torch.randn(ws[:, layer].shape, generator=generator).to(device)
        out[layer] = float(((G.synthesis(ws + noise) - base) ** 2).mean()) / scale**2
    return out
