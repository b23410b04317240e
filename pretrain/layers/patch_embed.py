"""Patch embedding (DINOv2 name ``patch_embed.proj``) and input-size checks shared by all encoders."""
from __future__ import annotations

import torch
from torch import nn


def check_divisible(x: torch.Tensor, multiple: int, what: str = "patch_size") -> tuple[int, int]:
    """Raise a clear error unless the spatial sides of ``x`` are multiples of ``multiple``."""
    if x.ndim != 4:
        raise ValueError(f"expected an image batch [B, C, H, W], got a tensor of shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H % multiple or W % multiple:
        lo_h, lo_w = H // multiple * multiple, W // multiple * multiple
        raise ValueError(
            f"input size {H}x{W} is not a multiple of the encoder's {what}={multiple}; "
            f"resize or crop to e.g. {max(lo_h, multiple)}x{max(lo_w, multiple)} "
            f"(crops.global_crops_size / crops.local_crops_size / the eval resolution)"
        )
    return H // multiple, W // multiple


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.patch_size)
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D], row-major grid
