"""README: golden vectors of the latent codec. Regenerate them ONLY when the payload format version
(``sg3archive.codec.bitstream.FORMAT_VERSION``) or the codec model format changes; any other change
in their payloads or decoded values is a compatibility break (archives already written would
decode differently), so fix the code instead of regenerating.

Run from the repository root: ``.venv/bin/python tests/golden/make_codec_golden.py``

For each setting below this fits a codec on synthetic W+ codes built from a fixed numpy seed
(``RandomState``, stable across numpy versions; torch's generator is not used), then writes
``tests/golden/codec_<name>/``: the model (``codec.json`` + ``codec.safetensors`` via
``LatentCodec.save``) and ``golden.npz``:

* ``ws`` float64 ``[N, num_ws, w_dim]``: the codes that were compressed;
* ``payload_data`` uint8 and ``payload_offsets`` int64 ``[N + 1]``: payload ``i`` is
  ``payload_data[offsets[i]:offsets[i + 1]]``;
* ``has_transform`` bool ``[N]`` and ``transforms`` float32 ``[N, 3, 3]`` (zeros where absent);
  image ``i`` was compressed on its own, with its transform when it has one;
* ``expected`` float32 ``[N, num_ws, w_dim]``: what decompression returned;
* ``model_hash`` (str), ``format_version`` (int) and ``coder`` (str) for reference.

``tests/test_codec_golden.py`` checks them and never regenerates anything. Each directory is
rewritten from scratch (old files removed), so running this twice gives the same vectors; only
the ``saved`` timestamp in ``codec.json`` (not part of the model hash) changes.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, so the checkout's sg3archive is used

from sg3archive.codec import LatentCodec  # noqa: E402
from sg3archive.codec.bitstream import FORMAT_VERSION  # noqa: E402

NUM_WS = 16
MAX_DIR_BYTES = 1_000_000

# name: (seed, w_dim, fit keyword arguments, images that carry an input transform)
SETTINGS: dict[str, tuple[int, int, dict, tuple[int, ...]]] = {
    "balanced_ans": (20240, 32, dict(profile="balanced", coder="ans"), ()),
    "uniform8_range": (20241, 24, dict(profile=8, coder="range"), ()),
    "high_compression_ans_tf": (20242, 32, dict(profile="high_compression", coder="ans"), (0,)),
    "custom_arithmetic_flat": (
        20243,
        17,
        dict(profile=[10, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3], coder="arithmetic",
             progressive=False, decorrelate=False),
        (1, 3),
    ),
}


def synthetic_ws(seed: int, w_dim: int, m_calib: int = 128, n_test: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``(calibration [M, 16, w_dim], test [N, 16, w_dim])`` W+-like codes, float64.

    A correlated Gaussian base vector per image repeated over the layers, replaced from a
    random cut layer on by a second vector (style mixing), plus a per-layer offset and noise.
    The last test image is pushed far out (4x from the mean) so escape coding is covered.
    """
    rng = np.random.RandomState(seed)
    mu = rng.normal(0.0, 1.0, w_dim)
    mix = rng.normal(0.0, 1.0, (w_dim, w_dim)) / np.sqrt(w_dim) * rng.uniform(0.2, 1.5, w_dim)
    offset = 0.1 * rng.normal(size=(NUM_WS, w_dim))
    noise = rng.uniform(0.01, 0.08, NUM_WS)

    def sample(n: int) -> np.ndarray:
        base = mu + rng.normal(size=(n, w_dim)) @ mix
        other = mu + rng.normal(size=(n, w_dim)) @ mix
        cut = rng.randint(1, NUM_WS + 1, size=n)
        mixed = np.arange(NUM_WS)[None, :, None] >= cut[:, None, None]
        ws = np.where(mixed, other[:, None, :], base[:, None, :]) + offset
        return ws + rng.normal(size=ws.shape) * noise[None, :, None]

    calib, test = sample(m_calib), sample(n_test)
    centre = calib.mean(axis=0)
    test[-1] = centre + 4.0 * (test[-1] - centre)
    return calib, test


def transform_for(index: int) -> np.ndarray:
    """A fixed rotate + translate input transform (float32-representable values)."""
    angle = 0.25 * (index + 1)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return np.array([[c, -s, 0.125 * (index + 1)], [s, c, -0.375], [0.0, 0.0, 1.0]], dtype=np.float32)


def make(name: str) -> Path:
    seed, w_dim, fit_kwargs, with_transform = SETTINGS[name]
    calib, ws = synthetic_ws(seed, w_dim)
    codec = LatentCodec.fit(calib, **fit_kwargs)
    out_dir = HERE / f"codec_{name}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    codec.save(str(out_dir))

    n = len(ws)
    has_transform = np.array([i in with_transform for i in range(n)])
    transforms = np.zeros((n, 3, 3), dtype=np.float32)
    payloads = []
    for i in range(n):
        tf = None
        if has_transform[i]:
            transforms[i] = transform_for(i)
            tf = transforms[i : i + 1]
        payloads.append(codec.compress(ws[i : i + 1], transforms=tf)[0])
    expected = codec.decompress(payloads).numpy()

    # Self-check before writing: a freshly loaded model reads back what was just made.
    loaded = LatentCodec.load(str(out_dir))
    assert loaded.hash == codec.hash
    assert np.array_equal(loaded.decompress(payloads).numpy(), expected)
    assert np.array_equal(codec.quantize(ws).numpy(), expected)

    offsets = np.cumsum([0] + [len(p) for p in payloads]).astype(np.int64)
    np.savez(
        out_dir / "golden.npz",
        ws=ws,
        payload_data=np.frombuffer(b"".join(payloads), dtype=np.uint8),
        payload_offsets=offsets,
        has_transform=has_transform,
        transforms=transforms,
        expected=expected,
        model_hash=np.array(codec.hash),
        format_version=np.array(FORMAT_VERSION),
        coder=np.array(codec.coder),
    )
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    if size > MAX_DIR_BYTES:
        raise SystemExit(f"{out_dir} is {size} bytes, over the {MAX_DIR_BYTES}-byte budget for golden files")
    print(f"{out_dir.relative_to(HERE.parents[1])}: {n} payloads, {offsets[-1]} payload bytes, "
          f"{size} bytes on disk, hash {codec.hash[:16]}")
    return out_dir


def main() -> None:
    for name in SETTINGS:
        make(name)
    stale = {p.name for p in HERE.glob("codec_*") if p.is_dir()} - {f"codec_{n}" for n in SETTINGS}
    if stale:
        print(f"note: {sorted(stale)} are not made by this script; remove them if they are obsolete")


if __name__ == "__main__":
    main()
