"""Exponential moving average of a model's weights (``ema = decay * ema + (1 - decay) * model``).

Floating-point parameters and buffers are averaged; integer buffers (e.g. BatchNorm's ``num_batches_tracked``)
are copied. The EMA copy is a separate eval-mode module that the training loop evaluates alongside the raw
model (DeiT's reference computed an EMA but never evaluated it).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema.decay={decay} must be in [0, 1]")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = model.state_dict()
        for name, ema_v in self.module.state_dict().items():
            v = src[name].detach()
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.to(ema_v.dtype), 1.0 - self.decay)
            else:
                ema_v.copy_(v)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.module.load_state_dict(sd, strict=True)
