"""Corrupt-image tolerance: decode errors are skipped, recorded, counted and bounded.

Design (works with ``num_workers > 0`` because the records travel *with the batches*):

* Datasets raise :class:`ImageDecodeError` (never anything else) when a file cannot be decoded.
* :class:`SafeImageDataset` catches only that error, substitutes the next index (``i+1, i+2, ...`` modulo the
  length; deterministic) and returns a 3-tuple ``(image, target, skipped)`` where ``skipped`` is a tuple of
  :class:`SkippedImage` records (empty for healthy samples).
* The loader (:func:`pretrain.data.loaders.make_data_loader`) splits the records off in its collate wrapper, so
  the user's collate function sees ordinary ``(image, target)`` pairs, and the records come back to the main
  process with the batch. A :class:`SkipTracker` there logs one warning per unreadable file (naming it), counts
  events and distinct files, and raises :class:`TooManySkippedImagesError` once the ceiling is exceeded.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple, Sequence

from torch.utils.data import Dataset

logger = logging.getLogger("octo.data")

__all__ = ["ImageDecodeError", "SkippedImage", "SafeImageDataset", "SkipTracker", "TooManySkippedImagesError",
           "split_skipped"]


class ImageDecodeError(RuntimeError):
    """An image file (or record) could not be read/decoded. Carries the dataset index and the path."""

    def __init__(self, index: int, path: str, cause: BaseException | str):
        self.index, self.path, self.cause = int(index), str(path), cause
        self.reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"cannot decode image #{index} at {path!r}: {self.reason}")

    def __reduce__(self):  # picklable across worker processes
        return (ImageDecodeError, (self.index, self.path, self.reason))


class SkippedImage(NamedTuple):
    index: int
    path: str
    error: str


class TooManySkippedImagesError(RuntimeError):
    pass


class SafeImageDataset(Dataset):
    """Wraps a dataset so unreadable images are replaced by the next readable index.

    ``dataset[i]`` must raise :class:`ImageDecodeError` for unreadable images (all octo datasets do).
    Errors of any other type (e.g. a bug in a transform) are *not* swallowed.
    ``max_consecutive``: give up (raise) after this many unreadable images in a row (a broken mount, not a
    few corrupt files).
    """

    def __init__(self, dataset: Dataset, max_consecutive: int = 64):
        if isinstance(dataset, SafeImageDataset):
            dataset = dataset.dataset
        self.dataset = dataset
        self.max_consecutive = int(max_consecutive)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # expose targets / classes / transform of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        n = len(self.dataset)
        skipped: list[SkippedImage] = []
        j = int(index)
        for _ in range(min(self.max_consecutive, n)):
            try:
                image, target = self.dataset[j]
                return image, target, tuple(skipped)
            except ImageDecodeError as e:
                skipped.append(SkippedImage(j, e.path, e.reason))
                j = (j + 1) % n
        raise TooManySkippedImagesError(
            f"{len(skipped)} consecutive unreadable images starting at index {index} "
            f"(first: {skipped[0].path!r}: {skipped[0].error}); is the dataset root readable?")


def split_skipped(samples: Sequence) -> tuple[list, list[SkippedImage]]:
    """Split ``(image, target[, skipped])`` samples into plain pairs and the flat list of skip records."""
    plain, skipped = [], []
    for s in samples:
        if isinstance(s, tuple) and len(s) == 3 and isinstance(s[2], tuple):
            plain.append((s[0], s[1]))
            skipped.extend(s[2])
        else:
            plain.append(s)
    return plain, skipped


class SkipTracker:
    """Counts skipped images in the main process and enforces ``max_skipped``.

    ``max_skipped``: ``None`` = no ceiling; an ``int`` = abort when more than that many *distinct* files were
    unreadable; a ``float`` in (0, 1) = abort when more than that fraction of the dataset (``dataset_size``) is
    unreadable. Distinct files are counted (an infinite sampler revisits the same corrupt file every epoch);
    ``events`` counts every substitution.
    """

    def __init__(self, max_skipped: int | float | None = None, dataset_size: int | None = None):
        if max_skipped is not None:
            if isinstance(max_skipped, float) and not (0.0 <= max_skipped < 1.0):
                raise ValueError(f"max_skipped as a fraction must be in [0, 1), got {max_skipped}; "
                                 "use an int for an absolute count")
            if isinstance(max_skipped, float) and dataset_size is None:
                raise ValueError("max_skipped given as a fraction needs dataset_size")
            if max_skipped < 0:
                raise ValueError(f"max_skipped must be >= 0, got {max_skipped}")
        self.max_skipped = max_skipped
        self.dataset_size = dataset_size
        self.events = 0
        self.files: dict[int, SkippedImage] = {}

    @property
    def limit(self) -> float:
        if self.max_skipped is None:
            return float("inf")
        if isinstance(self.max_skipped, float):
            return self.max_skipped * self.dataset_size
        return float(self.max_skipped)

    @property
    def n_unique(self) -> int:
        return len(self.files)

    def update(self, skipped: Sequence[SkippedImage]) -> None:
        for rec in skipped:
            rec = SkippedImage(*rec)
            self.events += 1
            if rec.index not in self.files:
                self.files[rec.index] = rec
                logger.warning("skipping unreadable image #%d %s (%s); %d unreadable so far",
                               rec.index, rec.path, rec.error, len(self.files))
        if len(self.files) > self.limit:
            names = ", ".join(r.path for r in list(self.files.values())[:5])
            raise TooManySkippedImagesError(
                f"{len(self.files)} unreadable images exceed max_skipped={self.max_skipped} "
                f"(limit {self.limit:g} files); first ones: {names}. Fix or remove the files, or raise max_skipped.")

    def state(self) -> dict:
        return {"skipped_events": self.events, "skipped_unique": self.n_unique}
