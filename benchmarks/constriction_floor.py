"""The entropy coder's own speed limit: constriction ANS and range coding of one 16×512 W+ image
(8,192 symbols) with a single categorical model, nothing else in the loop, one thread.

This is the floor under the latent codec's throughput: compress + decompress of a 16×512 image
cannot be faster than encode + decode of its 8,192 symbols here.

    python benchmarks/constriction_floor.py
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import time  # noqa: E402

import constriction  # noqa: E402
import numpy as np  # noqa: E402

SYMBOLS = 16 * 512
REPEATS = 200


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'alphabet':>8} {'coder':>6} {'encode us':>10} {'decode us':>10} {'enc+dec images/s':>17} {'bytes':>6}")
    for k in (16, 64, 256, 4096):
        p = np.exp(-0.5 * ((np.arange(k) - k / 2) / (k / 8)) ** 2)
        p /= p.sum()
        model = constriction.stream.model.Categorical(p, perfect=False)
        symbols = rng.choice(k, size=SYMBOLS, p=p).astype(np.int32)
        for name in ("ans", "range"):
            t = time.perf_counter()
            for _ in range(REPEATS):
                if name == "ans":
                    coder = constriction.stream.stack.AnsCoder()
                    coder.encode_reverse(symbols, model)
                else:
                    coder = constriction.stream.queue.RangeEncoder()
                    coder.encode(symbols, model)
                compressed = coder.get_compressed()
            enc = (time.perf_counter() - t) / REPEATS
            t = time.perf_counter()
            for _ in range(REPEATS):
                if name == "ans":
                    decoded = constriction.stream.stack.AnsCoder(compressed).decode(model, SYMBOLS)
                else:
                    decoded = constriction.stream.queue.RangeDecoder(compressed).decode(model, SYMBOLS)
            dec = (time.perf_counter() - t) / REPEATS
            assert np.array_equal(decoded, symbols)
            print(f"{k:>8} {name:>6} {enc * 1e6:>10.0f} {dec * 1e6:>10.0f} {1 / (enc + dec):>17.0f} {compressed.nbytes:>6}")


if __name__ == "__main__":
    main()
