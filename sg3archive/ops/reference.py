"""Plain PyTorch reference ops: the numerical truth that the fast path is tested against.

Each op follows the textbook definition step by step (zero-insertion upsampling, full-rate FIR
filtering, grouped per-sample modulated convolution), so it is easy to check against the paper
and against NVIDIA's published outputs. It is slow and memory-hungry by design; see
``sg3archive.ops.fast`` for the default path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LRELU_GAIN = math.sqrt(2)


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    act: str = "linear",
    alpha: float = 0.2,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a per-channel bias (dim 1), apply ``act``, scale by ``gain``, then clamp to ±``clamp``.

    ``act`` is ``"linear"`` (default gain 1) or ``"lrelu"`` (slope ``alpha``, default gain √2).
    """
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
        gain = LRELU_GAIN if gain is None else gain
    elif act == "linear":
        gain = 1.0 if gain is None else gain
    else:
        raise ValueError(f"unknown activation {act!r}; expected 'linear' or 'lrelu'")
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[-1], f.shape[-2]


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] | list[int] = (0, 0, 0, 0),
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative = crop), FIR-filter, downsample by decimation.

    Args:
        x: ``[N, C, H, W]``.
        f: separable ``[taps]`` or 2-D ``[taps_y, taps_x]`` filter, or ``None`` for identity.
            Applied as a true convolution unless ``flip_filter`` (then as a correlation).
        padding: ``[x0, x1, y0, y1]`` applied after upsampling.
        gain: overall gain of the filter (``up**2`` keeps the signal level when upsampling).
    """
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f[None, None].repeat([c, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = F.conv2d(x, f, groups=c)
    else:
        x = F.conv2d(x, f.unsqueeze(2), groups=c)
        x = F.conv2d(x, f.unsqueeze(3), groups=c)
    return x[:, :, ::down, ::down]


def filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None,
    fd: torch.Tensor | None,
    b: torch.Tensor | None,
    up: int,
    down: int,
    padding: list[int],
    gain: float = LRELU_GAIN,
    slope: float = 0.2,
    clamp: float | None = None,
) -> torch.Tensor:
    """Bias, upsample with ``fu``, leaky ReLU (times ``gain``, clamped), downsample with ``fd``.

    This is the alias-free nonlinearity of StyleGAN3: the activation runs at a temporarily
    higher sampling rate so its new high frequencies can be filtered out before decimation.
    """
    x = bias_act(x, b)
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return upfirdn2d(x, fd, down=down)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """Style-modulated convolution as one grouped convolution with a weight per sample.

    Args:
        x: ``[N, I, H, W]``.
        weight: ``[O, I, k, k]``.
        styles: ``[N, I]`` per-sample input-channel scales.
        demodulate: normalize each output channel to unit expected variance.
        input_gain: scalar (or ``[N, I]``) multiplier on the input, folded into the weights.
    """
    n = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    w = weight.unsqueeze(0) * styles.reshape(n, 1, in_channels, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        w = w * dcoefs.reshape(n, out_channels, 1, 1, 1)
    if input_gain is not None:
        w = w * input_gain.expand(n, in_channels).reshape(n, 1, in_channels, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = F.conv2d(x, w.to(x.dtype), padding=padding, groups=n)
    return x.reshape(n, -1, *x.shape[2:])
