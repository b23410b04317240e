"""octo's measuring instrument: timing, FLOPs, memory, encoder / recipe / data / kNN benchmarks and reports.

Entry point: ``python launchers/benchmark.py <mode> ...`` (see ``launchers/benchmark.py --help``).
"""
from .timing import Stats, alternate, measure, sync

__all__ = ["Stats", "measure", "alternate", "sync"]
