"""Integer probability tables for the entropy coder (the codec's frozen prior).

Each coded value has a table: its symbols (quantization indices) are modelled as a discretized
zero-mean Gaussian, or a mixture of two, with standard deviations from ``SCALES`` (in
quantization steps). Tables
are computed once when a codec is fitted, quantized to integers with a fixed total
(``2**PRECISION``) and stored in the model, so encoder and decoder use exactly the same
integers on every machine; floats never decide a probability at coding time.

Symbols beyond ``±half_width`` are coded as an escape symbol plus the raw value.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import ndtr

PRECISION = 24  # frequencies sum to 2**PRECISION (constriction's default ANS/range precision)
NUM_CLASSES = 30
SCALES = 2.0 ** (np.arange(NUM_CLASSES) / 2 - 3)  # 0.125 .. ~2900 steps, half-octave apart
TAIL_SIGMAS = 5.0  # half-width of a table, in standard deviations


def scale_class(sigma: np.ndarray) -> np.ndarray:
    """Class index (int) of each standard deviation, in quantization steps (nearest in log scale)."""
    c = np.rint(2 * np.log2(np.maximum(sigma, 1e-30)) + 6)
    return np.clip(c, 0, NUM_CLASSES - 1).astype(np.int64)


# Each value's prior is a table id: a discretized Gaussian of class c1, or a two-component
# mixture (1 − π)·N(0, SCALES[c1]) + π·N(0, SCALES[c2]). Mixtures fit W+ residuals well: small
# most of the time, large where a new style starts (style mixing, or a new detail in a layer).
MIXTURE_WEIGHTS = (0.0, 1 / 32, 1 / 16, 1 / 8, 1 / 4)


def table_id(c1: int, c2: int = 0, weight_index: int = 0) -> int:
    """Id of the table for narrow class ``c1``, wide class ``c2`` and mixture weight index."""
    if weight_index == 0:
        c2 = c1
    return (c1 * NUM_CLASSES + c2) * len(MIXTURE_WEIGHTS) + weight_index


def table_spec(tid: int) -> tuple[int, int, float]:
    """``(c1, c2, π)`` of a table id."""
    pair, weight_index = divmod(int(tid), len(MIXTURE_WEIGHTS))
    c1, c2 = divmod(pair, NUM_CLASSES)
    return c1, c2, MIXTURE_WEIGHTS[weight_index]


def half_width(tid: int) -> int:
    """Largest |symbol| a table codes directly."""
    c1, c2, pi = table_spec(tid)
    return max(1, int(np.ceil(TAIL_SIGMAS * SCALES[max(c1, c2) if pi else c1])))


@functools.lru_cache(maxsize=8192)
def frequency_table(tid: int) -> np.ndarray:
    """Integer frequencies (sum ``2**PRECISION``, all ≥ 1) for symbols ``-A..A`` then the escape
    (read-only; cached, since fitting evaluates many candidate tables)."""
    c1, c2, pi = table_spec(tid)
    a = half_width(tid)
    edges = np.arange(-a, a + 2) - 0.5

    def component(c: int) -> np.ndarray:
        cdf = ndtr(edges / SCALES[c])
        return np.append(np.diff(cdf), 2 * ndtr(-(a + 0.5) / SCALES[c]))

    p = component(c1) if not pi else (1 - pi) * component(c1) + pi * component(c2)
    total = 1 << PRECISION
    freq = np.maximum(1, np.floor(p / p.sum() * total)).astype(np.int64)
    freq[np.argmax(freq)] += total - freq.sum()
    freq = freq.astype(np.int32)
    freq.flags.writeable = False
    return freq


def code_lengths(tid: int, table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bits to code each of ``values`` (int symbols) with table ``tid`` (escapes: 24 raw bits more)."""
    a = half_width(tid)
    escaped = np.abs(values) > a
    idx = np.where(escaped, 2 * a + 1, values + a)
    return -np.log2(table[idx] / float(1 << PRECISION)) + 24 * escaped


def probabilities(freq: np.ndarray) -> np.ndarray:
    """Exact float64 probabilities of an integer table (dyadic: no rounding anywhere)."""
    return freq.astype(np.float64) / float(1 << PRECISION)
