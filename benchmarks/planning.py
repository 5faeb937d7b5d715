"""Scale of planning and of the store: memory of plan_shards is flat in the listing's size, and an
archive of ~1,000 committed shards lists and resumes in seconds. CPU only, no model is loaded.

Planning. For each N in --sizes a URI list of N fake ``s3://bucket/images/<i>.png`` lines is written
to a temp folder (the files do not exist and are never read), then
``plan_shards(CompressJob(source=<list>.txt, destination=<temp archive>, shard_size=256))`` is
consumed, in a fresh child process per N (so one N's allocator state cannot hide or inflate
another's). Each child runs it three times:

* timed: wall time, with VmRSS sampled in a thread (the largest rise above the value before the
  run) and ``resource.getrusage`` max RSS read before and after (the rise of the process's
  high-water mark; 0 means planning never needed more memory than importing the package did);
* traced: under ``tracemalloc`` (peak of Python allocations; slower, so not timed);
* baseline: ``list(iter_sources(<list>))``, the listing held in memory, also under tracemalloc: what a
  planner that materializes the listing would hold. ``stream/list`` is the ratio of the two peaks.

The first and last plan files are read back and checked line by line, the plan files on disk are
counted, and the plan counts must sum to N (1,000,000 / 256 = 3,907 plans, the last one of 64).

Store. An ArchiveStore is created in a temp folder with fake settings, then --shards tiny ``images``
shards (--rows rows each: valid rows with fake payloads, 192-byte thumbnails, ids from
``format.image_id``) are written and committed in batches of --commit-batch. The reads a resumed run
makes are timed after the first batch and after the last: re-opening the store, ``manifest()``,
``shards()``, ``committed_keys()`` (the three key columns of every committed shard), and "resume"
(open + committed_keys, what each compress task does first). Times are the best of --repeats calls;
the ratio column compares the full archive with the one-batch archive measured in the same process.

    python benchmarks/planning.py                      # default: about 1-2 min on 2 cores
    python benchmarks/planning.py --sizes 10000,100000 --shards 200
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import fsspec
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import PeakRSS, rss_bytes  # noqa: E402

from sg3archive.pipeline.compress import plan_shards, settings_key  # noqa: E402
from sg3archive.pipeline.jobs import CompressJob  # noqa: E402
from sg3archive.store import format as fmt  # noqa: E402
from sg3archive.store.archive import ArchiveStore  # noqa: E402
from sg3archive.store.inputs import FitInfo, iter_sources  # noqa: E402

SHARD_SIZE = 256
MIB = 2**20


def uri(i: int) -> str:
    return f"s3://bucket/images/{i}.png"


def write_listing(path: Path, n: int) -> None:
    """N fake URIs, one a line, written in chunks (the parent never holds the whole listing)."""
    chunk = 100_000
    with open(path, "w") as f:
        for start in range(0, n, chunk):
            f.write("".join(f"{uri(i)}\n" for i in range(start, min(n, start + chunk))))


# -- planning (child process) --------------------------------------------------------------------
def _consume(job: CompressJob, run_id: str) -> tuple[int, int, object, object]:
    """(plans, images, first plan, last plan): the iterator consumed, only two plans kept."""
    plans = images = 0
    first = last = None
    for plan in plan_shards(job, run_id=run_id):
        plans += 1
        images += plan.count
        first = first or plan
        last = plan
    return plans, images, first, last


def _read_plan(path: str) -> list[str]:
    with fsspec.open(path, "r") as f:
        return f.read().splitlines()


def measure_planning(n: int, listing: str, destination: str) -> dict:
    """Child-process entry: time and memory of planning a listing of ``n`` URIs."""
    job = CompressJob(source=listing, destination=destination, shard_size=SHARD_SIZE)
    start_rss = rss_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with PeakRSS(interval=0.002) as peak:
        started = time.perf_counter()
        plans, images, first, last = _consume(job, "timed")
        seconds = time.perf_counter() - started
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    tracemalloc.start()
    traced_plans = _consume(job, "traced")[0]
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    tracemalloc.start()
    listed = list(iter_sources(listing))
    list_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    listed_count = len(listed)
    del listed

    fs, root = fsspec.core.url_to_fs(destination)
    files = len(fs.ls(f"{root}/_plans/timed", detail=False))
    last_start = (plans - 1) * SHARD_SIZE
    checks = {
        "counts sum to N": images == n and listed_count == n,
        "plans = ceil(N/256)": plans == -(-n // SHARD_SIZE) == traced_plans,
        "plan files on disk": files == plans,
        "first plan contents": _read_plan(first.path) == [uri(i) for i in range(SHARD_SIZE)]
        and first.index == 0 and first.count == SHARD_SIZE,
        "last plan contents": _read_plan(last.path) == [uri(i) for i in range(last_start, n)]
        and last.index == plans - 1 and last.count == n - last_start,
    }
    return {
        "n": n, "plans": plans, "seconds": seconds, "rss_peak": peak.peak, "start_rss": start_rss,
        "maxrss_growth": maxrss_after - maxrss_before, "traced_peak": traced_peak, "list_peak": list_peak,
        "last_count": last.count, "first_path": first.path, "checks": checks,
    }


def planning_in_child(n: int, listing: str, destination: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--child", json.dumps([n, listing, destination])]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- store ---------------------------------------------------------------------------------------
SETTINGS = {
    "generator_fingerprint": "g" * 64, "encoder_fingerprint": "e" * 64, "codec_hash": "c" * 64,
    "profile": "balanced", "bits": [6.0] * 16, "num_ws": 16, "w_dim": 128, "resolution": 64,
    "fit": "crop", "refine_steps": 0,
}


def shard_table(shard: int, rows: int, key: str, rng: random.Random) -> pa.Table:
    """``rows`` valid images rows with fake source bytes, payloads and thumbnails."""
    now = dt.datetime.now(dt.timezone.utc)
    fit = FitInfo(width=64, height=64, mode="crop", box=(0, 0, 64, 64), resolution=64).to_json()
    out = []
    for j in range(rows):
        source_uri = uri(shard * rows + j)
        sha = hashlib.sha256(source_uri.encode()).hexdigest()  # stands in for the image bytes' hash
        payload = rng.randbytes(300)
        out.append({
            "id": fmt.image_id(source_uri, sha), "source_uri": source_uri, "source_sha256": sha,
            "source_size": 3200, "width": 64, "height": 64, "mode": "RGB", "format": "PNG", "fit": fit,
            "payload": payload, "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "bits": SETTINGS["bits"], "profile": "balanced", "transform": None,
            "psnr": 30.0 + rng.random(), "ms_ssim": 0.9, "lpips": None, "recon_thumb": rng.randbytes(fmt.THUMB_BYTES),
            "encoder_fingerprint": SETTINGS["encoder_fingerprint"],
            "generator_fingerprint": SETTINGS["generator_fingerprint"], "codec_hash": SETTINGS["codec_hash"],
            "settings_key": key, "encoded_at": now,
        })
    return pa.Table.from_pylist(out, schema=fmt.images_schema())


def best(fn, repeats: int):
    """(best seconds over ``repeats`` calls, the last result)."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def store_reads(url: str, repeats: int) -> dict[str, tuple[float, object]]:
    """The reads a resumed run makes, each timed on its own (best of ``repeats``)."""
    store = ArchiveStore.open(url)

    def resume() -> int:
        return len(ArchiveStore.open(url).committed_keys())

    return {
        "re-open (ArchiveStore.open)": best(lambda: len(ArchiveStore.open(url).settings), repeats),
        "manifest()": best(lambda: store.manifest().generation, repeats),
        "shards()": best(lambda: len(store.shards()), repeats),
        'shards("images")': best(lambda: len(store.shards("images")), repeats),
        "committed_keys()": best(lambda: len(store.committed_keys()), repeats),
        "resume (open + committed_keys)": best(resume, repeats),
    }


def run_store(folder: Path, shards: int, rows: int, batch: int, repeats: int) -> None:
    url = str(folder / "archive")
    store = ArchiveStore.create(url, SETTINGS)
    key = settings_key(store.settings)
    rng = random.Random(0)
    write_s = commit_s = 0.0
    first_batch: dict | None = None
    first_shards = 0
    pending = []
    for index in range(shards):
        table = shard_table(index, rows, key, rng)
        started = time.perf_counter()
        pending.append(store.write_shard(table, "images", {"plan": index}))
        write_s += time.perf_counter() - started
        if len(pending) == batch or index == shards - 1:
            started = time.perf_counter()
            store.commit(pending)
            commit_s += time.perf_counter() - started
            pending = []
            if first_batch is None:
                first_shards = index + 1
                first_batch = store_reads(url, repeats)
    full = store_reads(url, repeats)
    commits = -(-shards // batch)
    manifest_bytes = os.path.getsize(store.log.path(store.manifest().generation))
    on_disk = sum(f.stat().st_size for f in (folder / "archive" / "shards").iterdir())

    print(f"\nstore: {shards} committed images shards x {rows} rows = {shards * rows:,} rows, "
          f"committed in {commits} generations of {batch}; best of {repeats} calls")
    print(f"  write_shard: {write_s:.2f} s total, {1e3 * write_s / shards:.1f} ms/shard "
          f"({on_disk / shards / 1024:.1f} KiB/shard, zstd Parquet, fsync'd); "
          f"commit: {commit_s:.2f} s total, {1e3 * commit_s / commits:.1f} ms/commit; "
          f"latest manifest {manifest_bytes / 1024:.0f} KiB")
    units = {"re-open (ArchiveStore.open)": "settings", "manifest()": "generation", "shards()": "shards",
             'shards("images")': "shards", "committed_keys()": "keys", "resume (open + committed_keys)": "keys"}
    header = f"{'operation':32} {f'{first_shards} shards s':>12} {f'{shards} shards s':>14} {'ratio':>7}  result"
    print(header)
    print("-" * len(header))
    for name, (seconds, result) in full.items():
        small = first_batch[name][0]
        print(f"{name:32} {small:12.4f} {seconds:14.4f} {seconds / small:6.1f}x  {result} {units[name]}")
    expected = {"shards()": shards, 'shards("images")': shards, "committed_keys()": shards * rows,
                "resume (open + committed_keys)": shards * rows, "manifest()": commits}
    bad = [k for k, v in expected.items() if full[k][1] != v]
    slowest = max(s for s, _ in full.values())
    print(f"check: {'all results as expected' if not bad else 'WRONG results for ' + ', '.join(bad)}; "
          f"slowest read {slowest:.2f} s -> {'lists and resumes in seconds' if slowest < 10 else 'SLOW'}")


# -- main ----------------------------------------------------------------------------------------
def run_planning(folder: Path, sizes: list[int]) -> None:
    print(f"planning: shard_size {SHARD_SIZE}, URI list of fake s3:// URIs, one child process per N")
    header = (f"{'N images':>10} {'plans':>6} {'wall s':>7} {'us/img':>7} {'RSS peak MiB':>12} {'maxRSS +MiB':>11} "
              f"{'traced MiB':>10} {'MiB/1k img':>10} {'list() MiB':>10} {'stream/list':>11}")
    print(header)
    print("-" * len(header))
    results = []
    for n in sizes:
        listing = folder / f"listing-{n}.txt"
        write_listing(listing, n)
        r = planning_in_child(n, str(listing), str(folder / f"archive-{n}"))
        results.append(r)
        print(f"{n:10,d} {r['plans']:6d} {r['seconds']:7.2f} {1e6 * r['seconds'] / n:7.2f} "
              f"{r['rss_peak'] / MIB:12.2f} {r['maxrss_growth'] / MIB:11.2f} {r['traced_peak'] / MIB:10.3f} "
              f"{r['rss_peak'] / MIB / (n / 1000):10.5f} {r['list_peak'] / MIB:10.1f} "
              f"{r['traced_peak'] / r['list_peak']:10.4f}x", flush=True)
        listing.unlink()
    lo, hi = results[0], results[-1]
    print(f"peak memory N={hi['n']:,} vs N={lo['n']:,} ({hi['n'] // lo['n']}x the images): "
          f"RSS peak {hi['rss_peak'] / max(lo['rss_peak'], 1):.2f}x, "
          f"traced peak {hi['traced_peak'] / lo['traced_peak']:.2f}x "
          f"(the in-memory listing: {hi['list_peak'] / lo['list_peak']:.0f}x)")
    for r in results:
        failed = [k for k, ok in r["checks"].items() if not ok]
        print(f"check N={r['n']:,}: {r['plans']} plans (last holds {r['last_count']}); "
              + ("all ok: " + ", ".join(r["checks"]) if not failed else "FAILED: " + ", ".join(failed)))
    print(f"  e.g. first plan file {r['first_path']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="listing sizes N, ascending")
    parser.add_argument("--shards", type=int, default=1000, help="committed shards in the store test (0: skip)")
    parser.add_argument("--rows", type=int, default=16, help="rows per store-test shard")
    parser.add_argument("--commit-batch", type=int, default=50, help="shards per commit")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per store read (best is kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_planning(*json.loads(args.child))))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="sg3-planning-") as tmp:
        if sizes:
            run_planning(Path(tmp), sizes)
        if args.shards:
            run_store(Path(tmp), args.shards, args.rows, args.commit_batch, args.repeats)


if __name__ == "__main__":
    main()
