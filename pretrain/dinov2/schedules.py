"""Per-iteration cosine schedule with optional freeze and linear warm-up (DINOv2's ``CosineScheduler``)."""
from __future__ import annotations

import numpy as np


class CosineScheduler:
    """Values for iterations ``0 .. total_iters-1``: ``[0]*freeze | linspace(start_warmup, base, warmup) | cosine``.

    The cosine part has ``n = total - warmup - freeze`` points ``final + (base-final)/2 * (1 + cos(pi*i/n))``
    for ``i = 0..n-1`` (it starts at ``base`` and approaches ``final``). The warm-up ``linspace`` includes both
    ends, as the reference. Indexing at or past ``total_iters`` returns ``final_value``.
    """

    def __init__(self, base_value: float, final_value: float, total_iters: int, warmup_iters: int = 0,
                 start_warmup_value: float = 0.0, freeze_iters: int = 0):
        total_iters, warmup_iters, freeze_iters = int(total_iters), int(warmup_iters), int(freeze_iters)
        if min(total_iters, warmup_iters, freeze_iters) < 0:
            raise ValueError(f"CosineScheduler: iteration counts must be >= 0, got total={total_iters}, "
                             f"warmup={warmup_iters}, freeze={freeze_iters}")
        if warmup_iters + freeze_iters > total_iters:
            raise ValueError(f"CosineScheduler: warmup_iters ({warmup_iters}) + freeze_iters ({freeze_iters}) exceed "
                             f"total_iters ({total_iters}); shorten the warm-up/freeze epochs or train longer")
        self.base_value, self.final_value = float(base_value), float(final_value)
        self.total_iters = total_iters
        freeze = np.zeros(freeze_iters)
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
        n = total_iters - warmup_iters - freeze_iters
        i = np.arange(n)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * i / max(n, 1)))
        self.schedule = np.concatenate((freeze, warmup, cosine)).astype(np.float64)
        assert len(self.schedule) == total_iters

    def __getitem__(self, it: int) -> float:
        it = int(it)
        if it < 0:
            raise IndexError(f"CosineScheduler: negative iteration {it}")
        if it >= self.total_iters:
            return self.final_value
        return float(self.schedule[it])

    def __len__(self) -> int:
        return self.total_iters
