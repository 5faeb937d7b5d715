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

DEFAULT_PROFILE = "balanced"
AUTO_PROFILE = "auto"  # bits chosen per layer to meet a size (or W-space error) target
PROFILE_NAMES: tuple[str, ...] = (*PRESETS, AUTO_PROFILE)

assert set(CODER_NAMES) == set(WIRE_CODERS) | set(CODER_ALIASES)
assert DEFAULT_PROFILE in PRESETS


def canonical_coder(name: str) -> str:
    """The coder that serves ``name`` (``"arithmetic"`` -> ``"range"``); ValueError for an unknown name."""
    if name not in CODER_NAMES:
        raise ValueError(f"unknown coder {name!r}; use one of {', '.join(CODER_NAMES)}")
    return CODER_ALIASES.get(name, name)


def check_profile(profile: object, *, allow_auto: bool = True) -> str | int | list[int]:
    """``profile`` if it names an allocation (a preset, ``"auto"``, uniform bits in 1..16, or a
    list of bits per layer each in 1..16); else ValueError saying what would do."""
    if isinstance(profile, bool):
        raise ValueError("profile must be a preset name, an int or a list of ints, not a bool (true/false)")
    if isinstance(profile, str):
        names = PROFILE_NAMES if allow_auto else tuple(PRESETS)
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


__all__ = ["AUTO_PROFILE", "CODER_ALIASES", "CODER_NAMES", "DEFAULT_CODER", "DEFAULT_PROFILE", "PROFILE_NAMES",
           "WIRE_CODERS", "CoderName", "canonical_coder", "check_profile"]
