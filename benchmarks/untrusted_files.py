"""Time and peak memory of loading crafted (hostile or damaged) network files, one table row each.

The cases are the full-size attacks of issue 11 (items 5 and 6): pickles under 7 KB that share
sub-structures exponentially, storages declaring gigabytes (or never filled), stride-0 views,
implausible hyperparameters, weights symlinked to /dev/zero, 4 GB weight files, indexes naming
``../``; and those of red-team round 2: opcode floods (F2), strs stored at 4 bytes a character by
one emoji (F4) and 16 MB JSON of ``[{},{},...]`` (F5). ``tests/test_untrusted_networks.py``
crafts them and loads each in a forked child with an address-space limit; this script runs that
and prints what it measured. Every row should end in a typed sg3archive error within 5 s and
+200 MB of resident memory (a pickle is read whole first: +1x its size, 100 MB at most here).

    python benchmarks/untrusted_files.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TEST_MODULE = Path(__file__).resolve().parents[1] / "tests" / "test_untrusted_networks.py"


def measure() -> dict[str, dict]:
    """Run the crafted cases in a fresh interpreter (one forked child per case); their results."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="sg3archive-untrusted-") as folder:
        proc = subprocess.run([sys.executable, str(TEST_MODULE), folder], capture_output=True, text=True, env=env,
                              timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"the case runner failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    results = measure()
    width = max(map(len, results))
    print(f"| {'case':<{width}} | seconds | peak RSS +MB | outcome |")
    print(f"|{'-' * (width + 2)}|--------:|-------------:|---------|")
    for name, r in results.items():
        outcome = r["outcome"].split(";")[0][:110]
        print(f"| {name:<{width}} | {r['seconds']:7.3f} | {r['rss_mb']:12.1f} | {'' if r['typed'] else 'UNTYPED '}{outcome} |")


if __name__ == "__main__":
    main()
