"""Samplers: a resumable, world-size-independent infinite training stream and evaluation samplers.

Global stream (``ShardedInfiniteSampler``)
    Position ``g = 0, 1, 2, ...`` of the *global* stream holds ``perm_e[g % size]`` with ``e = g // size`` and
    ``perm_e = randperm(size)`` seeded by ``(seed, e)``: every pass is a fresh permutation, independent of the
    number of ranks. Rank ``r`` of ``W`` reads positions ``start_global + r, start_global + r + W, ...``.
    After ``i`` iterations with local batch ``b`` every rank has read ``i*b`` samples, and together the ranks have
    read exactly the prefix ``[0, i*b*W) = [0, i*global_batch)`` of the global stream. Resuming therefore only
    needs ``start_global = i * global_batch`` (see :func:`global_position`), and it continues the *same global
    sample order* even when the number of ranks changes (the per-batch grouping of samples into ranks changes,
    the order does not). Seeking is O(size) (one permutation), never O(position).

    Unlike the DINOv2 reference (per-rank reshuffles seeded by rank), the order does not depend on ``W``.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ShardedInfiniteSampler", "EpochSampler", "DistributedEvalSampler", "global_position"]

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant to decorrelate (seed, epoch) pairs


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * _MIX + int(epoch) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2**63 - 1)


def _perm(size: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch)))


def global_position(iteration: int, global_batch_size: int) -> int:
    """Global stream position after ``iteration`` completed iterations (``global_batch = local_batch * W``)."""
    return int(iteration) * int(global_batch_size)


class ShardedInfiniteSampler(Sampler[int]):
    """Infinite, deterministic index stream for one rank (see module docstring for the semantics).

    ``start``: number of samples of *this rank's* stream to skip (``start_global = start * world_size``, i.e.
    all ranks advanced equally, the normal case). ``start_global`` (keyword) sets the global position directly
    and overrides ``start``. ``shuffle=False`` gives ``0, 1, ..., size-1, 0, 1, ...``.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0, *,
                 start_global: int | None = None, shuffle: bool = True):
        if size <= 0:
            raise ValueError(f"sampler needs a non-empty dataset (size={size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.size, self.rank, self.world_size, self.seed, self.shuffle = int(size), int(rank), int(world_size), \
            int(seed), bool(shuffle)
        self.start_global = int(start_global) if start_global is not None else int(start) * self.world_size
        if self.start_global < 0:
            raise ValueError("start must be >= 0")
        self._yielded = 0  # indices handed out by the current iterator

    # ---- resume API
    def advance(self, n_local: int) -> None:
        """Skip ``n_local`` more samples of this rank's stream (before iterating)."""
        self.start_global += int(n_local) * self.world_size

    def state_dict(self, iteration: int | None = None, global_batch_size: int | None = None) -> dict:
        """World-size-independent state. Pass the completed ``iteration`` and ``global_batch_size`` for an exact
        resume point: the DataLoader prefetches, so the count of indices already drawn runs ahead of training."""
        if iteration is not None:
            if global_batch_size is None:
                raise ValueError("state_dict(iteration=...) also needs global_batch_size")
            pos = self.start_global + global_position(iteration, global_batch_size)
        else:
            pos = self.start_global + self._yielded * self.world_size
        return {"global_position": pos, "seed": self.seed, "size": self.size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        if int(state["size"]) != self.size or int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state is for size={state['size']}, seed={state['seed']} but this sampler has "
                             f"size={self.size}, seed={self.seed}; the dataset or train seed changed")
        self.start_global = int(state["global_position"])
        self.shuffle = bool(state.get("shuffle", self.shuffle))

    # ---- iteration
    def _order(self, epoch: int) -> torch.Tensor:
        return _perm(self.size, self.seed, epoch) if self.shuffle else torch.arange(self.size)

    def __iter__(self) -> Iterator[int]:
        self._yielded = 0
        g = self.start_global + self.rank
        while True:
            epoch, offset = divmod(g, self.size)
            chunk = self._order(epoch)[offset::self.world_size].tolist()
            for idx in chunk:
                self._yielded += 1
                yield idx
            g += len(chunk) * self.world_size

    def __len__(self) -> int:  # infinite; DataLoader only calls len() if the user does
        raise TypeError("ShardedInfiniteSampler is infinite and has no length")


class EpochSampler(Sampler[int]):
    """Finite epochs (call :meth:`set_epoch`), sharded over ranks; each rank gets ``ceil(size/W)`` indices.

    The last ranks are padded by wrapping around to the start of the (shuffled) order so all ranks take the same
    number of steps; at most ``W-1`` samples are duplicated per epoch (use ``drop_last=True`` to drop instead).
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.size, self.rank, self.world_size, self.seed = size, rank, world_size, seed
        self.shuffle, self.drop_last, self.epoch = shuffle, drop_last, 0
        self.num_samples = size // world_size if drop_last else math.ceil(size / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        order = (_perm(self.size, self.seed, self.epoch) if self.shuffle else torch.arange(self.size)).tolist()
        total = self.num_samples * self.world_size
        order = (order * (1 + total // max(1, len(order))))[:total] if total > len(order) else order[:total]
        return iter(order[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.num_samples


class DistributedEvalSampler(Sampler[int]):
    """Evaluation without duplicates or padding: rank ``r`` gets ``range(r, size, W)`` (lengths differ by <= 1;
    gather results with their indices, or with uneven-size-aware all_gather)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))
