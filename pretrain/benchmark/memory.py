"""Peak memory of one call: the CUDA caching allocator's peak on GPU, the tensor-allocation peak on CPU.

CPU: ``torch.profiler`` with ``profile_memory=True`` records every tensor allocation and free with its size; the
running sum is the live tensor bytes over the call and its maximum is the extra memory the call needs -- the CPU
analogue of ``torch.cuda.max_memory_allocated`` (allocator slack not included; see :func:`cpu_tensor_peak_bytes`,
which reads the profiler's allocation timeline through ``torch.profiler._memory_profiler``, the module behind the
public ``export_memory_timeline``). It is measured in a separate, untimed run. An RSS delta is useless here: after warm-up the process already owns
the memory (even more so with the malloc tuning of ``pretrain.cpu_allocator``), so it reads ~0.
Fallback when the timeline is unavailable (``cpu_rss_delta``): a background thread samples ``psutil.Process().memory_info().rss`` every ``interval`` seconds while the call
runs; the result is ``max(rss) - rss_before`` (MiB). It includes allocator slack and anything else the process
allocates meanwhile, and can miss spikes shorter than the sampling interval -- a bound on what the workload
needs, not an exact count. Run it outside the timed loops (the sampler costs a little CPU).
GPU: ``torch.cuda.max_memory_allocated() - memory_allocated()`` before the call (tensors only, no cache).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import torch


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class RSSPeak:
    """Context manager sampling the RSS; ``delta_bytes`` = peak during the block minus RSS at entry."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self):
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.peak = max(self.peak, rss_bytes())
        self._stop.set()
        self._thread.join()
        return False

    @property
    def delta_bytes(self) -> int:
        return max(0, self.peak - self.base)


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str = "cpu") -> dict:
    """Run ``fn`` once and return ``{"kind": "cuda_allocator"|"cpu_rss_delta", "peak_mb": float}``."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return {"kind": "cuda_allocator", "peak_mb": (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20}
    import gc

    gc.collect()
    try:
        return {"kind": "cpu_tensor_peak", "peak_mb": cpu_tensor_peak_bytes(fn) / 2 ** 20}
    except Exception:  # noqa: BLE001 - profiler memory events unavailable: fall back to RSS sampling
        with RSSPeak() as r:
            fn()
        return {"kind": "cpu_rss_delta", "peak_mb": r.delta_bytes / 2 ** 20}


def cpu_tensor_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the live CPU tensor bytes during ``fn()`` above the level at its start.

    Reads the allocation timeline that ``torch.profiler`` records with ``profile_memory=True`` (every tensor
    creation and destruction, with its size; the same data ``export_memory_timeline`` plots, before that drops
    uncategorised tensors). Frees of tensors that existed before the call (e.g. ``p.grad = None``) lower the
    level, so for a train step the result is what the step needs beyond the previous step's steady state.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile  # raises -> caller falls back to RSS

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        if action == Action.CREATE:
            live += size
            peak = max(peak, live)
        elif action == Action.DESTROY:
            live -= size
    return peak
