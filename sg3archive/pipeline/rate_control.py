"""Rate control of profile ``matched``: the bits per W+ layer that cost at most a small PSNR loss
(0.1 dB by default) against the encoder's own, unquantized reconstruction.

It lives in the pipeline, not the codec, because it needs the generator: the loss is measured
end to end, ``G.synthesis(quantized ws)`` against the image, on an evaluation set of calibration
images. How, with a bounded number of synthesized images (the cost that matters: 64² on the
CPU is ~0.3-0.5 s an image, 1024² seconds):

1. The baseline: each evaluation image against ``G.synthesis(ws)`` of its own (unquantized)
   code. ``N`` images (``N`` ≤ :data:`MAX_EVAL_IMAGES`).
2. Each layer's sensitivity: image MSE per unit of W-space MSE when that layer alone gets small
   Gaussian noise, on :data:`SENSITIVITY_CODES` codes: ``SENSITIVITY_CODES × num_ws`` images.
3. Candidates: ``bits_l = round(t + ½·log2(s_l / mean s))``, the allocation that minimizes the
   predicted image error for a size (each bit halves a layer's step, quartering its error); the
   predicted loss of each ``t`` comes from the layers' exact W-space quantization errors (no
   synthesis). The cheapest ``t`` whose predicted loss fits the budget is then checked end to
   end (``N`` images); a miss or a wide margin rescales the budget of the prediction and the
   search runs again, at most :data:`MAX_CHECKS` checks.

Bound: ``N·(1 + MAX_CHECKS) + SENSITIVITY_CODES·num_ws`` synthesized images, 16·4 + 2·16 = 96
for StyleGAN3's 16 layers (seconds at 64² and several minutes at 1024² on two CPU cores).
Deterministic: fixed seeds, and the same inputs give the same choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sg3archive.codec import LatentCodec
from sg3archive.codec import quantize as qz
from sg3archive.codec.model import SPREAD_SIGMAS
from sg3archive.codec.names import DEFAULT_MAX_LOSS_DB
from sg3archive.codec.profiles import MAX_BITS, MIN_BITS

MAX_EVAL_IMAGES = 16  # evaluation images the loss is measured on
MIN_EVAL_IMAGES = 8  # fewer collection images than this are topped up with generator images
SENSITIVITY_CODES = 2  # codes each layer's sensitivity is measured on
MAX_CHECKS = 3  # end-to-end checks of candidate allocations
NOISE_SCALE = 0.1  # sensitivity noise, as a fraction of W's per-value standard deviation
_T_GRID = np.arange(MAX_BITS + 4, MIN_BITS - 8, -0.125)  # candidate offsets t, fine → coarse


@dataclass(frozen=True)
class Check:
    """One candidate allocation measured end to end: its bits, estimated payload bytes per image
    and mean PSNR loss (dB) against the unquantized reconstruction."""

    bits: tuple[int, ...]
    bytes_per_image: float
    loss_db: float


@dataclass(frozen=True)
class RateChoice:
    """The allocation chosen (``bits``), what it measured, and what the choice cost.

    ``met``: whether ``loss_db`` ≤ ``max_loss_db``; when no candidate met it, ``bits`` is the
    checked candidate with the smallest loss."""

    bits: tuple[int, ...]
    bytes_per_image: float
    loss_db: float
    max_loss_db: float
    met: bool
    baseline_psnr: float
    eval_images: int
    synthesized_images: int
    sensitivity: tuple[float, ...]
    checks: tuple[Check, ...]

    def info(self) -> dict[str, object]:
        """JSON-able figures for the codec model's provenance."""
        return {"bits": list(self.bits), "bytes_per_image": round(self.bytes_per_image, 2),
                "loss_db": round(self.loss_db, 4), "max_loss_db": self.max_loss_db, "met": self.met,
                "baseline_psnr": round(self.baseline_psnr, 3), "eval_images": self.eval_images,
                "synthesized_images": self.synthesized_images,
                "checks": [{"bits": list(c.bits), "bytes_per_image": round(c.bytes_per_image, 2),
                            "loss_db": round(c.loss_db, 4)} for c in self.checks]}


def _synthesize(G: Any, ws: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(G.parameters()).device
    with torch.no_grad():
        return torch.cat([G.synthesis(ws[i : i + batch_size].to(device)).clamp(-1, 1).float().cpu()
                          for i in range(0, len(ws), batch_size)])


def _mse(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)).numpy()


def _psnr(mse: np.ndarray) -> np.ndarray:
    """PSNR (dB) of images in [-1, 1] (data range 2), as ``sg3archive.metrics.psnr``."""
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def _sensitivity(G: Any, ws: torch.Tensor, base: torch.Tensor, scale: float,
                 batch_size: int) -> np.ndarray:
    """Image MSE per unit of per-value W MSE, each layer perturbed alone ``[num_ws]``."""
    n, layers, _ = ws.shape
    noise = scale * torch.randn(ws[:, 0].shape, generator=torch.Generator().manual_seed(0), dtype=ws.dtype)
    perturbed = ws[None].repeat(layers, 1, 1, 1)
    for layer in range(layers):
        perturbed[layer, :, layer] += noise
    images = _synthesize(G, perturbed.reshape(layers * n, *ws.shape[1:]), batch_size)
    change = _mse(images, base.repeat(layers, 1, 1, 1)).reshape(layers, n).mean(axis=1)
    return np.maximum(change / scale**2, 1e-12)


class _ErrorModel:
    """Exact W-space quantization error of each layer at each bit count, on the evaluation codes,
    in the codec's decorrelated domain (its centre and basis from one reference fit)."""

    def __init__(self, ws_calib: np.ndarray, ws_eval: np.ndarray) -> None:
        reference = LatentCodec.fit(ws_calib, 8).model
        encode = reference.encode_matrix
        basis = None if reference.basis_int is None else reference.basis_int * 2.0**-qz.BASIS_BITS

        def domain(ws: np.ndarray) -> np.ndarray:
            u = ws - reference.centre
            return u if encode is None else u @ encode

        u_calib, u_eval = domain(ws_calib), domain(ws_eval)
        spread = SPREAD_SIGMAS * np.sqrt(u_calib.var(axis=0).mean(axis=-1))  # as the codec sets its steps
        spread = np.where(spread > 0, spread, 1.0)
        bit_range = range(MIN_BITS, MAX_BITS + 1)
        self.error = np.empty((ws_eval.shape[1], len(bit_range)))  # [L, bits] per-value W MSE
        for j, b in enumerate(bit_range):
            m, e = zip(*(qz.step_parts(s * 2.0**-b) for s in spread))
            steps = np.array(m, dtype=np.float64) * np.exp2(-np.array(e, dtype=np.float64))
            err = (np.rint(u_eval / steps[None, :, None]) - u_eval / steps[None, :, None]) * steps[None, :, None]
            if basis is not None:
                err = err @ basis.T
            self.error[:, j] = (err**2).mean(axis=(0, 2))

    def layer_errors(self, bits: Sequence[int]) -> np.ndarray:
        return self.error[np.arange(len(bits)), np.asarray(bits) - MIN_BITS]


def _bits_for(t: float, shape: np.ndarray) -> tuple[int, ...]:
    return tuple(int(b) for b in np.clip(np.rint(t + shape), MIN_BITS, MAX_BITS))


def choose_bits(G: Any, ws_calib: torch.Tensor, ws_eval: torch.Tensor, x_eval: torch.Tensor, *,
                max_loss_db: float = DEFAULT_MAX_LOSS_DB, batch_size: int = 16) -> RateChoice:
    """The cheapest bits per layer found whose quantized reconstruction of ``x_eval [N, 3, R, R]``
    (in [-1, 1]) from its codes ``ws_eval [N, num_ws, w_dim]`` loses at most ``max_loss_db`` of mean
    PSNR against ``G.synthesis(ws_eval)``; candidate codecs are fitted on ``ws_calib`` as the
    archive's will be. See the module docstring for the search and its cost bound."""
    if max_loss_db <= 0:
        raise ValueError(f"the allowed quantization loss must be positive (dB), got {max_loss_db}")
    if len(ws_eval) != len(x_eval) or not len(ws_eval):
        raise ValueError("choose_bits needs one evaluation image per evaluation code, at least one")
    ws_calib, ws_eval = ws_calib.detach().cpu().float(), ws_eval.detach().cpu().float()
    x_eval = x_eval.detach().cpu().float()
    n, layers = len(ws_eval), ws_eval.shape[1]
    base = _synthesize(G, ws_eval, batch_size)
    base_mse = _mse(base, x_eval)
    base_psnr = _psnr(base_mse)
    k = min(SENSITIVITY_CODES, n)
    scale = NOISE_SCALE * float(ws_calib.std(dim=0).mean())
    sens = _sensitivity(G, ws_eval[:k], base[:k], scale, batch_size)
    synthesized = n + k * layers
    shape = 0.5 * np.log2(sens / sens.mean())
    errors = _ErrorModel(ws_calib.double().numpy(), ws_eval.double().numpy())

    def predicted_loss(bits: tuple[int, ...]) -> float:
        delta = float((sens * errors.layer_errors(bits)).sum())
        return float((10 * np.log10((base_mse + delta) / np.maximum(base_mse, 1e-12))).mean())

    predictions = [(t, _bits_for(t, shape)) for t in _T_GRID]
    budget = max_loss_db  # the prediction's budget, rescaled by what the checks measure
    checks: list[Check] = []
    for _ in range(MAX_CHECKS):
        fits = [bits for _, bits in predictions if predicted_loss(bits) <= budget]
        bits = fits[-1] if fits else predictions[0][1]
        if any(c.bits == bits for c in checks):
            break
        codec = LatentCodec.fit(ws_calib, list(bits))
        quantized = _synthesize(G, codec.quantize(ws_eval).float(), batch_size)
        synthesized += n
        loss = float(base_psnr.mean() - _psnr(_mse(quantized, x_eval)).mean())
        checks.append(Check(bits, codec.estimate(ws_eval)[0], loss))
        if 0.7 * max_loss_db <= loss <= max_loss_db:
            break  # close enough below the limit
        # Rescale the prediction by what was measured; after a miss, aim a little inside the limit.
        target = 0.9 * max_loss_db if loss > max_loss_db else max_loss_db
        budget = max(predicted_loss(bits), 1e-6) * target / max(loss, 1e-3)
    passing = [c for c in checks if c.loss_db <= max_loss_db]
    best = min(passing, key=lambda c: c.bytes_per_image) if passing else min(checks, key=lambda c: c.loss_db)
    return RateChoice(best.bits, best.bytes_per_image, best.loss_db, max_loss_db, bool(passing),
                      float(base_psnr.mean()), n, synthesized, tuple(float(s) for s in sens), tuple(checks))


def eval_budget_note() -> str:
    """The search's cost bound in words (for logs and docs)."""
    return (f"≤ {MAX_EVAL_IMAGES}·(1 + {MAX_CHECKS}) + {SENSITIVITY_CODES}·num_ws synthesized images "
            f"(+ up to {MIN_EVAL_IMAGES} generator images when the collection is small)")


__all__ = ["DEFAULT_MAX_LOSS_DB", "MAX_CHECKS", "MAX_EVAL_IMAGES", "MIN_EVAL_IMAGES", "SENSITIVITY_CODES", "Check",
           "RateChoice", "choose_bits", "eval_budget_note"]
