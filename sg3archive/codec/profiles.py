"""Bit-allocation profiles: how many bits of precision each W+ layer gets.

The guide's table is written for 14 layers; we map each of the generator's ``num_ws`` layers
to the guide's layer at the same relative depth, so StyleGAN3's 16 layers get the same shape
of allocation. "b bits" means a uniform quantizer with 2**b levels across the layer's spread
(eight standard deviations of its W values, i.e. ±4σ); entropy coding then spends fewer bits
than that wherever values are predictable.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_BITS, MAX_BITS = 1, 16

# Guide layer groups (for 14 layers) and bits per group, coarse → fine.
GUIDE_GROUPS = ((0, 1), (2, 5), (6, 10), (11, 13))
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "high_quality": (12, 10, 8, 6),
    "balanced": (11, 9, 7, 5),
    "high_compression": (10, 8, 6, 4),
}


def guide_group(layer: int, num_ws: int) -> int:
    """Index (0..3) of the guide's layer group that ``layer`` of ``num_ws`` layers falls in."""
    guide_layer = round(layer * 13 / max(1, num_ws - 1))
    return next(g for g, (lo, hi) in enumerate(GUIDE_GROUPS) if lo <= guide_layer <= hi)


def layer_groups(num_ws: int) -> list[list[int]]:
    """The layers of each guide group, coarse → fine (the progressive chunks of a payload)."""
    groups: list[list[int]] = [[] for _ in GUIDE_GROUPS]
    for layer in range(num_ws):
        groups[guide_group(layer, num_ws)].append(layer)
    return [g for g in groups if g]


def resolve_bits(profile: str | int | Sequence[int], num_ws: int) -> tuple[str, list[int]]:
    """``(profile name, bits per layer)`` for a preset name, a uniform int, or an explicit list.

    ``"matched"`` resolves to the guide's table under its own name: its measured allocation is
    chosen by the pipeline, which has the generator (``sg3archive.pipeline.rate_control``); the
    codec alone has nothing to measure with.
    """
    from sg3archive.codec.names import GUIDE_PROFILE, check_profile  # the one profile check (names imports this)

    if isinstance(profile, (str, bool)):
        check_profile(profile, allow_auto=False)  # "auto" is fitted (``model.fit_model``), never resolved here
    if isinstance(profile, str):
        per_group = PRESETS.get(profile, PRESETS[GUIDE_PROFILE])
        return profile, [per_group[guide_group(layer, num_ws)] for layer in range(num_ws)]
    if isinstance(profile, int):
        bits = [profile] * num_ws
        name = f"uniform{profile}"
    else:
        bits = [int(b) for b in profile]
        if len(bits) != num_ws:
            raise ValueError(f"a bit list needs one entry per W+ layer ({num_ws}), got {len(bits)}")
        name = "custom"
    bad = [b for b in bits if not MIN_BITS <= b <= MAX_BITS]
    if bad:
        raise ValueError(f"bits per layer must be in {MIN_BITS}..{MAX_BITS} (the guide uses 4-12), got {bad}")
    return name, bits
