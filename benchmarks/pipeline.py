"""Pipeline throughput with the bundled pack on CPU: images/s of compress and restore, and the share
of wall time spent outside model compute (target: at most 10%).

A folder of --images PNGs is made by copying ``examples/images/*.png`` under distinct names into a
temp folder; ``compress(CompressJob(device="cpu", shard_size=32, ...))`` archives it and
``restore(RestoreJob(...))`` regenerates it at the original size, both in this process, exactly as
the CLI runs them (the Prefect flow is not involved).

Model compute is measured by wrapping, in this process and only for the measurement, the model
calls with timers: the encoder forward (``encode_images`` in ``sg3archive.pipeline.encode``'s
namespace, the one encode path of compress and calibration) and the generator's synthesis and mapping networks (forward pre/post hooks on
``G.synthesis`` and ``G.mapping`` of the cached models, the object the pipeline uses). Everything
else is "outside model compute", itemized where a function can be wrapped the same way:

* codec: ``LatentCodec.compress`` / ``decompress`` (and ``LatentCodec.fit`` in the prepare step);
* read + decode: reading and hashing sources, decoding and fitting them to the square (a shard
  task's ``read`` and ``decode`` steps; ``read_bytes`` and ``load_fitted`` for the calibration
  images) for compress; reading the Parquet shards (``iter_batches``) for restore;
* metrics: the PSNR / MS-SSIM recorded for every row at compress time;
* image out: ``to_uint8``, ``unfit`` and PNG encode + write (``_write_image``) at restore time;
* rest: the remainder (store commits, plan files, tensors, Python).

The prepare step (codec fitting on calibration images, once per archive) runs inside ``compress``;
it is timed separately (by wrapping ``prepare``), and compress is reported both without it (the
steady state of a large archive, where it is amortized) and with it (this small job end to end).
Loading the models, one warm-up encoder + synthesis batch and one warm-up PSNR + MS-SSIM call are
done first and reported, not counted (once per process costs: the first synthesis call is slower
than the rest, the first MS-SSIM call imports torchmetrics).

    python benchmarks/pipeline.py                      # 64 images, about 1.5-2 min on 2 cores
    python benchmarks/pipeline.py --images 32 --batch-size 8
"""

from __future__ import annotations

import argparse
import functools
import itertools
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import cast
from unittest import mock

import torch

import sg3archive.pipeline.calibrate as calibrate_mod
import sg3archive.pipeline.compress as compress_mod
import sg3archive.pipeline.encode as encode_mod
import sg3archive.pipeline.restore as restore_mod
from sg3archive.codec import LatentCodec
from sg3archive.pipeline.jobs import CompressJob, RestoreJob
from sg3archive.pipeline.session import cache
from sg3archive.store.archive import ArchiveStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
TARGET = 0.10
MODEL = ("encoder", "synthesis", "mapping")
OUTSIDE = ("codec", "read + decode", "metrics", "image out")


class Clock:
    """Seconds per (phase, item); ``phase`` says which column a timed call is charged to."""

    def __init__(self) -> None:
        self.phase = "compress"
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)

    def add(self, item: str, seconds: float) -> None:
        self.seconds[self.phase, item] += seconds

    def wrap(self, item: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(item, time.perf_counter() - started)
        return timed

    def wrap_iter(self, item: str, fn):
        """A generator function whose every ``next`` is timed (the work happens there)."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            it = iter(fn(*args, **kwargs))
            while True:
                started = time.perf_counter()
                try:
                    value = next(it)
                except StopIteration:
                    self.add(item, time.perf_counter() - started)
                    return
                self.add(item, time.perf_counter() - started)
                yield value
        return timed

    def in_phase(self, phase: str, fn):
        """``fn`` charged to ``phase``, its wall time recorded there as "wall"."""
        @functools.wraps(fn)
        def run(*args, **kwargs):
            previous, self.phase = self.phase, phase
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add("wall", time.perf_counter() - started)
                self.phase = previous
        return run

    def hook(self, stack: ExitStack, module: torch.nn.Module, item: str) -> None:
        """Time every forward of ``module`` (CPU ops are synchronous, so wall time is compute time)."""
        starts: list[float] = []
        pre = module.register_forward_pre_hook(lambda m, args: starts.append(time.perf_counter()))
        post = module.register_forward_hook(lambda m, args, out: self.add(item, time.perf_counter() - starts.pop()))
        stack.callback(pre.remove)
        stack.callback(post.remove)


def instrument(stack: ExitStack, clock: Clock, G: torch.nn.Module) -> None:
    """Wrap the model calls and the itemized outside work; undone when ``stack`` closes."""
    def patch(target, name: str, item: str) -> None:
        stack.enter_context(mock.patch.object(target, name, clock.wrap(item, getattr(target, name))))

    patch(encode_mod, "encode_images", "encoder")
    clock.hook(stack, cast(torch.nn.Module, G.synthesis), "synthesis")
    clock.hook(stack, cast(torch.nn.Module, G.mapping), "mapping")
    patch(LatentCodec, "compress", "codec")
    patch(LatentCodec, "decompress", "codec")
    fit = LatentCodec.__dict__["fit"].__func__
    stack.enter_context(mock.patch.object(LatentCodec, "fit", classmethod(clock.wrap("codec", fit))))
    patch(compress_mod._Shard, "read", "read + decode")
    patch(compress_mod._Shard, "decode", "read + decode")
    patch(calibrate_mod, "read_bytes", "read + decode")
    patch(calibrate_mod, "load_fitted", "read + decode")
    patch(encode_mod, "psnr", "metrics")
    patch(encode_mod, "ms_ssim", "metrics")
    stack.enter_context(mock.patch.object(ArchiveStore, "iter_batches",
                                          clock.wrap_iter("read + decode", ArchiveStore.iter_batches)))
    for name in ("to_uint8", "unfit", "to_restored_image", "_write_image"):  # where restore has them
        if hasattr(restore_mod, name):
            patch(restore_mod, name, "image out")
    stack.enter_context(mock.patch.object(compress_mod, "prepare", clock.in_phase("prepare", compress_mod.prepare)))


def make_images(folder: Path, n: int) -> None:
    sources = sorted(EXAMPLES.glob("*.png"))
    if not sources:
        raise SystemExit(f"no example images in {EXAMPLES}")
    folder.mkdir(parents=True)
    for i, src in zip(range(n), itertools.cycle(sources)):
        shutil.copyfile(src, folder / f"img_{i:05d}.png")


def column(clock: Clock, phases: tuple[str, ...], wall: float, images: int) -> dict[str, float]:
    """Seconds per item summed over ``phases``, with the model / outside totals and the rates."""
    c = {item: sum(clock.seconds[p, item] for p in phases) for item in MODEL + OUTSIDE}
    c["wall"] = wall
    c["model"] = sum(c[i] for i in MODEL)
    c["outside"] = wall - c["model"]
    c["rest"] = c["outside"] - sum(c[i] for i in OUTSIDE)
    c["share"] = c["outside"] / wall
    c["rate"] = images / wall if images else float("nan")
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images in the collection")
    parser.add_argument("--batch-size", type=int, default=16, help="compress and restore batch size")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--calibration-images", type=int, default=64, help="images encoded to fit the codec")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    started = time.perf_counter()
    models = cache.models(None, None, "cpu")  # the cached object compress and restore will use
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    batch = torch.zeros(args.batch_size, 3, models.resolution, models.resolution)
    synthesis = cast(torch.nn.Module, models.G.synthesis)
    recon = synthesis(encode_mod.encode_images(models.encoder, batch, args.batch_size)).clamp(-1, 1)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    encode_mod.psnr(recon, batch), encode_mod.ms_ssim(recon, batch)  # the first imports torchmetrics
    warm_metrics_s = time.perf_counter() - started
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, bundled network "
          f"({models.resolution}x{models.resolution}, {models.G.num_ws} x {models.G.w_dim} W+) and encoder; "
          f"{args.images} images, shard size {args.shard_size}, batch {args.batch_size}, "
          f"{args.calibration_images} calibration images")
    print(f"not counted below (once per process): model load {load_s:.2f} s, first encoder + synthesis batch "
          f"{warm_s:.2f} s, first PSNR + MS-SSIM call {warm_metrics_s:.2f} s (imports torchmetrics)")

    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="sg3-pipeline-") as tmp, ExitStack() as stack:
        source, archive, out = Path(tmp) / "images", Path(tmp) / "archive", Path(tmp) / "restored"
        make_images(source, args.images)
        instrument(stack, clock, models.G)

        job = CompressJob.model_validate(dict(source=str(source), destination=str(archive), device="cpu",
                                              shard_size=args.shard_size, batch_size=args.batch_size,
                                              calibration_images=args.calibration_images))
        clock.phase = "compress"
        started = time.perf_counter()
        summary = compress_mod.compress(job, progress=False)
        compress_wall = time.perf_counter() - started

        clock.phase = "restore"
        started = time.perf_counter()
        restored = restore_mod.restore(RestoreJob.model_validate(dict(archive=str(archive), destination=str(out),
                                                                      device="cpu", batch_size=args.batch_size)),
                                       progress=False)
        restore_wall = time.perf_counter() - started
        stack.close()  # measurement wrappers off before checking
        psnr = ArchiveStore.open(str(archive)).read_table("images", columns=["psnr"]).column("psnr").to_pylist()
        files = sum(1 for p in out.rglob("*.png") if p.is_file())

    prepare_wall = clock.seconds["prepare", "wall"]
    cols = {
        "prepare": column(clock, ("prepare",), prepare_wall, 0),
        "compress": column(clock, ("compress",), compress_wall - prepare_wall, summary.images),
        "compress+prep": column(clock, ("compress", "prepare"), compress_wall, summary.images),
        "restore": column(clock, ("restore",), restore_wall, restored.written),
    }
    rows = [("wall", "wall s"), ("model", "model compute s"), ("encoder", "  encoder"),
            ("synthesis", "  synthesis"), ("mapping", "  mapping"), ("outside", "outside model compute s"),
            ("codec", "  codec (+ fit in prepare)"), ("read + decode", "  read + decode / Parquet read"),
            ("metrics", "  metrics (PSNR, MS-SSIM)"), ("image out", "  image out (uint8, unfit, PNG)"),
            ("rest", "  rest (store, plans, Python)")]
    header = f"{'':31}" + "".join(f"{name:>15}" for name in cols)
    print(header)
    print("-" * len(header))
    for key, label in rows:
        print(f"{label:31}" + "".join(f"{c[key]:9.2f} {100 * c[key] / c['wall']:4.0f}%" for c in cols.values()))
    print(f"{'outside share':31}" + "".join(f"{100 * c['share']:14.1f}%" for c in cols.values()))
    print(f"{'images/s':31}" + "".join(f"{'-':>15}" if name == "prepare" else f"{c['rate']:15.2f}"
                                       for name, c in cols.items()))
    print(f"{'vs model-only images/s':31}" + "".join(
        f"{'-':>15}" if name == "prepare" else f"{c['rate'] / (1 - c['share']):15.2f}" for name, c in cols.items()))

    ok = summary.images == args.images and not summary.failures and restored.written == files == args.images
    print(f"check: {summary.images} archived, {summary.failures} failed, {summary.shards} shards, "
          f"{summary.payload_bytes / max(summary.images, 1):.0f} B/image, mean PSNR {sum(psnr) / len(psnr):.2f} dB; "
          f"{restored.written} restored, {files} files -> {'ok' if ok else 'WRONG'}")
    verdict = []
    for name in ("compress", "compress+prep", "restore"):
        share = cols[name]["share"]
        verdict.append(f"{name} {100 * share:.1f}% ({'meets' if share <= TARGET else 'misses'})")
    print(f"verdict (outside model compute <= {100 * TARGET:.0f}% of wall): " + ", ".join(verdict)
          + "; prepare (once per archive) is in 'compress+prep' only")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
