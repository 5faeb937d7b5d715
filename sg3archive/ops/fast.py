"""Fast default path for the StyleGAN3 synthesis ops; must agree with ``sg3archive.ops.reference``.

Where the time goes in the reference path, and what this path does instead:

* Upsampling by zero insertion followed by a full-rate FIR filter multiplies mostly zeros. A
  transposed convolution with stride ``up`` evaluates only the non-zero taps (polyphase
  evaluation), and padding/cropping is applied to its output instead of its input.
* The down filter is evaluated at every intermediate pixel before decimation. A strided
  convolution evaluates it only where a sample is kept.
* A grouped convolution with one modulated weight per sample is replaced by modulating the
  activations and running one dense convolution for the whole batch (then demodulating the
  output), which is mathematically the same operation.
* The upsampled intermediate is four times larger than the layer output; it is produced in
  channel chunks (on CPU one sample at a time, sized for the cache) so that peak memory stays
  close to the size of the layer's input and output.
* Everything runs channels-last, which the CPU convolution kernels vectorize over channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LRELU_GAIN = math.sqrt(2)

# Upper bound on the elements of one chunk's upsampled intermediate (float32: 4 bytes each).
# On CPU chunks are small (cache-friendly, one sample at a time); on GPUs large (fewer launches).
CHUNK_ELEMENTS = {"cpu": 1 << 22}
CHUNK_ELEMENTS_DEFAULT = 1 << 26


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``reference.modulated_conv2d``; one dense convolution for the batch."""
    n, in_channels = styles.shape
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    scale = styles if input_gain is None else styles * input_gain.expand(n, in_channels)
    x = (x * scale.to(x.dtype).reshape(n, in_channels, 1, 1)).contiguous(memory_format=torch.channels_last)
    weight_cl = weight.to(x.dtype).contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, weight_cl, padding=padding)
    if demodulate:
        # sum over (i, ky, kx) of (w[o,i,ky,kx] * s[n,i])^2 = s^2 @ (sum over ky,kx of w^2)^T
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
        y = y * dcoefs.to(y.dtype).reshape(n, -1, 1, 1)
    return y


def _window(x: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """Samples ``[start, start + length)`` of ``x`` along ``dim`` (-1 or -2), zeros outside."""
    before, after = -start, start + length - x.shape[dim]
    if before == 0 and after == 0:
        return x
    return F.pad(x, [before, after] if dim == -1 else [0, 0, before, after])


def _per_channel(f: torch.Tensor, channels: int, shape: list[int]) -> torch.Tensor:
    """Depthwise weight ``[channels, 1, *shape]`` repeating filter ``f`` for every channel."""
    return f.reshape([1, 1] + shape).expand([channels, 1] + shape).contiguous()


def _chunk_channels(channels: int, plane: int, budget: int) -> int:
    """Channels per chunk: a multiple of 8 (vector width) whose intermediate fits ``budget`` elements."""
    chunk = max(8, (budget // max(1, plane)) // 8 * 8)
    return min(channels, chunk)


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
    """Same contract as ``reference.filtered_lrelu``, by polyphase up- and strided down-filtering.

    The up filter must be separable (1-D); the down filter may be separable or radial (2-D).
    Works in channels-last layout (vectorized over channels) and returns channels-last.
    """
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    if fu is None and fd is None and up == 1 and down == 1:
        x = _window(_window(x, -1, -px0, w + px0 + px1), -2, -py0, h + py0 + py1)
        x = F.leaky_relu(x, slope) if slope != 1 else x
        x = x * gain if gain != 1 else x
        return x.clamp(-clamp, clamp) if clamp is not None and clamp >= 0 else x

    if fu is None:
        fu = torch.ones([1], dtype=x.dtype, device=x.device)
    if fu.ndim != 1:
        raise ValueError("the fast filtered_lrelu needs a separable (1-D) up filter")
    tu = fu.shape[0]
    w_tmp = w * up + px0 + px1 - tu + 1
    h_tmp = h * up + py0 + py1 - tu + 1
    td = 1 if fd is None else fd.shape[-1]
    w_out = (w_tmp - td) // down + 1
    h_out = (h_tmp - td) // down + 1
    x = x.contiguous(memory_format=torch.channels_last)
    out = torch.empty([n, c, h_out, w_out], dtype=x.dtype, device=x.device, memory_format=torch.channels_last)

    budget = CHUNK_ELEMENTS.get(x.device.type, CHUNK_ELEMENTS_DEFAULT)
    samples = 1 if x.device.type == "cpu" else n  # samples per chunk
    chunk = _chunk_channels(c, samples * h_tmp * w_tmp, budget)
    fu = (fu * up).to(x.dtype)  # gain up**2 over the two passes
    fu_w, fu_h = _per_channel(fu, chunk, [1, tu]), _per_channel(fu, chunk, [tu, 1])
    if fd is not None:
        fd = fd.to(x.dtype).flip(list(range(fd.ndim)))  # a true convolution, run as correlation
        if fd.ndim == 1:
            fd_w, fd_h = _per_channel(fd, chunk, [1, td]), _per_channel(fd, chunk, [td, 1])
        else:
            fd_2d = _per_channel(fd, chunk, [td, td])

    for i in range(0, n, samples):
        for c0 in range(0, c, chunk):
            cc = min(chunk, c - c0)
            y = x[i : i + samples, c0 : c0 + cc]
            y = F.conv_transpose2d(y, fu_w[:cc], stride=(1, up), groups=cc)
            y = _window(y, -1, tu - 1 - px0, w_tmp)
            y = F.conv_transpose2d(y, fu_h[:cc], stride=(up, 1), groups=cc)
            y = _window(y, -2, tu - 1 - py0, h_tmp)
            grad = y.requires_grad  # in-place ops would break autograd (training through G)
            if slope != 1:
                y = F.leaky_relu(y, slope) if grad else F.leaky_relu_(y, slope)
            if gain != 1:
                y = y * gain if grad else y.mul_(gain)
            if clamp is not None and clamp >= 0:
                y = y.clamp(-clamp, clamp) if grad else y.clamp_(-clamp, clamp)
            if fd is None:
                y = y[:, :, ::down, ::down]
            elif fd.ndim == 1:
                y = F.conv2d(y, fd_w[:cc], stride=(1, down), groups=cc)
                y = F.conv2d(y, fd_h[:cc], stride=(down, 1), groups=cc)
            else:
                y = F.conv2d(y, fd_2d[:cc], stride=down, groups=cc)
            out[i : i + samples, c0 : c0 + cc] = y
    return out
