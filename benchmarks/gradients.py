"""Gradients through the generator: time and peak memory of the forward + backward pass against the
no-grad forward pass, and agreement of the gradients with the reference path.

Full-size StyleGAN3 -T and -R generators (channel_base 32768 / 65536, channel_max 512 / 1024,
z/w 512), random weights, float32, gradients w.r.t. W+ (the generator frozen, as in encoder
training and refinement). Each figure comes from a fresh child process after one warm-up call
("warm"): the time is the best of three calls with the normal allocator, the peak RSS rise that
of one call in a child whose glibc mmap threshold is lowered so that RSS follows live tensor
memory (which makes allocations slower). Agreement: the largest relative
error ``|g_fast - g_ref| / |g_ref|`` of the gradients of each synthesis layer (w.r.t. its input,
w, weight, bias and affine) against autograd through the reference ops, in float64 (see
``layer_agreement``).

    python benchmarks/gradients.py                              # 256² and 1024², batch 1 and 4
    python benchmarks/gradients.py --resolutions 256 --batches 1
    python benchmarks/gradients.py --resolutions 1024 --batches 1 --checkpoint 512

Ratios: "f+b / fwd" is the forward + backward time over the no-grad forward time; "peak ×" the
forward + backward peak memory over the no-grad forward peak.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import PeakRSS  # noqa: E402

from sg3archive.networks.presets import random_generator  # noqa: E402

CONFIGS = {"T": "stylegan3-t", "R": "stylegan3-r"}
REFERENCE_MAX_PIXELS = 256 * 256  # layer by layer in float64 beyond this takes too long on a CPU


def _setup(config: str, resolution: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    G = random_generator(CONFIGS[config], resolution, seed=0, calibrate=False).requires_grad_(False)
    z = torch.randn([batch, G.z_dim], generator=torch.Generator().manual_seed(1))
    return G, G.mapping(z, None, truncation_psi=0.7).detach()


def _backward(G: torch.nn.Module, ws: torch.Tensor) -> torch.Tensor:
    """The gradient of a fixed linear function of the image w.r.t. W+."""
    w = ws.clone().requires_grad_(True)
    img = G.synthesis(w)
    probe = torch.sin(torch.arange(img.numel(), dtype=img.dtype) * 0.37).reshape(img.shape)
    return torch.autograd.grad(img, w, probe)[0]


def _layer_grads(layer: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, ops: object) -> list[torch.Tensor]:
    """Gradients of one synthesis layer in float64 (``SynthesisLayer.forward`` computes in the
    weights' dtype) w.r.t. its input, w, weight, bias and affine."""
    inputs = [x, w, layer.weight, layer.bias, layer.affine.weight, layer.affine.bias]
    out = layer(x, w, impl=ops)
    probe = torch.sin(torch.arange(out.numel(), dtype=out.dtype) * 0.37).reshape(out.shape)
    return list(torch.autograd.grad(out, inputs, probe))


def layer_agreement(G: torch.nn.Module) -> float:
    """The largest relative gradient error, fast vs reference, over every synthesis layer (fed a
    random input of its real shape) and every gradient, in float64: the whole network does not
    fit the reference path in float64 here (~25 GB at 256²), and in float32 the two paths round
    differently and values next to 0 can take the other slope of the leaky ReLU."""
    S = G.synthesis.double()
    gen = torch.Generator().manual_seed(4)
    worst = 0.0
    for name in S.layer_names:
        layer = getattr(S, name).requires_grad_(True)
        x = torch.randn([1, layer.in_channels, int(layer.in_size[1]), int(layer.in_size[0])], generator=gen,
                        dtype=torch.float64).requires_grad_(True)
        w = torch.randn([1, S.w_dim], generator=gen, dtype=torch.float64).requires_grad_(True)
        fast, ref = _layer_grads(layer, x, w, "fast"), _layer_grads(layer, x, w, "reference")
        worst = max(worst, *(float((a - b).norm() / b.norm()) for a, b in zip(fast, ref) if b.norm() > 0))
        layer.requires_grad_(False)
    return worst


def cell(config: str, resolution: int, batch: int, mode: str, checkpoint: int) -> dict[str, float]:
    """Child-process entry: warm time and peak RSS rise of one call of ``mode``."""
    G, ws = _setup(config, resolution, batch)
    G.synthesis.checkpoint_resolution = checkpoint
    if mode == "agreement":
        return {"worst": layer_agreement(G)}

    def call() -> None:
        if mode == "forward":
            with torch.no_grad():
                G.synthesis(ws)
        else:
            _backward(G, ws)

    call()  # warm-up
    # Best of three with the normal allocator (its heap settles over the first calls); one call
    # where memory is tracked (every large block is a fresh mapping there).
    repeats = 1 if os.environ.get("MALLOC_MMAP_THRESHOLD_") else 3
    seconds, peak_bytes = float("inf"), 0
    for _ in range(repeats):
        with PeakRSS() as peak:
            start = time.perf_counter()
            call()
            seconds = min(seconds, time.perf_counter() - start)
        peak_bytes = max(peak_bytes, peak.peak)
    return {"seconds": seconds, "peak": peak_bytes}


def _child(args: tuple[object, ...], track_memory: bool) -> dict[str, float]:
    env = dict(os.environ)
    if track_memory:  # every large block its own mapping, returned when freed: RSS follows live tensors
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--child", json.dumps(list(args))]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def in_child(*args: object) -> dict[str, float]:
    """Time from a child with the normal allocator, peak memory from one that tracks memory."""
    if args[3] == "agreement":
        return _child(args, track_memory=False)
    return {"seconds": _child(args, False)["seconds"], "peak": _child(args, True)["peak"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="T,R", help="T, R or T,R")
    parser.add_argument("--resolutions", default="256,1024")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--checkpoint", type=int, default=0,
                        help="also measure with activation checkpointing of layers at least this wide (0 = no)")
    parser.add_argument("--no-agreement", action="store_true", help="skip the (slow) comparison with the reference path")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(cell(*json.loads(args.child))))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, gradients w.r.t. W+")
    print()
    print("| config | size | batch | checkpoint | no-grad fwd | fwd + bwd | f+b / fwd | peak no-grad | peak fwd + bwd "
          "| peak × | agreement (float64, worst layer) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for config in args.configs.split(","):
        for resolution in map(int, args.resolutions.split(",")):
            for batch in map(int, args.batches.split(",")):
                fwd = in_child(config, resolution, batch, "forward", 0)
                variants = [0] + ([args.checkpoint] if args.checkpoint else [])
                for checkpoint in variants:
                    bwd = in_child(config, resolution, batch, "backward", checkpoint)
                    agree = "–"
                    if (not args.no_agreement and not checkpoint and batch == 1
                            and resolution * resolution <= REFERENCE_MAX_PIXELS):
                        e = in_child(config, resolution, batch, "agreement", 0)
                        agree = f"{e['worst']:.1e}"
                    print(f"| SG3-{config} | {resolution}² | {batch} | {checkpoint or 'off'} "
                          f"| {fwd['seconds']:.2f} s | {bwd['seconds']:.2f} s | {bwd['seconds'] / fwd['seconds']:.2f}× "
                          f"| {fwd['peak'] / 2**30:.2f} GB | {bwd['peak'] / 2**30:.2f} GB "
                          f"| {bwd['peak'] / fwd['peak']:.2f}× | {agree} |", flush=True)


if __name__ == "__main__":
    main()
