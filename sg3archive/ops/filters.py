"""FIR low-pass filter design for the alias-free resampling of StyleGAN3 (Karras et al. 2021, sec. 3.2).

The generator stores its filters as buffers, so designing them only matters when a network is
built from scratch; the numbers must still match the published design exactly, because a fresh
network and an imported one must behave alike.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import scipy.special
import torch


def design_lowpass_filter(
    numtaps: int,
    cutoff: float,
    width: float,
    fs: float,
    radial: bool = False,
) -> torch.Tensor | None:
    """Kaiser-windowed low-pass filter, or ``None`` when one tap means "no filtering".

    Args:
        numtaps: filter length in taps (per dimension).
        cutoff: cutoff frequency, in the same units as ``fs``.
        width: transition band width (twice the half-width), same units.
        fs: sampling rate the filter runs at.
        radial: a 2-D rotation-invariant (jinc-based) filter of shape ``[numtaps, numtaps]``
            instead of a separable 1-D filter of shape ``[numtaps]``.
    """
    if numtaps < 1:
        raise ValueError(f"numtaps must be >= 1, got {numtaps}")
    if numtaps == 1:
        return None
    if not radial:
        taps = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(taps, dtype=torch.float32)
    # Ideal radial low-pass (jinc) windowed by a separable Kaiser window of the same attenuation.
    coords = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    radius = np.hypot(*np.meshgrid(coords, coords))
    taps = scipy.special.j1(2 * cutoff * (np.pi * radius)) / (np.pi * radius)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    taps *= np.outer(window, window)
    taps /= np.sum(taps)
    return torch.as_tensor(taps, dtype=torch.float32)


def setup_resample_filter(taps: list[float] | tuple[float, ...]) -> torch.Tensor:
    """The StyleGAN2 discriminator's 2-D resampling filter: outer product of ``taps``, unit sum."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()
