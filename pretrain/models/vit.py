"""Vision Transformer with the official DINOv2 parameter layout (published backbones load strictly).

Registered names: ``vit_small``, ``vit_base``, ``vit_large``, ``vit_huge``, ``vit_giant2`` (any patch size;
14 and 16 in configs), with register tokens, LayerScale, uniform or linear drop path, MLP or SwiGLU FFN,
bias switches and the attention backend switch (``sdpa`` | ``math`` | ``xformers`` | ``auto``).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Block, PatchEmbed, drop_path_rates, get_ffn_layer
from .base import Encoder
from .registry import register_encoder


def init_weights_vit(module: nn.Module):
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def interpolate_grid_embedding(pos: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int],
                               offset: float = 0.0, antialias: bool = False) -> torch.Tensor:
    """Bicubic resize of a ``[1, h*w, D]`` grid embedding; ``offset`` reproduces DINOv2's legacy 0.1 kludge."""
    if tuple(src_hw) == tuple(dst_hw):
        return pos
    D = pos.shape[-1]
    grid = pos.float().reshape(1, src_hw[0], src_hw[1], D).permute(0, 3, 1, 2)
    if offset:
        scale = ((dst_hw[0] + offset) / src_hw[0], (dst_hw[1] + offset) / src_hw[1])
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        grid = F.interpolate(grid, size=tuple(dst_hw), mode="bicubic", antialias=antialias)
    if tuple(grid.shape[-2:]) != tuple(dst_hw):
        raise RuntimeError(f"positional embedding resize produced {tuple(grid.shape[-2:])}, expected {dst_hw}")
    return grid.permute(0, 2, 3, 1).reshape(1, -1, D).to(pos.dtype)


class VisionTransformer(Encoder):
    def __init__(self, img_size: int | None = None, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, drop_path_rate: float = 0.0,
                 drop_path_uniform: bool = False, init_values: float | None = 1e-5, ffn_layer: str = "mlp",
                 num_register_tokens: int = 0, interpolate_antialias: bool = False,
                 interpolate_offset: float = 0.1, num_classes: int = 0, attn_backend: str = "sdpa",
                 layerscale: float | None = None):
        super().__init__()
        if img_size is None:  # stored pos-embed grid of the released weights: 37x37 (518 px) for p14, 224 px else
            img_size = 518 if patch_size == 14 else 224
        if layerscale is not None:  # DINOv2 config name for init_values
            init_values = layerscale
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.num_classes = num_classes
        self.n_blocks = depth
        self.num_heads = num_heads
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.pos_grid = (img_size // patch_size, img_size // patch_size)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid[0] * self.pos_grid[1], embed_dim))
        self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
                                if num_register_tokens else None)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        ffn = get_ffn_layer(ffn_layer)
        dpr = drop_path_rates(drop_path_rate, depth, drop_path_uniform)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_bias=proj_bias, ffn_bias=ffn_bias,
                  drop_path=dpr[i], init_values=init_values, ffn_layer=ffn, attn_backend=attn_backend)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None
        self.init_weights()

    def init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        self.apply(init_weights_vit)

    def set_attn_backend(self, backend: str):
        for blk in self.blocks:
            blk.attn.attn_backend = backend

    def interpolate_pos_encoding(self, hw: tuple[int, int]) -> torch.Tensor:
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = interpolate_grid_embedding(patch_pos, self.pos_grid, hw, self.interpolate_offset,
                                               self.interpolate_antialias)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def prepare_tokens(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        hw = self.token_grid(x)
        tokens = self.patch_embed(x)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(hw).to(tokens.dtype)
        if self.register_tokens is not None:  # registers carry no positional embedding
            regs = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
        return tokens

    def _features(self, x, mask):
        t = self.prepare_tokens(x, mask)
        for blk in self.blocks:
            t = blk(t)
        t_norm = self.norm(t)
        R = self.num_register_tokens
        return {
            "x_norm_clstoken": t_norm[:, 0],
            "x_norm_regtokens": t_norm[:, 1:R + 1],
            "x_norm_patchtokens": t_norm[:, R + 1:],
            "x_prenorm": t,
            "masks": mask,
        }

    def _intermediate(self, x, indices, norm):
        hw = self.token_grid(x)
        t = self.prepare_tokens(x, None)
        wanted, outs = set(indices), {}
        for i, blk in enumerate(self.blocks[: max(indices) + 1]):
            t = blk(t)
            if i in wanted:
                outs[i] = self.norm(t) if norm else t
        R = self.num_register_tokens
        return [(outs[i][:, R + 1:], outs[i][:, 0], hw) for i in indices]

    def adapt_to_state_dict(self, sd, report):
        """Adopt the stored positional-embedding grid of a checkpoint (e.g. 37x37 of the 518-px hub weights)."""
        pos = sd.get("pos_embed")
        if pos is None or pos.shape == self.pos_embed.shape or pos.shape[-1] != self.embed_dim:
            return
        n = pos.shape[1] - 1
        side = int(round(math.sqrt(n)))
        if side * side != n:
            return
        report.notes.append(f"pos_embed grid {self.pos_grid[0]}x{self.pos_grid[1]} -> {side}x{side} "
                            "(the checkpoint's stored grid; it is interpolated to any input size at run time)")
        self.pos_grid = (side, side)
        self.pos_embed = nn.Parameter(torch.zeros_like(pos, device=self.pos_embed.device, dtype=self.pos_embed.dtype))


# DINOv2 widths/depths/heads
VIT_SIZES = {
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16),
    "vit_giant2": dict(embed_dim=1536, depth=40, num_heads=24, ffn_layer="swiglufused"),
}

_VIT_TEST = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)


def _make_vit(size_kwargs, **overrides):
    kwargs = dict(size_kwargs)
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)


for _name, _size in VIT_SIZES.items():
    register_encoder(_name, family="vit", test_overrides=_VIT_TEST,
                     description=f"ViT {_size['embed_dim']}/{_size['depth']}/{_size['num_heads']} (DINOv2 layout)")(
        partial(_make_vit, _size))

