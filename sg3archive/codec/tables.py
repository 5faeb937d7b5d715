"""Integer probability tables for the entropy coder (the codec's frozen prior).

Each coded value has a scale class ``c``: its symbols (quantization indices) are modelled as a
discretized zero-mean Gaussian of standard deviation ``SCALES[c]`` quantization steps. Tables
are computed once when a codec is fitted, quantized to integers with a fixed total
(``2**PRECISION``) and stored in the model, so encoder and decoder use exactly the same
integers on every machine; floats never decide a probability at coding time.

Symbols beyond ``±half_width`` are coded as an escape symbol plus the raw value.
"""

from __future__ import annotations

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


def half_width(c: int) -> int:
    """Largest |symbol| a class codes directly."""
    return max(1, int(np.ceil(TAIL_SIGMAS * SCALES[c])))


def frequency_table(c: int) -> np.ndarray:
    """Integer frequencies (sum ``2**PRECISION``, all ≥ 1) for symbols ``-A..A`` then the escape."""
    a = half_width(c)
    edges = (np.arange(-a, a + 2) - 0.5) / SCALES[c]
    mass = np.diff(ndtr(edges))
    escape = 2 * ndtr(-(a + 0.5) / SCALES[c])
    p = np.append(mass, escape)
    total = 1 << PRECISION
    freq = np.maximum(1, np.floor(p / p.sum() * total)).astype(np.int64)
    freq[np.argmax(freq)] += total - freq.sum()
    return freq.astype(np.int32)


def probabilities(freq: np.ndarray) -> np.ndarray:
    """Exact float64 probabilities of an integer table (dyadic: no rounding anywhere)."""
    return freq.astype(np.float64) / float(1 << PRECISION)
