"""Exact integer-domain quantization of W+ with inter-layer prediction.

Encoder and decoder agree bit for bit on every machine because everything the decoder does
is integer arithmetic or exactly representable float64 arithmetic:

* W+ is mapped to a decorrelated domain ``u = (w − centre) · E`` (encoder only; any rounding
  here only moves which integer is chosen).
* Each value is quantized on its own grid: ``q = round(u / Δ_l)``, so the reconstruction
  error is at most half a step whatever the prediction does.
* What is transmitted is the index minus an integer prediction: the rounded mean of the indices
  of the layers since the last "new style" (a layer whose residuals are large, as where style
  mixing starts), weighted per value by a fixed-point coefficient (0 or 1·2**S).
* The decoder rebuilds ``q`` with the same integer recursion and computes
  ``w = centre + 2**−(e_l+B) · ((q · m_l) @ basisᵀ)`` where ``Δ_l = m_l · 2**−e_l`` and the basis
  is stored as integers scaled by ``2**B``: every product and partial sum is an integer below
  2**53, so float64 matrix multiplication is exact in any summation order (any BLAS, any
  thread count), and the final scaling by a power of two is exact too.
"""

from __future__ import annotations

import numpy as np

PRED_SHIFT = 12  # fixed-point fraction bits of the prediction coefficients
BASIS_BITS = 14  # fixed-point fraction bits of the basis
MAX_INDEX = (1 << 22) - 1  # |q| bound that keeps the exact-float64 matmul below 2**53


def step_parts(step: float) -> tuple[int, int]:
    """``(m, e)`` with ``m · 2**−e`` ≈ ``step`` and 8 ≤ m ≤ 16 (4 significant bits)."""
    e = int(np.floor(-np.log2(step))) + 4
    return int(np.rint(step * 2.0**e)), e


def indices(ws: np.ndarray, centre: np.ndarray, encode_matrix: np.ndarray | None, steps: np.ndarray) -> np.ndarray:
    """Quantization indices ``q [N, L, D]`` (int64) of ``ws [N, L, D]`` (no basis: W's own axes)."""
    u = ws.astype(np.float64) - centre
    if encode_matrix is not None:
        u = u @ encode_matrix
    q = np.rint(u / steps[None, :, None])
    if not np.isfinite(q).all() or np.abs(q).max(initial=0) > MAX_INDEX:
        raise OverflowError("latent values are not finite or far outside the range the codec was fitted on")
    return q.astype(np.int64)


def common_units(mantissa: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """Each layer's step as an integer multiple of the finest power of two among the steps, so
    indices of layers with different steps can be summed exactly."""
    return mantissa.astype(np.int64) << (exponent.max() - exponent).astype(np.int64)


def _mean_prediction(total: np.ndarray, count: np.ndarray, coef: np.ndarray, unit: int) -> np.ndarray:
    """``round(coef · total / (count · unit))`` in exact integer arithmetic (coef in fixed point)."""
    den = count * unit
    return (2 * coef * total + (den << PRED_SHIFT)) // (den << (PRED_SHIFT + 1))


def _advance(total: np.ndarray, count: np.ndarray, q: np.ndarray, k: np.ndarray, coef: np.ndarray,
             reset: int, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """Running sum (in common units) and count of the layers since the last reset; a layer whose
    predicted values have large residuals (a new style starts) restarts the run."""
    new_style = (np.abs(k) * (coef != 0)).sum(axis=1, keepdims=True) > reset
    return np.where(new_style, q * unit, total + q * unit), np.where(new_style, 1, count + 1)


def residuals(q: np.ndarray, coef: np.ndarray, reset: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Transmitted symbols ``k [N, L, D]``: each layer's indices minus their prediction, the
    (fixed-point weighted) mean of the layers since the last new style."""
    return residuals_and_runs(q, coef, reset, units)[0]


def residuals_and_runs(q: np.ndarray, coef: np.ndarray, reset: np.ndarray,
                       units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`residuals` and, per image and layer, the first layer of the run its prediction
    averages (``runs [N, L, 1]``: layer ``l`` is predicted from layers ``runs[:, l]`` .. ``l − 1``;
    0 for layer 0, which is not predicted). Rate–distortion refinement models the same prediction."""
    k = q.copy()
    n = len(q)
    runs = np.zeros((n, q.shape[1], 1), dtype=np.int64)
    start = np.zeros((n, 1), dtype=np.int64)
    total, count = q[:, 0] * units[0], np.ones((n, 1), dtype=np.int64)
    for layer in range(1, q.shape[1]):
        unit = int(units[layer])
        runs[:, layer] = start
        k[:, layer] -= _mean_prediction(total, count, coef[layer], unit)
        total, count = _advance(total, count, q[:, layer], k[:, layer], coef[layer], int(reset[layer]), unit)
        start = np.where(count == 1, layer, start)
    return k, runs


def reconstruct_indices(k: np.ndarray, coef: np.ndarray, reset: np.ndarray, units: np.ndarray,
                        num_coded: int | None = None) -> np.ndarray:
    """Inverse of :func:`residuals`; layers from ``num_coded`` on are prediction only (k ignored)."""
    n, layers, dims = k.shape
    num_coded = layers if num_coded is None else num_coded
    k = k.copy()
    k[:, num_coded:] = 0
    q = np.empty_like(k)
    q[:, 0] = k[:, 0]
    total, count = q[:, 0] * units[0], np.ones((n, 1), dtype=np.int64)
    for layer in range(1, layers):
        unit = int(units[layer])
        q[:, layer] = _mean_prediction(total, count, coef[layer], unit) + k[:, layer]
        total, count = _advance(total, count, q[:, layer], k[:, layer], coef[layer], int(reset[layer]), unit)
    return q


def dequantize(q: np.ndarray, centre: np.ndarray, basis_int: np.ndarray | None, mantissa: np.ndarray,
               exponent: np.ndarray) -> np.ndarray:
    """``ws_hat [N, L, D]`` float32 from indices, computed exactly (see the module docstring)."""
    exact = (q * mantissa[None, :, None]).astype(np.float64)
    shift = exponent.astype(np.float64)
    if basis_int is not None:
        exact = exact @ basis_int.T.astype(np.float64)
        shift = shift + BASIS_BITS
    return (exact * np.exp2(-shift)[None, :, None] + centre).astype(np.float32)
