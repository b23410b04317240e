"""Collate for DINOv2/iBOT: stack multi-crops crop-major and draw spread-out block masks."""
from __future__ import annotations

import random

import torch

from .masking import MaskingGenerator
from .robust import split_skipped

__all__ = ["collate_data_and_cast"]


def collate_data_and_cast(samples_list, mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5, dtype=torch.float32,
                          n_tokens: int | None = None, mask_generator: MaskingGenerator | None = None,
                          generator: random.Random | None = None) -> dict:
    """Collate ``(crops_dict, target[, skipped])`` samples (``crops_dict`` from ``DataAugmentationDINO``).

    Returns the DINOv2 batch dict:
      * ``collated_global_crops`` ``(2B, C, H, W)`` crop-major: all images' crop 0, then all images' crop 1;
      * ``collated_local_crops`` ``(nB, C, h, w)`` crop-major; with ``n = 0`` local crops it is an empty tensor
        of shape ``(0, C, 0, 0)`` (``len() == 0``; ``.to(device)`` still works);
      * ``collated_masks`` ``(2B, N)`` bool; ``mask_indices_list`` flat indices of the True entries;
        ``masks_weight`` ``1/#masked`` of its image for every masked patch (same order as ``mask_indices_list``);
        ``n_masked_patches`` (1,) long; ``upperbound`` ``sum_i int(N * hi_i)``, an upper bound on the count;
      * ``skipped_images``: list of :class:`~pretrain.data.robust.SkippedImage` (empty unless 3-tuples were
        passed; the loader's wrapper handles them itself and reports counts on the loader).

    Mask ratios: ``n_masked = int(2B * mask_probability)`` images get ratio ``U(lo_i, hi_i)`` from bin ``i`` of
    ``linspace(lo, hi, n_masked+1)`` (spread evenly rather than i.i.d.); the others get empty masks; the list
    is shuffled. ``generator`` (a ``random.Random``) drives ratios and the shuffle (default: global ``random``).
    """
    if mask_generator is None:
        raise ValueError("collate_data_and_cast needs mask_generator=MaskingGenerator((h, w)) for the token grid")
    rng = generator if generator is not None else random
    samples, skipped = split_skipped(samples_list)
    crops = [s[0] for s in samples]
    n_global = len(crops[0]["global_crops"])
    n_local = len(crops[0]["local_crops"])
    collated_global = torch.stack([c["global_crops"][i] for i in range(n_global) for c in crops])
    if n_local:
        collated_local = torch.stack([c["local_crops"][i] for i in range(n_local) for c in crops])
    else:
        collated_local = collated_global.new_empty((0, collated_global.shape[1], 0, 0))

    B = collated_global.shape[0]
    N = int(n_tokens) if n_tokens is not None else mask_generator.num_patches
    if N != mask_generator.num_patches:
        raise ValueError(f"n_tokens={N} but the mask generator's grid has {mask_generator.num_patches} patches")
    lo, hi = mask_ratio_tuple
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"mask_ratio_tuple must satisfy 0 <= lo <= hi <= 1, got {mask_ratio_tuple}")
    n_masked = int(B * mask_probability)
    bins = torch.linspace(lo, hi, n_masked + 1).tolist()
    masks, upperbound = [], 0
    for i in range(n_masked):
        ratio = rng.uniform(bins[i], bins[i + 1])
        masks.append(torch.from_numpy(mask_generator(int(N * ratio))))
        upperbound += int(N * bins[i + 1])
    empty = torch.zeros(mask_generator.get_shape(), dtype=torch.bool)
    masks += [empty] * (B - n_masked)
    rng.shuffle(masks)

    collated_masks = torch.stack(masks).flatten(1)
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    per_image = collated_masks.sum(-1).clamp(min=1).to(torch.float32)
    masks_weight = (1.0 / per_image).unsqueeze(-1).expand_as(collated_masks)[collated_masks]
    return {
        "collated_global_crops": collated_global.to(dtype),
        "collated_local_crops": collated_local.to(dtype),
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=int(mask_indices_list.shape[0]), dtype=torch.long),
        "skipped_images": skipped,
    }
