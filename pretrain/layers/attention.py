"""Multi-head self-attention with swappable backends.

Backends (one switch, ``attn_backend``):

* ``sdpa`` (default): ``torch.nn.functional.scaled_dot_product_attention``; picks flash / memory-efficient
  kernels on CUDA automatically and a fused C++ kernel on CPU.
* ``math``: the plain reference ``softmax(q k^T / sqrt(d)) v``; used by tests as the independent reference.
* ``xformers``: ``xformers.ops.memory_efficient_attention`` when xformers is installed (CUDA only).
  Selecting it without xformers raises a clear error; ``auto`` picks xformers on CUDA when present, else sdpa.
"""
from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

ATTN_BACKENDS = ("sdpa", "math", "xformers", "auto")

_XFORMERS_AVAILABLE = importlib.util.find_spec("xformers") is not None


def xformers_available() -> bool:
    return _XFORMERS_AVAILABLE


def resolve_backend(backend: str, device: torch.device | None = None) -> str:
    if backend not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend={backend!r} is not one of {ATTN_BACKENDS}")
    if backend == "auto":
        on_cuda = device is not None and device.type == "cuda"
        return "xformers" if (on_cuda and _XFORMERS_AVAILABLE) else "sdpa"
    if backend == "xformers" and not _XFORMERS_AVAILABLE:
        raise RuntimeError(
            "attn_backend='xformers' was selected but xformers is not installed; "
            "install the extra (pip install -e .[xformers]) or use attn_backend=sdpa"
        )
    return backend


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None):
    """Reference attention on ``[B, H, N, d]`` tensors (additive float or boolean keep-mask)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = (q.float() @ k.float().transpose(-2, -1)) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    return (logits.softmax(dim=-1) @ v.float()).to(q.dtype)


def attention(q, k, v, backend: str = "sdpa", attn_mask=None, dropout_p: float = 0.0):
    """Scaled dot-product attention on ``[B, H, N, d]`` tensors with the selected backend."""
    backend = resolve_backend(backend, q.device)
    if backend == "math":
        return math_attention(q, k, v, attn_mask)
    if backend == "xformers" and q.device.type == "cuda" and attn_mask is None:
        from xformers.ops import memory_efficient_attention  # guarded: only on CUDA with xformers

        out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), p=dropout_p)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


class Attention(nn.Module):
    """DINOv2-compatible attention: parameters ``qkv`` and ``proj`` (names match published checkpoints)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, attn_backend: str = "sdpa"):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        resolve_backend(attn_backend)
        self.attn_backend = attn_backend

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = attention(q, k, v, self.attn_backend, attn_mask, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
