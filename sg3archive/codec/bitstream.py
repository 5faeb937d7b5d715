"""The payload format: one self-checking byte string per image.

Layout, format version 1 (all integers little-endian; "varint" = unsigned LEB128):

====== ============ =====================================================================
offset size         field
====== ============ =====================================================================
0      4            magic ``b"SG3W"``
4      1            format version (``1``)
5      1            flags: bit 0 = coder (0 ``ans``, 1 ``range``); bit 1 = input transform
                    present; other bits must be 0
6      varint       payload length in bytes, the whole payload including the CRC
.      8            codec-model hash: first 8 bytes of the model's sha256 (decoder refuses
                    any other model)
.      1            ``num_ws`` (W+ layers, L)
.      2            ``w_dim`` (D)
.      ceil(L/2)    bits per layer, 4 bits each (value − 1), low nibble first
.      1            number of streams K (1 in this version)
.      K varints    byte length of each stream
.      24           input transform, if flagged: rows 0 and 1 of the 3×3 matrix as six
                    float32 (row 2 is always 0, 0, 1)
.      Σ lengths    the entropy-coded stream (a sequence of 32-bit words). It holds the layer
                    groups coarse → fine (the codec model fixes the groups: by default the
                    guide's four); within a group the quantization indices of runs of values
                    that share a prior, then the raw values of any escaped indices
end−4  4            CRC-32 of every byte before it
====== ============ =====================================================================

Because groups are decoded in order, a reader can stop after the coarse groups (a progressive
preview) without decoding the rest.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from sg3archive.codec.errors import PayloadError

MAGIC = b"SG3W"
FORMAT_VERSION = 1
CODERS = ("ans", "range")
_FLAG_RANGE, _FLAG_TRANSFORM = 1, 2


@dataclass(frozen=True)
class PayloadHeader:
    """Everything in a payload except the coded chunks."""

    coder: str
    model_hash: bytes  # 8 bytes
    num_ws: int
    w_dim: int
    bits: tuple[int, ...]
    chunk_lengths: tuple[int, ...]
    transform: np.ndarray | None  # [3, 3] float32, or None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 35:
            raise PayloadError("payload header is truncated or malformed (bad varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def pack(header: PayloadHeader, chunks: list[bytes]) -> bytes:
    """Serialize a header and its chunks into one payload (length and CRC filled in)."""
    flags = (_FLAG_RANGE if header.coder == "range" else 0) | (_FLAG_TRANSFORM if header.transform is not None else 0)
    nibbles = [b - 1 for b in header.bits] + ([0] if len(header.bits) % 2 else [])
    bits = bytes(nibbles[i] | (nibbles[i + 1] << 4) for i in range(0, len(nibbles), 2))
    body = bytearray(header.model_hash)
    body += struct.pack("<BH", header.num_ws, header.w_dim) + bits + struct.pack("<B", len(chunks))
    for chunk in chunks:
        body += _varint(len(chunk))
    if header.transform is not None:
        body += np.asarray(header.transform, dtype="<f4")[:2].tobytes()
    for chunk in chunks:
        body += chunk
    # The length field counts itself; find the fixed point (at most one extra byte).
    fixed = len(MAGIC) + 2 + len(body) + 4
    length = fixed + len(_varint(fixed))
    length = fixed + len(_varint(length))
    data = MAGIC + bytes([FORMAT_VERSION, flags]) + _varint(length) + bytes(body)
    return data + struct.pack("<I", zlib.crc32(data))


def unpack(data: bytes) -> tuple[PayloadHeader, list[bytes]]:
    """Check and parse a payload; raises :class:`PayloadError` saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"a payload must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < 10 or data[:4] != MAGIC:
        raise PayloadError("not an sg3archive latent payload (bad magic number)")
    if data[4] != FORMAT_VERSION:
        raise PayloadError(
            f"payload format version {data[4]} is not supported (this sg3archive reads version {FORMAT_VERSION}); "
            "upgrade sg3archive to read it"
        )
    flags = data[5]
    length, pos = _read_varint(data, 6)
    if length != len(data):
        raise PayloadError(f"payload is {len(data)} bytes but says it is {length}: truncated or padded")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise PayloadError("payload checksum (CRC-32) mismatch: the payload is corrupted")
    if flags & ~(_FLAG_RANGE | _FLAG_TRANSFORM):
        raise PayloadError(f"payload uses unknown flags {flags:#04x}")
    try:
        model_hash = data[pos : pos + 8]
        num_ws, w_dim = struct.unpack_from("<BH", data, pos + 8)
        pos += 11
        nbytes = (num_ws + 1) // 2
        bits = tuple((data[pos + i // 2] >> (4 * (i % 2)) & 0xF) + 1 for i in range(num_ws))
        pos += nbytes
        (num_chunks,) = struct.unpack_from("<B", data, pos)
        pos += 1
        lengths = []
        for _ in range(num_chunks):
            n, pos = _read_varint(data, pos)
            lengths.append(n)
        transform = None
        if flags & _FLAG_TRANSFORM:
            rows = np.frombuffer(data[pos : pos + 24], dtype="<f4").reshape(2, 3)
            transform = np.vstack([rows, np.array([[0, 0, 1]], dtype=np.float32)]).astype(np.float32)
            pos += 24
    except (struct.error, IndexError, ValueError) as exc:
        raise PayloadError(f"payload header is truncated or malformed ({exc})") from None
    chunks = []
    for n in lengths:
        chunks.append(data[pos : pos + n])
        pos += n
    if pos != len(data) - 4 or any(len(c) % 4 for c in chunks):
        raise PayloadError("payload chunk table does not match its size")
    coder = "range" if flags & _FLAG_RANGE else "ans"
    return PayloadHeader(coder, model_hash, num_ws, w_dim, bits, tuple(lengths), transform), chunks
