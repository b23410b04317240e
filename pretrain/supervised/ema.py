"""Exponential moving average of a model's weights (``ema = decay * ema + (1 - decay) * model``).

Floating-point parameters and buffers are averaged; integer buffers (e.g. BatchNorm's ``num_batches_tracked``)
are copied. The EMA copy is a separate eval-mode module that the training loop evaluates alongside the raw
model (DeiT's reference computed an EMA but never evaluated it).

``warmup=True`` uses ``min(decay, (1 + n) / (10 + n))`` at the ``n``-th update (as TensorFlow's
``ExponentialMovingAverage(num_updates=...)``), so the average forgets the random initialisation quickly; without
it a short run's EMA (and its BatchNorm running statistics) stays dominated by the initial weights.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema.decay={decay} must be in [0, 1]")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = model.state_dict()
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates)) if self.warmup else self.decay
        self.updates += 1
        for name, ema_v in self.module.state_dict().items():
            v = src[name].detach()
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.to(ema_v.dtype), 1.0 - decay)
            else:
                ema_v.copy_(v)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.module.load_state_dict(sd, strict=True)
