"""Rate-aware encoder training: bytes and fidelity of the encoder's latents with and without the
rate term, from the same starting encoder, seed and steps, in one process.

Each run fine-tunes the bundled encoder on the bundled generator (``train_for_network`` with
``init_from`` the bundled encoder; pixel loss, latent loss 0.1, no LPIPS, batch 8) for ``--steps``
steps with ``rate_weight`` 0 (the baseline) and each ``--weights`` value. Each encoder is then
measured as compress would use it, without refinement: a codec (uniform 3, 4, 5 bits) fitted on its
latents of 64 calibration images plus 512 mapping samples, 16 held-out images (seed 730000+)
coded, decoded and synthesized; bytes/image and PSNR against the images (64x64, their original
size). The table gives each run's bytes and PSNR per profile, and the bytes ratio to the baseline.

    python benchmarks/rate_training.py                       # 100 steps, weights 0.01 0.03 (~12 min)
    python benchmarks/rate_training.py --steps 5 --weights 0.03   # a smoke run (~2 min)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

PROFILES = (3, 4, 5)
CALIB_SEED, TEST_SEED = 720_000, 730_000
CALIB_IMAGES, TEST_IMAGES, MAPPING_SAMPLES = 64, 16, 512


def _images(G, count: int, seed: int) -> torch.Tensor:
    from sg3archive.training.data import SyntheticPairs

    pairs = SyntheticPairs(G)
    with torch.no_grad():
        x = pairs.images(pairs.ws(count, torch.Generator().manual_seed(seed)))
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # PNG levels


def measure(G, encoder, calib: torch.Tensor, test: torch.Tensor, mapping: torch.Tensor) -> dict[int, tuple[float, float]]:
    """``{bits: (bytes/image, mean PSNR dB)}`` of the test images coded with a codec fitted on this
    encoder's calibration latents (plus mapping samples)."""
    from sg3archive.codec import LatentCodec
    from sg3archive.encoding import encode_images

    encoder.eval()
    ws_calib, ws_test = encode_images(encoder, calib), encode_images(encoder, test)
    out = {}
    for bits in PROFILES:
        codec = LatentCodec.fit(torch.cat([ws_calib, mapping]), bits)
        payloads = codec.compress(ws_test)
        with torch.no_grad():
            recon = G.synthesis(codec.decompress(payloads)).clamp(-1, 1)
        psnr = 10 * torch.log10(4 / (recon - test).square().mean(dim=(1, 2, 3)))
        out[bits] = (float(np.mean([len(p) for p in payloads])), float(psnr.mean()))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from sg3archive.assets import default_encoder_url
    from sg3archive.pipeline.session import cache
    from sg3archive.training.data import SyntheticPairs
    from sg3archive.training.job import TrainJob
    from sg3archive.training.trainer import train_for_network

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--profile", type=int, default=4, help="bits of the rate term's codec (rate_profile)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    models = cache.models(None, None, "cpu")
    G = models.G
    calib, test = _images(G, CALIB_IMAGES, CALIB_SEED), _images(G, TEST_IMAGES, TEST_SEED)
    mapping = SyntheticPairs(G).ws(MAPPING_SAMPLES, torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps from the bundled encoder",
          flush=True)
    results: dict[str, dict[int, tuple[float, float]]] = {"bundled (no fine-tune)": measure(G, models.encoder, calib,
                                                                                             test, mapping)}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for weight in [0.0, *args.weights]:
            job = TrainJob(encoder="hierarchical", width=0.25, steps=args.steps, batch_size=8, lr=1e-4,
                           lpips_net=None, latent_weight=0.1, rate_weight=weight, rate_profile=args.profile,
                           rate_refit_every=50, seed=0, device="cpu", log_every=max(1, args.steps // 4),
                           sample_every=0, checkpoint_every=max(1, args.steps))
            start = time.perf_counter()
            report = train_for_network(None, job, Path(tmp) / f"run-{weight}", device="cpu", progress=False,
                                       init_from=default_encoder_url())
            label = f"rate_weight {weight:g}"
            seconds[label] = (time.perf_counter() - start) / max(1, args.steps)
            results[label] = measure(G, report.encoder, calib, test, mapping)
            print(label, results[label], flush=True)
    base = results["rate_weight 0"]
    header = "| run | s/step | " + " | ".join(f"{b} bits: B/img, PSNR, bytes vs rate 0" for b in PROFILES) + " |"
    print("\n" + header + "\n|" + "---|" * (2 + len(PROFILES)))
    for label, res in results.items():
        cells = [f"{res[b][0]:.1f} B, {res[b][1]:.2f} dB, {res[b][0] / base[b][0]:.2f}x" for b in PROFILES]
        print(f"| {label} | {seconds.get(label, float('nan')):.2f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
