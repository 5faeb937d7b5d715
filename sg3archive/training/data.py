"""Training data for the encoder: synthetic (image, W+) pairs from the generator, real images
from a folder or bucket, or a mix.

Synthetic pairs follow how an archive's images are expected to look to the generator: z → w
with truncation ψ (and cutoff), style mixing between the encoder's layer groups (a second w
takes over from a group boundary), then ``G.synthesis``. Their W+ is known, which gives the
latent loss. All randomness comes from one ``torch.Generator`` whose state is checkpointed,
so a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from sg3archive.atomic import replacing
from sg3archive.images import DEFAULT_FIT, DEFAULT_MAX_PIXELS, from_tensor, iter_sources, load_fitted, read_bytes
from sg3archive.networks.generator import Generator


class SyntheticPairs:
    """Draws ``(images [N, C, R, R], ws [N, num_ws, w_dim])`` from ``G`` (no gradients)."""

    def __init__(self, G: Generator, truncation_psi: float = 0.7, truncation_cutoff: int | None = 8,
                 mixing_prob: float = 0.5, mixing_cuts: Sequence[int] = (), synth_batch: int = 16) -> None:
        self.G = G
        self.psi, self.cutoff = truncation_psi, truncation_cutoff
        self.mixing_prob = mixing_prob
        self.cuts = [c for c in mixing_cuts if 0 < c < G.num_ws] or list(range(1, G.num_ws))
        self.synth_batch = synth_batch

    @torch.no_grad()
    def ws(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Style-mixed W+ ``[n, num_ws, w_dim]`` on G's device."""
        G = self.G
        device = G.mapping.w_avg.device
        z = torch.randn([2, n, G.z_dim], generator=gen).to(device)
        c = torch.zeros([n, G.c_dim], device=device)
        if G.c_dim:  # a random class per image for conditional generators
            c[torch.arange(n), torch.randint(G.c_dim, [n], generator=gen).to(device)] = 1
        kw = dict(truncation_psi=self.psi, truncation_cutoff=self.cutoff)
        w1 = G.mapping(z[0], c if G.c_dim else None, **kw)
        w2 = G.mapping(z[1], c if G.c_dim else None, **kw)
        mix = torch.rand([n], generator=gen) < self.mixing_prob
        cut = torch.tensor(self.cuts)[torch.randint(len(self.cuts), [n], generator=gen)]
        cut = torch.where(mix, cut, torch.full_like(cut, G.num_ws))
        second = (torch.arange(G.num_ws)[None] >= cut[:, None]).to(device)
        return torch.where(second[:, :, None], w2, w1)

    @torch.no_grad()
    def images(self, ws: torch.Tensor) -> torch.Tensor:
        out = [self.G.synthesis(ws[i : i + self.synth_batch]) for i in range(0, len(ws), self.synth_batch)]
        # Plain NCHW (the fast synthesis path returns channels-last): the encoder then sees the same
        # memory layout whether a batch is fresh or read back from a cached pool.
        return torch.cat(out).clamp(-1, 1).contiguous(memory_format=torch.contiguous_format)

    def __call__(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.ws(n, gen)
        return self.images(ws), ws


class SyntheticPool:
    """A fixed pool of synthetic pairs drawn once from a seed, sampled by index: on CPU,
    synthesizing fresh pairs every step costs more than the encoder's own step."""

    def __init__(self, pairs: SyntheticPairs, size: int, seed: int, progress: bool = False) -> None:
        from tqdm import tqdm

        gen = torch.Generator().manual_seed(seed)
        images, ws = [], []
        chunk = max(1, pairs.synth_batch)
        for start in tqdm(range(0, size, chunk), desc="synthetic pairs", unit="batch", disable=not progress,
                          leave=False):
            img, w = pairs(min(chunk, size - start), gen)
            images.append(img.cpu())
            ws.append(w.cpu())
        self.images, self.ws = torch.cat(images), torch.cat(ws)

    def __len__(self) -> int:
        return len(self.ws)

    @classmethod
    def cached(cls, path: str | Path, key: dict, pairs: SyntheticPairs, size: int, seed: int,
               progress: bool = False) -> SyntheticPool:
        """The pool stored at ``path`` when it was made with the same ``key`` (generator
        fingerprint and sampling settings); otherwise draw it and store it there."""
        path = Path(path)
        tag = json.dumps(dict(key, size=size, seed=seed), sort_keys=True)
        if path.exists():
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") == tag:
                    pool = cls.__new__(cls)
                    pool.images, pool.ws = f.get_tensor("images"), f.get_tensor("ws")
                    return pool
        pool = cls(pairs, size, seed, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as temp:
            save_file({"images": pool.images.contiguous(), "ws": pool.ws.contiguous()}, str(temp), metadata={"key": tag})
        return pool

    def __call__(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.ws), [n], generator=gen)
        return self.images[idx], self.ws[idx]


def image_to_tensor(data: bytes, resolution: int, channels: int = 3, *,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Image bytes → ``[C, R, R]`` in [-1, 1], read exactly as compress reads an archive's images
    (:func:`sg3archive.images.load_fitted`: the same pixel limit, EXIF and mode rules, centre crop,
    Lanczos resize to ``resolution``); ``channels=1`` takes Pillow's luma of that square.

    Raises:
        ImageRejected: the bytes are not an image compress would accept.
    """
    x = load_fitted(data, resolution, DEFAULT_FIT, max_pixels=max_pixels).tensor
    if channels == 1:
        gray = np.asarray(Image.fromarray(from_tensor(x)).convert("L"), dtype=np.float32)
        return torch.from_numpy(gray)[None] / 127.5 - 1
    return x


class RealImages:
    """Real images from a folder or bucket, decoded lazily; unreadable files are skipped with a warning."""

    def __init__(self, url: str, resolution: int, channels: int = 3, storage_options: dict | None = None, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.urls = sorted(iter_sources(url, storage_options=storage_options))
        if not self.urls:
            raise FileNotFoundError(f"no image files under {url}")
        self.resolution, self.channels, self.max_pixels = resolution, channels, max_pixels
        self.storage_options = storage_options or {}
        self.bad: dict[str, str] = {}

    def __call__(self, n: int, gen: torch.Generator) -> torch.Tensor:
        out: list[torch.Tensor] = []
        while len(out) < n:
            if len(self.bad) == len(self.urls):
                raise ValueError(f"none of the {len(self.urls)} training images could be read, e.g. {next(iter(self.bad.items()))}")
            url = self.urls[int(torch.randint(len(self.urls), [1], generator=gen))]
            if url in self.bad:
                continue
            try:
                data = read_bytes(url, self.storage_options or None)
                out.append(image_to_tensor(data, self.resolution, self.channels, max_pixels=self.max_pixels))
            except Exception as exc:  # any decode failure: record, skip, keep training
                self.bad[url] = f"{type(exc).__name__}: {exc}"
        return torch.stack(out)
