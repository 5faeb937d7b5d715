"""The rate term of encoder training: what the encoder's latents would cost the archive's codec.

A :class:`~sg3archive.codec.LatentCodec` is fitted on the encoder's own outputs for a fixed set of
training images (as compress fits its codec on the collection's latents), and refitted every
``rate_refit_every`` steps as the encoder changes. Each step's term is the codec's differentiable
code length of the encoder's means (:meth:`~sg3archive.codec.LatentCodec.noisy`: additive uniform
noise of one quantization step, the prior's likelihood), in bits per W+ value, so its weight does
not depend on the generator's size. Encoders trained with it put their outputs where the codec
codes them cheaply, at the fidelity the image losses ask for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sg3archive.codec import LatentCodec

RATE_CALIBRATION_IMAGES = 128  # training images whose latents the rate codec is fitted on (at most)
RATE_CALIBRATION_BYTES = 256 << 20  # ... kept as uint8 on the CPU within this budget (fewer at 1024²)
RATE_SEED_OFFSET = 3  # their draw's seed: the run's seed + this

Draw = Callable[[torch.Generator], torch.Tensor]  # a seeded batch of training images on the device


class RateTerm:
    """The codec the rate term is measured with, refitted on the encoder's latents when due.

    It is not checkpointed: a resumed run fits it at its first step, from the restored encoder, so a
    run resumed at a multiple of ``refit_every`` continues exactly as an uninterrupted one."""

    def __init__(self, profile: int, refit_every: int, seed: int) -> None:
        self.profile = profile
        self.refit_every = refit_every
        self.seed = seed
        self.codec: LatentCodec | None = None
        self.fitted_at: int | None = None
        self.images: torch.Tensor | None = None  # the fixed calibration images, uint8 on the CPU

    def due(self, step: int) -> bool:
        """Whether the codec must be (re)fitted before ``step``."""
        return self.codec is None or (self.fitted_at is not None and step - self.fitted_at >= self.refit_every)

    @torch.no_grad()
    def fit(self, encoder: torch.nn.Module, draw: Draw, step: int) -> LatentCodec:
        """Fit the codec on the encoder's means of a fixed set of training images: drawn once from a
        fixed seed (:data:`RATE_CALIBRATION_IMAGES`, fewer where they would exceed
        :data:`RATE_CALIBRATION_BYTES`) and kept as uint8, so a refit only runs the encoder."""
        if self.images is None:
            rng = torch.Generator().manual_seed(self.seed + RATE_SEED_OFFSET)
            parts: list[torch.Tensor] = []
            limit = RATE_CALIBRATION_IMAGES
            while sum(len(p) for p in parts) < limit:
                x = draw(rng)
                limit = max(1, min(RATE_CALIBRATION_IMAGES, RATE_CALIBRATION_BYTES // x[0].numel()))
                parts.append(((x.clamp(-1, 1) + 1) * 127.5).round().to("cpu", torch.uint8))
            self.images = torch.cat(parts)[:limit]
        device = next(encoder.parameters()).device
        means = [encoder(chunk.to(device, torch.float32) / 127.5 - 1).mean.cpu()
                 for chunk in self.images.split(16)]
        self.codec = LatentCodec.fit(torch.cat(means), self.profile)
        self.fitted_at = step
        return self.codec

    def bits_per_value(self, means: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """The batch's mean code length per W+ value (differentiable) under the fitted codec."""
        if self.codec is None:
            raise RuntimeError("RateTerm.fit must run before bits_per_value")
        noise_gen = torch.Generator(device=means.device).manual_seed(int(torch.randint(0, 2**31 - 1, (1,),
                                                                                          generator=rng)))
        _, bits = self.codec.noisy(means, generator=noise_gen)
        return bits.mean() / (means.shape[1] * means.shape[2])


__all__ = ["RATE_CALIBRATION_IMAGES", "RateTerm"]
