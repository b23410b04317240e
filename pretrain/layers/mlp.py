"""Feed-forward layers with DINOv2 parameter names (``mlp.fc1/fc2`` and SwiGLU ``mlp.w12/w3``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=nn.GELU, drop: float = 0.0, bias: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwiGLUFFN(nn.Module):
    """SwiGLU FFN; ``hidden = ceil8(int(hidden * 2/3))`` as DINOv2's ``SwiGLUFFNFused`` (same weight layout)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=None, drop: float = 0.0, bias: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        hidden_features = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


FFN_LAYERS = {"mlp": Mlp, "swiglu": SwiGLUFFN, "swiglufused": SwiGLUFFN}


def get_ffn_layer(name: str):
    if name == "identity":
        return lambda in_features, **_: nn.Identity()
    try:
        return FFN_LAYERS[name]
    except KeyError:
        raise ValueError(f"ffn_layer={name!r} is not one of {sorted(FFN_LAYERS) + ['identity']}") from None
