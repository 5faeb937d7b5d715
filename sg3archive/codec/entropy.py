"""Entropy coding of quantization indices with ``constriction`` (ANS or range coding).

Within a chunk the values are ordered by scale class (fixed at fit time), so each run of
same-class values is coded with one shared categorical model in a single vectorized call.
``"arithmetic"`` is served by the range coder: range coding is arithmetic coding with
byte-wise (here word-wise) renormalisation, with the same compression up to a few bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from sg3archive.codec.errors import PayloadError
from sg3archive.codec.tables import half_width, probabilities

_ESCAPE_BITS = 24  # escaped values are zigzag-coded below 2**24
_UNIFORM = constriction.stream.model.Uniform(1 << _ESCAPE_BITS)


@dataclass(frozen=True)
class ChunkLayout:
    """Where a chunk's values sit in the flattened ``[L·D]`` latent and how they are grouped."""

    layers: tuple[int, ...]
    positions: np.ndarray  # [P] flat indices into L·D, sorted by (class, layer, dim)
    half: np.ndarray  # [P] half-width of each position's table
    runs: tuple[tuple[int, int, int], ...]  # (class, start, end) over positions


def chunk_layout(layers: list[int], classes: np.ndarray) -> ChunkLayout:
    """Layout of the chunk holding ``layers``, for per-value scale classes ``classes [L, D]``."""
    dims = classes.shape[1]
    flat = np.concatenate([np.arange(layer * dims, (layer + 1) * dims) for layer in layers])
    cls = classes.reshape(-1)[flat]
    order = np.lexsort((flat, cls))
    flat, cls = flat[order], cls[order]
    bounds = np.flatnonzero(np.diff(cls)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(cls)]])
    runs = tuple((int(cls[s]), int(s), int(e)) for s, e in zip(starts, ends))
    half = np.array([half_width(int(c)) for c in cls], dtype=np.int64)
    return ChunkLayout(tuple(layers), flat, half, runs)


class TableModels:
    """constriction models built lazily from the frozen integer tables of a codec model."""

    def __init__(self, tables: dict[int, np.ndarray]) -> None:
        self._tables = tables
        self._models: dict[int, object] = {}

    def __getitem__(self, c: int) -> object:
        model = self._models.get(c)
        if model is None:
            model = constriction.stream.model.Categorical(probabilities(self._tables[c]), perfect=False)
            self._models[c] = model
        return model


def _symbols(k: np.ndarray, layout: ChunkLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Table indices ``[N, P]`` (int32), escape mask and zigzag escape values for a chunk."""
    values = k[:, layout.positions]
    escaped = np.abs(values) > layout.half
    idx = np.where(escaped, 2 * layout.half + 1, values + layout.half).astype(np.int32)
    zigzag = np.where(values >= 0, 2 * values, -2 * values - 1)
    if (zigzag[escaped] >= (1 << _ESCAPE_BITS)).any():
        raise OverflowError("a quantization index is too large to code; the latent is far outside the fitted range")
    return idx, escaped, zigzag.astype(np.int32)


def encode_stream(k: np.ndarray, layouts: list[ChunkLayout], models: TableModels, coder: str) -> list[bytes]:
    """Code ``k [N, L·D]`` (int64 symbols) into one stream per image.

    Layer groups follow each other coarse → fine, each group's runs then its escaped values, so
    a decoder can stop after any group (progressive decoding).
    """
    parts = [_symbols(k, layout) for layout in layouts]
    out = []
    for i in range(k.shape[0]):
        if coder == "ans":
            enc = constriction.stream.stack.AnsCoder()  # a stack: encode in reverse decoding order
            for layout, (idx, escaped, zigzag) in zip(reversed(layouts), reversed(parts)):
                esc = zigzag[i][escaped[i]]
                if esc.size:
                    enc.encode_reverse(esc, _UNIFORM)
                for c, start, end in reversed(layout.runs):
                    enc.encode_reverse(idx[i, start:end], models[c])
        else:
            enc = constriction.stream.queue.RangeEncoder()
            for layout, (idx, escaped, zigzag) in zip(layouts, parts):
                for c, start, end in layout.runs:
                    enc.encode(idx[i, start:end], models[c])
                esc = zigzag[i][escaped[i]]
                if esc.size:
                    enc.encode(esc, _UNIFORM)
        out.append(enc.get_compressed().astype("<u4").tobytes())
    return out


def decode_stream(data: bytes, layouts: list[ChunkLayout], models: TableModels, coder: str,
                  whole: bool) -> list[np.ndarray]:
    """Symbols of the first ``len(layouts)`` layer groups of one image's stream (layout order).

    ``whole``: these are all the groups, so an ANS stream must be used up exactly.
    """
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    out = []
    try:
        dec = constriction.stream.stack.AnsCoder(words) if coder == "ans" else constriction.stream.queue.RangeDecoder(words)
        for layout in layouts:
            idx = np.empty(len(layout.positions), dtype=np.int64)
            for c, start, end in layout.runs:
                idx[start:end] = dec.decode(models[c], end - start)
            escaped = idx == 2 * layout.half + 1
            values = idx - layout.half
            count = int(escaped.sum())
            if count:
                zigzag = dec.decode(_UNIFORM, count).astype(np.int64)
                values[escaped] = np.where(zigzag % 2 == 0, zigzag // 2, -(zigzag + 1) // 2)
                if (np.abs(values[escaped]) <= layout.half[escaped]).any():
                    raise PayloadError("payload stream escapes an index its table holds (the encoder never "
                                       "does); the payload is corrupted")
            out.append(values)
    except PayloadError:
        raise
    except Exception as exc:  # constriction raises its own error types on inconsistent data
        raise PayloadError(f"payload stream could not be decoded ({exc}); the payload is corrupted") from None
    if whole and coder == "ans" and not dec.is_empty():
        raise PayloadError("payload stream has data left over after decoding; the payload is corrupted")
    return out
