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
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LRELU_GAIN = math.sqrt(2)

# Upper bound on the elements of one chunk's upsampled intermediate (float32: 4 bytes each).
# On CPU chunks are small (cache-friendly, one sample at a time); on GPUs large (fewer launches).
CHUNK_ELEMENTS = {"cpu": 1 << 22}
CHUNK_ELEMENTS_DEFAULT = 1 << 26


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd is recording and any of ``tensors`` requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``reference.modulated_conv2d``; one dense convolution for the batch.

    Under autograd it keeps only its output, and its input unless that can be rebuilt (see
    ``sg3archive.ops.fast_autograd``).
    """
    if needs_grad(x, weight, styles, input_gain):
        from sg3archive.ops.fast_autograd import modulated_conv2d_recorded

        return modulated_conv2d_recorded(x, weight, styles, demodulate, padding, input_gain)
    return modulated_conv2d_forward(x, weight, styles, demodulate, padding, input_gain)


def modulation(
    weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, input_gain: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The small tensors of a modulated convolution: the (normalized) weight ``[O, I, k, k]``, the
    per-sample input scales ``[N, I]`` and the demodulation coefficients ``[N, O]`` (None without)."""
    n, in_channels = styles.shape
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    scale = styles if input_gain is None else styles * input_gain.expand(n, in_channels)
    dcoefs = None
    if demodulate:
        # sum over (i, ky, kx) of (w[o,i,ky,kx] * s[n,i])^2 = s^2 @ (sum over ky,kx of w^2)^T
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
    return weight, scale, dcoefs


def modulated_conv2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """The computation of ``modulated_conv2d`` (what autograd would record, if recording)."""
    n, in_channels = styles.shape
    weight, scale, dcoefs = modulation(weight, styles, demodulate, input_gain)
    x = (x * scale.to(x.dtype).reshape(n, in_channels, 1, 1)).contiguous(memory_format=torch.channels_last)
    weight_cl = weight.to(x.dtype).contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, weight_cl, padding=padding)
    if dcoefs is not None:
        y = y * dcoefs.to(y.dtype).reshape(n, -1, 1, 1)
    return y


def _window(x: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """Samples ``[start, start + length)`` of ``x`` along ``dim`` (-1 or -2), zeros outside.

    A view when the window lies inside ``x``; otherwise a new tensor in ``x``'s layout (F.pad
    is several times slower on channels-last tensors).
    """
    size = x.shape[dim]
    if start == 0 and length == size:
        return x
    if start >= 0 and start + length <= size:
        return x.narrow(dim, start, length)
    shape = list(x.shape)
    shape[dim] = length
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout).zero_()
    lo, hi = max(0, -start), min(length, size - start)
    if hi > lo:
        out.narrow(dim, lo, hi - lo).copy_(x.narrow(dim, start + lo, hi - lo))
    return out


def _per_channel(f: torch.Tensor, channels: int, shape: list[int]) -> torch.Tensor:
    """Depthwise weight ``[channels, 1, *shape]`` repeating filter ``f`` for every channel."""
    return f.reshape([1, 1] + shape).expand([channels, 1] + shape).contiguous()


def _chunk_channels(channels: int, plane: int, budget: int) -> int:
    """Channels per chunk: a multiple of 8 (vector width) whose intermediate fits ``budget`` elements."""
    chunk = max(8, (budget // max(1, plane)) // 8 * 8)
    return min(channels, chunk)


@dataclass(frozen=True)
class Resampling:
    """How ``filtered_lrelu`` runs on one input shape: sizes, chunking and the per-channel filters.

    Shared by the forward pass and the recomputation in the backward pass, so both walk the
    same chunks with the same filters (and produce bit-identical intermediates).
    """

    up: int
    down: int
    padding: tuple[int, int, int, int]
    gain: float
    slope: float
    clamp: float | None
    tu: int  # up-filter taps
    td: int  # down-filter taps (1 = decimation only)
    w_tmp: int  # the up-sampled intermediate's width and height
    h_tmp: int
    w_out: int
    h_out: int
    samples: int  # samples per chunk
    chunk: int  # channels per chunk
    fu_w: torch.Tensor  # depthwise weights, ``chunk`` channels
    fu_h: torch.Tensor
    fd_w: torch.Tensor | None  # separable down filter
    fd_h: torch.Tensor | None
    fd_2d: torch.Tensor | None  # radial down filter

    @classmethod
    def plan(
        cls,
        x: torch.Tensor,
        fu: torch.Tensor | None,
        fd: torch.Tensor | None,
        up: int,
        down: int,
        padding: list[int],
        gain: float,
        slope: float,
        clamp: float | None,
    ) -> Resampling:
        n, c, h, w = x.shape
        px0, px1, py0, py1 = padding
        if fu is None:
            fu = torch.ones([1], dtype=x.dtype, device=x.device)
        if fu.ndim != 1:
            raise ValueError("the fast filtered_lrelu needs a separable (1-D) up filter")
        tu = fu.shape[0]
        w_tmp = w * up + px0 + px1 - tu + 1
        h_tmp = h * up + py0 + py1 - tu + 1
        td = 1 if fd is None else fd.shape[-1]
        budget = CHUNK_ELEMENTS.get(x.device.type, CHUNK_ELEMENTS_DEFAULT)
        samples = 1 if x.device.type == "cpu" else n
        chunk = _chunk_channels(c, samples * h_tmp * w_tmp, budget)
        fu = (fu * up).to(x.dtype)  # gain up**2 over the two passes
        fd_w = fd_h = fd_2d = None
        if fd is not None:
            fd = fd.to(x.dtype).flip(list(range(fd.ndim)))  # a true convolution, run as correlation
            if fd.ndim == 1:
                fd_w, fd_h = _per_channel(fd, chunk, [1, td]), _per_channel(fd, chunk, [td, 1])
            else:
                fd_2d = _per_channel(fd, chunk, [td, td])
        return cls(
            up, down, (px0, px1, py0, py1), gain, slope, clamp, tu, td, w_tmp, h_tmp,
            (w_tmp - td) // down + 1, (h_tmp - td) // down + 1, samples, chunk,
            _per_channel(fu, chunk, [1, tu]), _per_channel(fu, chunk, [tu, 1]), fd_w, fd_h, fd_2d,
        )

    def chunks(self, n: int, c: int) -> Iterator[tuple[slice, slice]]:
        """(sample slice, channel slice) of every chunk, in order."""
        for i in range(0, n, self.samples):
            for c0 in range(0, c, self.chunk):
                yield slice(i, i + self.samples), slice(c0, min(c0 + self.chunk, c))

    def upsample(self, y: torch.Tensor) -> torch.Tensor:
        """The up-sampled intermediate of one chunk ``y`` (polyphase, then padded or cropped)."""
        cc = y.shape[1]
        px0, _, py0, _ = self.padding
        y = F.conv_transpose2d(y, self.fu_w[:cc], stride=(1, self.up), groups=cc)
        y = _window(y, -1, self.tu - 1 - px0, self.w_tmp)
        y = F.conv_transpose2d(y, self.fu_h[:cc], stride=(self.up, 1), groups=cc)
        return _window(y, -2, self.tu - 1 - py0, self.h_tmp)

    def activate(self, y: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Leaky ReLU times gain, then clamped (unless not ``clamp``); in place unless autograd
        records through ``y``."""
        grad = y.requires_grad  # in-place ops would break autograd
        if self.slope != 1:
            y = F.leaky_relu(y, self.slope) if grad else F.leaky_relu_(y, self.slope)
        if self.gain != 1:
            y = y * self.gain if grad else y.mul_(self.gain)
        if clamp and self.clamp is not None and self.clamp >= 0:
            y = y.clamp(-self.clamp, self.clamp) if grad else y.clamp_(-self.clamp, self.clamp)
        return y

    def downsample(self, y: torch.Tensor) -> torch.Tensor:
        """Filter and decimate one activated chunk."""
        cc, down = y.shape[1], self.down
        if self.fd_w is not None and self.fd_h is not None:
            y = F.conv2d(y, self.fd_w[:cc], stride=(1, down), groups=cc)
            return F.conv2d(y, self.fd_h[:cc], stride=(down, 1), groups=cc)
        if self.fd_2d is not None:
            return F.conv2d(y, self.fd_2d[:cc], stride=down, groups=cc)
        return y[:, :, ::down, ::down]

    def run(self, y: torch.Tensor) -> torch.Tensor:
        """Up-sample, activate, clamp and down-sample one chunk ``y`` (bias already added)."""
        return self.downsample(self.activate(self.upsample(y)))


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
    Works in channels-last layout (vectorized over channels) and returns channels-last. Under
    autograd it keeps only its input and recomputes the up-sampled intermediate, chunk by chunk,
    during the backward pass (see ``sg3archive.ops.fast_autograd``).
    """
    if fu is None and fd is None and up == 1 and down == 1:
        return _pointwise(x, b, padding, gain, slope, clamp)
    if needs_grad(x, b):
        from sg3archive.ops.fast_autograd import filtered_lrelu_recorded

        return filtered_lrelu_recorded(x, fu, fd, b, up, down, padding, gain, slope, clamp)
    return filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp)


def _pointwise(
    x: torch.Tensor, b: torch.Tensor | None, padding: list[int], gain: float, slope: float, clamp: float | None
) -> torch.Tensor:
    """``filtered_lrelu`` without resampling (ToRGB): bias, pad or crop, activation, clamp."""
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    x = _window(_window(x, -1, -px0, w + px0 + px1), -2, -py0, h + py0 + py1)
    x = F.leaky_relu(x, slope) if slope != 1 else x
    x = x * gain if gain != 1 else x
    return x.clamp(-clamp, clamp) if clamp is not None and clamp >= 0 else x


def filtered_lrelu_forward(
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
    """The computation of ``filtered_lrelu`` with resampling, chunk by chunk, without autograd."""
    n, c = x.shape[:2]
    plan = Resampling.plan(x, fu, fd, up, down, padding, gain, slope, clamp)
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    x = x.contiguous(memory_format=torch.channels_last)
    out = torch.empty(
        [n, c, plan.h_out, plan.w_out], dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    )
    for samples, channels in plan.chunks(n, c):
        out[samples, channels] = plan.run(x[samples, channels])
    return out
