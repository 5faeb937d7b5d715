"""Encoders from an image to the W+ space of a frozen StyleGAN3 generator.

An encoder maps ``x [N, img_channels, R, R]`` in [-1, 1] to a diagonal Gaussian per W+ vector,
``EncoderOutput(mean, logvar)`` with both ``[N, num_ws, w_dim]``. Two kinds:

* ``"single"`` (:class:`SingleScaleEncoder`): the design guide's encoder. Stride-2 3x3 convs
  (64→128→256→512→512→512 channels), LeakyReLU(0.2), instance norm on every conv after the first,
  global average pooling, one linear head per W+ vector.
* ``"hierarchical"`` (:class:`HierarchicalEncoder`): the guide's multi-scale encoder. The W+
  vectors are split into coarse / medium / fine groups by relative depth; each group is read from
  its own level of an image pyramid (R/4, R/2, R) by its own conv trunk, and each finer group is
  conditioned on what the coarser groups predicted.

Sizes come from the generator (``num_ws``, ``w_dim``, ``img_resolution``, ``img_channels``); no
layer count is built in. Both encoders are plain ``nn.Module`` s computing in float32 on the
input's device, and record ``init_kwargs`` (JSON-able) so :func:`build_encoder` rebuilds them.

One deliberate addition to the guide: instance norm removes each channel's mean and standard
deviation per image, and with global average pooling behind it those are exactly the statistics
that carry an image's "style" (the inverse of AdaIN; MUNIT's style encoder drops IN for this
reason, ALAE's encoder reads them out as its styles). So each normalized conv hands the per-channel
mean and log-std it removed to a linear projection that is added to the pooled features
(``instance_stats=True``, the default). ``instance_stats=False`` is the guide's table verbatim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F

from sg3archive.errors import Sg3ArchiveError

# The encoder kinds (the one home: training jobs, the CLI and ``build_encoder`` read them from here).
EncoderKind = Literal["single", "hierarchical"]
ENCODER_KINDS: tuple[str, ...] = get_args(EncoderKind)
DEFAULT_ENCODER_KIND: EncoderKind = "hierarchical"
DEFAULT_CHANNELS = (64, 128, 256, 512, 512, 512)  # The guide's Conv1..Conv6.
HIERARCHY_LEVELS = ("coarse", "medium", "fine")
# The guide splits 14 W+ vectors 0-3 / 4-8 / 9-13; these are its group ends as fractions of depth.
HIERARCHY_BOUNDS = (4 / 14, 9 / 14)
LRELU_SLOPE = 0.2
MIN_MAP_SIZE = 4  # Trunks stop downsampling at 4x4, so no norm ever sees a 1x1 map.
MIN_CHANNELS = 8  # Floor of every channel count after multiplying by ``width``.
NORM_EPS = 1e-5  # Same as torch.nn.InstanceNorm2d.
HEAD_INIT_SCALE = 1e-2  # Head weights start at 1e-2 of the usual 1/sqrt(fan_in) scale.
DEFAULT_LOGVAR_INIT = -4.0  # exp(-4) ≈ 0.018, a posterior std ≈ 0.14 at initialization.


class EncoderError(Sg3ArchiveError, ValueError):
    """An encoder was configured with, or called on, something it cannot handle."""


class EncoderOutput(NamedTuple):
    """Posterior over W+: an independent Gaussian ``N(mean, exp(logvar))`` per element."""

    mean: torch.Tensor  # [N, num_ws, w_dim] in W space (w_avg + predicted offset).
    logvar: torch.Tensor  # [N, num_ws, w_dim], natural log of the variance.

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw ``ws [N, num_ws, w_dim]``, differentiable in ``mean`` and ``logvar`` (reparameterized).

        Args:
            generator: source of the noise, for reproducible draws; it must live on the
                tensors' device. None uses the global generator.
        """
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * eps


def hierarchy_groups(num_ws: int) -> list[list[int]]:
    """Split W+ indices ``0..num_ws-1`` into coarse / medium / fine groups by relative depth.

    The guide's split of 14 vectors (0-3, 4-8, 9-13) scaled to ``num_ws`` and rounded half up,
    each group kept non-empty: 14 → 0-3 / 4-8 / 9-13, 16 (StyleGAN3) → 0-4 / 5-9 / 10-15,
    18 → 0-4 / 5-11 / 12-17. Needs ``num_ws >= 3``.
    """
    if num_ws < 3:
        raise EncoderError(
            f"a hierarchical encoder needs num_ws >= 3 (one per group), got {num_ws}; use the single-scale encoder"
        )
    coarse_end = min(max(math.floor(num_ws * HIERARCHY_BOUNDS[0] + 0.5), 1), num_ws - 2)
    medium_end = min(max(math.floor(num_ws * HIERARCHY_BOUNDS[1] + 0.5), coarse_end + 1), num_ws - 1)
    return [list(range(0, coarse_end)), list(range(coarse_end, medium_end)), list(range(medium_end, num_ws))]


def scale_channels(channels: Sequence[int], width: float) -> list[int]:
    """Channel counts multiplied by ``width``, rounded, at least ``MIN_CHANNELS``."""
    return [max(MIN_CHANNELS, int(round(c * width))) for c in channels]


def num_downsamples(resolution: int, max_convs: int) -> int:
    """Stride-2 convs a trunk applies to a ``resolution``² input: down to 4x4, at most ``max_convs``.

    ``min(max_convs, log2(resolution) - 2)``: 64 → 4 convs (4x4), 256 → 6 (4x4), 1024 → 6 (16x16,
    when six channel counts are given). Conv ``i`` gets the ``i``-th channel count, so a small input
    uses the first, narrower convs of the table.
    """
    return min(max_convs, int(math.log2(resolution)) - 2)


def _check_resolution(resolution: int, minimum: int, what: str) -> None:
    if resolution < minimum or resolution & (resolution - 1):
        raise EncoderError(f"{what} must be a power of two >= {minimum}, got {resolution}")


def _w_avg_buffer(w_avg: torch.Tensor | None, w_dim: int) -> torch.Tensor:
    if w_avg is None:
        return torch.zeros([w_dim])
    w_avg = torch.as_tensor(w_avg).detach()
    if w_avg.shape != (w_dim,):
        raise EncoderError(f"w_avg must have shape [{w_dim}] (the generator's mapping.w_avg), got {list(w_avg.shape)}")
    return w_avg.to(device="cpu", dtype=torch.float32).clone()


def _common_init_kwargs(
    num_ws: int, w_dim: int, img_resolution: int, img_channels: int, channels: Sequence[int], width: float
) -> dict[str, Any]:
    if num_ws < 1 or w_dim < 1 or img_channels < 1:
        raise EncoderError(f"num_ws, w_dim and img_channels must be >= 1, got {num_ws}, {w_dim}, {img_channels}")
    if len(channels) == 0 or any(int(c) < 1 for c in channels):
        raise EncoderError(f"channels must be a non-empty list of positive counts, got {list(channels)}")
    if not width > 0:
        raise EncoderError(f"width must be > 0, got {width}")
    return dict(
        num_ws=int(num_ws),
        w_dim=int(w_dim),
        img_resolution=int(img_resolution),
        img_channels=int(img_channels),
        channels=[int(c) for c in channels],
        width=float(width),
    )


def _check_input(x: torch.Tensor, img_channels: int, img_resolution: int) -> torch.Tensor:
    expected = (img_channels, img_resolution, img_resolution)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected or x.shape[0] < 1:
        raise EncoderError(
            f"x must have shape [N >= 1, {', '.join(map(str, expected))}], got {list(x.shape)}; "
            "encoders resize nothing, so bring images to the generator's resolution first"
        )
    return x.to(torch.float32)


class DownBlock(torch.nn.Module):
    """3x3 stride-2 conv, optional instance norm, LeakyReLU(0.2); hands back what the norm removed."""

    def __init__(
        self,
        in_channels: int,  # Input channels.
        out_channels: int,  # Output channels.
        norm: bool,  # Instance-normalize the conv output (affine, per channel)?
    ) -> None:
        super().__init__()
        self.norm = norm
        # A bias in front of a norm would be subtracted again, so normalized convs have none.
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=not norm)
        if norm:
            self.norm_weight = torch.nn.Parameter(torch.ones([out_channels]))
            self.norm_bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [N, C_in, H, W]`` → ``(y [N, C_out, H/2, W/2], stats [N, 2·C_out] or None)``.

        ``stats`` are the per-channel mean and log-std the norm removed (None without norm).
        """
        y = self.conv(x)
        stats = None
        if self.norm:
            var, mu = torch.var_mean(y, dim=(2, 3), keepdim=True, correction=0)
            y = (y - mu) * torch.rsqrt(var + NORM_EPS)
            y = y * self.norm_weight[:, None, None] + self.norm_bias[:, None, None]
            stats = torch.cat([mu.flatten(1), 0.5 * torch.log(var + NORM_EPS).flatten(1)], dim=1)
        return F.leaky_relu(y, LRELU_SLOPE), stats

    def extra_repr(self) -> str:
        return f"norm={self.norm}"


class ConvTrunk(torch.nn.Module):
    """Image → pooled feature vector: ``num_downsamples`` DownBlocks, global average pooling.

    The first block is not normalized (the guide's Conv1), all later ones are. With
    ``instance_stats`` the statistics the norms removed are projected and added to the pooled
    features.
    """

    def __init__(
        self,
        in_channels: int,  # Image channels.
        resolution: int,  # Input height and width, a power of two >= 8.
        channels: Sequence[int],  # Output channels of conv 1, 2, ... (already scaled by width).
        instance_stats: bool,  # Add a projection of the removed instance statistics?
    ) -> None:
        super().__init__()
        _check_resolution(resolution, 2 * MIN_MAP_SIZE, "a conv trunk's input resolution")
        self.resolution = resolution
        self.num_convs = num_downsamples(resolution, len(channels))
        widths = [in_channels] + list(channels[: self.num_convs])
        self.blocks = torch.nn.ModuleList(
            DownBlock(widths[i], widths[i + 1], norm=i > 0) for i in range(self.num_convs)
        )
        self.out_features = widths[-1]
        self.out_size = resolution >> self.num_convs
        assert self.out_size >= MIN_MAP_SIZE
        num_stats = 2 * sum(widths[2:])
        self.stats_proj = torch.nn.Linear(num_stats, self.out_features) if instance_stats and num_stats > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, C, resolution, resolution]`` → features ``[N, out_features]``."""
        stats = []
        for block in self.blocks:
            x, block_stats = block(x)
            if block_stats is not None:
                stats.append(block_stats)
        features = x.mean(dim=(2, 3))
        if self.stats_proj is not None:
            features = features + self.stats_proj(torch.cat(stats, dim=1))
        return features

    def extra_repr(self) -> str:
        out = f"{self.out_features}x{self.out_size}x{self.out_size}"
        return f"resolution={self.resolution}, num_convs={self.num_convs}, out={out}"


class GaussianHeads(torch.nn.Module):
    """One linear map per W+ vector from a shared feature vector to (mean offset, log-variance).

    Weights ``[num_layers, 2·w_dim, in_features]``: the offset rows first, then the log-variance
    rows. They start at ``HEAD_INIT_SCALE`` of the usual scale, so at initialization the offset is
    ≈ 0 (mean ≈ w_avg) and the log-variance ≈ ``logvar_init``, yet every weight gets gradient.
    """

    def __init__(
        self,
        num_layers: int,  # W+ vectors this head predicts.
        in_features: int,  # Width of the shared feature vector.
        w_dim: int,  # Width of a W vector.
        logvar_init: float,  # Initial log-variance (the bias of the log-variance rows).
    ) -> None:
        super().__init__()
        self.num_layers, self.in_features, self.w_dim = num_layers, in_features, w_dim
        scale = HEAD_INIT_SCALE / math.sqrt(in_features)
        self.weight = torch.nn.Parameter(torch.randn([num_layers, 2 * w_dim, in_features]) * scale)
        bias = torch.zeros([num_layers, 2 * w_dim])
        bias[:, w_dim:] = logvar_init
        self.bias = torch.nn.Parameter(bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h [N, in_features]`` → ``(offset, logvar)``, each ``[N, num_layers, w_dim]``."""
        out = torch.einsum("nf,lof->nlo", h, self.weight) + self.bias
        return out[..., : self.w_dim], out[..., self.w_dim :]

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, in_features={self.in_features}, w_dim={self.w_dim}"


class SingleScaleEncoder(torch.nn.Module):
    """The guide's encoder: one conv trunk on the full-resolution image, a linear head per W+ vector."""

    w_avg: torch.Tensor  # registered buffer: the center of W the offsets are added to

    kind = "single"

    def __init__(
        self,
        *,
        num_ws: int,  # W+ vectors to predict (the generator's num_ws).
        w_dim: int,  # Width of a W vector (the generator's w_dim).
        img_resolution: int,  # Input height and width (the generator's), a power of two >= 8.
        img_channels: int = 3,  # Input color channels.
        channels: Sequence[int] = DEFAULT_CHANNELS,  # Output channels of conv 1, 2, ... before width.
        width: float = 1.0,  # Multiplies every channel count (floor MIN_CHANNELS).
        instance_stats: bool = True,  # Feed the statistics instance norm removes to the heads.
        logvar_init: float = DEFAULT_LOGVAR_INIT,  # Log-variance of every element at initialization.
        w_avg: torch.Tensor | None = None,  # [w_dim] center of W (mapping.w_avg); None = zeros.
    ) -> None:
        super().__init__()
        self.init_kwargs = _common_init_kwargs(num_ws, w_dim, img_resolution, img_channels, channels, width)
        self.init_kwargs.update(instance_stats=bool(instance_stats), logvar_init=float(logvar_init))
        _check_resolution(img_resolution, 2 * MIN_MAP_SIZE, "img_resolution")
        self.num_ws, self.w_dim = num_ws, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.trunk = ConvTrunk(img_channels, img_resolution, scale_channels(channels, width), instance_stats)
        self.heads = GaussianHeads(num_ws, self.trunk.out_features, w_dim, logvar_init)
        self.register_buffer("w_avg", _w_avg_buffer(w_avg, w_dim))

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """``x [N, img_channels, R, R]`` in [-1, 1] → ``EncoderOutput`` with ``[N, num_ws, w_dim]`` fields."""
        x = _check_input(x, self.img_channels, self.img_resolution)
        offset, logvar = self.heads(self.trunk(x))
        return EncoderOutput(self.w_avg + offset, logvar)

    def extra_repr(self) -> str:
        return f"num_ws={self.num_ws}, w_dim={self.w_dim}, img_resolution={self.img_resolution}"


class HierarchicalEncoder(torch.nn.Module):
    """The guide's multi-scale encoder: coarse / medium / fine W+ groups from an image pyramid, top down.

    Level 0 (coarse) reads the input average-pooled to R/4, level 1 (medium) R/2, level 2 (fine)
    the full input, each with its own :class:`ConvTrunk` (e.g. 64², 128², 256² for R = 256; 16²,
    32², 64² for R = 64). A map of size R/2^k has ``channels[k-1]`` channels whichever trunk computes
    it, so the level read at R/2^s uses ``channels[s:]``: the coarse trunk is the tail of the
    single-scale trunk run on a smaller image, and all three end at the same map size and width.
    Each level forms a summary ``h`` of width ``summary_dim`` and predicts its group of W+ vectors
    from it:

        h_0 = lrelu(A_0 f_0)
        h_l = lrelu(A_l [f_l, c_l])              l = 1, 2
        c_l = lrelu(B_l [offset_{l-1}, h_{l-1}])  (offset = predicted mean - w_avg, flattened)

    so the medium group sees the coarse group's predicted means, and the fine group sees the
    medium means and the medium summary (which already carries the coarse context). Information
    flows only coarse → fine: the coarse group never depends on the finer pixels.
    """

    w_avg: torch.Tensor  # registered buffer: the center of W the offsets are added to

    kind = "hierarchical"

    def __init__(
        self,
        *,
        num_ws: int,  # W+ vectors to predict (the generator's num_ws), >= 3.
        w_dim: int,  # Width of a W vector (the generator's w_dim).
        img_resolution: int,  # Input height and width (the generator's), a power of two >= 32.
        img_channels: int = 3,  # Input color channels.
        channels: Sequence[int] = DEFAULT_CHANNELS,  # Output channels of conv 1, 2, ... of every trunk.
        width: float = 1.0,  # Multiplies every channel count (floor MIN_CHANNELS).
        summary_dim: int | None = None,  # Width of each level's summary; None = the last channel count.
        instance_stats: bool = True,  # Feed the statistics instance norm removes to the summaries.
        logvar_init: float = DEFAULT_LOGVAR_INIT,  # Log-variance of every element at initialization.
        w_avg: torch.Tensor | None = None,  # [w_dim] center of W (mapping.w_avg); None = zeros.
    ) -> None:
        super().__init__()
        self.init_kwargs = _common_init_kwargs(num_ws, w_dim, img_resolution, img_channels, channels, width)
        _check_resolution(img_resolution, 8 * MIN_MAP_SIZE, "img_resolution of a hierarchical encoder")
        if len(channels) < len(HIERARCHY_LEVELS):
            raise EncoderError(
                f"a hierarchical encoder needs >= {len(HIERARCHY_LEVELS)} channel counts, got {list(channels)}"
            )
        scaled = scale_channels(channels, width)
        summary_dim = scaled[-1] if summary_dim is None else int(summary_dim)
        if summary_dim < 1:
            raise EncoderError(f"summary_dim must be >= 1, got {summary_dim}")
        # The resolved summary_dim is recorded, so a later default cannot change a rebuilt network.
        self.init_kwargs.update(
            summary_dim=summary_dim, instance_stats=bool(instance_stats), logvar_init=float(logvar_init)
        )
        self.num_ws, self.w_dim = num_ws, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.groups = hierarchy_groups(num_ws)
        shrinks = [len(HIERARCHY_LEVELS) - 1 - level for level in range(len(HIERARCHY_LEVELS))]  # 2, 1, 0
        trunks = [ConvTrunk(img_channels, img_resolution >> s, scaled[s:], instance_stats) for s in shrinks]
        self.trunks = torch.nn.ModuleList(trunks)
        self.summaries = torch.nn.ModuleList(
            torch.nn.Linear(trunk.out_features + (summary_dim if level > 0 else 0), summary_dim)
            for level, trunk in enumerate(trunks)
        )
        self.contexts = torch.nn.ModuleList(
            torch.nn.Linear(len(group) * w_dim + summary_dim, summary_dim) for group in self.groups[:-1]
        )
        self.heads = torch.nn.ModuleList(
            GaussianHeads(len(group), summary_dim, w_dim, logvar_init) for group in self.groups
        )
        self.register_buffer("w_avg", _w_avg_buffer(w_avg, w_dim))

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """``x [N, img_channels, R, R]`` in [-1, 1] → ``EncoderOutput`` with ``[N, num_ws, w_dim]`` fields."""
        x = _check_input(x, self.img_channels, self.img_resolution)
        pyramid = [x]
        for _ in range(len(HIERARCHY_LEVELS) - 1):
            pyramid.insert(0, F.avg_pool2d(pyramid[0], 2))
        offsets, logvars, context = [], [], None
        for level, level_x in enumerate(pyramid):
            features = self.trunks[level](level_x)
            if context is not None:
                features = torch.cat([features, context], dim=1)
            h = F.leaky_relu(self.summaries[level](features), LRELU_SLOPE)
            offset, logvar = self.heads[level](h)
            offsets.append(offset)
            logvars.append(logvar)
            if level < len(self.contexts):
                context = F.leaky_relu(self.contexts[level](torch.cat([offset.flatten(1), h], dim=1)), LRELU_SLOPE)
        return EncoderOutput(self.w_avg + torch.cat(offsets, dim=1), torch.cat(logvars, dim=1))

    def extra_repr(self) -> str:
        groups = " / ".join(f"{name} {g[0]}-{g[-1]}" for name, g in zip(HIERARCHY_LEVELS, self.groups))
        return f"num_ws={self.num_ws}, w_dim={self.w_dim}, img_resolution={self.img_resolution}, groups: {groups}"


_ENCODER_CLASSES: dict[str, type[torch.nn.Module]] = {
    SingleScaleEncoder.kind: SingleScaleEncoder,
    HierarchicalEncoder.kind: HierarchicalEncoder,
}


def build_encoder(kind: str, **init_kwargs: Any) -> torch.nn.Module:
    """Build an encoder of ``kind`` (one of ``ENCODER_KINDS``); ``encoder.init_kwargs`` rebuild it.

    Rebuilding gives fresh weights and a zero ``w_avg``; load the saved ``state_dict`` (which holds
    ``w_avg``) afterwards.
    """
    if kind not in _ENCODER_CLASSES:
        raise EncoderError(f"unknown encoder kind {kind!r}; expected one of {ENCODER_KINDS}")
    return _ENCODER_CLASSES[kind](**init_kwargs)


def encoder_kind(module: torch.nn.Module) -> str:
    """The kind ``build_encoder`` needs to rebuild ``module``."""
    for kind, cls in _ENCODER_CLASSES.items():
        if type(module) is cls:
            return kind
    raise EncoderError(f"{type(module).__name__} is not an sg3archive encoder; expected one of {ENCODER_KINDS}")
