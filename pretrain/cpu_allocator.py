"""glibc ``malloc`` tuning for CPU runs: keep freed tensor buffers in the heap instead of unmapping them.

PyTorch's CPU allocator is plain ``malloc``. glibc serves every block above ``M_MMAP_THRESHOLD`` (128 KiB, raised
dynamically up to 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` on free, so each new activation
tensor of a few MiB pays one page fault per 4 KiB page on first touch. On the 2-core CI machine that made a
1.2 MB element-wise op ~10x slower than the arithmetic (0.44 ms vs 0.047 ms per ``x * y`` on a ``[4, 4, 197, 96]``
tensor, 200 repeats;
compare ``OCTO_MALLOC_TUNING=0`` runs of ``launchers/benchmark.py``). Blocks above the 32 MiB cap of the
threshold (a ``[65536, 256]`` prototype gradient, ``[rows, 65536]`` DINOv2 logits) would still be mapped afresh,
so ``M_MMAP_MAX = 0`` serves every block from the heap: allocating ``w * 1.5`` for a ``[65536, 256]`` tensor
took 24.8 ms with the threshold alone and 5.5 ms with it. Together with a never-trimmed heap this is what
jemalloc/tcmalloc (Intel's recommended CPU setup) and the CUDA caching allocator do. Cost: the process keeps its
peak heap mapped (RSS does not shrink after a peak).

Applied by every launcher (``pretrain.launch`` and ``launchers/benchmark.py``) in each rank process; opt out with
``OCTO_MALLOC_TUNING=0``. A no-op where glibc's ``mallopt`` is unavailable (macOS, musl) and on CUDA tensors.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound on 64-bit (4 * 1024 * 1024 * sizeof(long))

_state: dict = {}


def tune_cpu_allocator() -> bool:
    """Set the glibc thresholds once per process; returns whether tuning is active."""
    if "active" in _state:
        return _state["active"]
    active = False
    if os.environ.get("OCTO_MALLOC_TUNING", "1") not in ("0", "false", "no"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            active = all(bool(mallopt(k, v)) for k, v in (
                (M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_MMAP_MAX, 0)))
    _state["active"] = active
    return active
