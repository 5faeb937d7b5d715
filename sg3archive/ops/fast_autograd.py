"""Memory-lean backward passes for the fast synthesis ops (training and refinement through G).

Recorded by plain autograd, the fast ``filtered_lrelu`` keeps every chunk's up-sampled
intermediate (and its activation and clamp masks) until the backward pass: at 1024² more than
ten times the memory of the forward pass itself. These functions run the forward pass exactly
as without autograd and keep one tensor per op, about the size of the layer's output:

* ``FilteredLrelu`` keeps its input (the modulated convolution's output) unless that is
  rebuilt. Its backward pass
  walks the chunks of the forward pass, recomputes each chunk's up-sampled intermediate and
  applies the adjoint of every step (the down filter's transposed convolution, the activation's
  derivative, the up filter's strided convolution): one chunk's intermediates at a time.
* ``ModulatedConv2d`` with a larger kernel (StyleGAN3-T) keeps its output; its input is
  usually the previous layer's ``filtered_lrelu`` output, which that op's kept input rebuilds
  (one forward pass of that op, see ``Rebuild``). A 1×1 convolution (StyleGAN3-R, ToRGB) is
  cheaper to run again: it keeps its input, and its output (the next ``filtered_lrelu``'s
  input) is rebuilt once, for both backward steps. Its backward pass recomputes the small tensors
  (normalized weight, styles, demodulation coefficients) under autograd and forms the large
  gradients directly: the transposed convolution for the input, spatial sums against the input
  (styles) and the output (demodulation), the weight-gradient convolution only when the weight
  needs one.

Both are once differentiable (no gradient of a gradient), which is all training an encoder and
refining latents need. An in-place change of a kept or rebuilt tensor between the forward and
the backward pass raises, as autograd does.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_weight

from sg3archive.ops import fast


def _grad_leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    """A detached copy of ``t`` that records autograd when ``t`` needs a gradient."""
    if t is None:
        return None
    return t.detach().requires_grad_(t.requires_grad)


def _autocast_state(x: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    """The autocast state of the forward pass, for the backward pass to run under (mixed precision)."""
    device = x.device.type
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def _autocast(state: tuple[str, bool, torch.dtype]) -> torch.autocast:
    device, enabled, dtype = state
    return torch.autocast(device, dtype=dtype, enabled=enabled)


def _modified(what: str) -> RuntimeError:
    return RuntimeError(f"{what} needed for the gradient was modified in place after the forward pass")


@dataclass
class Rebuild:
    """How to rebuild an op's output in the backward pass from tensors kept anyway, instead of
    keeping it. Checks that neither those tensors nor the output changed in place since."""

    compute: Callable[[], torch.Tensor]  # the op's forward pass on detached inputs
    sources: tuple[torch.Tensor, ...]  # those inputs (detached), whose versions are checked
    versions: tuple[int, ...]
    output: weakref.ref[torch.Tensor]
    output_version: int
    cached: torch.Tensor | None = None  # rebuilt for one backward step, kept for the next

    @classmethod
    def of(cls, out: torch.Tensor, compute: Callable[..., torch.Tensor], *args: Any) -> Rebuild:
        """``out = compute(*args)``, rebuildable; tensor arguments are held detached."""
        held = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        sources = tuple(a for a in held if isinstance(a, torch.Tensor))
        return cls(lambda: compute(*held), sources, tuple(t._version for t in sources), weakref.ref(out), out._version)

    def rebuilds(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is this rebuild's output, unchanged."""
        return self.output() is x and x._version == self.output_version

    def __call__(self, keep: bool = False) -> torch.Tensor:
        """The output again (``keep``: also for the next caller, once)."""
        if self.cached is not None:
            out, self.cached = self.cached, (self.cached if keep else None)
            return out
        if any(t._version != v for t, v in zip(self.sources, self.versions)):
            raise _modified("an input of a fast synthesis op")
        alive = self.output()
        if alive is not None and alive._version != self.output_version:
            raise _modified("an output of a fast synthesis op")
        with torch.no_grad():
            out = self.compute()
        if keep:
            self.cached = out
        return out


def _rebuild_of(x: torch.Tensor) -> Rebuild | None:
    rebuild = getattr(x, "_sg3archive_rebuild", None)
    return rebuild if isinstance(rebuild, Rebuild) and rebuild.rebuilds(x) else None


def filtered_lrelu_recorded(
    x: torch.Tensor,
    fu: torch.Tensor | None,
    fd: torch.Tensor | None,
    b: torch.Tensor | None,
    up: int,
    down: int,
    padding: list[int],
    gain: float,
    slope: float,
    clamp: float | None,
) -> torch.Tensor:
    """``fast.filtered_lrelu`` (with resampling) under autograd. Its input is rebuilt rather than
    kept when it is a rebuildable modulated-convolution output; otherwise it is kept, and the
    output can be rebuilt from it."""
    source = _rebuild_of(x)
    out = FilteredLrelu.apply(x, fu, fd, b, up, down, padding, gain, slope, clamp, source)
    if source is None:
        out._sg3archive_rebuild = Rebuild.of(out, fast.filtered_lrelu_forward, x, fu, fd, b, up, down, padding,
                                             gain, slope, clamp)
    return out


def modulated_conv2d_recorded(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool,
    padding: int,
    input_gain: torch.Tensor | None,
) -> torch.Tensor:
    """``fast.modulated_conv2d`` under autograd. A 1×1 convolution (StyleGAN3-R, every ToRGB
    layer) is cheaper to run again than the previous layer's ``filtered_lrelu``: it keeps its
    input and its output is rebuilt. A larger one keeps its output and rebuilds its input when
    that is an unchanged ``filtered_lrelu`` output."""
    if weight.shape[-1] * weight.shape[-2] == 1:
        slot: list[Rebuild] = []
        out = ModulatedConv2d.apply(x, weight, styles, demodulate, padding, input_gain, None, slot)
        slot.append(Rebuild.of(out, fast.modulated_conv2d_forward, x, weight, styles, demodulate, padding, input_gain))
        out._sg3archive_rebuild = slot[0]
        return out
    return ModulatedConv2d.apply(x, weight, styles, demodulate, padding, input_gain, _rebuild_of(x), None)


class ModulatedConv2d(torch.autograd.Function):
    """``fast.modulated_conv2d`` keeping its output, and its input only when it cannot be rebuilt."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        styles: torch.Tensor,
        demodulate: bool,
        padding: int,
        input_gain: torch.Tensor | None,
        source: Rebuild | None,
        output_slot: list[Rebuild] | None,
    ) -> torch.Tensor:
        """``source`` rebuilds ``x`` (else it is kept); ``output_slot`` will hold the output's
        rebuild (else the output is kept)."""
        y = fast.modulated_conv2d_forward(x, weight, styles, demodulate, padding, input_gain)
        ctx.demodulate, ctx.padding, ctx.autocast = demodulate, padding, _autocast_state(x)
        ctx.source, ctx.output_slot = source, output_slot
        ctx.save_for_backward(None if source is not None else x, weight, styles, input_gain,
                              None if output_slot is not None else y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with _autocast(ctx.autocast):
            return ModulatedConv2d._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, styles, input_gain, y = ctx.saved_tensors
        if ctx.source is not None:
            x, ctx.source = ctx.source(), None
        if ctx.output_slot is not None:
            y, ctx.output_slot = ctx.output_slot[0](), None
        grad = grad.to(y.dtype)
        need_x, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w_leaf = weight.detach().requires_grad_(weight.requires_grad)
        s_leaf = styles.detach().requires_grad_(styles.requires_grad)
        leaves = (w_leaf, s_leaf, _grad_leaf(input_gain))
        with torch.enable_grad():
            wn, scale, dcoefs = fast.modulation(w_leaf, s_leaf, ctx.demodulate, leaves[2])
        n, in_channels = scale.shape
        grad = grad.contiguous(memory_format=torch.channels_last)
        outputs: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        grad_z = grad
        if dcoefs is not None:
            d = dcoefs.detach().to(grad.dtype)
            # y = z * d, so dL/dd = sum over pixels of grad * z = sum of grad * y / d.
            if dcoefs.requires_grad:
                outputs.append(dcoefs)
                grads.append((grad * y).sum(dim=[2, 3]) / d)
            grad_z = grad * d.reshape(n, -1, 1, 1)
        wn_cl = wn.detach().to(x.dtype).contiguous(memory_format=torch.channels_last)
        scale_4d = scale.detach().to(x.dtype).reshape(n, in_channels, 1, 1)
        grad_x = None
        if need_x or scale.requires_grad:
            grad_xs = F.conv_transpose2d(grad_z, wn_cl, padding=ctx.padding)
            if scale.requires_grad:
                outputs.append(scale)
                grads.append((grad_xs * x).sum(dim=[2, 3]))
            if need_x:
                grad_x = grad_xs.mul_(scale_4d)
        if need_weight:
            xs = (x * scale_4d).contiguous(memory_format=torch.channels_last)
            outputs.append(wn)
            grads.append(conv2d_weight(xs, list(wn.shape), grad_z, padding=ctx.padding))
        small: list[torch.Tensor | None] = [None, None, None]
        wanted = {i: t for i, t in enumerate(leaves) if t is not None and t.requires_grad}
        if outputs and wanted:
            found = torch.autograd.grad(
                outputs, list(wanted.values()), [g.to(o.dtype) for o, g in zip(outputs, grads)], allow_unused=True
            )
            for i, g in zip(wanted, found):
                small[i] = g
        return grad_x, small[0], small[1], None, None, small[2], None, None


class FilteredLrelu(torch.autograd.Function):
    """``fast.filtered_lrelu`` (with resampling) recomputing its intermediates chunk by chunk."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        fu: torch.Tensor | None,
        fd: torch.Tensor | None,
        b: torch.Tensor | None,
        up: int,
        down: int,
        padding: list[int],
        gain: float,
        slope: float,
        clamp: float | None,
        source: Rebuild | None,
    ) -> torch.Tensor:
        """``source`` rebuilds ``x`` in the backward pass (else it is kept)."""
        out = fast.filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp)
        ctx.args = (up, down, padding, gain, slope, clamp)
        ctx.autocast, ctx.source = _autocast_state(x), source
        ctx.save_for_backward(None if source is not None else x, fu, fd, b)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with _autocast(ctx.autocast):
            return FilteredLrelu._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, fu, fd, b = ctx.saved_tensors
        if ctx.source is not None:  # the modulated convolution's backward step needs it next
            x, ctx.source = ctx.source(keep=True), None
        plan = fast.Resampling.plan(x, fu, fd, *ctx.args)
        n, c = x.shape[:2]
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = torch.empty_like(x, memory_format=torch.channels_last)
        bias = None if b is None else b.detach().to(x.dtype)
        for samples, channels in plan.chunks(n, c):
            y = x[samples, channels]
            if bias is not None:
                y = y + bias[channels].reshape(1, -1, 1, 1)
            grad_x[samples, channels] = _chunk_backward(plan, y, grad[samples, channels])
        grad_b = None
        if b is not None and ctx.needs_input_grad[3]:
            grad_b = grad_x.sum(dim=[0, 2, 3]).to(b.dtype)
        grad_in = grad_x if ctx.needs_input_grad[0] else None
        return grad_in, None, None, grad_b, None, None, None, None, None, None, None


def _chunk_backward(plan: fast.Resampling, y: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. one chunk's input ``y`` (bias added) of ``plan.run``, given ``grad``
    w.r.t. its output: each step's adjoint, in reverse, the activation's derivative taken from
    the recomputed intermediate."""
    cc = y.shape[1]
    # (contiguous: elementwise ops on a cropped view of a channels-last tensor are several times slower)
    u = plan.upsample(y.contiguous(memory_format=torch.channels_last)).contiguous(memory_format=torch.channels_last)
    g = _down_adjoint(plan, grad * plan.gain if plan.gain != 1 else grad, cc)
    if plan.slope != 1:
        g = torch.ops.aten.leaky_relu_backward(g, u, plan.slope, False)
    if plan.clamp is not None and plan.clamp >= 0:
        # The clamp cuts where the activation (monotonic in u) leaves ±clamp; autograd's clamp
        # passes gradients at ±clamp itself. Most chunks never reach it: test the extremes first.
        extremes = plan.activate(torch.stack([u.amin(), u.amax()]), clamp=False)
        if extremes.abs().max() > plan.clamp:
            g = g.masked_fill_(plan.activate(u, clamp=False).abs_() > plan.clamp, 0)
    return _up_adjoint(plan, g, cc, y.shape[-2], y.shape[-1])


def _down_adjoint(plan: fast.Resampling, g: torch.Tensor, cc: int) -> torch.Tensor:
    """Adjoint of ``plan.downsample``: from the output's gradient to the intermediate's."""
    down, h, w = plan.down, plan.h_tmp, plan.w_tmp
    g = g.contiguous(memory_format=torch.channels_last)
    if plan.fd_w is not None and plan.fd_h is not None:
        mid_h = (h - plan.td) // down + 1  # after the width pass, before the height pass
        g = F.conv_transpose2d(g, plan.fd_h[:cc], stride=(down, 1), groups=cc,
                               output_padding=(h - ((mid_h - 1) * down + plan.td), 0))
        return F.conv_transpose2d(g, plan.fd_w[:cc], stride=(1, down), groups=cc,
                                  output_padding=(0, w - ((plan.w_out - 1) * down + plan.td)))
    if plan.fd_2d is not None:
        return F.conv_transpose2d(g, plan.fd_2d[:cc], stride=down, groups=cc,
                                  output_padding=(h - ((plan.h_out - 1) * down + plan.td),
                                                  w - ((plan.w_out - 1) * down + plan.td)))
    out = g.new_zeros([g.shape[0], cc, h, w]).contiguous(memory_format=torch.channels_last)
    out[:, :, ::down, ::down] = g
    return out


def _up_adjoint(plan: fast.Resampling, g: torch.Tensor, cc: int, h: int, w: int) -> torch.Tensor:
    """Adjoint of ``plan.upsample``: each window's adjoint is the opposite window, each
    transposed convolution's the strided convolution with the same taps."""
    px0, _, py0, _ = plan.padding
    up, tu = plan.up, plan.tu
    g = fast._window(g, -2, -(tu - 1 - py0), (h - 1) * up + tu)
    g = F.conv2d(g, plan.fu_h[:cc], stride=(up, 1), groups=cc)
    g = fast._window(g, -1, -(tu - 1 - px0), (w - 1) * up + tu)
    return F.conv2d(g, plan.fu_w[:cc], stride=(1, up), groups=cc)
