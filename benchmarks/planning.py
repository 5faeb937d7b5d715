"""Scale of planning and of the store: memory of plan_shards is flat in the listing's size, an
archive of ~1,000 committed shards lists in seconds, and a shard task's resume cost does not grow
with the number of committed shards. CPU only, no model is loaded.

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

Resume (issue 12: "resume cost independent of archive size"). One archive of tiny ``images`` shards
(--resume-rows rows each, synthetic rows, written with ``ArchiveStore.write_shard`` and committed in
batches of 500) is grown to each count in --resume-shards (default 1,000 then 10,000), in a
temporary folder under /dev/shm where there is one (the test measures reads, not fsync). At each
count a 256-URI plan (all its sources committed) is planned once (``plan_shards``: the committed
keys are read once and written into the plan) and the PER-TASK resume cost is timed: what one shard
task does before encoding (open the store, read its plan, decide the skips), the old way (a copy of
the old ``committed_exact_keys``: every committed shard's keys, read by every task; timed once) and
the new (its plan alone; best of max(--repeats, 10)), each in a fresh child process (as a task
worker is: the benchmark's own heap of 10,000 shards' keys would slow every allocation). Both
must skip all 256 sources; the new per-task cost at 10,000 shards must be within 1.5x of that at
1,000 (the exit status is 1 otherwise).

    python benchmarks/planning.py                      # default: about 1-2 min on 2 cores, plus resume:
                                                       # about 3-4 min (building 10,000 shards dominates)

Measured (2 cores, /dev/shm, idle machine): per-task resume at 1,000 / 10,000 committed shards: old
4.29 / 40.2 s (9.36x), new 0.0031 / 0.0030 s (0.97x); planning once per run 4.4 / 39.1 s (earlier, on
2 busy cores: old 3.55x, new 1.08x).
    python benchmarks/planning.py --sizes "" --shards 0              # the resume test alone
    python benchmarks/planning.py --sizes 10000,100000 --shards 200 --resume-shards 100,1000
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
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

from sg3archive.images import FitInfo, iter_sources  # noqa: E402
from sg3archive.pipeline.compress import settings_key, skip_set  # noqa: E402
from sg3archive.pipeline.jobs import CompressJob  # noqa: E402
from sg3archive.pipeline.plans import ShardPlan, parse_plan, plan_shards, read_plan  # noqa: E402
from sg3archive.store import format as fmt  # noqa: E402
from sg3archive.store.archive import ArchiveStore  # noqa: E402

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
def _consume(job: CompressJob, run_id: str) -> tuple[int, int, ShardPlan, ShardPlan]:
    """(plans, images, first plan, last plan): the iterator consumed, only two plans kept."""
    plans = images = 0
    first: ShardPlan | None = None
    last: ShardPlan | None = None
    for plan in plan_shards(job, run_id=run_id):
        plans += 1
        images += plan.count
        first = first or plan
        last = plan
    assert first is not None and last is not None, "an empty listing makes no plans"
    return plans, images, first, last


def _read_plan(path: str) -> list[str]:
    with fsspec.open(path, "r") as f:
        return parse_plan(f.read())


def measure_planning(n: int, listing: str, destination: str) -> dict:
    """Child-process entry: time and memory of planning a listing of ``n`` URIs."""
    job = CompressJob.model_validate({"source": listing, "destination": destination, "shard_size": SHARD_SIZE})
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
    assert first_batch is not None
    for name, (seconds, result) in full.items():
        small = first_batch[name][0]
        print(f"{name:32} {small:12.4f} {seconds:14.4f} {seconds / small:6.1f}x  {result} {units[name]}")
    expected = {"shards()": shards, 'shards("images")': shards, "committed_keys()": shards * rows,
                "resume (open + committed_keys)": shards * rows, "manifest()": commits}
    bad = [k for k, v in expected.items() if full[k][1] != v]
    slowest = max(s for s, _ in full.values())
    print(f"check: {'all results as expected' if not bad else 'WRONG results for ' + ', '.join(bad)}; "
          f"slowest read {slowest:.2f} s -> {'lists and resumes in seconds' if slowest < 10 else 'SLOW'}")



# -- per-task resume cost ------------------------------------------------------------------------
def old_committed_exact_keys(store: ArchiveStore) -> dict[str, set[tuple[str, str | None, str]]]:
    """The baseline, as every shard task did it before plans carried the committed keys: the key
    columns of EVERY committed shard, read by each task."""
    keys: dict[str, set[tuple[str, str | None, str]]] = {kind: set() for kind in fmt.KINDS}
    for kind in fmt.KINDS:
        if store.shards(kind):
            keys[kind] = fmt.exact_keys(store.read_table(kind, columns=list(fmt.EXACT_KEY_COLUMNS)))
    return keys


def old_task_resume(url: str, plan: ShardPlan) -> int:
    """What one shard task did before encoding, before: open the store, read its plan (URIs), read
    every shard's keys, decide the skips. Returns how many of its URIs it would skip."""
    store = ArchiveStore.open(url)
    uris = [entry.uri for entry in read_plan(plan)]
    done = set().union(*old_committed_exact_keys(store).values())
    key = settings_key(store.settings)
    return sum((u, hashlib.sha256(u.encode()).hexdigest(), key) in done for u in uris)


def new_task_resume(url: str, plan: ShardPlan) -> int:
    """What one shard task does before encoding now: open the store, read its plan (URIs with
    their committed entries), decide the skips from it."""
    store = ArchiveStore.open(url)
    entries = read_plan(plan)
    done = skip_set(entries, store)
    key = settings_key(store.settings)
    return sum((hashlib.sha256(e.uri.encode()).hexdigest(), key) in done.get(e.uri, {}) for e in entries)


def measure_resume(which: str, url: str, plan: list, repeats: int) -> tuple[float, int]:
    """Child-process entry: the best of ``repeats`` per-task resume times, the way ``which`` says
    (a fresh process, as a task worker is: no other run's objects on its heap), and the skips."""
    task = old_task_resume if which == "old" else new_task_resume
    shard_plan = ShardPlan(*plan)
    gc.collect()
    return best(lambda: task(url, shard_plan), repeats)


def resume_in_child(which: str, url: str, plan: ShardPlan, repeats: int) -> tuple[float, int]:
    cmd = [sys.executable, __file__, "--resume-child",
           json.dumps([which, url, [plan.index, plan.path, plan.count], repeats])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    seconds, skips = json.loads(out.strip().splitlines()[-1])
    return float(seconds), int(skips)


def add_shards(store: ArchiveStore, start: int, stop: int, rows: int, batch: int) -> float:
    """Write and commit shards ``start..stop-1`` (``rows`` rows each) in commits of ``batch``;
    returns the seconds it took."""
    key = settings_key(store.settings)
    rng = random.Random(start)
    started = time.perf_counter()
    pending = []
    for index in range(start, stop):
        pending.append(store.write_shard(shard_table(index, rows, key, rng), "images", {"plan": index}))
        if len(pending) == batch or index == stop - 1:
            store.commit(pending)
            pending = []
    return time.perf_counter() - started


def run_resume(folder: Path, sizes: list[int], rows: int, batch: int, repeats: int) -> bool:
    """Per-task resume cost at each committed-shard count in ``sizes`` (one archive, grown), the old
    way and the new; prints a table and returns whether the new one stays within 1.5x."""
    url = str(folder / "resume-archive")
    store = ArchiveStore.create(url, SETTINGS)
    listing = folder / "resume-listing.txt"
    write_listing(listing, SHARD_SIZE)  # one task's URIs: the first 256 sources, all committed
    job = CompressJob.model_validate({"source": str(listing), "destination": url, "shard_size": SHARD_SIZE})
    print(f"\nresume: per-task cost before encoding (open the store, read the plan, decide the skips) of a "
          f"{SHARD_SIZE}-URI plan whose sources are all committed; archives of tiny images shards x {rows} rows; "
          f"each in a fresh process, old timed once, new best of {max(repeats, 10)}")
    header = (f"{'committed shards':>16} {'build s':>8} {'plan (once) s':>13} {'old per-task s':>14} "
              f"{'new per-task s':>14} {'skips old/new':>13}")
    print(header)
    print("-" * len(header))
    results = []
    have = 0
    for n in sizes:
        build = add_shards(store, have, n, rows, batch)
        have = n
        started = time.perf_counter()
        plans = list(plan_shards(job, run_id=f"bench{n}"))
        planning = time.perf_counter() - started
        plan = plans[0]
        old_s, old_skips = resume_in_child("old", url, plan, 1)  # seconds: noise is small
        new_s, new_skips = resume_in_child("new", url, plan, max(repeats, 10))
        results.append((n, old_s, new_s, old_skips, new_skips))
        print(f"{n:16,d} {build:8.1f} {planning:13.3f} {old_s:14.4f} {new_s:14.4f} {old_skips:>6}/{new_skips:<6}",
              flush=True)
    (n0, old0, new0, *_), (n1, old1, new1, *_) = results[0], results[-1]
    ok = new1 / new0 <= 1.5
    same = all(o == n == SHARD_SIZE for _, _, _, o, n in results)
    print(f"ratio {n1:,} / {n0:,} shards: old {old1 / old0:.2f}x, new {new1 / new0:.2f}x "
          f"-> {'within 1.5x' if ok else 'ABOVE 1.5x'}; skip decisions "
          f"{'identical, every URI skipped' if same else 'DIFFER'}")
    return ok and same

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
    parser.add_argument("--resume-shards", default="1000,10000",
                        help="committed-shard counts of the per-task resume test, ascending (empty: skip)")
    parser.add_argument("--resume-rows", type=int, default=4, help="rows per resume-test shard")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--resume-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_planning(*json.loads(args.child))))
        return
    if args.resume_child:
        print(json.dumps(measure_resume(*json.loads(args.resume_child))))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="sg3-planning-") as tmp:
        if sizes:
            run_planning(Path(tmp), sizes)
        if args.shards:
            run_store(Path(tmp), args.shards, args.rows, args.commit_batch, args.repeats)
    resume = [int(s) for s in args.resume_shards.split(",") if s]
    if resume:
        # The archive of the resume test measures reads, not the disk's fsync: in memory where possible.
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        with tempfile.TemporaryDirectory(prefix="sg3-resume-", dir=shm) as tmp:
            if not run_resume(Path(tmp), resume, args.resume_rows, 500, args.repeats):
                sys.exit(1)


if __name__ == "__main__":
    main()
