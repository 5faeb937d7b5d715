"""Time and peak memory of MS-SSIM at the original size: torchmetrics (``quality.ms_ssim``) against ours.

``sg3archive.metrics.fidelity.ms_ssim_uint8`` is called in the quality search (several trials per codec
per image) and once per audited row, on photos of any size. This prints, per image size, the seconds
and the peak memory of one call of each implementation and the largest difference of their values.

How it measures: each (size, implementation) runs in a fresh Python process on one torch thread. The
process loads the two uint8 images (``.npy``, written by the parent), warms the implementation up on a
64x64 pair (lazy imports), resets the kernel's peak-resident mark (``5`` into ``/proc/self/clear_refs``),
reads its resident set size (``VmRSS``), makes one timed call (``time.perf_counter``) and reads the peak
(``VmHWM`` in ``/proc/self/status``). "Peak MB" is that peak minus the resident size just before the call:
memory the call added on top of the two images it was given (for "old" that includes the float copies
it makes of them). "cpu s" is the call's process CPU time (``time.process_time``), steadier than wall
seconds on a shared machine. The images are a real photo (scikit-image's ``rocket.jpg``, upscaled with Lanczos) and its JPEG at quality 40.

Run: ``.venv/bin/python benchmarks/fidelity_speed.py`` (about two minutes here, mostly the old path at
4000x3000); ``--sizes 512x384,1024x768`` for a subset.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((512, 384), (1024, 768), (2048, 1536), (4000, 3000))


def _status_bytes(key: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident since the last reset) of this process."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _pair(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A real photo at ``width`` x ``height`` and its JPEG (quality 40), both ``[H, W, 3]`` uint8."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from photos import photo

    original = np.asarray(photo("rocket", (width, height)))
    buffer = io.BytesIO()
    Image.fromarray(original).save(buffer, format="JPEG", quality=40)
    restored = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return original, restored


def _worker(impl: str, path_a: str, path_b: str) -> None:
    """One measured call in this process; prints ``{"seconds", "cpu", "peak_bytes", "value"}`` as JSON."""
    import torch

    from sg3archive.metrics.fidelity import _to_unit_tensor, ms_ssim_uint8
    from sg3archive.metrics.quality import ms_ssim

    torch.set_num_threads(1)

    def old(a: np.ndarray, b: np.ndarray) -> float:  # what ms_ssim_uint8 did before: torchmetrics on [-1, 1]
        with torch.inference_mode():
            x, y = _to_unit_tensor(a, "cpu"), _to_unit_tensor(b, "cpu")
            return float(ms_ssim(x.mul_(2).sub_(1), y.mul_(2).sub_(1))[0])

    def new(a: np.ndarray, b: np.ndarray) -> float:
        return ms_ssim_uint8(a, b)

    fn = old if impl == "old" else new
    a, b = np.load(path_a), np.load(path_b)
    rng = np.random.default_rng(0)
    fn(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with open("/proc/self/clear_refs", "w") as f:  # reset the kernel's peak-RSS mark (VmHWM) to the current RSS
        f.write("5")
    before = _status_bytes("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    value = fn(a, b)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _status_bytes("VmHWM")
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_bytes": max(0, peak - before), "value": value}))


def _measure(impl: str, path_a: Path, path_b: Path) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, __file__, "--worker", impl, str(path_a), str(path_b)],
                          capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES),
                        help="comma-separated WIDTHxHEIGHT list")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "A", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker)
        return
    sizes = [tuple(int(v) for v in item.split("x")) for item in args.sizes.split(",")]
    header = f"{'size':>10} {'old s':>8} {'new s':>7} {'speed-up':>8} {'old peak MB':>11} {'new peak MB':>11} " \
             f"{'max abs diff':>12} {'old cpu s':>9} {'new cpu s':>9}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            original, restored = _pair(width, height)
            path_a, path_b = Path(tmp) / "a.npy", Path(tmp) / "b.npy"
            np.save(path_a, original)
            np.save(path_b, restored)
            old, new = _measure("old", path_a, path_b), _measure("new", path_a, path_b)
            print(f"{f'{width}x{height}':>10} {old['seconds']:8.2f} {new['seconds']:7.2f} "
                  f"{old['seconds'] / new['seconds']:7.1f}x {old['peak_bytes'] / 2**20:11.0f} "
                  f"{new['peak_bytes'] / 2**20:11.0f} {abs(old['value'] - new['value']):12.1e} "
                  f"{old['cpu']:9.2f} {new['cpu']:9.2f}", flush=True)


if __name__ == "__main__":
    main()
