"""Confusion-matrix metrics: mIoU, per-class IoU, pixel accuracy.

``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` from the confusion matrix ``M[gt, pred]`` accumulated over the whole
split (not averaged per image); pixels whose ground truth is the ignore label are not counted. A class that
appears neither in the ground truth nor in the predictions has an undefined IoU (0/0): it is reported as NaN
and **excluded from the mean** (mmsegmentation's ``nanmean`` convention). Pixel accuracy = trace / total.
"""
from __future__ import annotations

import torch

from pretrain import distributed as du


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """``[C, C]`` int64 counts ``M[gt, pred]`` via ``torch.bincount``; ignored ground-truth pixels are skipped."""
    pred, target = pred.flatten().long(), target.flatten().long()
    keep = target != ignore_index
    if ((target[keep] < 0) | (target[keep] >= num_classes)).any():
        raise ValueError(f"ground-truth labels outside [0, {num_classes}) other than ignore={ignore_index}")
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def reduce_confusion(conf: torch.Tensor) -> torch.Tensor:
    """Sum the per-rank confusion matrices (all ranks get the total)."""
    if du.get_world_size() > 1:
        conf = conf.clone().to(du.init_distributed().device if du.init_distributed().backend == "nccl" else "cpu")
        du.all_reduce_sum(conf)
    return conf.cpu()


def segmentation_metrics(conf: torch.Tensor) -> dict:
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    total = conf.sum()
    gt = conf.sum(1)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    return {
        "mIoU": 100.0 * float(iou[valid].mean()) if valid.any() else float("nan"),
        "aAcc": 100.0 * float(tp.sum() / total) if total > 0 else float("nan"),
        "mAcc": 100.0 * float(acc[~torch.isnan(acc)].mean()) if (~torch.isnan(acc)).any() else float("nan"),
        "per_class_IoU": [100.0 * float(v) if not torch.isnan(v) else None for v in iou],
    }
