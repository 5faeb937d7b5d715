"""Building blocks shared by the generator and the discriminator (equalized learning rate)."""

from __future__ import annotations

import math

import numpy as np
import torch

from sg3archive.ops.reference import bias_act


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row of ``x`` ``[N, D]`` to unit mean square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(torch.nn.Module):
    """Linear layer with equalized learning rate: weights stored at unit scale, scaled at run time."""

    bias: torch.nn.Parameter | None

    def __init__(
        self,
        in_features: int,  # Input width.
        out_features: int,  # Output width.
        activation: str = "linear",  # "linear" or "lrelu".
        bias: bool = True,  # Add a learned bias?
        lr_multiplier: float = 1.0,  # Learning-rate multiplier (scales weights and bias at run time).
        weight_init: float = 1.0,  # Std of the initial weights (in run-time units).
        bias_init: float | list[float] = 0.0,  # Initial bias (scalar or one value per output).
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        if bias:
            init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
            self.bias = torch.nn.Parameter(torch.from_numpy(init / lr_multiplier).float())
        else:
            self.bias = None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b: torch.Tensor | None = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"

