"""The StyleGAN2 residual discriminator that StyleGAN3 trains with (Karras et al. 2020, 2021).

Official parameter/buffer names and constructor arguments, so official weights load with
``strict=True`` and recorded ``init_kwargs`` rebuild it. ``extract_features`` returns each
block's output for feature-matching losses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sg3archive.networks.layers import FullyConnectedLayer, normalize_2nd_moment
from sg3archive.ops.filters import setup_resample_filter
from sg3archive.ops.reference import bias_act

LRELU_GAIN = math.sqrt(2)


def _filter_2d(x: torch.Tensor, f: torch.Tensor, pad: int, down: int = 1) -> torch.Tensor:
    """Pad by ``pad`` on every side, convolve each channel with the 2-D filter ``f``, keep every ``down``-th pixel."""
    channels = x.shape[1]
    weight = f.flip([0, 1]).to(x.dtype)[None, None].expand(channels, 1, *f.shape)
    return F.conv2d(F.pad(x, [pad] * 4), weight, stride=down, groups=channels)


class Conv2dLayer(torch.nn.Module):
    """Convolution with equalized learning rate, optional anti-aliased 2x downsampling, bias and activation."""

    resample_filter: torch.Tensor  # buffer

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        kernel_size: int,  # Width and height of the convolution kernel.
        bias: bool = True,  # Add a learned bias?
        activation: str = "linear",  # "linear" or "lrelu".
        down: int = 1,  # Downsampling factor (1 or 2).
        resample_filter: tuple[float, ...] = (1, 3, 3, 1),  # Low-pass filter taps for downsampling.
        conv_clamp: float | None = None,  # Clamp the output to ±conv_clamp; None = no clamping.
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_resample_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        kernel = w.shape[-1]
        if self.down == 1:
            x = F.conv2d(x, w, padding=self.padding)
        else:
            # Blur then decimate; the blur's padding centres the filter on the kept samples.
            taps = self.resample_filter.shape[-1]
            pad_lo = self.padding + (taps - self.down + 1) // 2
            if kernel == 1:
                x = F.conv2d(_filter_2d(x, self.resample_filter, pad_lo, down=self.down), w)
            else:
                x = F.conv2d(_filter_2d(x, self.resample_filter, pad_lo), w, stride=self.down)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, down={self.down}"


class DiscriminatorBlock(torch.nn.Module):
    """Residual block at one resolution: (FromRGB,) two 3x3 convs with 2x downsampling, 1x1 skip."""

    resample_filter: torch.Tensor  # buffer

    def __init__(
        self,
        in_channels: int,  # Input channels, 0 = first block (reads the image).
        tmp_channels: int,  # Channels of the intermediate activations.
        out_channels: int,  # Output channels.
        resolution: int,  # Resolution of this block.
        img_channels: int,  # Number of input color channels.
        first_layer_idx: int,  # Index of the first layer (for freeze_layers).
        architecture: str = "resnet",  # Only "resnet" (what StyleGAN3 trains with) is supported.
        activation: str = "lrelu",  # Activation function.
        resample_filter: tuple[float, ...] = (1, 3, 3, 1),  # Low-pass filter for downsampling.
        conv_clamp: float | None = None,  # Clamp conv outputs to ±conv_clamp.
        use_fp16: bool = False,  # Recorded for compatibility; computes in float32.
        fp16_channels_last: bool = False,  # Recorded for compatibility.
        freeze_layers: int = 0,  # Freeze-D: number of layers to freeze (training only).
    ) -> None:
        super().__init__()
        if architecture != "resnet":
            raise ValueError(f"discriminator architecture {architecture!r} is not supported; StyleGAN3 uses 'resnet'")
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.freeze_layers = freeze_layers
        self.register_buffer("resample_filter", setup_resample_filter(resample_filter))
        common: dict[str, Any] = dict(resample_filter=resample_filter)
        self.num_layers = 0
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation=activation, conv_clamp=conv_clamp, **common)
            self.num_layers += 1
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation=activation, conv_clamp=conv_clamp, **common)
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, 3, activation=activation, down=2, conv_clamp=conv_clamp, **common
        )
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, **common)
        self.num_layers += 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> tuple[torch.Tensor, None]:
        if self.in_channels == 0:
            x = self.fromrgb(img.to(torch.float32))
        y = self.skip(x, gain=np.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=np.sqrt(0.5))
        return y + x, None


class MinibatchStdLayer(torch.nn.Module):
    """Appends the average per-group standard deviation as extra feature channels."""

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g != 0:
            raise ValueError(f"batch size {n} must be a multiple of the minibatch-stddev group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # sample i belongs to group i % (n // g)
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorMappingNetwork(torch.nn.Module):
    """Embeds the conditioning label into the projection vector ``cmap`` (StyleGAN2 mapping, no latent)."""

    def __init__(
        self,
        c_dim: int,  # Conditioning label dimensionality.
        cmap_dim: int,  # Output dimensionality.
        num_layers: int = 8,  # Number of fully connected layers.
        embed_features: int | None = None,  # Label embedding width, None = cmap_dim.
        layer_features: int | None = None,  # Hidden width, None = cmap_dim.
        activation: str = "lrelu",  # Activation of the hidden layers.
        lr_multiplier: float = 0.01,  # Learning-rate multiplier.
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        embed_features = cmap_dim if embed_features is None else embed_features
        layer_features = cmap_dim if layer_features is None else layer_features
        self.embed = FullyConnectedLayer(c_dim, embed_features)
        features = [embed_features] + [layer_features] * (num_layers - 1) + [cmap_dim]
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        x = normalize_2nd_moment(self.embed(c.to(torch.float32)))
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x


class DiscriminatorEpilogue(torch.nn.Module):
    """Final 4x4 block: minibatch stddev, conv, fully connected, output (projected onto ``cmap``)."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        cmap_dim: int,  # Dimensionality of the label projection, 0 = unconditional.
        resolution: int,  # Resolution of this block (4).
        img_channels: int,  # Number of input color channels.
        architecture: str = "resnet",  # Only "resnet".
        mbstd_group_size: int | None = 4,  # Group size for minibatch stddev, None = whole batch.
        mbstd_num_channels: int = 1,  # Number of minibatch-stddev features, 0 = disable.
        activation: str = "lrelu",  # Activation function.
        conv_clamp: float | None = None,  # Clamp conv outputs to ±conv_clamp.
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            assert cmap is not None  # Discriminator checks c (hence cmap) for conditional networks
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x


class Discriminator(torch.nn.Module):
    """``D(img, c) → logits [N, 1]``; ``extract_features(img, c)`` → each block's output."""

    fingerprint: str  # set by the loaders in sg3archive.checkpoints (a fresh network has none)

    def __init__(
        self,
        c_dim: int,  # Conditioning label dimensionality.
        img_resolution: int,  # Input resolution.
        img_channels: int,  # Number of input color channels.
        architecture: str = "resnet",  # Only "resnet".
        channel_base: int = 32768,  # Overall multiplier for the number of channels.
        channel_max: int = 512,  # Maximum number of channels in any layer.
        num_fp16_res: int = 4,  # Recorded for compatibility; computes in float32.
        conv_clamp: float | None = 256,  # Clamp conv outputs to ±conv_clamp.
        cmap_dim: int | None = None,  # Label projection dimensionality, None = channels at 4x4.
        block_kwargs: dict | None = None,  # Arguments for DiscriminatorBlock.
        mapping_kwargs: dict | None = None,  # Arguments for the label mapping network.
        epilogue_kwargs: dict | None = None,  # Arguments for DiscriminatorEpilogue.
    ) -> None:
        super().__init__()
        self.init_kwargs = dict(
            c_dim=c_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            architecture=architecture,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
            cmap_dim=cmap_dim,
            block_kwargs=dict(block_kwargs or {}),
            mapping_kwargs=dict(mapping_kwargs or {}),
            epilogue_kwargs=dict(epilogue_kwargs or {}),
        )
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.img_resolution_log2 = int(np.log2(img_resolution))
        if 2**self.img_resolution_log2 != img_resolution or img_resolution < 4:
            raise ValueError(f"discriminator resolution must be a power of two >= 4, got {img_resolution}")
        self.block_resolutions = [2**i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        common: dict[str, Any] = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                channels[res] if res < img_resolution else 0,
                channels[res],
                channels[res // 2],
                resolution=res,
                first_layer_idx=layer_idx,
                use_fp16=res >= fp16_resolution,
                **(block_kwargs or {}),
                **common,
            )
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = DiscriminatorMappingNetwork(c_dim=c_dim, cmap_dim=cmap_dim, **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **(epilogue_kwargs or {}), **common)

    def _check_inputs(self, img: torch.Tensor, c: torch.Tensor | None) -> None:
        expected = [self.img_channels, self.img_resolution, self.img_resolution]
        if img.ndim != 4 or list(img.shape[1:]) != expected:
            raise ValueError(f"img must have shape [N, {', '.join(map(str, expected))}], got {list(img.shape)}")
        if self.c_dim > 0 and (c is None or c.shape != (img.shape[0], self.c_dim)):
            raise ValueError(f"this discriminator is conditional: c must have shape [{img.shape[0]}, {self.c_dim}]")

    def forward(
        self,
        img: torch.Tensor,
        c: torch.Tensor | None = None,
        update_emas: bool = False,
        return_features: bool = False,
        **unused: Any,  # force_fp32: accepted for call compatibility, no effect.
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``img [N, C, R, R]`` in [-1, 1], ``c [N, c_dim]`` → logits ``[N, 1]``.

        With ``return_features`` also the output of every block, finest first.
        """
        self._check_inputs(img, c)
        x, features = None, []
        for res in self.block_resolutions:
            x, _ = getattr(self, f"b{res}")(x, img)
            features.append(x)
        cmap = self.mapping(c) if self.c_dim > 0 else None
        logits = self.b4(x, cmap)
        return (logits, features) if return_features else logits

    def extract_features(self, img: torch.Tensor, c: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The output of every block, finest first (for feature-matching losses)."""
        return self(img, c, return_features=True)[1]
