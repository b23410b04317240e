"""Evaluation and linear-probe transforms (accept PIL images or uint8 CHW tensors)."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from .augmentations import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["make_eval_transform", "make_classification_train_transform"]

_BICUBIC = v2.InterpolationMode.BICUBIC


def make_eval_transform(resize: int = 256, crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        interpolation=_BICUBIC):
    """Resize (short side, bicubic) -> CenterCrop -> float -> normalise (DINOv2's eval transform).
    Use ``resize == crop`` to skip the border crop (e.g. 32-px CIFAR at 32)."""
    if crop > resize:
        raise ValueError(f"crop={crop} must be <= resize={resize}")
    return v2.Compose([
        v2.Resize(resize, interpolation=interpolation, antialias=True),
        v2.CenterCrop(crop),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def make_classification_train_transform(crop: int = 224, scale=(0.08, 1.0), hflip_prob: float = 0.5,
                                        mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=_BICUBIC):
    """RandomResizedCrop (bicubic) + horizontal flip -> float -> normalise (DINOv2's linear-probe train transform)."""
    ops = [v2.RandomResizedCrop(crop, scale=scale, interpolation=interpolation, antialias=True)]
    if hflip_prob > 0:
        ops.append(v2.RandomHorizontalFlip(hflip_prob))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)
