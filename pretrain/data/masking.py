"""BEiT-style block masking for iBOT/DINOv2 (masks on the patch-token grid).

A mask of ``k`` patches is built by adding rectangular blocks until ``k`` patches are covered:
  * block area ``~ U(min_num_patches, min(remaining, max_num_patches))``, aspect ratio log-uniform in
    ``[min_aspect, max_aspect]`` (default ``max_aspect = 1/min_aspect``), ``h = round(sqrt(area*aspect))``,
    ``w = round(sqrt(area/aspect))``; random position;
  * a block is accepted when its area is >= ``min_num_patches`` (the reference can round down to 3; here every
    block really has >= ``min_num_patches`` patches) and it adds between 1 and ``min(remaining, max_num_patches)``
    new patches; up to 10 tries per block, and masking stops when a block cannot be placed.
So the final count is ``<= k`` and falls short only at block granularity (in practice by < 2 *
``min_num_patches``; mean shortfall < 1 patch on a 14x14 grid), as in the reference.
Every 4-connected masked component therefore has at least ``min_num_patches`` patches.
"""
from __future__ import annotations

import math
import random

import numpy as np

__all__ = ["MaskingGenerator"]


class MaskingGenerator:
    def __init__(self, input_size, max_num_patches: float | None = None, min_num_patches: int = 4,
                 min_aspect: float = 0.3, max_aspect: float | None = None, rng: random.Random | None = None):
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.height, self.width = int(input_size[0]), int(input_size[1])
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.num_patches = self.height * self.width
        self.max_num_patches = int(0.5 * self.num_patches if max_num_patches is None else max_num_patches)
        self.min_num_patches = int(min_num_patches)
        if min_aspect <= 0:
            raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        # None: the process-global ``random`` module (re-seeded per DataLoader worker by make_data_loader).
        self.rng = rng if rng is not None else random

    def __repr__(self) -> str:
        return (f"MaskingGenerator({self.height}x{self.width}, min={self.min_num_patches}, "
                f"max={self.max_num_patches}, log_aspect={self.log_aspect_ratio})")

    def get_shape(self):
        return self.height, self.width

    def _add_block(self, mask: np.ndarray, max_new: int) -> int:
        rng = self.rng
        for _ in range(10):
            area = rng.uniform(self.min_num_patches, max(self.min_num_patches, max_new))
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h * w < self.min_num_patches or h > self.height or w > self.width or h < 1 or w < 1:
                continue
            top = rng.randint(0, self.height - h)
            left = rng.randint(0, self.width - w)
            block = mask[top:top + h, left:left + w]
            new = h * w - int(block.sum())
            if 0 < new <= max_new:
                block[...] = True
                return new
        return 0

    def __call__(self, num_masking_patches: int = 0) -> np.ndarray:
        """Boolean ``[height, width]`` mask with (about, never more than) ``num_masking_patches`` True entries."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        target = min(int(num_masking_patches), self.num_patches)
        while count < target:
            max_new = min(target - count, self.max_num_patches)
            # when max_new < min_num_patches a block can still fit by overlapping already-masked patches
            delta = self._add_block(mask, max_new)
            if delta == 0:
                break
            count += delta
        return mask
