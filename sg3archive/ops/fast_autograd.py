"""Memory-lean backward passes for the fast synthesis ops (training and refinement through G).

Recorded by plain autograd, the fast ``filtered_lrelu`` keeps every chunk's up-sampled
intermediate (and its activation and clamp masks) until the backward pass: at 1024² more than
ten times the memory of the forward pass itself. These functions run the forward pass exactly
as without autograd and keep one tensor per op, about the size of the layer's output:

* ``FilteredLrelu`` keeps its input (the modulated convolution's output). Its backward pass
  walks the chunks of the forward pass, recomputes each chunk's up-sampled intermediate and
  applies the adjoint of every step (the down filter's transposed convolution, the activation's
  derivative, the up filter's strided convolution): one chunk's intermediates at a time.
* ``ModulatedConv2d`` keeps its output. Its input is usually the previous layer's
  ``filtered_lrelu`` output, which that op's kept input rebuilds (one forward pass of that op,
  see ``Rebuild``); any other input is kept. Its backward pass recomputes the small tensors
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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from sg3archive.ops import fast


def _grad_leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    """A detached copy of ``t`` that records autograd when ``t`` needs a gradient."""
    if t is None:
        return None
    return t.detach().requires_grad_(t.requires_grad)


def _modified(what: str) -> RuntimeError:
    return RuntimeError(f"{what} needed for the gradient was modified in place after the forward pass")


@dataclass
class Rebuild:
    """Rebuilds a fast ``filtered_lrelu`` output from that op's kept input, for a later op that
    would otherwise keep the output too. Checks that neither tensor changed in place since."""

    source: torch.Tensor  # the op's input (detached; the op keeps it anyway)
    source_version: int
    bias: torch.Tensor | None
    bias_version: int
    args: tuple[Any, ...]  # fu, fd, up, down, padding, gain, slope, clamp
    output: weakref.ref[torch.Tensor]
    output_version: int

    def __call__(self) -> torch.Tensor:
        if self.source._version != self.source_version or (
            self.bias is not None and self.bias._version != self.bias_version
        ):
            raise _modified("an input of filtered_lrelu")
        out = self.output()
        if out is not None and out._version != self.output_version:
            raise _modified("the output of filtered_lrelu")
        fu, fd, up, down, padding, gain, slope, clamp = self.args
        with torch.no_grad():
            return fast.filtered_lrelu_forward(self.source, fu, fd, self.bias, up, down, padding, gain, slope, clamp)


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
    """``fast.filtered_lrelu`` (with resampling) under autograd; its output knows how to be rebuilt."""
    out = FilteredLrelu.apply(x, fu, fd, b, up, down, padding, gain, slope, clamp)
    bias = None if b is None else b.detach()
    out._sg3archive_rebuild = Rebuild(
        x.detach(), x._version, bias, 0 if bias is None else bias._version,
        (fu, fd, up, down, padding, gain, slope, clamp), weakref.ref(out), out._version,
    )
    return out


def modulated_conv2d_recorded(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool,
    padding: int,
    input_gain: torch.Tensor | None,
) -> torch.Tensor:
    """``fast.modulated_conv2d`` under autograd, rebuilding its input in the backward pass when
    it is an unchanged ``filtered_lrelu`` output."""
    rebuild = getattr(x, "_sg3archive_rebuild", None)
    if rebuild is not None and (rebuild.output() is not x or rebuild.output_version != x._version):
        rebuild = None
    return ModulatedConv2d.apply(x, weight, styles, demodulate, padding, input_gain, rebuild)


class ModulatedConv2d(torch.autograd.Function):
    """``fast.modulated_conv2d`` keeping its output, and its input only when it cannot be rebuilt."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        styles: torch.Tensor,
        demodulate: bool,
        padding: int,
        input_gain: torch.Tensor | None,
        rebuild: Rebuild | None,
    ) -> torch.Tensor:
        y = fast.modulated_conv2d_forward(x, weight, styles, demodulate, padding, input_gain)
        ctx.demodulate, ctx.padding, ctx.rebuild = demodulate, padding, rebuild
        ctx.save_for_backward(None if rebuild is not None else x, weight, styles, input_gain, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, styles, input_gain, y = ctx.saved_tensors
        if ctx.rebuild is not None:
            x, ctx.rebuild = ctx.rebuild(), None
        need_x, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        leaves = (_grad_leaf(weight), _grad_leaf(styles), _grad_leaf(input_gain))
        with torch.enable_grad():
            wn, scale, dcoefs = fast.modulation(leaves[0], leaves[1], ctx.demodulate, leaves[2])
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
            grads.append(torch.nn.grad.conv2d_weight(xs, list(wn.shape), grad_z, padding=ctx.padding))
        small: list[torch.Tensor | None] = [None, None, None]
        wanted = [i for i, t in enumerate(leaves) if t is not None and t.requires_grad]
        if outputs and wanted:
            found = torch.autograd.grad(
                outputs, [leaves[i] for i in wanted], [g.to(o.dtype) for o, g in zip(outputs, grads)], allow_unused=True
            )
            for i, g in zip(wanted, found):
                small[i] = g
        return grad_x, small[0], small[1], None, None, small[2], None


class FilteredLrelu(torch.autograd.Function):
    """``fast.filtered_lrelu`` (with resampling) recomputing its intermediates chunk by chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
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
    ) -> torch.Tensor:
        out = fast.filtered_lrelu_forward(x, fu, fd, b, up, down, padding, gain, slope, clamp)
        ctx.args = (up, down, padding, gain, slope, clamp)
        ctx.save_for_backward(x, fu, fd, b)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, fu, fd, b = ctx.saved_tensors
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
        return grad_in, None, None, grad_b, None, None, None, None, None, None


def _chunk_backward(plan: fast.Resampling, y: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. one chunk's input ``y`` (bias added) of ``plan.run``, given ``grad``
    w.r.t. its output: each step's adjoint, in reverse, the activation's derivative taken from
    the recomputed intermediate."""
    cc = y.shape[1]
    u = plan.upsample(y.contiguous(memory_format=torch.channels_last))
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
