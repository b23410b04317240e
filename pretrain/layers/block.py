"""Pre-norm transformer block with DINOv2 parameter names."""
from __future__ import annotations

from functools import partial

from torch import nn

from .attention import Attention
from .mlp import Mlp
from .regularization import DropPath, LayerScale


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``, each branch with its own drop path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, drop_path: float = 0.0, init_values=None,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), ffn_layer=Mlp, act_layer=nn.GELU,
                 attn_backend: str = "sdpa"):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_backend=attn_backend)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.drop_path2 = DropPath(drop_path)  # the reference applied drop_path1 twice (FIXME upstream)

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x
