"""The codec's vocabulary: entropy-coder names and profile names, with their defaults and the one
profile check.

Job models, the CLI, :class:`~sg3archive.codec.LatentCodec` and the payload format all read
these names from here, so a coder or preset is added in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Literal, get_args

from sg3archive.codec.profiles import MAX_BITS, MIN_BITS, PRESETS

# Coders a user may name; "arithmetic" coding is served by the range coder.
CoderName = Literal["ans", "range", "arithmetic"]
CODER_NAMES: tuple[str, ...] = get_args(CoderName)
CODER_ALIASES: dict[str, str] = {"arithmetic": "range"}
WIRE_CODERS: tuple[str, ...] = ("ans", "range")  # what a payload header can record (see ``bitstream``)
DEFAULT_CODER: CoderName = "ans"

# Rate-distortion refinement (``sg3archive.refinement``): dB of PSNR one payload byte must buy;
# chosen from the curve over lambda that ``benchmarks/rd_latent.py`` measures.
DEFAULT_RD_LAMBDA = 0.01

AUTO_PROFILE = "auto"  # bits chosen per layer to meet a size (or W-space error) target
# Profile matched: the most mean PSNR (dB) quantization may cost against the encoder's own reconstruction.
DEFAULT_MAX_LOSS_DB = 0.1
# Bits chosen per layer on the calibration set so the quantized latents cost at most a small PSNR
# loss against the encoder's own (unquantized) reconstruction: the allocation "matched" to the
# encoder's error (``sg3archive.pipeline.rate_control``). Where nothing can measure it (the codec
# fitted alone, with no generator), it resolves to the guide's table ``GUIDE_PROFILE``.
MATCHED_PROFILE = "matched"
GUIDE_PROFILE = "balanced"  # the guide's default table (the default before rate control)
DEFAULT_PROFILE = MATCHED_PROFILE
PROFILE_NAMES: tuple[str, ...] = (*PRESETS, AUTO_PROFILE, MATCHED_PROFILE)
FITTED_PROFILES: tuple[str, ...] = (AUTO_PROFILE, MATCHED_PROFILE)  # allocations chosen when a codec is fitted

assert set(CODER_NAMES) == set(WIRE_CODERS) | set(CODER_ALIASES)
assert GUIDE_PROFILE in PRESETS and DEFAULT_PROFILE in PROFILE_NAMES


def canonical_coder(name: str) -> str:
    """The coder that serves ``name`` (``"arithmetic"`` -> ``"range"``); ValueError for an unknown name."""
    if name not in CODER_NAMES:
        raise ValueError(f"unknown coder {name!r}; use one of {', '.join(CODER_NAMES)}")
    return CODER_ALIASES.get(name, name)


def check_profile(profile: object, *, allow_auto: bool = True) -> str | int | list[int]:
    """``profile`` if it names an allocation (a preset, ``"auto"``, ``"matched"``, uniform bits in
    1..16, or a list of bits per layer each in 1..16); else ValueError saying what would do.

    ``allow_auto=False``: the names a table can be resolved for without fitting (the presets and
    ``"matched"``, whose table alone is the guide's)."""
    if isinstance(profile, bool):
        raise ValueError("profile must be a preset name, an int or a list of ints, not a bool (true/false)")
    if isinstance(profile, str):
        names = PROFILE_NAMES if allow_auto else (*PRESETS, MATCHED_PROFILE)
        if profile not in names:
            raise ValueError(f"unknown profile {profile!r}; use one of {sorted(names)}, "
                             f"an int ({MIN_BITS}-{MAX_BITS}) or a list of bits per layer")
        return profile
    if isinstance(profile, int):
        if not MIN_BITS <= profile <= MAX_BITS:
            raise ValueError(f"uniform bits must be in {MIN_BITS}..{MAX_BITS} (the guide uses 4-12), got {profile}")
        return profile
    if isinstance(profile, Sequence) and all(isinstance(b, Integral) and not isinstance(b, bool) for b in profile):
        bits = [int(b) for b in profile]
        bad = [b for b in bits if not MIN_BITS <= b <= MAX_BITS]
        if bad or not bits:
            raise ValueError(f"bits per layer must be in {MIN_BITS}..{MAX_BITS} (the guide uses 4-12), got "
                             f"{bad or 'an empty list'}")
        return bits
    raise ValueError(f"profile must be a preset name, 'auto', an int or a list of ints, not {profile!r}")


__all__ = ["AUTO_PROFILE", "CODER_ALIASES", "CODER_NAMES", "DEFAULT_CODER", "DEFAULT_PROFILE", "FITTED_PROFILES",
           "GUIDE_PROFILE", "MATCHED_PROFILE", "PROFILE_NAMES", "WIRE_CODERS", "CoderName", "canonical_coder", "check_profile"]
