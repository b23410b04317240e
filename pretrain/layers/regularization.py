"""LayerScale and stochastic depth (per-sample drop path)."""
from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """``x * gamma`` with ``gamma`` initialised to ``init_values`` (DINOv2 name ``ls1.gamma``)."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def reset_parameters(self):
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x):
        return x * self.gamma


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(rate: float, depth: int, uniform: bool) -> list[float]:
    """Per-block drop-path rates: constant (``uniform``) or linearly increasing from 0 to ``rate``."""
    if uniform:
        return [float(rate)] * depth
    if depth == 1:
        return [float(rate)]
    return [float(rate) * i / (depth - 1) for i in range(depth)]
