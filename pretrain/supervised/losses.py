"""Classification losses on :class:`~pretrain.supervised.mixup.MixedLabels` (or plain integer labels).

``ce``: soft-target cross-entropy with label smoothing applied to each source before mixing (see ``mixup.py``).
``bce``: DeiT III's binary cross-entropy: mixed targets binarised (``> threshold``) BEFORE smoothing, then
``BCEWithLogits`` averaged over batch x classes. BCE with ``label_smoothing > 0`` is allowed and well defined
(positives ``1 - eps + eps/C``, negatives ``eps/C``); DeiT III itself uses smoothing 0 with BCE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mixup import MixedLabels, binary_targets, soft_targets

__all__ = ["ClassificationLoss", "soft_target_cross_entropy", "LOSSES"]
LOSSES = ("ce", "bce")


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class ClassificationLoss(nn.Module):
    def __init__(self, kind: str, num_classes: int, label_smoothing: float = 0.0, bce_threshold: float = 0.0):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss.name={kind!r} is not one of {LOSSES}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"loss.label_smoothing={label_smoothing} must be in [0, 1)")
        self.kind, self.num_classes = kind, int(num_classes)
        self.label_smoothing, self.bce_threshold = float(label_smoothing), float(bce_threshold)

    def targets(self, labels: MixedLabels | torch.Tensor) -> torch.Tensor:
        if self.kind == "bce":
            return binary_targets(labels, self.num_classes, self.label_smoothing, self.bce_threshold)
        return soft_targets(labels, self.num_classes, self.label_smoothing)

    def forward(self, logits: torch.Tensor, labels: MixedLabels | torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[-1]} classes but the loss expects {self.num_classes} "
                             "(data.num_classes / the dataset's classes)")
        t = self.targets(labels).to(logits.device)
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(logits.float(), t)
        return soft_target_cross_entropy(logits, t)
