"""The payload format: one self-checking byte string per image.

Layout, format version 2 (all integers little-endian; "varint" = unsigned LEB128):

====== ============ =====================================================================
offset size         field
====== ============ =====================================================================
0      2            magic ``b"W+"``
2      1            high nibble: format version (``2``); low nibble: flags — bit 0 = coder
                    (0 ``ans``, 1 ``range``), bit 1 = input transform present, bits 2–3
                    must be 0
3      varint       payload length in bytes, the whole payload including the CRC
.      4            codec-model hash: first 4 bytes of the model's sha256 (the decoder refuses
                    any other model; the archive records the full hash beside the payload)
.      1            ``num_ws`` (W+ layers, L) the payload codes
.      1            profile code of the bit allocation: 1–3 the presets ``high_quality``,
                    ``balanced``, ``high_compression``; ``0x10 + b`` uniform ``b`` bits;
                    0 any other allocation (``custom`` or ``auto``). The allocation itself —
                    every layer's step — belongs to the codec model the hash names.
.      24           input transform, if flagged: rows 0 and 1 of the 3×3 matrix as six
                    float32 (row 2 is always 0, 0, 1)
.      rest − 4     the entropy-coded stream: 32-bit words with the zero bytes at the end
                    of the last word left out (a reader pads with zeros to a whole word).
                    It holds the layer groups coarse → fine (the codec model fixes the
                    groups: by default the guide's four); within a group the quantization
                    indices of runs of values that share a prior, then the raw values of
                    any escaped indices
end−4  4            CRC-32 of every byte before it
====== ============ =====================================================================

Because groups are decoded in order, a reader can stop after the coarse groups (a progressive
preview) without decoding the rest. Fixed overhead: 15 bytes (39 with a transform) plus the
coder's final state.

Version history: 1 (development only, never written to an archive) had an 8-byte hash, the
bits of every layer and a stream table; version 2 cut that header from 34 to 15 bytes.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from sg3archive.codec.errors import PayloadError
from sg3archive.codec.names import WIRE_CODERS
from sg3archive.codec.profiles import MAX_BITS, MIN_BITS

MAGIC = b"W+"
FORMAT_VERSION = 2
HASH_BYTES = 4
CODERS = WIRE_CODERS  # the coders a header can record (their home: ``codec.names``)
_FLAG_RANGE, _FLAG_TRANSFORM = 1, 2
_PRESET_CODES = {"high_quality": 1, "balanced": 2, "high_compression": 3}
HEADER_BYTES = len(MAGIC) + 1 + 2 + HASH_BYTES + 1 + 1 + 4  # typical payloads have a 2-byte varint length


def profile_code(profile: str) -> int:
    """The one-byte code a payload records for a codec model's profile name."""
    if profile in _PRESET_CODES:
        return _PRESET_CODES[profile]
    if profile.startswith("uniform") and profile[7:].isdigit() and MIN_BITS <= int(profile[7:]) <= MAX_BITS:
        return 0x10 + int(profile[7:])
    return 0


@dataclass(frozen=True)
class PayloadHeader:
    """Everything in a payload except the coded stream."""

    coder: str
    model_hash: bytes  # HASH_BYTES bytes
    num_ws: int
    profile_code: int
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


def pack(header: PayloadHeader, stream: bytes) -> bytes:
    """Serialize a header and its stream (whole 32-bit words) into one payload."""
    if len(stream) % 4:
        raise ValueError("the entropy-coded stream must be whole 32-bit words")
    keep = len(stream)
    while keep > len(stream) - 3 and keep > 0 and stream[keep - 1] == 0:
        keep -= 1  # zero bytes at the end of the last word: restored by padding
    flags = (_FLAG_RANGE if header.coder == "range" else 0) | (_FLAG_TRANSFORM if header.transform is not None else 0)
    body = bytearray(header.model_hash) + bytes([header.num_ws, header.profile_code])
    if header.transform is not None:
        body += np.asarray(header.transform, dtype="<f4")[:2].tobytes()
    body += stream[:keep]
    # The length field counts itself; find the fixed point (at most one extra byte).
    fixed = len(MAGIC) + 1 + len(body) + 4
    length = fixed + len(_varint(fixed))
    length = fixed + len(_varint(length))
    data = MAGIC + bytes([FORMAT_VERSION << 4 | flags]) + _varint(length) + bytes(body)
    return data + struct.pack("<I", zlib.crc32(data))


def unpack(data: bytes) -> tuple[PayloadHeader, bytes]:
    """Check and parse a payload into its header and stream (padded back to whole words);
    raises :class:`PayloadError` saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"a payload must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8 or data[:2] != MAGIC:
        raise PayloadError("not an sg3archive latent payload (bad magic number)")
    version, flags = data[2] >> 4, data[2] & 0xF
    if version != FORMAT_VERSION:
        raise PayloadError(
            f"payload format version {version} is not supported (this sg3archive reads version {FORMAT_VERSION}); "
            "upgrade sg3archive to read it"
        )
    length, pos = _read_varint(data, 3)
    if length != len(data):
        raise PayloadError(f"payload is {len(data)} bytes but says it is {length}: truncated or padded")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise PayloadError("payload checksum (CRC-32) mismatch: the payload is corrupted")
    if flags & ~(_FLAG_RANGE | _FLAG_TRANSFORM):
        raise PayloadError(f"payload uses unknown flags {flags:#03x}")
    end = len(data) - 4
    need = HASH_BYTES + 2 + (24 if flags & _FLAG_TRANSFORM else 0)
    if pos + need > end:
        raise PayloadError("payload header is truncated or malformed (too short for its fields)")
    model_hash = data[pos : pos + HASH_BYTES]
    num_ws, code = data[pos + HASH_BYTES], data[pos + HASH_BYTES + 1]
    pos += HASH_BYTES + 2
    transform = None
    if flags & _FLAG_TRANSFORM:
        rows = np.frombuffer(data[pos : pos + 24], dtype="<f4").reshape(2, 3)
        if not np.isfinite(rows).all():
            raise PayloadError("payload input transform holds NaN or infinite values: the payload is corrupted")
        transform = np.vstack([rows, np.array([[0, 0, 1]], dtype=np.float32)]).astype(np.float32)
        pos += 24
    stream = data[pos:end]
    stream += b"\0" * (-len(stream) % 4)
    coder = "range" if flags & _FLAG_RANGE else "ans"
    return PayloadHeader(coder, model_hash, num_ws, code, transform), stream
