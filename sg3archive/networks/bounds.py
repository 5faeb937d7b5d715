"""Bounds on network hyperparameters, checked before any module is built from untrusted files.

Official pickles, network directories, ``.safetensors`` metadata and encoder files all carry
constructor arguments (``init_kwargs``). Building a network from them allocates memory in
proportion to those numbers, so a few bytes such as ``channel_max = 2**15`` or
``num_layers = 200000`` would ask for gigabytes (or hours) before any weight is compared. This
module is the one place that says which values are plausible: each argument has a type and a
range that admits every official StyleGAN3 configuration (stylegan3-t/-r, 16² to 1024², also with
doubled ``--cbase``/``--cmax``), and the parameter count the arguments imply is computed without
building anything and capped (:data:`MAX_PARAMETERS`).

The counts are those ``module.state_dict()`` would hold (parameters plus persistent buffers); the
synthesis geometry below repeats the arithmetic of :class:`~sg3archive.networks.generator.SynthesisNetwork`
and is checked against built networks by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from sg3archive.errors import NetworkFormatError

MAX_PARAMETERS = 1 << 28  # 268M values (1 GiB in float32): 4x the largest official network
MAX_DIM = 4096  # z_dim, w_dim, cmap_dim, encoder widths
MAX_CHANNEL_BASE = 1 << 17  # stylegan3-r doubles --cbase: 2 x 65536
MAX_CHANNEL_MAX = 2048  # stylegan3-r doubles --cmax: 2 x 1024
MAX_RESOLUTION = 2048
MAX_LABELS = 100_000  # c_dim (ImageNet has 1000 classes)
MAX_LAYERS = 64  # synthesis layers (official: 14), mapping layers (official: 2 or 8)
MAX_KWARG_NODES = 10_000  # values in one network's init_kwargs (official: about 20)

_ADVICE = "the file's network settings are damaged or not from StyleGAN3; re-export the network from its source"

Check = Callable[[Any, str], Any]


def _fail(where: str, name: str, want: str, value: Any) -> NetworkFormatError:
    shown = f"the string {value!r}" if isinstance(value, str) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if not isinstance(value, (str, int, float, bool, type(None))):
        shown = f"a {type(value).__name__}"
    return NetworkFormatError(f"{where}: {name} must be {want}, got {shown}; {_ADVICE}.")


def integer(lo: int, hi: int, *, power_of_two: bool = False, optional: bool = False) -> Check:
    """An int (never a bool or a string of digits) in ``[lo, hi]``, optionally a power of two."""
    want = f"{'a power-of-two ' if power_of_two else 'an '}integer from {lo} to {hi}" + (" or null" if optional else "")

    def check(value: Any, name: str) -> Any:
        if value is None and optional:
            return None
        if type(value) is not int or not lo <= value <= hi or (power_of_two and value & (value - 1)):
            raise _fail("{where}", name, want, value)
        return value

    return check


def number(lo: float, hi: float, *, optional: bool = False) -> Check:
    """A finite int or float (not a bool) in ``[lo, hi]``."""
    want = f"a number from {lo:g} to {hi:g}" + (" or null" if optional else "")

    def check(value: Any, name: str) -> Any:
        if value is None and optional:
            return None
        if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
            raise _fail("{where}", name, want, value)
        return value

    return check


def boolean(value: Any, name: str) -> Any:
    """A JSON/Python bool (numpy bools were already turned into Python ones)."""
    if type(value) is not bool:
        raise _fail("{where}", name, "true or false", value)
    return value


def choice(*allowed: str) -> Check:
    """One of a few strings."""

    def check(value: Any, name: str) -> Any:
        if value not in allowed or type(value) is not str:
            raise _fail("{where}", name, "one of " + ", ".join(repr(a) for a in allowed), value)
        return value

    return check


def numbers(max_len: int) -> Check:
    """A short list of finite numbers (filter taps)."""

    def check(value: Any, name: str) -> Any:
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= max_len:
            raise _fail("{where}", name, f"a list of 1 to {max_len} numbers", value)
        for i, item in enumerate(value):
            number(-1e6, 1e6)(item, f"{name}[{i}]")
        return value

    return check


def nested(spec: Mapping[str, Check]) -> Check:
    """A dict (or null, meaning empty) whose keys all appear in ``spec``."""

    def check(value: Any, name: str) -> Any:
        if value is None:
            return None
        return check_kwargs(value, spec, name)

    return check


def check_kwargs(kwargs: Any, spec: Mapping[str, Check], name: str = "init_kwargs") -> dict:
    """Validate ``kwargs`` against ``spec`` (unknown keys refused); the caller fills in ``{where}``."""
    if not isinstance(kwargs, dict):
        raise _fail("{where}", name, "an object (a dict of settings)", kwargs)
    unknown = sorted(str(k) for k in kwargs if k not in spec)
    if unknown:
        raise NetworkFormatError(
            f"{{where}}: {name} has settings this network family does not use: {', '.join(unknown)[:200]} "
            f"(accepted: {', '.join(spec)}); {_ADVICE}."
        )
    for key, value in kwargs.items():
        spec[key](value, f"{name}.{key}")
    return kwargs


# ---- the specs: every constructor argument of our classes, with official-admitting ranges ----

_CHANNEL_BASE = integer(1, MAX_CHANNEL_BASE)
_CHANNEL_MAX = integer(1, MAX_CHANNEL_MAX)
_RESOLUTION = integer(4, MAX_RESOLUTION, power_of_two=True)
_IMG_CHANNELS = integer(1, 16)
_C_DIM = integer(0, MAX_LABELS)
_CLAMP = number(1e-6, 1e9, optional=True)
_FP16_RES = integer(0, 32)
_ACTIVATION = choice("lrelu", "linear")

GENERATOR_SPEC: dict[str, Check] = {
    "z_dim": integer(1, MAX_DIM),
    "c_dim": _C_DIM,
    "w_dim": integer(1, MAX_DIM),
    "img_resolution": _RESOLUTION,
    "img_channels": _IMG_CHANNELS,
    "mapping_kwargs": nested({
        "num_layers": integer(1, MAX_LAYERS),
        "lr_multiplier": number(1e-9, 1e3),
        "w_avg_beta": number(0, 1),
    }),
    "channel_base": _CHANNEL_BASE,
    "channel_max": _CHANNEL_MAX,
    "num_layers": integer(1, MAX_LAYERS),
    "num_critical": integer(0, MAX_LAYERS - 1),
    "first_cutoff": number(0.125, MAX_RESOLUTION),
    "first_stopband": number(0.5, 4 * MAX_RESOLUTION),
    "last_stopband_rel": number(1, 16),
    "margin_size": integer(0, 256),
    "output_scale": number(-1e6, 1e6),
    "num_fp16_res": _FP16_RES,
    "conv_kernel": integer(1, 7),
    "filter_size": integer(1, 16),
    "lrelu_upsampling": integer(1, 8),
    "use_radial_filters": boolean,
    "conv_clamp": _CLAMP,
    "magnitude_ema_beta": number(0, 1),
}

DISCRIMINATOR_SPEC: dict[str, Check] = {
    "c_dim": _C_DIM,
    "img_resolution": _RESOLUTION,
    "img_channels": _IMG_CHANNELS,
    "architecture": choice("resnet"),
    "channel_base": _CHANNEL_BASE,
    "channel_max": _CHANNEL_MAX,
    "num_fp16_res": _FP16_RES,
    "conv_clamp": _CLAMP,
    "cmap_dim": integer(1, MAX_DIM, optional=True),
    "block_kwargs": nested({
        "activation": _ACTIVATION,
        "resample_filter": numbers(16),
        "freeze_layers": integer(0, 4 * MAX_LAYERS),
        "fp16_channels_last": boolean,
    }),
    "mapping_kwargs": nested({
        "num_layers": integer(1, MAX_LAYERS),
        "embed_features": integer(1, MAX_DIM, optional=True),
        "layer_features": integer(1, MAX_DIM, optional=True),
        "activation": _ACTIVATION,
        "lr_multiplier": number(1e-9, 1e3),
    }),
    "epilogue_kwargs": nested({
        "mbstd_group_size": integer(1, 1 << 16, optional=True),
        "mbstd_num_channels": integer(0, 64),
        "activation": _ACTIVATION,
    }),
}

_ENCODER_COMMON: dict[str, Check] = {
    "num_ws": integer(1, 2 * MAX_LAYERS + 2),
    "w_dim": integer(1, MAX_DIM),
    "img_resolution": integer(8, MAX_RESOLUTION, power_of_two=True),
    "img_channels": _IMG_CHANNELS,
    "width": number(1e-3, 16),
    "instance_stats": boolean,
    "logvar_init": number(-1e3, 1e3),
}


def _encoder_channels(value: Any, name: str) -> Any:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 16:
        raise _fail("{where}", name, "a list of 1 to 16 channel counts", value)
    for i, item in enumerate(value):
        integer(1, MAX_DIM)(item, f"{name}[{i}]")
    return value


ENCODER_SPECS: dict[str, dict[str, Check]] = {
    "single": {**_ENCODER_COMMON, "channels": _encoder_channels},
    "hierarchical": {**_ENCODER_COMMON, "channels": _encoder_channels, "summary_dim": integer(1, 4 * MAX_DIM, optional=True)},
}


# ---- parameter counts implied by the settings (nothing is built) ----

def _get(kwargs: Mapping[str, Any], key: str, default: Any) -> Any:
    value = kwargs.get(key, default)
    return default if value is None and default is not None else value


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def synthesis_geometry(kw: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per-layer channels and sampling rates, exactly as ``SynthesisNetwork.__init__`` derives them."""
    res = kw["img_resolution"]
    num_layers, num_critical = _get(kw, "num_layers", 14), _get(kw, "num_critical", 2)
    first_cutoff, first_stopband = _get(kw, "first_cutoff", 2), _get(kw, "first_stopband", 2**2.1)
    last_cutoff = res / 2
    last_stopband = last_cutoff * _get(kw, "last_stopband_rel", 2**0.3)
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
    channels = np.rint(np.minimum((_get(kw, "channel_base", 32768) / 2) / cutoffs, _get(kw, "channel_max", 512)))
    channels[-1] = kw["img_channels"]
    return {"channels": channels.astype(np.int64), "sampling_rates": sampling_rates}


def generator_parameter_count(kw: Mapping[str, Any]) -> int:
    """Values in ``Generator(**kw).state_dict()`` (``kw`` already passed :func:`check_network_kwargs`)."""
    z_dim, c_dim, w_dim = kw["z_dim"], kw["c_dim"], kw["w_dim"]
    mapping = kw.get("mapping_kwargs") or {}
    total = w_dim + (_linear(c_dim, w_dim) if c_dim > 0 else 0)  # w_avg, embed
    features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * _get(mapping, "num_layers", 2)
    total += sum(_linear(a, b) for a, b in zip(features[:-1], features[1:]))
    geometry = synthesis_geometry(kw)
    channels, rates = [int(c) for c in geometry["channels"]], [int(r) for r in geometry["sampling_rates"]]
    num_layers, num_critical = _get(kw, "num_layers", 14), _get(kw, "num_critical", 2)
    kernel, filter_size = _get(kw, "conv_kernel", 3), _get(kw, "filter_size", 6)
    lrelu_up, radial = _get(kw, "lrelu_upsampling", 2), _get(kw, "use_radial_filters", False)
    total += channels[0] ** 2 + _linear(w_dim, 4) + 9 + 3 * channels[0]  # input: weight, affine, transform, freqs, phases
    for idx in range(num_layers + 1):
        prev, torgb = max(idx - 1, 0), idx == num_layers
        c_in, c_out, k = channels[prev], channels[idx], 1 if torgb else kernel
        total += _linear(w_dim, c_in) + c_out * c_in * k * k + c_out + 1  # affine, weight, bias, magnitude_ema
        tmp = max(rates[prev], rates[idx]) * (1 if torgb else lrelu_up)
        up, down = round(tmp / max(rates[prev], 1)), round(tmp / max(rates[idx], 1))
        up_taps = filter_size * up if up > 1 and not torgb else 1
        down_taps = filter_size * down if down > 1 and not torgb else 1
        total += up_taps if up_taps > 1 else 0
        if down_taps > 1:
            total += down_taps**2 if radial and idx < num_layers - num_critical else down_taps
    return total


def discriminator_parameter_count(kw: Mapping[str, Any]) -> int:
    """Values in ``Discriminator(**kw).state_dict()`` (``kw`` already passed :func:`check_network_kwargs`)."""
    res, img_channels, c_dim = kw["img_resolution"], kw["img_channels"], kw["c_dim"]
    base, cap = _get(kw, "channel_base", 32768), _get(kw, "channel_max", 512)
    block_kw = kw.get("block_kwargs") or {}
    taps = len(_get(block_kw, "resample_filter", (1, 3, 3, 1))) ** 2
    resolutions = [2**i for i in range(int(math.log2(res)), 2, -1)]
    channels = {r: min(base // r, cap) for r in resolutions + [4]}
    cmap_dim = 0 if c_dim == 0 else _get(kw, "cmap_dim", channels[4])

    def conv(n_in: int, n_out: int, k: int, bias: bool = True) -> int:
        return n_out * n_in * k * k + (n_out if bias else 0) + taps

    total = 0
    for r in resolutions:
        tmp, out = channels[r], channels[r // 2]
        total += taps + (conv(img_channels, tmp, 1) if r == res else 0)
        total += conv(tmp, tmp, 3) + conv(tmp, out, 3) + conv(tmp, out, 1, bias=False)
    epilogue = kw.get("epilogue_kwargs") or {}
    c4 = channels[4]
    total += conv(c4 + _get(epilogue, "mbstd_num_channels", 1), c4, 3) + _linear(c4 * 16, c4) + _linear(c4, cmap_dim or 1)
    if c_dim > 0:
        mapping = kw.get("mapping_kwargs") or {}
        embed, layer = _get(mapping, "embed_features", cmap_dim), _get(mapping, "layer_features", cmap_dim)
        features = [embed] + [layer] * (_get(mapping, "num_layers", 8) - 1) + [cmap_dim]
        total += _linear(c_dim, embed) + sum(_linear(a, b) for a, b in zip(features[:-1], features[1:]))
    return total


def encoder_parameter_bound(kind: str, kw: Mapping[str, Any]) -> int:
    """An upper bound (within about 2.5x) on the values in an encoder's ``state_dict`` (``kw`` already checked)."""
    width, img_channels = _get(kw, "width", 1.0), kw.get("img_channels", 3)
    scaled = [max(8, int(round(c * width))) for c in kw.get("channels", (64, 128, 256, 512, 512, 512))]
    num_ws, w_dim, res = kw["num_ws"], kw["w_dim"], kw["img_resolution"]

    def trunk(resolution: int, channels: list[int]) -> tuple[int, int]:
        widths = [img_channels] + channels[: max(0, min(len(channels), int(math.log2(resolution)) - 2))]
        convs = sum(9 * a * b + 3 * b for a, b in zip(widths[:-1], widths[1:]))
        return convs + 2 * sum(widths) * (widths[-1] + 1), widths[-1]

    if kind == "single":
        size, out = trunk(res, scaled)
        return size + num_ws * 2 * w_dim * (out + 1) + w_dim
    summary = _get(kw, "summary_dim", scaled[-1])
    total = num_ws * 2 * w_dim * (summary + 1) + w_dim + 2 * (num_ws * w_dim + summary + 1) * summary
    for shrink in (2, 1, 0):
        size, out = trunk(res >> shrink, scaled[shrink:])
        total += size + (out + summary + 1) * summary
    return total


# ---- entry points ----

def _count_nodes(value: Any, budget: int = MAX_KWARG_NODES) -> None:
    """Refuse settings with more than ``budget`` values in all (walks each container once)."""
    stack, seen, count = [value], set(), 0
    while stack:
        item = stack.pop()
        count += 1
        if count > budget:
            raise NetworkFormatError(f"{{where}}: init_kwargs hold more than {budget} values; {_ADVICE}.")
        if isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
            stack.extend(item.keys() if isinstance(item, dict) else ())


def _located(fn: Callable[[], Any], where: str) -> Any:
    try:
        return fn()
    except NetworkFormatError as exc:
        raise NetworkFormatError(str(exc).replace("{where}", where)) from None


def _check_count(count: int, what: str, where: str) -> int:
    if count > MAX_PARAMETERS:
        raise NetworkFormatError(
            f"{where}: these settings describe a {what} with {count:,} weights, more than the {MAX_PARAMETERS:,} "
            f"sg3archive accepts (the largest official StyleGAN3 network has about 32M); {_ADVICE}."
        )
    return count


def check_network_kwargs(class_name: str, init_kwargs: Any, where: str) -> int:
    """Validate a Generator's or Discriminator's ``init_kwargs`` before building it.

    Returns the number of values its ``state_dict`` will hold. Raises ``NetworkFormatError``
    naming ``where`` and the setting for a wrong type, an out-of-range value, an unknown setting,
    or a network larger than :data:`MAX_PARAMETERS`.
    """
    specs = {"Generator": GENERATOR_SPEC, "Discriminator": DISCRIMINATOR_SPEC}
    if class_name not in specs:
        return 0  # build_network refuses unknown classes with its own message
    _located(lambda: _count_nodes(init_kwargs), where)
    _located(lambda: check_kwargs(init_kwargs, specs[class_name]), where)
    missing = [k for k in (("z_dim", "w_dim") if class_name == "Generator" else ()) + ("c_dim", "img_resolution",
               "img_channels") if k not in init_kwargs]
    if missing:
        raise NetworkFormatError(f"{where}: init_kwargs lack {', '.join(missing)}; {_ADVICE}.")
    if class_name == "Generator":
        layers, critical = init_kwargs.get("num_layers", 14), init_kwargs.get("num_critical", 2)
        if critical >= layers:
            raise NetworkFormatError(
                f"{where}: init_kwargs.num_critical ({critical}) must be below num_layers ({layers}); {_ADVICE}."
            )
        count = generator_parameter_count(init_kwargs)
    else:
        count = discriminator_parameter_count(init_kwargs)
    return _check_count(count, class_name, where)


def check_encoder_kwargs(kind: Any, init_kwargs: Any, where: str) -> int:
    """Validate an encoder's ``kind`` and ``init_kwargs``; returns an upper bound on its weight count."""
    if kind not in ENCODER_SPECS:
        raise NetworkFormatError(f"{where}: encoder kind {str(kind)[:40]!r} is not one of {', '.join(ENCODER_SPECS)}; "
                                 f"{_ADVICE}.")
    _located(lambda: _count_nodes(init_kwargs), where)
    _located(lambda: check_kwargs(init_kwargs, ENCODER_SPECS[kind]), where)
    missing = [k for k in ("num_ws", "w_dim", "img_resolution") if k not in init_kwargs]
    if missing:
        raise NetworkFormatError(f"{where}: init_kwargs lack {', '.join(missing)}; {_ADVICE}.")
    return _check_count(encoder_parameter_bound(kind, init_kwargs), "encoder", where)


def check_state_size(count: int, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse to build a network whose settings need far more weights than the file holds.

    Building allocates ``count`` values before the weights are compared; a file that holds only
    a few bytes must not make us allocate gigabytes for the comparison to fail.
    """
    held = sum(t.numel() for t in state.values())
    if count > 2 * held + 4096:
        raise NetworkFormatError(
            f"{where}: the settings describe {count:,} weights but the file holds only {held:,}; "
            "the file is truncated or damaged. Re-export the network from its source."
        )


def check_finite(state: Mapping[str, torch.Tensor], where: str, kind: str = "network file") -> None:
    """Refuse weights holding NaN or infinity: such a network only ever produces NaN images."""
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            raise NetworkFormatError(f"{kind} {where}: tensor {name} contains NaN/Inf; the file is damaged — re-export it.")
