"""Mergeable, fixed-size summaries: an audit's memory does not grow with its sample size."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Count, mean, variance (Welford), min, max and a fixed-bin histogram of one metric."""

    lo: float
    hi: float
    bins: int = 20
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    hist: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hist = self.hist or [0] * self.bins

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            return
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        self.min, self.max = min(self.min, x), max(self.max, x)
        i = int((x - self.lo) / (self.hi - self.lo) * self.bins)
        self.hist[min(self.bins - 1, max(0, i))] += 1

    def merge(self, other: Stats) -> None:
        """Combine with another accumulator of the same metric (parallel workers)."""
        if other.n == 0:
            return
        n = self.n + other.n
        d = other.mean - self.mean
        self.mean += d * other.n / n
        self.m2 += other.m2 + d * d * self.n * other.n / n
        self.n = n
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.hist = [a + b for a, b in zip(self.hist, other.hist)]

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean if self.n else None, "std": self.std,
                "min": self.min if self.n else None, "max": self.max if self.n else None}


class WorstN:
    """The N items with the lowest score seen so far (a bounded heap)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._heap: list[tuple[float, int, Any]] = []
        self._count = 0

    def add(self, score: float, item: Any) -> None:
        self._count += 1
        entry = (-score, self._count, item)  # max-heap on score: drop the best when full
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        elif -score > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[tuple[float, Any]]:
        return [(-s, item) for s, _, item in sorted(self._heap, reverse=True)]
