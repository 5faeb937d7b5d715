"""Audit memory against sample size: peak Python allocations (tracemalloc) and peak RSS of an
audit that samples K rows vs 10·K rows of the same archive, bundled pack, CPU.

The audit reads shard by shard, processes rows in batches and keeps only fixed-size
accumulators and the worst 8 images, so its peak memory should not grow with the sample.

    python benchmarks/audit_memory.py                 # K = 12 and 120 on a 144-image archive (~3 min)
    python benchmarks/audit_memory.py --small 8 --images 96
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _audit(archive: str, k: int, batch: int, out: mp.Queue) -> None:
    """One audit in a fresh process: peak traced MiB, peak RSS growth MiB, seconds."""
    import torch

    from sg3archive.audit import run_audit
    from sg3archive.pipeline.session import cache

    torch.set_num_threads(2)
    cache.models(None, None, "cpu")  # models and imports first: the baseline
    from sg3archive.metrics import ms_ssim  # noqa: F401  (imports torchmetrics)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t = time.perf_counter()
    result = run_audit(archive, sample_size=k, seed=3, device="cpu", batch_size=batch)
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    out.put((k, result.sampled, result.passed, peak / 2**20, rss, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=12)
    parser.add_argument("--images", type=int, default=144)
    parser.add_argument("--batch-size", type=int, default=2,
                        help="synthesis batch; small so that both sample sizes fill whole batches (the working "
                             "memory of a batch is the same whatever the sample)")
    args = parser.parse_args()
    from sg3archive.pipeline.compress import compress
    from sg3archive.pipeline.jobs import CompressJob

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        files = sorted(EXAMPLES.glob("*.png"))
        for i in range(args.images):
            shutil.copy(files[i % len(files)], src / f"{i:05d}_{files[i % len(files)].name}")
        archive = str(Path(tmp) / "archive")
        compress(CompressJob(source=str(src), destination=archive, device="cpu", shard_size=24,
                             calibration_images=16), progress=False)
        ctx = mp.get_context("spawn")
        rows = []
        for k in (args.small, 10 * args.small):
            q = ctx.Queue()
            p = ctx.Process(target=_audit, args=(archive, k, args.batch_size, q))
            p.start()
            rows.append(q.get())
            p.join()
    print(f"audit memory vs sample size ({args.images}-image archive, 24 rows/shard, batch {args.batch_size}, CPU)")
    print(f"{'sample':>7} {'sampled':>8} {'passed':>7} {'traced peak MiB':>16} {'RSS growth MiB':>15} {'seconds':>8}")
    for k, n, ok, traced, rss, s in rows:
        print(f"{k:>7} {n:>8} {str(ok):>7} {traced:>16.2f} {rss:>15.1f} {s:>8.1f}")
    (k1, _, _, t1, r1, _), (k2, _, _, t2, r2, _) = rows
    print(f"{k2 // k1}x the sample: traced peak {t2 / t1:.2f}x, RSS growth {r2:.1f} vs {r1:.1f} MiB")


if __name__ == "__main__":
    main()
