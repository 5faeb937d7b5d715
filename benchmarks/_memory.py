"""Peak resident-memory measurement for CPU benchmarks (no CPU allocator statistics exist in torch)."""

from __future__ import annotations

import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """Context manager sampling RSS in a thread; ``peak`` is the largest rise above the start value.

    glibc only returns freed memory to the OS promptly for mmap-backed blocks, so the benchmark
    re-executes itself with a fixed ``MALLOC_MMAP_THRESHOLD_`` (see ``ensure_malloc_env``).
    """

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self.start)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() - self.start)


def ensure_malloc_env(argv: list[str]) -> None:
    """Re-exec the interpreter with a fixed mmap threshold so RSS follows live tensor memory."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
        os.execve(argv[0], argv, env)
