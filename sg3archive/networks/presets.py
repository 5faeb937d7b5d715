"""Freshly initialized StyleGAN3 generators in the official configurations (for tests, benchmarks
and the bundled default), with their magnitude statistics calibrated so activations are well scaled.

Random weights make textures, not photos: real use needs a trained network (users bring
NVIDIA's pretrained pickles or their own).
"""

from __future__ import annotations

from typing import Any

import torch

from sg3archive.networks.discriminator import Discriminator
from sg3archive.networks.generator import Generator

# train.py's settings for each config; channel_base/max are those of the published networks.
CONFIGS: dict[str, dict[str, Any]] = {
    "stylegan3-t": dict(channel_base=32768, channel_max=512),
    "stylegan3-r": dict(channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True),
}
MAGNITUDE_EMA_BETA = 0.5 ** (32 / (20 * 1e3))  # train.py's value for batch size 32


def random_generator(
    config: str = "stylegan3-t",
    img_resolution: int = 256,
    *,
    z_dim: int = 512,
    w_dim: int = 512,
    c_dim: int = 0,
    img_channels: int = 3,
    channel_base: int | None = None,
    channel_max: int | None = None,
    mapping_layers: int = 2,
    seed: int = 0,
    calibrate: bool = True,
) -> Generator:
    """A generator with random weights from ``seed`` in config ``"stylegan3-t"`` or ``"stylegan3-r"``.

    ``channel_base``/``channel_max`` default to the published values of the config.
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; expected one of {sorted(CONFIGS)}")
    kwargs = dict(CONFIGS[config])
    if channel_base is not None:
        kwargs["channel_base"] = channel_base
    if channel_max is not None:
        kwargs["channel_max"] = channel_max
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, [1], generator=generator)))
        G = Generator(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping_kwargs={"num_layers": mapping_layers},
            magnitude_ema_beta=MAGNITUDE_EMA_BETA,
            **kwargs,
        ).eval()
    if calibrate:
        calibrate_statistics(G, seed=seed)
    return G.requires_grad_(False)


def random_discriminator(
    img_resolution: int,
    *,
    c_dim: int = 0,
    img_channels: int = 3,
    channel_base: int = 32768,
    channel_max: int = 512,
    seed: int = 0,
) -> Discriminator:
    """A StyleGAN2 discriminator with random weights from ``seed`` (mbstd group 4, as train.py)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        D = Discriminator(
            c_dim=c_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            channel_base=channel_base,
            channel_max=channel_max,
            block_kwargs={"freeze_layers": 0},
            epilogue_kwargs={"mbstd_group_size": 4},
        )
    return D.eval().requires_grad_(False)


@torch.no_grad()
def calibrate_statistics(G: Generator, num_samples: int = 64, seed: int = 0) -> None:
    """Set ``w_avg`` to the mean mapped W and each layer's ``magnitude_ema`` to its input's mean square.

    These are the statistics training would have accumulated; without them a fresh network's
    activations grow or shrink layer by layer.
    """
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn([num_samples, G.z_dim], generator=generator)
    c = None
    if G.c_dim > 0:
        c = torch.nn.functional.one_hot(torch.randint(0, G.c_dim, [num_samples], generator=generator), G.c_dim).float()
    ws = G.mapping(z, c)
    G.mapping.w_avg.copy_(ws[:, 0].mean(dim=0))
    S = G.synthesis
    x = S.input(ws[:, 0])
    for name, w in zip(S.layer_names, ws.unbind(dim=1)[1:]):
        layer = getattr(S, name)
        layer.magnitude_ema.copy_(x.square().mean())
        x = layer(x, w)
