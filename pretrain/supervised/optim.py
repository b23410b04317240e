"""Parameter groups, optimiser (AdamW | LAMB | SGD) and per-iteration learning-rate schedules.

Schedules (one value per training iteration):

* ``cosine``: linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs`` (fractional allowed), then cosine
  to ``min_lr`` (DINOv2's :class:`~pretrain.dinov2.schedules.CosineScheduler`, reused).
* ``onecycle``: ConvMixer's piecewise-linear one-cycle: ``0 -> lr`` at 2/5 of training, ``-> lr/20`` at 4/5,
  ``-> 0`` at the end.
* ``constant``: ``lr`` after the optional warm-up.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..dinov2.schedules import CosineScheduler
from .lamb import Lamb

__all__ = ["param_groups", "build_optimizer", "lr_schedule", "set_lr"]


def _no_wd_name(name: str, names: set[str]) -> bool:
    return any(name == k or name.startswith(k + ".") or name.endswith("." + k) for k in names)


def param_groups(model: nn.Module, weight_decay: float, no_wd_1d: bool = True) -> list[dict]:
    """Two groups: with weight decay, and without (1-D params: biases, norms, LayerScale gammas; plus the
    encoder's ``no_weight_decay_names()`` such as pos_embed / cls_token)."""
    names = set(model.no_weight_decay_names()) if hasattr(model, "no_weight_decay_names") else set()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if (no_wd_1d and p.ndim <= 1) or _no_wd_name(n, names):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay), "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups(model, o.weight_decay, o.no_wd_1d)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    if o.name == "lamb":
        return Lamb(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    raise ValueError(f"optim.name={o.name!r} must be adamw, lamb or sgd")


def lr_schedule(cfg, iters_per_epoch: int) -> np.ndarray:
    o = cfg.optim
    total = int(o.epochs) * int(iters_per_epoch)
    warm = int(round(float(o.warmup_epochs) * iters_per_epoch))
    if o.schedule == "cosine":
        s = CosineScheduler(o.lr, o.min_lr, total, warmup_iters=min(warm, total), start_warmup_value=o.warmup_lr)
        return np.array([s[i] for i in range(total)])
    if o.schedule == "onecycle":
        t = np.arange(total, dtype=np.float64)
        return np.interp(t, [0, 0.4 * total, 0.8 * total, total], [0.0, o.lr, o.lr / 20.0, 0.0])
    if o.schedule == "constant":
        out = np.full(total, float(o.lr))
        if warm:
            out[:warm] = np.linspace(o.warmup_lr, o.lr, warm)
        return out
    raise ValueError(f"optim.schedule={o.schedule!r} must be cosine, onecycle or constant")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
