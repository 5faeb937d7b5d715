"""Synthesis speed and peak memory: default (fast) path vs. the plain reference path, on CPU.

Full-size StyleGAN3 -T and -R generators at 256x256 with the official settings
(channel_base 32768 / 65536, channel_max 512 / 1024, z/w 512), random weights, float32.
Times are measured in this process (best of --repeats for the fast path, one run of the slow
reference); peak memory is the largest RSS rise during one synthesis call, measured in a fresh
child process per cell (so allocator state from other runs cannot hide or inflate it).

    python benchmarks/synthesis.py                 # the full table (about 15-20 min on 2 cores)
    python benchmarks/synthesis.py --configs T --batches 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import PeakRSS  # noqa: E402

from sg3archive.networks.presets import random_generator  # noqa: E402

CONFIGS = {"T": "stylegan3-t", "R": "stylegan3-r"}


def build(config: str, resolution: int) -> torch.nn.Module:
    return random_generator(CONFIGS[config], resolution, seed=0, calibrate=False)


def latents(G: torch.nn.Module, batch: int) -> torch.Tensor:
    z = torch.randn([batch, G.z_dim], generator=torch.Generator().manual_seed(1))
    return G.mapping(z, None, truncation_psi=0.7)


@torch.no_grad()
def measure_memory(config: str, resolution: int, batch: int, impl: str) -> int:
    """Child-process entry: peak RSS rise (bytes) of one synthesis call."""
    G = build(config, resolution)
    ws = latents(G, batch)
    with PeakRSS() as peak:
        G.synthesis(ws, impl=impl)
    return peak.peak


def memory_in_child(config: str, resolution: int, batch: int, impl: str) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--child", json.dumps([config, resolution, batch, impl])]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


@torch.no_grad()
def timed(G: torch.nn.Module, ws: torch.Tensor, impl: str, repeats: int) -> tuple[float, torch.Tensor, float]:
    """(best seconds, output, FLOPs of one call); the first, FLOP-counted run is timed too."""
    counter = FlopCounterMode(display=False)
    start = time.perf_counter()
    with counter:
        out = G.synthesis(ws, impl=impl)
    best = time.perf_counter() - start
    for _ in range(repeats):
        start = time.perf_counter()
        out = G.synthesis(ws, impl=impl)
        best = min(best, time.perf_counter() - start)
    return best, out, float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="T,R", help="T, R or T,R")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of the fast path (best is kept)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure_memory(*json.loads(args.child)))
        return

    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, resolution {args.resolution}")
    header = (f"{'config':6} {'batch':>5} {'path':9} {'s/img':>7} {'speedup':>7} {'peak MiB':>8} {'mem ratio':>9} "
              f"{'GFLOP/img':>9} {'GFLOP/s':>7} {'max|diff|':>9}")
    print(header)
    print("-" * len(header))
    for config in args.configs.split(","):
        G = build(config, args.resolution)
        for batch in [int(b) for b in args.batches.split(",")]:
            ws = latents(G, batch)
            t_ref, out_ref, flops_ref = timed(G, ws, "reference", repeats=0)
            t_fast, out_fast, flops_fast = timed(G, ws, "fast", repeats=args.repeats)
            diff = (out_fast - out_ref).abs().max().item()
            mem = {}
            if not args.no_memory:
                mem = {impl: memory_in_child(config, args.resolution, batch, impl) for impl in ("reference", "fast")}
            for impl, t, flops in (("reference", t_ref, flops_ref), ("fast", t_fast, flops_fast)):
                peak = f"{mem[impl] / 2**20:8.0f}" if mem else f"{'-':>8}"
                ratio = f"{mem['reference'] / mem[impl]:8.1f}x" if mem else f"{'-':>9}"
                print(f"{config:6} {batch:5d} {impl:9} {t / batch:7.2f} {t_ref / t:6.1f}x {peak} {ratio} "
                      f"{flops / batch / 1e9:9.1f} {flops / t / 1e9:7.1f} {diff if impl == 'fast' else 0:9.1e}", flush=True)


if __name__ == "__main__":
    main()
