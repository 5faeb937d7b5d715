"""Profile ``matched`` (rate control, the default) against the guide's ``balanced`` table, end to end.

Generates held-out images of the bundled generator with the CLI (NVIDIA-style z seeds, disjoint
from the encoder's training draws, which come from torch generators seeded 0), compresses them
with each profile, restores them and prints, per profile: payload bytes per image (the archive's
``images`` rows), mean PSNR of the restored images against the originals at their original size,
and the bytes as a fraction of ``balanced``'s.

    .venv/bin/python benchmarks/rate_control.py --seeds 5000-5023 --work /tmp/rate_control
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLI = str(Path(sys.executable).with_name("sg3archive"))


def run(*args: str) -> str:
    print("$", " ".join(args), flush=True)
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def payload_bytes(archive: Path) -> list[int]:
    from sg3archive.store.archive import ArchiveStore

    rows = ArchiveStore.open(str(archive)).read_table("images").to_pylist()
    return [len(r["payload"]) for r in rows if r.get("payload") is not None]


def mean_psnr(originals: Path, restored: Path) -> float:
    values = []
    for src in sorted(originals.glob("*.png")):
        found = sorted(restored.rglob(src.stem + ".*"))
        a = np.asarray(Image.open(src).convert("RGB"), dtype=np.float64)
        b = np.asarray(Image.open(found[0]).convert("RGB"), dtype=np.float64)
        values.append(10 * np.log10(255.0**2 / max(((a - b) ** 2).mean(), 1e-12)))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="5000-5023")
    parser.add_argument("--work", default="/tmp/rate_control")
    parser.add_argument("--profiles", default="balanced,matched")
    args = parser.parse_args()
    work = Path(args.work)
    images = work / "images"
    if not images.exists():
        run(CLI, "generate", "--seeds", args.seeds, "--trunc", "0.7", "--out", str(images), "--no-grid",
            "--device", "cpu", "--batch-size", "8")
    rows = []
    for profile in args.profiles.split(","):
        archive, restored = work / f"archive_{profile}", work / f"restored_{profile}"
        if not archive.exists():
            run(CLI, "compress", str(images), str(archive), "--profile", profile, "--device", "cpu",
                "--representations", "latent", "--quality", "none", "--baseline-images", "0", "--json")
        if not restored.exists():
            run(CLI, "restore", str(archive), str(restored))
        sizes = payload_bytes(archive)
        rows.append((profile, float(np.mean(sizes)), mean_psnr(images, restored), len(sizes)))
    base = dict((r[0], r[1]) for r in rows).get("balanced")
    print(f"{'profile':<10} {'images':>6} {'B/image':>9} {'PSNR dB':>8} {'bytes vs balanced':>18}")
    for profile, size, psnr, count in rows:
        ratio = f"{size / base:.3f}" if base else "-"
        print(f"{profile:<10} {count:>6} {size:>9.1f} {psnr:>8.2f} {ratio:>18}")
    print(json.dumps({r[0]: {"bytes_per_image": r[1], "psnr": r[2]} for r in rows}))


if __name__ == "__main__":
    main()
