"""The fitted codec model: everything encoder and decoder must share, frozen, hashed, saved.

Fitting learns, from calibration W+ codes: a per-layer centre, a decorrelating basis (PCA of
W pooled over layers), per-layer quantization steps from the bit allocation, per-value
fixed-point prediction coefficients from the previous layer, each value's residual scale
class, and the integer probability tables of those classes. Saved as a directory holding
``codec.safetensors`` (arrays) and ``codec.json`` (config, content hash).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import safetensors.numpy

from sg3archive.codec import quantize as qz
from sg3archive.codec.bitstream import HEADER_BYTES
from sg3archive.codec.errors import CodecError
from sg3archive.codec.names import AUTO_PROFILE, DEFAULT_PROFILE
from sg3archive.codec.profiles import MAX_BITS, MIN_BITS, PRESETS, layer_groups, resolve_bits
from sg3archive.codec.tables import (
    MIXTURE_WEIGHTS,
    NUM_CLASSES,
    PRECISION,
    SCALES,
    TAIL_SIGMAS,
    code_lengths,
    frequency_table,
    scale_class,
    table_id,
)

MODEL_FORMAT = "sg3archive.codec"
MODEL_VERSION = 1
JSON_NAME, ARRAYS_NAME = "codec.json", "codec.safetensors"
SPREAD_SIGMAS = 8.0  # "b bits" = 2**b levels across 8 standard deviations of the layer


@dataclass(frozen=True, eq=False)
class CodecModel:
    """Frozen codec state. Arrays: centre [L, D] f64, basis_int [D, D] i64, coef [L, D] i64,
    classes [L, D] i64 (each value's prior table id, see ``tables.table_id``),
    sigma [L, D] f64 (residual std in steps), mantissa/exponent [L] i64 (step = m·2**−e)."""

    num_ws: int
    w_dim: int
    profile: str
    bits: tuple[float, ...]
    groups: tuple[tuple[int, ...], ...]
    centre: np.ndarray
    basis_int: np.ndarray | None  # None: no decorrelating transform (fastest)
    mantissa: np.ndarray
    exponent: np.ndarray
    coef: np.ndarray
    reset: np.ndarray
    classes: np.ndarray
    sigma: np.ndarray
    tables: dict[int, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)  # provenance, not hashed

    @property
    def steps(self) -> np.ndarray:
        """Quantization step of each layer ``[L]`` in the decorrelated domain."""
        return self.mantissa * np.exp2(-self.exponent.astype(np.float64))

    @property
    def units(self) -> np.ndarray:
        """Each layer's step in integer common units (see ``quantize.common_units``)."""
        return qz.common_units(self.mantissa, self.exponent)

    @property
    def encode_matrix(self) -> np.ndarray | None:
        """``E`` with ``u = (w − centre) · E``: the inverse of the stored (fixed-point) basis."""
        if self.basis_int is None:
            return None
        cached = self.__dict__.get("_encode_matrix")
        if cached is None:
            basis = self.basis_int.astype(np.float64) * 2.0**-qz.BASIS_BITS
            cached = np.linalg.inv(basis).T
            object.__setattr__(self, "_encode_matrix", cached)
        return cached

    def config(self) -> dict[str, Any]:
        """The JSON-able part of the model (hashed together with the arrays)."""
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_VERSION,
            "num_ws": self.num_ws,
            "w_dim": self.w_dim,
            "profile": self.profile,
            "bits": list(self.bits),
            "groups": [list(g) for g in self.groups],
            "decorrelate": self.basis_int is not None,
            "table_precision": PRECISION,
            "num_classes": NUM_CLASSES,
            "tail_sigmas": TAIL_SIGMAS,
            "prior": "gaussian-mixture-v1",
            "predictor": "running-mean-v1",
            "pred_shift": qz.PRED_SHIFT,
            "basis_bits": qz.BASIS_BITS,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "centre": self.centre, "mantissa": self.mantissa, "exponent": self.exponent,
            "coef": self.coef, "reset": self.reset, "classes": self.classes, "sigma": self.sigma,
        }
        if self.basis_int is not None:
            out["basis_int"] = self.basis_int
        out.update({f"table.{c}": t for c, t in self.tables.items()})
        return out

    @property
    def hash(self) -> str:
        """sha256 (hex) of the config and every array: the identity payloads record."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            digest = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode())
            for name, array in sorted(self.arrays().items()):
                a = np.ascontiguousarray(array)
                digest.update(f"{name}:{a.dtype.str}:{list(a.shape)}".encode() + b"\0" + a.tobytes())
            cached = digest.hexdigest()
            object.__setattr__(self, "_hash", cached)
        return cached


def _steps_for(bits: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    spread = SPREAD_SIGMAS * np.sqrt(u.var(axis=0).mean(axis=-1))  # [L]
    spread = np.where(spread > 0, spread, 1.0)
    parts = [qz.step_parts(s * 2.0 ** -b) for s, b in zip(spread, bits)]
    return np.array([m for m, _ in parts], dtype=np.int64), np.array([e for _, e in parts], dtype=np.int64)


def _prediction(q: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(coef [L, D], reset [L])`` of the running-mean predictor, fitted on calibration indices.

    A layer restarts the running mean when the sum of its absolute residuals exceeds ``reset``:
    three times the typical sum under previous-layer prediction, plus 4. Each value is predicted (coef 1)
    unless predicting it from earlier layers does not help (coef 0).
    """
    n, layers, dims = q.shape
    one = np.full((layers, dims), 1 << qz.PRED_SHIFT, dtype=np.int64)
    one[0] = 0

    def thresholds(coef: np.ndarray) -> np.ndarray:
        scaled = q * units[None, :, None]
        previous = np.rint(scaled[:, :-1] / units[None, 1:, None])  # previous layer in this layer's steps
        step = (np.abs(q[:, 1:] - previous) * (coef[1:] != 0)).sum(axis=2)  # [N, L-1]
        return np.concatenate([[0], 3 * np.median(step, axis=0) + 4]).astype(np.int64)

    k_pred = qz.residuals(q, one, thresholds(one), units).astype(np.float64)

    def robust_rms(x: np.ndarray) -> np.ndarray:
        scale = np.sqrt((x**2).mean(axis=0))
        for _ in range(3):
            inlier = np.abs(x) <= 3 * scale + 1
            scale = np.sqrt((x**2 * inlier).sum(axis=0) / np.maximum(inlier.sum(axis=0), 1))
        return scale

    coef = np.where(robust_rms(k_pred) < robust_rms(q.astype(np.float64)), one, 0)
    coef[0] = 0
    return coef, thresholds(coef)


def _build(ws: np.ndarray, bits: np.ndarray, profile: str, groups: list[list[int]], centre: np.ndarray,
           basis_int: np.ndarray | None, u: np.ndarray) -> CodecModel:
    mantissa, exponent = _steps_for(bits, u)
    steps = mantissa * np.exp2(-exponent.astype(np.float64))
    q = np.rint(u / steps[None, :, None]).astype(np.int64)
    units = qz.common_units(mantissa, exponent)
    coef, reset = _prediction(q, units)
    k = qz.residuals(q, coef, reset, units)
    sigma = np.sqrt((k.astype(np.float64) ** 2).mean(axis=0))
    classes, tables = _choose_priors(k, sigma)
    return CodecModel(
        num_ws=ws.shape[1], w_dim=ws.shape[2], profile=profile, bits=tuple(float(b) for b in bits),
        groups=tuple(tuple(g) for g in groups), centre=centre, basis_int=basis_int, mantissa=mantissa,
        exponent=exponent, coef=coef, reset=reset, classes=classes, sigma=sigma, tables=tables,
    )


def _choose_priors(k: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per value, the table (Gaussian or mixture) that codes the calibration symbols shortest.

    Candidates: a Gaussian of the RMS scale, and mixtures of a narrow Gaussian (robust scale of
    the bulk, from the median absolute value) with a wide one (RMS of the outliers).
    """
    k = k.astype(np.int64)
    absk = np.abs(k).astype(np.float64)
    narrow = sigma.copy()
    for _ in range(4):  # RMS of the bulk: drop what lies far outside the current estimate
        inlier = absk <= 3 * narrow + 1
        narrow = np.sqrt((absk**2 * inlier).sum(axis=0) / np.maximum(inlier.sum(axis=0), 1))
    outlier = ~inlier
    count = outlier.sum(axis=0)
    wide = np.sqrt(np.divide((absk**2 * outlier).sum(axis=0), count, out=(sigma**2).copy(), where=count > 0))
    c_rms, c1, c2 = scale_class(sigma), scale_class(narrow), scale_class(np.maximum(wide, narrow))
    make = np.vectorize(table_id)
    candidates = [make(c_rms)]
    for shift in (-1, 0, 1):
        c1s = np.clip(c1 + shift, 0, NUM_CLASSES - 1)
        candidates += [make(c1s, c2, i) for i in range(1, len(MIXTURE_WEIGHTS))]
    tables: dict[int, np.ndarray] = {}
    costs = np.empty((len(candidates),) + sigma.shape)
    for j, ids in enumerate(candidates):
        for tid in np.unique(ids):
            tid = int(tid)
            table = tables.setdefault(tid, frequency_table(tid))
            mask = ids == tid
            costs[j][mask] = code_lengths(tid, table, k[:, mask]).sum(axis=0)
    chosen = np.take_along_axis(np.stack(candidates), costs.argmin(axis=0)[None], axis=0)[0]
    return chosen, {tid: tables[tid] for tid in map(int, np.unique(chosen))}


def _evaluate(model: CodecModel, ws: np.ndarray) -> tuple[float, np.ndarray]:
    """``(bytes per image, MSE of each layer [L])`` of ``model`` on ``ws`` from its own tables."""
    q = qz.indices(ws, model.centre, model.encode_matrix, model.steps)
    k = qz.residuals(q, model.coef, model.reset, model.units)
    bits = 0.0
    for tid, table in model.tables.items():
        bits += code_lengths(tid, table, k[:, model.classes == tid]).sum()
    ws_hat = qz.dequantize(q, model.centre, model.basis_int, model.mantissa, model.exponent)
    per_layer = ((ws_hat.astype(np.float64) - ws) ** 2).mean(axis=(0, 2))
    return bits / 8 / len(ws) + payload_overhead(model), per_layer


def estimate(model: CodecModel, ws: np.ndarray) -> tuple[float, float]:
    """``(bytes per image, W-space MSE)`` of ``model`` on ``ws`` from its own tables (no coding);
    the bytes include the expected payload overhead."""
    size, per_layer = _evaluate(model, ws)
    return size, float(per_layer.mean())


def payload_overhead(model: CodecModel) -> float:
    """Expected bytes of a payload beyond the coded information: header, CRC, the stream's
    length field, the coder's final state and padding to whole 32-bit words."""
    return HEADER_BYTES + 4  # the coder's final state and word padding, less the zero bytes left out


def fit_model(
    ws: np.ndarray,
    profile: str | int | list[int] = DEFAULT_PROFILE,
    *,
    progressive: bool = True,
    decorrelate: bool = True,
    target_mse: float | None = None,
    target_bytes: float | None = None,
    layer_weights: np.ndarray | None = None,
) -> CodecModel:
    """Fit a codec model on calibration codes ``ws [M, L, D]`` (float; M ≥ 2).

    ``layer_weights`` (``[L]``, with ``profile="auto"``): how much an error in each layer costs
    (e.g. image MSE per unit of W error, see ``sg3archive.networks.sensitivity``). Steps then
    scale as ``1/sqrt(weight)``, the allocation that minimizes the weighted error for a given
    size; ``target_mse`` is then the weighted mean of the layers' MSE.
    """
    ws = np.asarray(ws, dtype=np.float64)
    if ws.ndim != 3 or ws.shape[0] < 2:
        raise CodecError(f"calibration W+ must have shape [M >= 2, num_ws, w_dim], got {list(ws.shape)}")
    if not np.isfinite(ws).all():
        raise CodecError("calibration W+ contains NaN or infinite values")
    m, num_ws, w_dim = ws.shape
    if num_ws > 255 or w_dim > 2048:
        raise CodecError(f"the codec supports up to 255 layers of up to 2048 dims, got {num_ws}×{w_dim}")
    centre = ws.mean(axis=0)
    basis_int = None
    u = ws - centre
    if decorrelate:
        x = u.reshape(-1, w_dim)
        eigvals, eigvecs = np.linalg.eigh(x.T @ x / len(x))
        basis = eigvecs[:, np.argsort(eigvals)[::-1]]
        basis_int = np.rint(basis * (1 << qz.BASIS_BITS)).astype(np.int64)
        u = u @ np.linalg.inv(basis_int.astype(np.float64) * 2.0**-qz.BASIS_BITS).T
    groups = layer_groups(num_ws) if progressive else [list(range(num_ws))]

    if profile != AUTO_PROFILE:
        if target_mse is not None or target_bytes is not None or layer_weights is not None:
            raise CodecError("target_mse / target_bytes / layer_weights go with profile='auto'")
        name, bits = resolve_bits(profile, num_ws)
        return _build(ws, np.array(bits, dtype=np.float64), name, groups, centre, basis_int, u)

    if (target_mse is None) == (target_bytes is None):
        raise CodecError("profile='auto' needs exactly one of target_mse (W-space MSE) or target_bytes (per image)")
    if (target_mse is not None and target_mse <= 0) or (target_bytes is not None and target_bytes <= 0):
        raise CodecError("auto targets must be positive")
    if layer_weights is None:
        _, balanced = resolve_bits(DEFAULT_PROFILE, num_ws)
        shape = np.array(balanced, dtype=np.float64)
        weights = np.ones(num_ws)
    else:
        weights = np.asarray(layer_weights, dtype=np.float64).reshape(-1)
        if weights.shape != (num_ws,) or not np.isfinite(weights).all() or (weights <= 0).any():
            raise CodecError(f"layer_weights must be {num_ws} positive numbers")
        shape = 8 + 0.5 * np.log2(weights / weights.mean())

    def evaluate(model: CodecModel) -> tuple[float, float]:
        """(bytes per image, MSE weighted by layer)."""
        size, per_layer = _evaluate(model, ws)
        return size, float((per_layer * weights).sum() / weights.sum())

    def build(offset: float) -> CodecModel:
        bits = np.clip(shape + offset, MIN_BITS, MAX_BITS)
        return _build(ws, bits, AUTO_PROFILE, groups, centre, basis_int, u)

    lo, hi = -12.0, 8.0  # offsets in bits around the balanced shape; more bits → more bytes, less MSE
    for _ in range(16):
        mid = (lo + hi) / 2
        size, mse = evaluate(build(mid))
        if target_mse is not None:
            meets = mse <= target_mse
        else:
            assert target_bytes is not None  # exactly one target is set (checked above)
            meets = size <= target_bytes
        # For a distortion target we want the fewest bits that meet it; for a size target the most.
        if target_mse is not None:
            lo, hi = (lo, mid) if meets else (mid, hi)
        else:
            lo, hi = (mid, hi) if meets else (lo, mid)
    model = build(hi if target_mse is not None else lo)
    size, mse = evaluate(model)
    if target_mse is not None and mse > target_mse * 1.001:
        raise CodecError(f"target_mse={target_mse:g} is below what the finest allocation reaches ({mse:.3g}); "
                         "use a larger target or an explicit profile")
    if target_bytes is not None and size > target_bytes * 1.001:
        raise CodecError(f"target_bytes={target_bytes:g} is below what the coarsest allocation reaches "
                         f"({size:.0f} bytes/image); use a larger target")
    return model


def save_model(model: CodecModel, url: str, storage_options: dict | None = None) -> None:
    """Write ``codec.safetensors`` then ``codec.json`` (with the hash) under directory ``url``."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, ARRAYS_NAME), "wb") as f:
        f.write(safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in model.arrays().items()}))
    doc = dict(model.config(), hash=model.hash, info=model.info,
               saved=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    with fs.open(posixpath.join(root, JSON_NAME), "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)


def load_model(url: str, storage_options: dict | None = None) -> CodecModel:
    """Read a saved codec model and check its content hash."""
    from sg3archive.store.bounded import CODEC_ARRAYS_CAP, CODEC_JSON_CAP, read_bounded
    from sg3archive.store.format import ArchiveFormatError

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:  # regular files inside the codec folder, sizes capped before reading (untrusted input)
        doc = json.loads(read_bounded(fs, posixpath.join(root, JSON_NAME), CODEC_JSON_CAP, JSON_NAME, root=root))
        arrays = safetensors.numpy.load(
            read_bounded(fs, posixpath.join(root, ARRAYS_NAME), CODEC_ARRAYS_CAP, ARRAYS_NAME, root=root))
    except FileNotFoundError as exc:
        missing = exc.filename or (ARRAYS_NAME if JSON_NAME not in str(exc) else JSON_NAME)
        raise CodecError(f"{url} is not a saved codec model (missing {missing}); save one with LatentCodec.save") from None
    except ArchiveFormatError as exc:
        raise CodecError(f"{url}: {exc}") from None
    except Exception as exc:  # JSON and safetensors parse errors of any kind
        raise CodecError(f"{url}: codec model files are unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise CodecError(f"{url}/{JSON_NAME} is not an sg3archive codec model")
    if doc.get("format_version", 0) > MODEL_VERSION:
        raise CodecError(f"{url}: codec model format {doc['format_version']} is newer than this sg3archive reads; upgrade")
    for key, expected in (("table_precision", PRECISION), ("num_classes", NUM_CLASSES), ("tail_sigmas", TAIL_SIGMAS),
                          ("pred_shift", qz.PRED_SHIFT), ("basis_bits", qz.BASIS_BITS), ("prior", "gaussian-mixture-v1"),
                          ("predictor", "running-mean-v1")):
        if doc.get(key) != expected:
            raise CodecError(f"{url}: model was made with {key}={doc.get(key)}, this codec uses {expected}")
    try:
        _check_shapes(doc, arrays)
        model = _model_from(doc, arrays)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"{url}: codec model files are incomplete or damaged ({type(exc).__name__}: {exc})") from None
    if model.hash != doc.get("hash"):
        raise CodecError(f"{url}: codec model content does not match its recorded hash; the files were modified or damaged")
    return model


MAX_NUM_WS, MAX_W_DIM = 64, 4096  # StyleGAN3 has 16 x 512; generous, and bounds every array below


def _whole(value: Any, lo: int, hi: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a whole number in {lo}..{hi}, not {value!r}")
    return value


def _check_shapes(doc: dict, arrays: dict[str, np.ndarray]) -> None:
    """Refuse a model whose config or arrays do not fit together before anything uses them: its
    hash proves nothing against a crafted file (anyone can recompute it), so sizes, dtypes,
    finiteness and every probability table (each is a pure function of its id) are checked.

    Raises:
        ValueError: what does not fit, in words.
    """
    num_ws = _whole(doc["num_ws"], 1, MAX_NUM_WS, "num_ws")
    w_dim = _whole(doc["w_dim"], 1, MAX_W_DIM, "w_dim")
    if not isinstance(doc["bits"], list) or len(doc["bits"]) != num_ws:
        raise ValueError(f"bits must list {num_ws} values")
    groups = doc["groups"]
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise ValueError("groups must be a list of lists of layer numbers")
    for g in groups:
        for layer in g:
            _whole(layer, 0, num_ws - 1, "a layer in groups")
    shapes = {"centre": ((num_ws, w_dim), "f"), "coef": ((num_ws, w_dim), "i"), "classes": ((num_ws, w_dim), "i"),
              "sigma": ((num_ws, w_dim), "f"), "mantissa": ((num_ws,), "i"), "exponent": ((num_ws,), "i"),
              "reset": ((num_ws,), "i"), "basis_int": ((w_dim, w_dim), "i")}
    for name, (shape, kind) in shapes.items():
        if name not in arrays:
            if name == "basis_int":
                continue
            raise KeyError(name)
        a = arrays[name]
        if a.shape != shape or a.dtype.kind != kind:
            raise ValueError(f"array {name} is {a.dtype}{list(a.shape)}, expected {'float' if kind == 'f' else 'int'}"
                             f"{list(shape)}")
        if kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"array {name} holds NaN or infinity")
    if (arrays["mantissa"] < 1).any() or (arrays["mantissa"] >= 1 << 31).any():
        raise ValueError("mantissa values must be in 1..2**31-1")
    if (arrays["exponent"] < 0).any() or (arrays["exponent"] > 62).any():
        raise ValueError("exponent values must be in 0..62")
    top = table_id(NUM_CLASSES - 1, NUM_CLASSES - 1, len(MIXTURE_WEIGHTS) - 1)
    classes = arrays["classes"]
    if classes.size and (classes.min() < 0 or classes.max() > top):
        raise ValueError(f"classes must be table ids in 0..{top}")
    names = [k for k in arrays if k.startswith("table.")]
    if len(names) > top + 1:
        raise ValueError("more probability tables than table ids")
    for key in names:
        tid = _whole(int(key.split(".", 1)[1]) if key.split(".", 1)[1].isdigit() else -1, 0, top, f"array {key}'s id")
        if not np.array_equal(arrays[key], frequency_table(tid)):
            raise ValueError(f"array {key} is not the probability table of id {tid}")
    missing = {int(c) for c in np.unique(classes)} - {int(k.split(".", 1)[1]) for k in names}
    if missing:
        raise ValueError(f"no probability table for ids {sorted(missing)[:5]}")


def _model_from(doc: dict, arrays: dict[str, np.ndarray]) -> CodecModel:
    tables = {int(k.split(".", 1)[1]): v for k, v in arrays.items() if k.startswith("table.")}
    return CodecModel(
        num_ws=doc["num_ws"], w_dim=doc["w_dim"], profile=doc["profile"], bits=tuple(doc["bits"]),
        groups=tuple(tuple(g) for g in doc["groups"]), centre=arrays["centre"], basis_int=arrays.get("basis_int"),
        mantissa=arrays["mantissa"], exponent=arrays["exponent"], coef=arrays["coef"], reset=arrays["reset"],
        classes=arrays["classes"],
        sigma=arrays["sigma"], tables=tables, info=doc.get("info", {}),
    )


__all__ = ["CodecModel", "PRESETS", "SCALES", "estimate", "fit_model", "load_model", "save_model"]
