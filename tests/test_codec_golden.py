"""Golden vectors of the latent codec: stored models and payloads must keep decoding, and encoding,
to exactly the stored bytes and values.

The vectors under ``tests/golden/codec_*/`` are made by ``tests/golden/make_codec_golden.py``; this
test only reads them. A failure here is a compatibility break (archives already written would
decode differently), not a reason to regenerate; see the script's README line.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from sg3archive.codec import LatentCodec

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_DIRS = sorted(p for p in GOLDEN.glob("codec_*") if p.is_dir())
EXPECTED_NAMES = {"codec_balanced_ans", "codec_uniform8_range", "codec_high_compression_ans_tf", "codec_custom_arithmetic_flat"}


def test_golden_vectors_are_present() -> None:
    assert {p.name for p in GOLDEN_DIRS} >= EXPECTED_NAMES, (
        f"golden codec vectors missing under {GOLDEN}; they are committed files, made once by "
        "tests/golden/make_codec_golden.py"
    )
    for path in GOLDEN_DIRS:
        assert {f.name for f in path.iterdir()} >= {"codec.json", "codec.safetensors", "golden.npz"}, path


class Golden:
    """One golden directory: its model, inputs, payloads and expected output."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with np.load(path / "golden.npz", allow_pickle=False) as data:
            self.ws = data["ws"]
            blob, offsets = data["payload_data"].tobytes(), data["payload_offsets"]
            self.has_transform = data["has_transform"]
            self.transforms = data["transforms"]
            self.expected = data["expected"]
            self.model_hash = str(data["model_hash"])
            self.format_version = int(data["format_version"])
        self.payloads = [blob[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        self.codec = LatentCodec.load(str(path))


@pytest.fixture(scope="module", params=GOLDEN_DIRS, ids=[p.name for p in GOLDEN_DIRS])
def golden(request) -> Golden:
    return Golden(request.param)


def test_golden_files_are_consistent(golden: Golden) -> None:
    n = len(golden.payloads)
    assert n >= 1
    assert golden.ws.dtype == np.float64 and golden.ws.shape == (n, golden.codec.num_ws, golden.codec.w_dim)
    assert golden.expected.dtype == np.float32 and golden.expected.shape == golden.ws.shape
    assert golden.transforms.dtype == np.float32 and golden.transforms.shape == (n, 3, 3)
    assert golden.has_transform.dtype == bool and golden.has_transform.shape == (n,)


def test_golden_model_hash(golden: Golden) -> None:
    doc = json.loads((golden.path / "codec.json").read_text())
    assert golden.codec.hash == golden.model_hash == doc["hash"]
    for payload in golden.payloads:
        # Layout (bitstream.py): magic, version/flags, varint length, then the model hash's first 4 bytes.
        assert payload[:2] == b"W+" and payload[2] >> 4 == golden.format_version
        pos = 3
        while payload[pos] & 0x80:
            pos += 1
        pos += 1
        assert payload[pos : pos + 4] == bytes.fromhex(golden.codec.hash[:8])
        assert int.from_bytes(payload[-4:], "little") == zlib.crc32(payload[:-4])


def test_golden_decompress_is_bit_exact(golden: Golden) -> None:
    out = golden.codec.decompress(golden.payloads)
    assert out.dtype == torch.float32
    assert out.numpy().tobytes() == golden.expected.tobytes()
    assert torch.equal(out, torch.from_numpy(golden.expected))
    # quantize() promises the same values without entropy coding.
    assert torch.equal(golden.codec.quantize(golden.ws), out)


def test_golden_decode_transforms(golden: Golden) -> None:
    decoded = golden.codec.decode(golden.payloads)
    assert decoded.ws.numpy().tobytes() == golden.expected.tobytes()
    for i, got in enumerate(decoded.transforms):
        if golden.has_transform[i]:
            assert got is not None and got.dtype == np.float32
            assert got.tobytes() == golden.transforms[i].tobytes()
        else:
            assert got is None


def test_golden_progressive_prefix(golden: Golden) -> None:
    for k in range(golden.codec.num_ws + 1):
        part = golden.codec.decompress(golden.payloads, num_layers=k).numpy()
        assert part.shape == golden.expected.shape and np.isfinite(part).all()
        assert part[:, :k].tobytes() == golden.expected[:, :k].tobytes(), f"num_layers={k}"


def test_golden_compress_reproduces_payloads(golden: Golden) -> None:
    for i, payload in enumerate(golden.payloads):
        tf = golden.transforms[i : i + 1] if golden.has_transform[i] else None
        again = golden.codec.compress(golden.ws[i : i + 1], transforms=tf)
        assert again == [payload], f"image {i}: payload bytes changed"
    plain = [i for i in range(len(golden.payloads)) if not golden.has_transform[i]]
    if plain:
        assert golden.codec.compress(golden.ws[plain]) == [golden.payloads[i] for i in plain]
