"""Training configuration of the encoder: one JSON-able record, checked on construction and
saved beside every checkpoint (a resumed run must use the same settings)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sg3archive.training.losses import LOSS_PRESETS, LossWeights

ENCODER_KINDS = ("single", "hierarchical")


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. Defaults follow the guide (Adam 2e-4, betas (0.9, 0.999), ψ 0.7
    with cutoff 8, the ``high_quality`` loss weights)."""

    encoder: str = "hierarchical"  # "single" (the guide's encoder) or "hierarchical"
    width: float = 1.0  # multiplies the encoder's channel counts
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    preset: str = "high_quality"  # loss weights (rec, KL, perceptual, feature match), see LOSS_PRESETS
    latent_weight: float = 1.0  # latent loss on synthetic pairs (known W+)
    image_every: int = 1  # image losses (through the generator) every this many steps; 0 = latent loss only
    kl_start: int = 0  # autoencoder steps before the variational phase (KL on, sampling on)
    kl_ramp: int = 0  # steps over which the KL weight rises to full after kl_start
    progressive: tuple[int, ...] = ()  # step at which each encoder layer group (coarse → fine) switches on
    truncation_psi: float = 0.7
    truncation_cutoff: int | None = 8
    mixing_prob: float = 0.5
    data: str = "synthetic"  # "synthetic", or a folder/bucket URL of real images
    real_fraction: float = 1.0  # with a URL: share of each batch that is real (the rest synthetic)
    synthetic_pool: int = 0  # > 0: draw synthetic pairs from a fixed pool of this size (fast on CPU)
    lpips_net: str | None = "alex"  # perceptual loss backbone; None switches the perceptual term off
    seed: int = 0
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 200
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the checkpoint

    def __post_init__(self) -> None:
        problems = []
        if self.encoder not in ENCODER_KINDS:
            problems.append(f"encoder must be one of {ENCODER_KINDS}, not {self.encoder!r}")
        if self.preset not in LOSS_PRESETS:
            problems.append(f"preset must be one of {sorted(LOSS_PRESETS)}, not {self.preset!r}")
        if self.steps < 0 or self.batch_size < 1:
            problems.append("steps must be >= 0 and batch_size >= 1")
        if not 0 < self.lr <= 1e-2:
            problems.append(f"lr {self.lr} is outside (0, 1e-2] (the guide recommends 1e-4 to 5e-4)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.width <= 4:
            problems.append(f"width must be in (0, 4], got {self.width}")
        if not 0 < self.truncation_psi <= 1:
            problems.append(f"truncation_psi must be in (0, 1], got {self.truncation_psi}")
        if not 0 <= self.real_fraction <= 1 or not 0 <= self.mixing_prob <= 1:
            problems.append("real_fraction and mixing_prob must be in [0, 1]")
        if self.lpips_net not in (None, "alex", "vgg"):
            problems.append(f"lpips_net must be 'alex', 'vgg' or None, not {self.lpips_net!r}")
        if list(self.progressive) != sorted(self.progressive) or any(s < 0 for s in self.progressive):
            problems.append(f"progressive must be non-decreasing steps, got {self.progressive}")
        if min(self.image_every, self.kl_start, self.kl_ramp, self.synthetic_pool, self.sample_every) < 0:
            problems.append("image_every, kl_start, kl_ramp, synthetic_pool and sample_every must be >= 0")
        if min(self.log_every, self.checkpoint_every) < 1:
            problems.append("log_every and checkpoint_every must be >= 1 (a checkpoint is also written at the end)")
        if problems:
            raise ValueError("bad training configuration: " + "; ".join(problems))

    @property
    def weights(self) -> LossWeights:
        return LossWeights.preset(self.preset, latent=self.latent_weight)

    def kl_factor(self, step: int) -> float:
        """0 during the autoencoder phase, then a linear ramp to 1."""
        if step < self.kl_start:
            return 0.0
        if self.kl_ramp == 0:
            return 1.0
        return min(1.0, (step - self.kl_start + 1) / self.kl_ramp)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"], d["progressive"] = list(self.betas), list(self.progressive)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {unknown}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        if "progressive" in d:
            d["progressive"] = tuple(d["progressive"])
        return cls(**d)

    def resume_compatible(self, other: TrainConfig) -> list[str]:
        """Settings that differ from ``other`` other than the ones a resumed run may change."""
        mutable = {"steps", "log_every", "sample_every", "checkpoint_every", "extra"}
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in a if k not in mutable and a[k] != b[k])
