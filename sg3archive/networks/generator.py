"""StyleGAN3 generator (Karras et al., "Alias-Free Generative Adversarial Networks", 2021).

Reads top to bottom in build order: mapping network, synthesis input, synthesis layer,
synthesis network, generator. Parameter and buffer names equal those of NVIDIA's official
networks, so an official ``state_dict`` loads with ``strict=True``. Constructor arguments have
the official names and defaults, so a snapshot's recorded ``init_kwargs`` rebuild the network.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from sg3archive.networks.layers import FullyConnectedLayer, normalize_2nd_moment
from sg3archive.ops import fast, reference
from sg3archive.ops.filters import design_lowpass_filter

IMPLS = ("fast", "reference")
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    return impl


class MappingNetwork(torch.nn.Module):
    """Maps latent ``z`` (and label ``c``) to the intermediate latent ``w``, broadcast to ``num_ws``."""

    w_avg: torch.Tensor  # buffer: running average of W

    def __init__(
        self,
        z_dim: int,  # Input latent (Z) dimensionality, 0 = no latent.
        c_dim: int,  # Conditioning label (C) dimensionality, 0 = no label.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        num_ws: int,  # Number of W vectors the synthesis network consumes.
        num_layers: int = 2,  # Number of fully connected layers.
        lr_multiplier: float = 0.01,  # Learning-rate multiplier of the layers.
        w_avg_beta: float = 0.998,  # Decay of the running average of W during training.
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        self.embed = FullyConnectedLayer(c_dim, w_dim) if c_dim > 0 else None
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        for idx, (in_f, out_f) in enumerate(zip(features[:-1], features[1:])):
            setattr(self, f"fc{idx}", FullyConnectedLayer(in_f, out_f, activation="lrelu", lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """``z [N, z_dim]``, ``c [N, c_dim]`` → ``ws [N, num_ws, w_dim]``, truncated toward ``w_avg``.

        ``truncation_cutoff`` limits truncation to the first that many W vectors (coarse layers).
        """
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [N, {self.z_dim}], got {list(z.shape)}")
        if truncation_cutoff is None:
            truncation_cutoff = self.num_ws
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape != (z.shape[0], self.c_dim):
                got = None if c is None else list(c.shape)
                raise ValueError(f"this network is conditional: c must have shape [{z.shape[0]}, {self.c_dim}], got {got}")
            assert self.embed is not None  # built whenever c_dim > 0
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


def input_transform(translate: tuple[float, float] = (0.0, 0.0), angle: float = 0.0) -> torch.Tensor:
    """The ``[3, 3]`` matrix for ``SynthesisInput.transform`` that shifts and rotates the image.

    ``translate`` is in units of the image size (x, y); ``angle`` in degrees, counter-clockwise.
    The buffer holds the inverse of the image-space motion, as in NVIDIA's ``gen_images.py``.
    """
    s, c = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    m = np.array([[c, s, translate[0]], [-s, c, translate[1]], [0.0, 0.0, 1.0]])
    return torch.from_numpy(np.linalg.inv(m)).to(torch.float32)


class SynthesisInput(torch.nn.Module):
    """Fourier-feature input: band-limited sinusoids, rotated and translated by the first W."""

    transform: torch.Tensor  # buffers
    freqs: torch.Tensor
    phases: torch.Tensor

    def __init__(
        self,
        w_dim: int,  # Intermediate latent (W) dimensionality.
        channels: int,  # Number of output channels.
        size: int | list[int],  # Output spatial size: int or [width, height].
        sampling_rate: float,  # Output sampling rate.
        bandwidth: float,  # Output bandwidth (cutoff frequency).
    ) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.channels = channels
        self.size = np.broadcast_to(np.asarray(size), [2])
        self.sampling_rate = sampling_rate
        self.bandwidth = bandwidth

        freqs = torch.randn([channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs /= radii * radii.square().exp().pow(0.25)
        freqs *= bandwidth
        phases = torch.rand([channels]) - 0.5

        self.weight = torch.nn.Parameter(torch.randn([channels, channels]))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: torch.Tensor, transform: torch.Tensor | None = None) -> torch.Tensor:
        """``w [N, w_dim]`` → ``[N, channels, height, width]``.

        ``transform`` (``[N, 3, 3]`` or ``[3, 3]``) overrides the stored ``transform`` buffer, so
        each image of a batch can be placed and rotated on its own.
        """
        n = w.shape[0]
        transforms = self.transform if transform is None else transform.to(w.dtype)
        transforms = transforms.expand(n, 3, 3) if transforms.ndim == 2 else transforms
        freqs = self.freqs.unsqueeze(0)
        phases = self.phases.unsqueeze(0)

        # Rotation and translation from the first W: t = (cos, sin, tx, ty) after normalization.
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        m_r = torch.eye(3, device=w.device, dtype=w.dtype).unsqueeze(0).repeat([n, 1, 1])
        m_r[:, 0, 0] = t[:, 0]
        m_r[:, 0, 1] = -t[:, 1]
        m_r[:, 1, 0] = t[:, 1]
        m_r[:, 1, 1] = t[:, 0]
        m_t = torch.eye(3, device=w.device, dtype=w.dtype).unsqueeze(0).repeat([n, 1, 1])
        m_t[:, 0, 2] = -t[:, 2]
        m_t[:, 1, 2] = -t[:, 3]
        transforms = m_r @ m_t @ transforms

        # Move the frequencies; fade out those beyond the bandwidth to avoid aliasing.
        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        # Sample the sinusoids on the pixel grid, then mix channels.
        theta = torch.eye(2, 3, device=w.device, dtype=w.dtype)
        theta[0, 0] = 0.5 * self.size[0] / self.sampling_rate
        theta[1, 1] = 0.5 * self.size[1] / self.sampling_rate
        grids = F.affine_grid(theta.unsqueeze(0), [1, 1, int(self.size[1]), int(self.size[0])], align_corners=False)
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
        x = x + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (np.pi * 2))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, channels={self.channels}, size={list(self.size)}, "
            f"sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}"
        )


class SynthesisLayer(torch.nn.Module):
    """Modulated convolution followed by the alias-free filtered leaky ReLU (or ToRGB)."""

    magnitude_ema: torch.Tensor  # buffers
    up_filter: torch.Tensor | None  # None when the layer does not resample (1 tap)
    down_filter: torch.Tensor | None

    def __init__(
        self,
        w_dim: int,  # Intermediate latent (W) dimensionality.
        is_torgb: bool,  # Is this the final ToRGB layer?
        is_critically_sampled: bool,  # Does this layer use critical sampling?
        use_fp16: bool,  # Recorded for compatibility; this implementation computes in float32.
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        in_size: int | list[int],  # Input spatial size: int or [width, height].
        out_size: int | list[int],  # Output spatial size: int or [width, height].
        in_sampling_rate: int,  # Input sampling rate (s).
        out_sampling_rate: int,  # Output sampling rate (s).
        in_cutoff: float,  # Input cutoff frequency (f_c).
        out_cutoff: float,  # Output cutoff frequency (f_c).
        in_half_width: float,  # Input transition band half-width (f_h).
        out_half_width: float,  # Output transition band half-width (f_h).
        conv_kernel: int = 3,  # Convolution kernel size; ignored for ToRGB (always 1).
        filter_size: int = 6,  # Low-pass filter size relative to the lower resolution when up/downsampling.
        lrelu_upsampling: int = 2,  # Relative sampling rate of the leaky ReLU.
        use_radial_filters: bool = False,  # Radial (rotation-invariant) down filter in non-critical layers?
        conv_clamp: float | None = 256,  # Clamp the output to ±conv_clamp; None = no clamping.
        magnitude_ema_beta: float = 0.999,  # Decay of the running input magnitude during training.
    ) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.is_torgb = is_torgb
        self.is_critically_sampled = is_critically_sampled
        self.use_fp16 = use_fp16
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_size = np.broadcast_to(np.asarray(in_size), [2])
        self.out_size = np.broadcast_to(np.asarray(out_size), [2])
        self.in_sampling_rate = in_sampling_rate
        self.out_sampling_rate = out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.in_cutoff = in_cutoff
        self.out_cutoff = out_cutoff
        self.in_half_width = in_half_width
        self.out_half_width = out_half_width
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        if in_sampling_rate * self.up_factor != self.tmp_sampling_rate:
            raise ValueError("the temporary sampling rate must be an integer multiple of the input rate")
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.register_buffer(
            "up_filter",
            design_lowpass_filter(self.up_taps, in_cutoff, in_half_width * 2, self.tmp_sampling_rate),
        )

        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        if out_sampling_rate * self.down_factor != self.tmp_sampling_rate:
            raise ValueError("the temporary sampling rate must be an integer multiple of the output rate")
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        self.register_buffer(
            "down_filter",
            design_lowpass_filter(
                self.down_taps, out_cutoff, out_half_width * 2, self.tmp_sampling_rate, radial=self.down_radial
            ),
        )

        # Padding that makes the output exactly out_size, with sample locations placed
        # symmetrically (paper, appendix C.3).
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1])]

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        impl: str = "fast",
        update_emas: bool = False,
    ) -> torch.Tensor:
        """``x [N, in_channels, H, W]``, ``w [N, w_dim]`` → ``[N, out_channels, *out_size]``."""
        expected = [self.in_channels, int(self.in_size[1]), int(self.in_size[0])]
        if list(x.shape[1:]) != expected:
            raise ValueError(f"expected input [N, {', '.join(map(str, expected))}], got {list(x.shape)}")
        if update_emas:
            magnitude_cur = x.detach().to(torch.float32).square().mean()
            self.magnitude_ema.copy_(magnitude_cur.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()

        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / np.sqrt(self.in_channels * (self.conv_kernel**2)))

        ops = fast if impl == "fast" else reference
        x = ops.modulated_conv2d(
            x.to(self.weight.dtype),
            self.weight,
            styles,
            demodulate=not self.is_torgb,
            padding=self.conv_kernel - 1,
            input_gain=input_gain,
        )
        x = ops.filtered_lrelu(
            x,
            self.up_filter,
            self.down_filter,
            self.bias,
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=1 if self.is_torgb else np.sqrt(2),
            slope=1 if self.is_torgb else 0.2,
            clamp=self.conv_clamp,
        )
        return x

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, is_torgb={self.is_torgb}, is_critically_sampled={self.is_critically_sampled}, "
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"in_size={list(self.in_size)}, out_size={list(self.out_size)}, "
            f"up={self.up_factor}, down={self.down_factor}, radial={self.down_radial}"
        )


class SynthesisNetwork(torch.nn.Module):
    """Turns ``ws [N, num_ws, w_dim]`` into an image ``[N, img_channels, R, R]`` in about [-1, 1]."""

    def __init__(
        self,
        w_dim: int,  # Intermediate latent (W) dimensionality.
        img_resolution: int,  # Output image resolution.
        img_channels: int,  # Number of color channels.
        channel_base: int = 32768,  # Overall multiplier for the number of channels.
        channel_max: int = 512,  # Maximum number of channels in any layer.
        num_layers: int = 14,  # Total number of layers, excluding Fourier features and ToRGB.
        num_critical: int = 2,  # Number of critically sampled layers at the end.
        first_cutoff: float = 2,  # Cutoff frequency of the first layer (f_{c,0}).
        first_stopband: float = 2**2.1,  # Minimum stopband of the first layer (f_{t,0}).
        last_stopband_rel: float = 2**0.3,  # Minimum stopband of the last layer, relative to its cutoff.
        margin_size: int = 10,  # Number of additional pixels outside the image.
        output_scale: float = 0.25,  # Scale factor for the output image.
        num_fp16_res: int = 4,  # Recorded for compatibility; computation stays in float32.
        **layer_kwargs: Any,  # Arguments for SynthesisLayer.
    ) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.num_ws = num_layers + 2
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_layers = num_layers
        self.num_critical = num_critical
        self.margin_size = margin_size
        self.output_scale = output_scale
        self.num_fp16_res = num_fp16_res
        self.impl = "fast"
        # Activation checkpointing under autograd: layers whose output is at least this many pixels
        # wide keep only their input and run their forward pass again during the backward pass
        # (0 = never). Off by default: the fast ops already keep one tensor per op, so it keeps
        # layer inputs where nothing more would be kept (benchmarks/gradients.py: more time and memory).
        self.checkpoint_resolution = 0
        # Computation precision: "float32", or "bfloat16" / "float16" autocast (mixed precision,
        # meant for CUDA). The output is float32 either way.
        self.precision = "float32"

        # Geometric progression of cutoffs and stopbands from the first to the last layer.
        last_cutoff = img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels

        self.input = SynthesisInput(
            w_dim=w_dim,
            channels=int(channels[0]),
            size=int(sizes[0]),
            sampling_rate=sampling_rates[0],
            bandwidth=cutoffs[0],
        )
        self.layer_names = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=w_dim,
                is_torgb=(idx == num_layers),
                is_critically_sampled=(idx >= num_layers - num_critical),
                use_fp16=bool(sampling_rates[idx] * (2**num_fp16_res) > img_resolution),
                in_channels=int(channels[prev]),
                out_channels=int(channels[idx]),
                in_size=int(sizes[prev]),
                out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]),
                out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=cutoffs[prev],
                out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev],
                out_half_width=half_widths[idx],
                **layer_kwargs,
            )
            name = f"L{idx}_{layer.out_size[0]}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(
        self,
        ws: torch.Tensor,
        transform: torch.Tensor | None = None,
        impl: str | None = None,
        update_emas: bool = False,
        **unused: Any,  # noise_mode, force_fp32: accepted for call compatibility, no effect.
    ) -> torch.Tensor:
        """``ws [N, num_ws, w_dim]`` → image ``[N, img_channels, R, R]`` (float32; float64 when the
        network was converted to float64, as gradient checks do).

        ``transform`` optionally places/rotates each image (see ``SynthesisInput.forward``);
        ``impl`` picks the op implementation ("fast" default, or "reference").
        """
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        impl = _check_impl(impl or self.impl)
        dtype = self.input.weight.dtype  # float32, or float64 for a network converted with .double()
        w_per_layer = ws.to(dtype).unbind(dim=1)
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {sorted(PRECISIONS)}")
        mixed = PRECISIONS[self.precision]
        autocast = torch.autocast(ws.device.type, dtype=mixed) if mixed != torch.float32 else contextlib.nullcontext()
        with autocast:
            x = self._layers(w_per_layer, transform, impl, update_emas)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.promote_types(dtype, torch.float32))

    def _layers(self, w_per_layer: tuple[torch.Tensor, ...], transform: torch.Tensor | None, impl: str,
                update_emas: bool) -> torch.Tensor:
        x = self.input(w_per_layer[0], transform=transform)
        checkpointing = self.checkpoint_resolution > 0 and torch.is_grad_enabled() and not update_emas
        for name, w in zip(self.layer_names, w_per_layer[1:]):
            layer = getattr(self, name)
            if checkpointing and int(layer.out_size.max()) >= self.checkpoint_resolution:
                x = torch.utils.checkpoint.checkpoint(layer, x, w, impl=impl, use_reentrant=False)
            else:
                x = layer(x, w, impl=impl, update_emas=update_emas)
        return x

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
            f"img_channels={self.img_channels}, num_layers={self.num_layers}, num_critical={self.num_critical}"
        )


class Generator(torch.nn.Module):
    """StyleGAN3 generator with the official interface: ``G(z, c) → img``, ``G.mapping``, ``G.synthesis``."""

    fingerprint: str  # set by the loaders in sg3archive.checkpoints (a fresh network has none)

    def __init__(
        self,
        z_dim: int,  # Input latent (Z) dimensionality.
        c_dim: int,  # Conditioning label (C) dimensionality.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        img_resolution: int,  # Output resolution.
        img_channels: int,  # Number of output color channels.
        mapping_kwargs: dict | None = None,  # Arguments for MappingNetwork.
        **synthesis_kwargs: Any,  # Arguments for SynthesisNetwork (and its layers).
    ) -> None:
        super().__init__()
        self.init_kwargs = dict(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping_kwargs=dict(mapping_kwargs or {}),
            **synthesis_kwargs,
        )
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **(mapping_kwargs or {}))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        **synthesis_kwargs: Any,
    ) -> torch.Tensor:
        """``z [N, z_dim]``, ``c [N, c_dim]`` → image ``[N, img_channels, R, R]``."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
