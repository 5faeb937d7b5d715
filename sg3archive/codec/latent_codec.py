"""``LatentCodec``: fit on calibration W+, compress W+ to one payload per image, decompress.

Three entry points, as in learned-compression libraries: :meth:`LatentCodec.compress` /
:meth:`LatentCodec.decompress` for storage (bit-exact), :meth:`LatentCodec.quantize` for the
values decompression will return, and :meth:`LatentCodec.noisy` for rate-aware training
(differentiable additive-noise proxy with likelihoods).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sg3archive.codec import bitstream
from sg3archive.codec import quantize as qz
from sg3archive.codec.entropy import ChunkLayout, TableModels, chunk_layout, decode_stream, encode_stream
from sg3archive.codec.errors import CodecError, ModelMismatchError, PayloadError
from sg3archive.codec.model import CodecModel, estimate, fit_model, load_model, save_model
from sg3archive.codec.names import CODER_ALIASES, CODER_NAMES, DEFAULT_CODER, DEFAULT_PROFILE, check_profile
from sg3archive.codec.tables import SCALES, table_spec

# user name -> the coder that serves it (kept for callers of ``latent_codec.CODERS``; home: ``codec.names``)
CODERS = {name: CODER_ALIASES.get(name, name) for name in CODER_NAMES}


@dataclass(frozen=True)
class DecodedLatents:
    """What a payload holds: ``ws [N, num_ws, w_dim]`` and per-image input transforms (or None)."""

    ws: torch.Tensor
    transforms: list[np.ndarray | None]


def _as_numpy(ws: Any) -> np.ndarray:
    if isinstance(ws, torch.Tensor):
        return ws.detach().to("cpu", torch.float64).numpy()
    return np.asarray(ws, dtype=np.float64)


class LatentCodec:
    """Quantizes and entropy-codes W+ codes ``[N, num_ws, w_dim]`` with a fitted :class:`CodecModel`."""

    def __init__(self, model: CodecModel, coder: str = DEFAULT_CODER) -> None:
        if coder not in CODERS:
            raise CodecError(f"unknown coder {coder!r}; use one of {sorted(CODERS)}")
        self.model = model
        self.coder = CODERS[coder]
        self._models = TableModels(model.tables)
        self._layouts: list[ChunkLayout] | None = None
        self._priors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        ws_calib: Any,
        profile: str | int | Sequence[int] = DEFAULT_PROFILE,
        coder: str = DEFAULT_CODER,
        *,
        progressive: bool = True,
        decorrelate: bool = True,
        target_mse: float | None = None,
        target_bytes: float | None = None,
        layer_weights: Sequence[float] | None = None,
    ) -> LatentCodec:
        """Fit on calibration codes ``ws_calib [M, num_ws, w_dim]`` (from the encoder or the mapping network).

        ``profile``: a preset (``high_quality``, ``balanced``, ``high_compression``), an int (the
        same bits for every layer), a list of bits per layer, or ``"auto"`` with ``target_mse``
        (W-space mean squared error) or ``target_bytes`` (per image), optionally with
        ``layer_weights`` (the cost of an error in each layer, e.g. from
        ``sg3archive.networks.sensitivity.layer_sensitivity``).
        """
        if coder not in CODERS:
            raise CodecError(f"unknown coder {coder!r}; use one of {sorted(CODERS)}")
        try:
            checked = check_profile(profile)
        except ValueError as exc:
            raise CodecError(str(exc)) from None
        try:
            model = fit_model(_as_numpy(ws_calib), checked, progressive=progressive, decorrelate=decorrelate,
                              target_mse=target_mse, target_bytes=target_bytes,
                              layer_weights=None if layer_weights is None else np.asarray(layer_weights, dtype=np.float64))
        except ValueError as exc:
            raise CodecError(str(exc)) from None
        model.info.update(calibration_count=int(len(ws_calib)), coder=CODERS[coder])
        return cls(model, coder)

    @classmethod
    def load(cls, url: str, coder: str | None = None, storage_options: dict | None = None) -> LatentCodec:
        """Load a codec saved with :meth:`save` (any fsspec URL); its hash is verified."""
        model = load_model(url, storage_options)
        return cls(model, coder or model.info.get("coder", DEFAULT_CODER))

    def save(self, url: str, storage_options: dict | None = None) -> None:
        """Save the model as ``codec.safetensors`` + ``codec.json`` under directory ``url``."""
        self.model.info["coder"] = self.coder
        save_model(self.model, url, storage_options)

    # -- properties ---------------------------------------------------------------------------
    @property
    def num_ws(self) -> int:
        return self.model.num_ws

    @property
    def w_dim(self) -> int:
        return self.model.w_dim

    @property
    def bits(self) -> list[float]:
        """Bits of precision per layer (see ``sg3archive.codec.profiles``)."""
        return list(self.model.bits)

    @property
    def hash(self) -> str:
        """Content hash of the model; payloads record its first 8 bytes."""
        return self.model.hash

    def __repr__(self) -> str:
        return (f"LatentCodec(num_ws={self.num_ws}, w_dim={self.w_dim}, profile={self.model.profile!r}, "
                f"coder={self.coder!r}, hash={self.hash[:12]})")

    # -- coding -------------------------------------------------------------------------------
    @property
    def layouts(self) -> list[ChunkLayout]:
        if self._layouts is None:
            self._layouts = [chunk_layout(list(g), self.model.classes) for g in self.model.groups]
        return self._layouts

    @property
    def _profile_code(self) -> int:
        """The profile code payload headers record (see ``bitstream``)."""
        return bitstream.profile_code(self.model.profile)

    def _check_ws(self, ws: np.ndarray) -> None:
        expected = (self.num_ws, self.w_dim)
        if ws.ndim != 3 or ws.shape[1:] != expected:
            raise CodecError(f"ws must have shape [N, {expected[0]}, {expected[1]}], got {list(ws.shape)}")

    def _indices(self, ws: np.ndarray) -> np.ndarray:
        self._check_ws(ws)
        try:
            return qz.indices(ws, self.model.centre, self.model.encode_matrix, self.model.steps)
        except OverflowError as exc:
            raise CodecError(str(exc)) from None

    def quantize(self, ws: Any) -> torch.Tensor:
        """The values ``decompress(compress(ws))`` returns, bit for bit, without entropy coding."""
        q = self._indices(_as_numpy(ws))
        m = self.model
        return torch.from_numpy(qz.dequantize(q, m.centre, m.basis_int, m.mantissa, m.exponent))

    def compress(self, ws: Any, transforms: Any = None) -> list[bytes]:
        """One payload (bytes) per image of ``ws [N, num_ws, w_dim]``.

        ``transforms``: optional ``[N, 3, 3]`` input transforms (side information; row 2 must be
        0, 0, 1), stored as float32.
        """
        ws = _as_numpy(ws)
        q = self._indices(ws)
        n = len(ws)
        if n == 0:
            return []
        tf: list[np.ndarray | None] = [None] * n
        if transforms is not None:
            t = _as_numpy(transforms).astype(np.float32)
            if t.shape != (n, 3, 3) or not np.array_equal(t[:, 2], np.tile([0, 0, 1], (n, 1)).astype(np.float32)):
                raise CodecError("transforms must have shape [N, 3, 3] with last row 0, 0, 1")
            if not np.isfinite(t).all():
                raise CodecError("transforms contain NaN or infinite values")
            tf = list(t)
        k = qz.residuals(q, self.model.coef, self.model.reset, self.model.units).reshape(n, -1)
        try:
            streams = encode_stream(k, self.layouts, self._models, self.coder)
        except OverflowError as exc:
            raise CodecError(str(exc)) from None
        tag = bytes.fromhex(self.hash)[: bitstream.HASH_BYTES]
        code = self._profile_code
        return [
            bitstream.pack(bitstream.PayloadHeader(self.coder, tag, self.num_ws, code, tf[i]), streams[i])
            for i in range(n)
        ]

    def decode(self, payloads: Sequence[bytes], num_layers: int | None = None) -> DecodedLatents:
        """Decode payloads to W+ and their transforms; ``num_layers`` decodes only the first layers
        (a progressive preview: the rest are predicted from the decoded ones)."""
        if isinstance(payloads, (bytes, bytearray, memoryview)) or not isinstance(payloads, Sequence):
            raise CodecError("decompress takes a list of payloads (one bytes object per image)")
        if num_layers is not None and not 0 <= num_layers <= self.num_ws:
            raise CodecError(f"num_layers must be in 0..{self.num_ws}, got {num_layers}")
        n, layers, dims = len(payloads), self.num_ws, self.w_dim
        k = np.zeros((n, layers * dims), dtype=np.int64)
        transforms: list[np.ndarray | None] = []
        tag = self.hash[: 2 * bitstream.HASH_BYTES]
        needed = self.layouts if num_layers is None else [g for g in self.layouts if min(g.layers) < num_layers]
        for i, payload in enumerate(payloads):
            header, stream = bitstream.unpack(payload)
            if header.model_hash.hex() != tag:
                raise ModelMismatchError(
                    f"payload {i} was made with codec model {header.model_hash.hex()}…, not this one ({tag}…); "
                    "load the codec model the archive was written with"
                )
            if (header.num_ws, header.profile_code) != (layers, self._profile_code):
                raise ModelMismatchError(f"payload {i} does not fit this codec's layer count or bit allocation")
            for layout, values in zip(needed, decode_stream(stream, needed, self._models, header.coder,
                                                            whole=len(needed) == len(self.layouts))):
                k[i, layout.positions] = values
            transforms.append(header.transform)
        q = qz.reconstruct_indices(k.reshape(n, layers, dims), self.model.coef, self.model.reset, self.model.units,
                                   num_layers)
        _check_decoded_range(q)
        m = self.model
        ws = torch.from_numpy(qz.dequantize(q, m.centre, m.basis_int, m.mantissa, m.exponent))
        return DecodedLatents(ws, transforms)

    def decompress(self, payloads: Sequence[bytes], num_layers: int | None = None) -> torch.Tensor:
        """``ws_hat [N, num_ws, w_dim]`` float32 from payloads (see :meth:`decode`)."""
        return self.decode(payloads, num_layers).ws

    def estimate(self, ws: Any) -> tuple[float, float]:
        """``(bytes per image of coded data, W-space MSE)`` predicted from the model's tables."""
        ws = _as_numpy(ws)
        self._indices(ws)  # validates shape and range
        return estimate(self.model, ws)

    # -- training -----------------------------------------------------------------------------
    @property
    def _prior_parameters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per value ``[L, D]``: narrow and wide standard deviations (steps) and mixture weight."""
        if self._priors is None:
            spec = np.array([table_spec(int(t)) for t in self.model.classes.reshape(-1)], dtype=np.float64)
            spec = spec.reshape(*self.model.classes.shape, 3)
            self._priors = (SCALES[spec[..., 0].astype(int)], SCALES[spec[..., 1].astype(int)], spec[..., 2])
        return self._priors

    def noisy(self, ws: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable training proxy: ``(ws_tilde, bits [N])``.

        Adds uniform noise of one quantization step in the decorrelated domain (what rounding
        does on average) and returns each image's estimated code length from the fitted prior.
        """
        rate = _RateModel(self, ws)
        u = rate.to_steps(ws)
        u_tilde = u + torch.rand(u.shape, generator=generator, device=ws.device, dtype=ws.dtype) - 0.5
        return rate.from_steps(u_tilde), rate.bits(u_tilde)

    def quantized(self, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Straight-through quantization for rate–distortion refinement: ``(ws_hat, bits [N])``.

        ``ws_hat`` holds the values :meth:`quantize` returns (to float rounding) and ``bits`` each
        image's code length under the fitted prior, both for the indices the codec will code; the
        gradients pass through the rounding as if it were the identity, so an optimizer moves W+
        towards latents that survive quantization and cost few bytes.
        """
        rate = _RateModel(self, ws)
        q = self._indices(_as_numpy(ws))  # the codec's own indices (float64), not float32 rounding
        u = rate.to_steps(ws)
        u_hat = u + (torch.as_tensor(q, dtype=ws.dtype, device=ws.device) - u).detach()
        return rate.from_steps(u_hat), rate.coded_bits(u_hat, q)


class _RateModel:
    """The codec's transform and prior as torch tensors on ``ws``' device and dtype: the
    decorrelated domain in units of each layer's step, and the code length of values there."""

    def __init__(self, codec: LatentCodec, ws: torch.Tensor) -> None:
        if ws.ndim != 3 or tuple(ws.shape[1:]) != (codec.num_ws, codec.w_dim):
            raise CodecError(f"ws must have shape [N, {codec.num_ws}, {codec.w_dim}], got {list(ws.shape)}")
        if not torch.isfinite(ws).all():
            raise CodecError("ws contains NaN or infinite values")
        m = self.model = codec.model
        dev, dt = ws.device, ws.dtype
        self.centre = torch.as_tensor(m.centre, dtype=dt, device=dev)
        self.enc: torch.Tensor | None = None  # None: the layers are coded as they are (no decorrelating basis)
        self.dec: torch.Tensor | None = None
        if m.basis_int is not None:
            self.enc = torch.as_tensor(m.encode_matrix, dtype=dt, device=dev)
            self.dec = torch.as_tensor(m.basis_int * 2.0**-qz.BASIS_BITS, dtype=dt, device=dev)
        self.steps = torch.as_tensor(m.steps, dtype=dt, device=dev)[None, :, None]
        self.coef = torch.as_tensor(m.coef / float(1 << qz.PRED_SHIFT), dtype=dt, device=dev)
        self.sigma1, self.sigma2, self.weight = (torch.as_tensor(a, dtype=dt, device=dev)
                                                 for a in codec._prior_parameters)

    def to_steps(self, ws: torch.Tensor) -> torch.Tensor:
        """``u``: W+ in the decorrelated domain, in steps (``round(u)`` are the codec's indices)."""
        centred = ws - self.centre
        return (centred if self.enc is None else centred @ self.enc) / self.steps

    def from_steps(self, u: torch.Tensor) -> torch.Tensor:
        """W+ of values ``u`` in steps (the inverse of :meth:`to_steps`)."""
        scaled = u * self.steps
        return (scaled if self.dec is None else scaled @ self.dec.T) + self.centre

    def bits(self, u: torch.Tensor) -> torch.Tensor:
        """Each image's code length ``[N]`` for values ``u`` under the prior. The prediction is
        approximated by the previous layer (the codec uses the running mean since the last new
        style), in this layer's steps."""
        residual = u.clone()
        ratio = self.steps[:, :-1] / self.steps[:, 1:]
        residual[:, 1:] = u[:, 1:] - self.coef[1:] * u[:, :-1] * ratio
        return self._prior_bits(residual)

    def coded_bits(self, u: torch.Tensor, q: np.ndarray) -> torch.Tensor:
        """Each image's code length ``[N]`` of the symbols the codec transmits for indices ``q``
        (of values ``u`` in steps): their values are the codec's own (``quantize.residuals_and_runs``,
        runs and integer rounding included); their gradient is that of ``u`` minus the same
        running-mean prediction without rounding."""
        m = self.model
        k, runs = qz.residuals_and_runs(q, m.coef, m.reset, m.units)
        units = torch.as_tensor(m.units, dtype=u.dtype, device=u.device)[None, :, None]
        total = torch.cumsum(u * units, dim=1)  # running sums in common units
        first = torch.as_tensor(runs[:, 1:], device=u.device)  # [N, L-1, 1]
        index = (first - 1).clamp_min(0).expand(-1, -1, u.shape[2])
        before = torch.where(first > 0, torch.gather(total, 1, index), torch.zeros((), dtype=u.dtype, device=u.device))
        layer = torch.arange(1, u.shape[1], device=u.device, dtype=u.dtype)[None, :, None]
        mean = (total[:, :-1] - before) / ((layer - first.to(u.dtype)) * units[:, 1:])
        smooth = torch.cat([u[:, :1], u[:, 1:] - self.coef[1:] * mean], dim=1)
        residual = smooth + (torch.as_tensor(k, dtype=u.dtype, device=u.device) - smooth).detach()
        return self._prior_bits(residual)

    def _prior_bits(self, residual: torch.Tensor) -> torch.Tensor:
        """Code length ``[N]`` of residual symbols under each value's two-Gaussian prior."""
        zero = torch.zeros((), device=residual.device, dtype=residual.dtype)
        normal1, normal2 = torch.distributions.Normal(zero, self.sigma1), torch.distributions.Normal(zero, self.sigma2)
        box1 = normal1.cdf(residual + 0.5) - normal1.cdf(residual - 0.5)
        box2 = normal2.cdf(residual + 0.5) - normal2.cdf(residual - 0.5)
        likelihood = ((1 - self.weight) * box1 + self.weight * box2).clamp_min(2.0**-24)
        return -torch.log2(likelihood).sum(dim=(1, 2))


def _check_decoded_range(q: np.ndarray) -> None:
    """Refuse decoded indices the encoder can never produce (beyond ``quantize.MAX_INDEX``): they
    come only from a damaged or forged payload, and would dequantize to far-off, inexact values."""
    if q.size and np.abs(q).max() > qz.MAX_INDEX:
        image = int(np.argmax(np.abs(q).reshape(len(q), -1).max(axis=1) > qz.MAX_INDEX))
        raise PayloadError(f"payload {image} decodes to quantization indices outside the codec's range "
                           f"(|q| > {qz.MAX_INDEX}); the payload is corrupted or forged")


__all__ = ["CODERS", "DecodedLatents", "LatentCodec"]
