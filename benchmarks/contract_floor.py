"""The quality contract's first acceptance figure: generator images plus real photographs of odd
sizes compressed with ``--min-psnr 30`` through the CLI, each restored image measured against its
original at the original size, and the archive's bytes against the smallest Pillow AVIF that meets
30 dB on each image (every quality from 0 up to the first that meets it, independent of the
product's own search). Prints one row per image and the totals.

    .venv/bin/python benchmarks/contract_floor.py --work /tmp/contract_floor

Needs scikit-image (the test extra) for the photos.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from photos import write_photos  # noqa: E402  (the tests' photo helper: scikit-image's public-domain photos)

from sg3archive.images import decode_image  # noqa: E402
from sg3archive.images.classical import decode_rgb, encode_rgb  # noqa: E402
from sg3archive.metrics.fidelity import psnr_uint8  # noqa: E402
from sg3archive.store.archive import ArchiveStore  # noqa: E402

CLI = str(Path(sys.executable).with_name("sg3archive"))
TEXTURES = ("texture_00.png", "texture_01.png", "texture_02.png", "texture_03.png")
PHOTOS = [("coffee", (512, 384), "png"), ("rocket", (300, 1000), "jpg"), ("chelsea", (1000, 300), "webp"),
          ("astronaut", (257, 129), "png")]


def smallest_avif(rgb, floor: float) -> int:
    """Bytes of the lowest-quality Pillow AVIF of ``rgb`` whose PSNR meets ``floor``."""
    for quality in range(101):
        data = encode_rgb(rgb, "avif", quality)
        if psnr_uint8(rgb, decode_rgb(data)) >= floor:
            return len(data)
    raise SystemExit("no AVIF quality meets the floor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/contract_floor")
    parser.add_argument("--floor", type=float, default=30.0)
    args = parser.parse_args()
    root = Path(args.work)
    shutil.rmtree(root, ignore_errors=True)
    src = root / "src"
    src.mkdir(parents=True)
    for name in TEXTURES:
        shutil.copy(REPO / "examples" / "images" / name, src / name)
    write_photos(src, PHOTOS)
    started = time.perf_counter()
    subprocess.run([CLI, "compress", str(src), str(root / "archive"), "--min-psnr", str(args.floor), "--device", "cpu",
                    "--json"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    subprocess.run([CLI, "restore", str(root / "archive"), str(root / "restored"), "--device", "cpu"], check=True,
                   capture_output=True)
    rows = {r["source_name"]: r for r in ArchiveStore.open(str(root / "archive")).read_table("images").to_pylist()}
    stored = avif = 0
    print(f"{'image':<26}{'size':>11}{'stored as':>22}{'bytes':>8}{'PSNR':>8}{'AVIF min':>10}")
    for path in sorted(src.iterdir()):
        original = decode_image(path.read_bytes()).rgb
        restored = decode_image((root / "restored" / (path.stem + ".png")).read_bytes()).rgb
        row = rows[path.name]
        size = row["latent_bytes"] + row["image_bytes"]
        baseline = smallest_avif(original, args.floor)
        stored, avif = stored + size, avif + baseline
        how = row["representation"] + (f" {row['image_codec']} q{row['image_quality']}" if row["image_codec"] else "")
        print(f"{path.name:<26}{original.shape[1]:>6}x{original.shape[0]:<4}{how:>22}{size:>8}"
              f"{psnr_uint8(original, restored):>8.2f}{baseline:>10}")
    print(f"total: archive {stored} B, AVIF alone {avif} B ({avif / stored:.3f}x the archive); compress {seconds:.0f} s")


if __name__ == "__main__":
    main()
