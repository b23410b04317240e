"""Batch-wise Mixup / CutMix with soft targets, and the target constructions that compose with smoothing.

A mixed batch is ``x' = lam * x + (1 - lam) * x[perm]`` (Mixup) or ``x`` with a box pasted from ``x[perm]``
(CutMix; ``lam`` is corrected to the un-pasted area), with ``perm`` = the reversed batch. Labels are carried as
:class:`MixedLabels` ``(y_a, y_b, lam)`` and turned into targets only in the loss:

* cross-entropy: ``t = lam * smooth(onehot(y_a)) + (1 - lam) * smooth(onehot(y_b))`` with
  ``smooth(h) = (1 - eps) * h + eps / C``. Each one-hot is smoothed before mixing, so label smoothing is applied
  under mixup too (the OutGrid seed silently dropped it). Rows sum to 1.
* binary cross-entropy (DeiT III): ``t = [lam * onehot(y_a) + (1 - lam) * onehot(y_b) > threshold]`` - binarised
  BEFORE any smoothing (smoothing first would make every entry positive) - then optionally smoothed as
  ``t * (1 - eps) + eps / C``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MixedLabels", "MixupCutmix", "smooth_one_hot", "soft_targets", "binary_targets", "cutmix_box"]


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``(1 - eps) * onehot(y) + eps / C`` as float32 ``[B, C]``."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    oh = F.one_hot(y.long(), num_classes).float()
    return oh * (1.0 - smoothing) + smoothing / num_classes


@dataclass
class MixedLabels:
    """Integer labels of the two mixed sources and the weight of the first (a scalar for the batch)."""
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float

    @classmethod
    def unmixed(cls, y: torch.Tensor) -> "MixedLabels":
        return cls(y, y, 1.0)


def soft_targets(labels: MixedLabels | torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    if not isinstance(labels, MixedLabels):
        labels = MixedLabels.unmixed(labels)
    lam = float(labels.lam)
    return (lam * smooth_one_hot(labels.y_a, num_classes, smoothing)
            + (1.0 - lam) * smooth_one_hot(labels.y_b, num_classes, smoothing))


def binary_targets(labels: MixedLabels | torch.Tensor, num_classes: int, smoothing: float = 0.0,
                   threshold: float = 0.0) -> torch.Tensor:
    if not isinstance(labels, MixedLabels):
        labels = MixedLabels.unmixed(labels)
    lam = float(labels.lam)
    mixed = lam * F.one_hot(labels.y_a.long(), num_classes).float() \
        + (1.0 - lam) * F.one_hot(labels.y_b.long(), num_classes).float()
    t = (mixed > threshold).float()
    if smoothing:
        t = t * (1.0 - smoothing) + smoothing / num_classes
    return t


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Box ``(y0, y1, x0, x1)`` of relative area about ``1 - lam`` with a uniform centre, clipped to the image."""
    ratio = np.sqrt(1.0 - lam)
    ch, cw = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
    x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
    return int(y0), int(y1), int(x0), int(x1)


class MixupCutmix:
    """Batch-mode Mixup/CutMix (timm semantics: one ``lam`` per batch, partner = reversed batch).

    With probability ``prob`` a batch is mixed; then, when both alphas are > 0, CutMix is used with probability
    ``switch_prob`` and Mixup otherwise. ``lam ~ Beta(alpha, alpha)``; CutMix's ``lam`` is recomputed from the
    clipped box area. The batch size must be even (as in timm) so that pairs are well defined.
    """

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, seed: int = 0):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup.mixup_alpha={mixup_alpha} and mixup.cutmix_alpha={cutmix_alpha} must be >= 0")
        if not (0.0 <= prob <= 1.0 and 0.0 <= switch_prob <= 1.0):
            raise ValueError(f"mixup.prob={prob} and mixup.switch_prob={switch_prob} must be in [0, 1]")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.rng = np.random.default_rng(seed)
        self.last_mode = "none"

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _choose(self) -> tuple[str, float]:
        if not self.active or self.rng.random() >= self.prob:
            return "none", 1.0
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = self.rng.random() < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return ("cutmix" if use_cutmix else "mixup"), float(self.rng.beta(alpha, alpha))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, MixedLabels]:
        if x.shape[0] % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {x.shape[0]}; set drop_last or an even "
                             "data.batch_size_per_gpu")
        mode, lam = self._choose()
        self.last_mode = mode
        if mode == "none":
            return x, MixedLabels.unmixed(y)
        partner = x.flip(0)
        if mode == "mixup":
            x = x * lam + partner * (1.0 - lam)
        else:
            h, w = x.shape[-2:]
            y0, y1, x0, x1 = cutmix_box(h, w, lam, self.rng)
            x = x.clone()
            x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        return x, MixedLabels(y, y.flip(0), lam)
