"""Wall-clock timing with warm-up, repeats, median and spread, and alternating side-by-side runs.

Every measurement is ``repeats`` samples of one call each (after ``warmup`` untimed calls); the summary is the
median and the spread ``(max - min) / median`` plus the inter-quartile range. On CUDA each sample is bracketed by
``torch.cuda.synchronize()`` so that asynchronous kernels are inside the interval.

:func:`alternate` interleaves several workloads (A B A B ...) so that slow drifts of a shared, noisy machine
(other processes, thermal state) hit every contender alike; ratios of the medians are then meaningful even when
absolute times are not.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


def sync() -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _quantile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted list (numpy's default rule)."""
    if not sorted_vals:
        raise ValueError("no samples")
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


@dataclass
class Stats:
    """Summary of timing samples (seconds per call)."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def iqr(self) -> float:
        s = sorted(self.samples)
        return _quantile(s, 0.75) - _quantile(s, 0.25)

    @property
    def spread(self) -> float:
        """Relative spread ``(max - min) / median``."""
        m = self.median
        return (self.max - self.min) / m if m > 0 else 0.0

    def rate(self, items_per_call: float) -> float:
        """Items per second at the median time."""
        return items_per_call / self.median if self.median > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max, "iqr_s": self.iqr,
                "spread": self.spread, "n": len(self.samples), **asdict(self)}

    def __str__(self) -> str:
        return f"{self.median * 1e3:.2f} ms (±{100 * self.spread / 2:.0f}%, n={len(self.samples)})"


def _check(warmup: int, repeats: int) -> None:
    if warmup < 0:
        raise ValueError(f"warmup={warmup} must be >= 0")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1 (use --repeats N with N >= 1)")


def time_once(fn: Callable[[], object]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def measure(fn: Callable[[], object], warmup: int = 2, repeats: int = 5) -> Stats:
    """``warmup`` untimed calls, then ``repeats`` timed calls of ``fn``."""
    _check(warmup, repeats)
    for _ in range(warmup):
        fn()
    sync()
    return Stats([time_once(fn) for _ in range(repeats)])


def alternate(fns: dict[str, Callable[[], object]], warmup: int = 2, repeats: int = 5) -> dict[str, Stats]:
    """Time several workloads interleaved: round r runs every workload once (order rotated each round)."""
    _check(warmup, repeats)
    names = list(fns)
    if not names:
        raise ValueError("alternate() needs at least one workload")
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out = {n: Stats() for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            out[n].samples.append(time_once(fns[n]))
    return out
