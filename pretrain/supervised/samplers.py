"""Repeated-augmentation sampler (Hoffer et al. 2020; DeiT's ``RASampler``) for 1..N processes.

Each epoch: a seeded permutation of the ``n`` indices, each index repeated ``repeats`` times consecutively
(``[i, i, i, j, j, j, ...]``), padded (by wrapping) to a multiple of the world size, then dealt round-robin:
rank ``r`` takes positions ``r, r + W, r + 2W, ...``. The copies of an index occupy consecutive positions, so
with ``W >= repeats`` every copy lands on a DIFFERENT rank (with ``W < repeats`` the copies spread as evenly as
possible; with one process they all stay local, each with its own random augmentation).

``truncate=True`` (DeiT) keeps only the first ``ceil(n / W)`` indices per rank, so an "epoch" is still about
``n`` samples in total (about ``n / repeats`` distinct ones); ``truncate=False`` keeps all ``n * repeats``.
Every rank yields the same number of indices. Call :meth:`set_epoch` each epoch.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler

__all__ = ["RepeatedAugSampler"]


class RepeatedAugSampler(Sampler[int]):
    def __init__(self, size: int, rank: int = 0, world_size: int = 1, repeats: int = 3, seed: int = 0,
                 shuffle: bool = True, truncate: bool = True):
        if size <= 0:
            raise ValueError(f"RepeatedAugSampler: dataset size must be > 0, got {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"RepeatedAugSampler: rank={rank} must be in [0, world_size={world_size})")
        if repeats < 1:
            raise ValueError(f"data.repeats={repeats} must be >= 1")
        self.size, self.rank, self.world_size, self.repeats = int(size), int(rank), int(world_size), int(repeats)
        self.seed, self.shuffle, self.truncate, self.epoch = int(seed), shuffle, truncate, 0
        self.total = math.ceil(self.size * self.repeats / self.world_size) * self.world_size
        self.per_rank_all = self.total // self.world_size
        self.num_samples = math.ceil(self.size / self.world_size) if truncate else self.per_rank_all

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> list[int]:
        """The padded, repeated order of this epoch before dealing (identical on every rank)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        order = order.repeat_interleave(self.repeats).tolist()
        base = list(order)
        while len(order) < self.total:  # wrap around (more than once only when W > n * repeats)
            order += base[: self.total - len(order)]
        return order

    def __iter__(self):
        mine = self.global_order()[self.rank::self.world_size]
        return iter(mine[: self.num_samples])

    def __len__(self) -> int:
        return self.num_samples
