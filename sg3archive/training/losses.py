"""Encoder training losses: pixel, perceptual, KL to the generator's W prior, feature matching, latent
(and the rate term, :mod:`sg3archive.training.rate`).

The KL term is the closed-form divergence between the encoder's diagonal Gaussian
``N(μ, σ²)`` and a diagonal Gaussian prior fitted to the generator's W distribution
``N(w_avg, s²)`` (the guide's expression is not a KL divergence). It is reported in nats per
W+ value (mean over layers and dimensions), so its weight does not depend on ``w_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast, get_args

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sg3archive.networks.generator import Generator

# (reconstruction, KL, perceptual, feature matching): the guide's table of weight presets.
LOSS_PRESETS: dict[str, tuple[float, float, float, float]] = {
    "high_quality": (1.0, 0.005, 0.8, 0.2),
    "high_compression": (0.6, 0.02, 1.0, 0.1),
    "artistic": (0.4, 0.01, 1.2, 0.0),
    "photo_realistic": (1.0, 0.005, 1.0, 0.5),
}
# The preset names as a type (training jobs and the CLI's --preset choices read it).
LossPreset = Literal["high_quality", "high_compression", "artistic", "photo_realistic"]
assert set(get_args(LossPreset)) == set(LOSS_PRESETS)
DEFAULT_LOSS_PRESET: LossPreset = "high_quality"


@dataclass(frozen=True)
class LossWeights:
    """Weights of each loss term; ``latent`` applies to synthetic pairs (known W+) only."""

    rec: float = 1.0
    kl: float = 0.005
    perceptual: float = 0.8
    feature_match: float = 0.2
    latent: float = 1.0
    rate: float = 0.0  # bits per W+ value under a codec fitted to the encoder (``training.rate``)

    @classmethod
    def preset(cls, name: str, latent: float = 1.0, rate: float = 0.0) -> LossWeights:
        if name not in LOSS_PRESETS:
            raise ValueError(f"unknown loss preset {name!r}; use one of {sorted(LOSS_PRESETS)}")
        rec, kl, perceptual, fm = LOSS_PRESETS[name]
        return cls(rec, kl, perceptual, fm, latent, rate)


@dataclass(frozen=True)
class WPrior:
    """Diagonal Gaussian prior over one W vector: mean ``w_avg [D]``, log-variance ``[D]``."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def to(self, device: torch.device | str) -> WPrior:
        return WPrior(self.mean.to(device), self.logvar.to(device))


@torch.no_grad()
def fit_w_prior(G: Generator, num_samples: int = 4096, seed: int = 0, batch: int = 1024) -> WPrior:
    """Fit the prior to ``G``'s mapping network: mean ``w_avg``, per-dimension variance of W
    over ``num_samples`` z ~ N(0, I) (ψ = 1, no truncation)."""
    device = G.mapping.w_avg.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ws = []
    for start in range(0, num_samples, batch):
        z = torch.randn([min(batch, num_samples - start), G.z_dim], generator=gen).to(device)
        c = torch.zeros([len(z), G.c_dim], device=device)
        ws.append(G.mapping(z, c if G.c_dim else None, truncation_psi=1.0)[:, 0])
    w = torch.cat(ws)
    var = ((w - G.mapping.w_avg) ** 2).mean(dim=0).clamp_min(1e-8)
    return WPrior(G.mapping.w_avg.detach().clone(), var.log())


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor, prior: WPrior) -> torch.Tensor:
    """``KL(N(mean, exp(logvar)) ‖ prior)`` per W+ value, averaged: nats per value (scalar).

    For each value: ``½ [log s² − log σ² + (σ² + (μ − m)²) / s² − 1]``.
    """
    pm, plv = prior.mean, prior.logvar
    kl = 0.5 * (plv - logvar + (logvar.exp() + (mean - pm) ** 2) / plv.exp() - 1.0)
    return kl.mean()


def pixel_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over pixels (images in [-1, 1])."""
    return F.mse_loss(x, y)


def latent_loss(mean: torch.Tensor, target: torch.Tensor, prior: WPrior,
                layers: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between predicted and known W+ in units of the prior's per-dimension variance
    (every dimension counts alike), over the enabled ``layers`` mask ``[num_ws]`` if given."""
    err = (mean - target) ** 2 / prior.logvar.exp()
    if layers is not None:
        err = err[:, layers]
    return err.mean()


def feature_matching(features_fake: list[torch.Tensor], features_real: list[torch.Tensor]) -> torch.Tensor:
    """Mean L1 distance between discriminator features of reconstructions and inputs, layer by layer."""
    if not features_fake:
        raise ValueError("no discriminator features to match")
    total = sum(F.l1_loss(f, r.detach()) for f, r in zip(features_fake, features_real))
    return cast(torch.Tensor, total) / len(features_fake)


__all__ = ["DEFAULT_LOSS_PRESET", "LOSS_PRESETS", "LossPreset", "LossWeights", "WPrior", "feature_matching", "fit_w_prior", "gaussian_kl",
           "latent_loss", "pixel_loss"]
