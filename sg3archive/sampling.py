"""Sampling images from a generator by seed, reproducing NVIDIA's ``gen_images.py`` latents."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from sg3archive.networks.generator import Generator

MAX_SEEDS = 100_000  # one command's images; more is a mistake (or a job for several runs)
MAX_SEED = 2**32 - 1  # numpy's RandomState takes 32-bit seeds


def parse_seeds(text: str) -> list[int]:
    """``"0-7"``, ``"1,5,9"`` or ``"0-3,10"`` → list of non-negative ints, in order; at most
    :data:`MAX_SEEDS` of them, each at most :data:`MAX_SEED`."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"bad seed range {part!r}: use forms like 0-7, 1,5,9 or 0-3,10")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: the end is below the start")
        if hi > MAX_SEED:
            raise ValueError(f"bad seed {hi} in {part!r}: seeds go up to {MAX_SEED}")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise ValueError(f"--seeds {text!r} asks for more than {MAX_SEEDS:,} images; split it over several runs")
        seeds.extend(range(lo, hi + 1))
    return seeds


def seed_latents(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """``z [len(seeds), z_dim]`` exactly as ``gen_images.py`` draws them (numpy RandomState per seed)."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def class_labels(n: int, c_dim: int, class_idx: int | None) -> torch.Tensor | None:
    """One-hot labels for a conditional generator; ``None`` for an unconditional one."""
    if c_dim == 0:
        return None
    if class_idx is None or not 0 <= class_idx < c_dim:
        raise ValueError(f"this generator is conditional: pick a class index in 0..{c_dim - 1}")
    c = torch.zeros([n, c_dim])
    c[:, class_idx] = 1
    return c


@torch.no_grad()
def generate_batches(
    G: Generator,
    seeds: Sequence[int],
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    class_idx: int | None = None,
    transform: torch.Tensor | None = None,
    batch_size: int = 4,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(seeds, x)`` per batch with ``x [n, C, R, R]`` in about [-1, 1] on G's device."""
    device = next(G.parameters()).device
    for start in range(0, len(seeds), batch_size):
        batch = list(seeds[start : start + batch_size])
        z = seed_latents(batch, G.z_dim).to(device)
        c = class_labels(len(batch), G.c_dim, class_idx)
        ws = G.mapping(z, None if c is None else c.to(device), truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        t = None if transform is None else transform.to(device)
        yield batch, G.synthesis(ws, transform=t)
