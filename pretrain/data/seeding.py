"""Per-sample deterministic randomness: augmentations seeded by the sample's position in the global stream.

With this, a resumed run (any number of data workers, any prefetch depth) draws exactly the crops, flips,
colour jitter and masks of an uninterrupted run: the randomness of stream position ``g`` depends only on
``(seed, g)``, never on worker RNG states.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_MASK = (1 << 63) - 1


def position_seed(seed: int, position: int, salt: int = 0) -> int:
    return (int(seed) * 0x9E3779B97F4A7C15 + int(position) * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) & _MASK


def seed_everything(s: int) -> None:
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % (2**32))


class PositionedSampler(Sampler):
    """Wraps a ``ShardedInfiniteSampler``: yields ``(index, global_position)`` pairs."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        s = self.sampler
        g = s.start_global + s.rank
        for idx in s:
            yield idx, g
            g += s.world_size


class PositionSeededDataset(Dataset):
    """``dataset[(i, g)]`` seeds torch/random/numpy from ``(seed, g)`` and returns ``dataset[i]`` plus ``g``."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, position = item
        in_main_process = torch.utils.data.get_worker_info() is None
        if in_main_process:  # num_workers=0: leave the training process's RNG streams (drop path, ...) untouched
            states = (random.getstate(), np.random.get_state())
            with torch.random.fork_rng(devices=[]):
                seed_everything(position_seed(self.seed, position))
                sample = self.dataset[index]
            random.setstate(states[0])
            np.random.set_state(states[1])
        else:
            seed_everything(position_seed(self.seed, position))
            sample = self.dataset[index]
        return (*sample, position) if isinstance(sample, tuple) else (sample, position)
