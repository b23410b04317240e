"""DataLoader construction with worker seeding and skipped-image accounting."""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate
from torch.utils.data._utils.pin_memory import pin_memory as _pin

from .robust import SafeImageDataset, SkipTracker, split_skipped

__all__ = ["make_data_loader", "SkipAwareLoader", "CollatedBatch", "SkipAwareCollate", "seed_worker"]


class CollatedBatch:
    """A collated batch plus the skip records of its samples (travels from workers to the main process)."""

    __slots__ = ("batch", "skipped")

    def __init__(self, batch: Any, skipped: list):
        self.batch, self.skipped = batch, skipped

    def pin_memory(self):
        return CollatedBatch(_pin(self.batch), self.skipped)


class SkipAwareCollate:
    """Splits ``(image, target, skipped)`` samples into pairs for ``collate_fn`` and keeps the records."""

    def __init__(self, collate_fn: Callable | None = None):
        self.collate_fn = collate_fn or default_collate

    def __call__(self, samples):
        plain, skipped = split_skipped(samples)
        return CollatedBatch(self.collate_fn(plain), skipped)


def seed_worker(worker_id: int) -> None:
    """Seed ``random`` and ``numpy`` from torch's per-worker seed (distinct per worker, rank and loader seed)."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


class SkipAwareLoader:
    """Iterates a DataLoader, unwraps :class:`CollatedBatch` and feeds the skip records to a :class:`SkipTracker`.

    Batches come out exactly as ``collate_fn`` made them; dict batches also get ``"n_skipped_images"`` (this
    batch's substitutions). Totals: ``loader.skipped_events``, ``loader.skipped_unique``, ``loader.tracker``.
    """

    def __init__(self, loader: DataLoader, tracker: SkipTracker):
        self.loader, self.tracker = loader, tracker

    def __iter__(self):
        for item in self.loader:
            if isinstance(item, CollatedBatch):
                self.tracker.update(item.skipped)
                batch = item.batch
                if isinstance(batch, dict):
                    batch["n_skipped_images"] = len(item.skipped)
                    if "skipped_images" in batch:
                        batch["skipped_images"] = list(batch["skipped_images"]) + list(item.skipped)
                yield batch
            else:
                yield item

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def skipped_events(self) -> int:
        return self.tracker.events

    @property
    def skipped_unique(self) -> int:
        return self.tracker.n_unique

    def __getattr__(self, name: str):
        if name in ("loader", "tracker"):
            raise AttributeError(name)
        return getattr(self.loader, name)


def make_data_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, sampler: Sampler | None = None,
                     collate_fn: Callable | None = None, drop_last: bool = True,
                     persistent_workers: bool | None = None, seed: int = 0, shuffle: bool = False,
                     pin_memory: bool | None = None, prefetch_factor: int | None = None, skip_corrupt: bool = True,
                     max_skipped: int | float | None = 0.01, rank: int | None = None) -> SkipAwareLoader:
    """A DataLoader whose workers are seeded from ``(seed, rank)`` and which tolerates unreadable images.

    * ``skip_corrupt``: wrap ``dataset`` in :class:`SafeImageDataset` (unreadable images are replaced by the next
      index); ``max_skipped`` (int count or float fraction of ``len(dataset)``, ``None`` = unlimited) bounds
      the number of distinct unreadable files before :class:`TooManySkippedImagesError` aborts the run.
    * ``persistent_workers`` defaults to ``num_workers > 0``; ``pin_memory`` to ``torch.cuda.is_available()``.
    * Seeding: the loader's torch generator is seeded with ``seed * 1000003 + rank``; each worker derives its
      torch seed from it (+ worker id) and :func:`seed_worker` seeds ``random``/``numpy`` from that.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rank is None:
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() \
            else 0
    if skip_corrupt and not isinstance(dataset, SafeImageDataset):
        dataset = SafeImageDataset(dataset)
    tracker = SkipTracker(max_skipped, len(dataset))
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    kwargs = {}
    if num_workers > 0 and prefetch_factor is not None:
        kwargs["prefetch_factor"] = prefetch_factor
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=num_workers, collate_fn=SkipAwareCollate(collate_fn), pin_memory=pin_memory,
        drop_last=drop_last, persistent_workers=bool(persistent_workers and num_workers > 0),
        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(int(seed) * 1000003 + int(rank)),
        **kwargs)
    return SkipAwareLoader(loader, tracker)
