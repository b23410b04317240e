"""Scaling of ``eval.knn``'s chunked top-k search with the train-set size N.

For each N a random L2-normalised bank ``[N, D]`` is allocated *before* measuring; then one search of ``Q``
queries (``eval.knn.local_topk``) is timed (median of repeats) and its working memory is measured as the peak of
live tensor bytes above the level at the call's start (``memory.peak_memory_mb``; an RSS delta reads ~0 once the
process owns the memory). With a fixed ``chunk_size`` the working memory is ``O(Q * (chunk + k))`` whatever N, and the
time grows linearly with N (reported as microseconds per train sample and per query). The unchunked search
(``chunk_size = N``) is measured next to it for contrast: its working memory grows with N.
"""
from __future__ import annotations

import gc

import torch
import torch.nn.functional as F

from .memory import peak_memory_mb
from .timing import measure


def knn_scaling(ns=(4096, 16384, 65536), dim: int = 384, n_queries: int = 256, k: int = 20,
                chunk_size: int = 4096, repeats: int = 3, warmup: int = 1, unchunked: bool = True) -> list[dict]:
    from eval.knn import local_topk

    rows = []
    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(n_queries, dim, generator=g), dim=1)
    for n in ns:
        bank = F.normalize(torch.randn(n, dim, generator=g), dim=1)
        idx = torch.arange(n)
        for label, cs in (("chunked", chunk_size),) + ((("unchunked", n),) if unchunked else ()):
            def go():
                return local_topk(q, bank, idx, k, cs, cpu)

            st = measure(go, warmup, repeats)
            gc.collect()
            mem = peak_memory_mb(go)
            rows.append({"N": n, "search": label, "chunk": cs, "queries": n_queries, "dim": dim, "k": k,
                         "time_s": st.median, "spread": st.spread,
                         "us_per_train_per_query": 1e6 * st.median / (n * n_queries),
                         "peak_mem_mb": mem["peak_mb"], "mem_kind": mem["kind"],
                         "bank_mb": bank.numel() * 4 / 2 ** 20})
        del bank
        gc.collect()
    return rows
