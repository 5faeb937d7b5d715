"""Peak resident memory and time of decoding high-depth images near the pixel limit (issue 11, item 9).

Writes one ~64 Mpx file per case (float32, 32-bit and 16-bit gray TIFF, CMYK TIFF, RGB PNG for
reference) to a temporary folder, then decodes each with ``sg3archive.images.decode_image``
in a fresh interpreter (so one case's freed memory cannot hide another's peak) and prints a
table: the peak rise of resident memory during the decode (the file's bytes are already in
memory), the seconds, and the ratio of that peak to the uint8 RGB result decoding must produce
(the floor). ``--baseline FILE`` decodes each case with another version of ``inputs.py`` as
well (e.g. ``git show HEAD~1:sg3archive/store/inputs.py > /tmp/old_inputs.py``) and adds its
peak and the ratio of the two.

    python benchmarks/decode_memory.py [--side 8000] [--baseline /tmp/old_inputs.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = ("float32 TIFF (F)", "int32 TIFF (I)", "uint16 TIFF (I;16)", "CMYK TIFF", "RGB PNG")


def write_case(case: str, side: int, path: Path) -> None:
    """One ``side × side`` image of the case's kind, random (incompressible) values."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    if case.startswith("float32"):
        Image.fromarray(rng.random((side, side), dtype=np.float32) * 300).save(path, format="TIFF")
    elif case.startswith("int32"):
        Image.fromarray(rng.integers(0, 70_000, (side, side), dtype=np.int32)).save(path, format="TIFF")
    elif case.startswith("uint16"):
        Image.fromarray(rng.integers(0, 65_536, (side, side), dtype=np.uint16)).save(path, format="TIFF")
    elif case.startswith("CMYK"):
        Image.frombytes("CMYK", (side, side), rng.integers(0, 256, side * side * 4, dtype=np.uint8).tobytes()).save(
            path, format="TIFF")
    else:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, format="PNG", compress_level=1)


def load_inputs(module_file: str | None):
    """``sg3archive.images``, or the module at ``module_file`` (a baseline version)."""
    if module_file is None:
        from sg3archive.images import decode as inputs

        return inputs
    spec = importlib.util.spec_from_file_location("baseline_inputs", module_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_inputs"] = module
    spec.loader.exec_module(module)
    return module


def child(path: str, module_file: str | None) -> None:
    """Decode one file under a resident-memory sampler; print one JSON line."""
    from _memory import PeakRSS, ensure_malloc_env

    ensure_malloc_env([sys.executable, *sys.argv])
    inputs = load_inputs(module_file)
    data = Path(path).read_bytes()
    started = time.perf_counter()
    with PeakRSS() as peak:
        img = inputs.decode_image(data, max_pixels=10**9)
    print(json.dumps({"peak_mb": peak.peak / 2**20, "seconds": time.perf_counter() - started,
                      "result_mb": img.rgb.nbytes / 2**20, "mode": img.mode}))


def measure(path: Path, module_file: str | None) -> dict:
    command = [sys.executable, __file__, "--child", str(path)] + (["--module", module_file] if module_file else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"decoding {path.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=8000, help="image side in pixels (8000: 64 Mpx)")
    parser.add_argument("--baseline", help="another inputs.py to compare with")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--module", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.module)
        return
    print(f"{args.side}x{args.side} = {args.side**2 / 1e6:.0f} Mpx per image")
    head = "| case | mode | peak RSS MB | seconds | ratio to result |"
    line = "|------|------|------------:|--------:|----------------:|"
    if args.baseline:
        head += " baseline peak MB | baseline seconds | baseline ratio |"
        line += "-----------------:|-----------------:|---------------:|"
    print(head)
    print(line)
    with tempfile.TemporaryDirectory(prefix="sg3archive-decode-") as folder:
        for case in CASES:
            path = Path(folder) / ("case.png" if "PNG" in case else "case.tif")
            write_case(case, args.side, path)
            now = measure(path, None)
            row = (f"| {case} | {now['mode']} | {now['peak_mb']:.0f} | {now['seconds']:.2f} | "
                   f"{now['peak_mb'] / now['result_mb']:.2f} |")
            if args.baseline:
                old = measure(path, args.baseline)
                row += f" {old['peak_mb']:.0f} | {old['seconds']:.2f} | {old['peak_mb'] / max(now['peak_mb'], 1):.2f} |"
            print(row, flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
