"""Octic-equivariant ViTs (arXiv 2505.15441) behind octo's encoder contract.

One class, three kinds (``octic_equi_break_layer = k``, the number of octic blocks):

* **hybrid** (``invariant=False``, default k = depth//2): blocks [0, k) octic, then the features are broken to a
  plain ``[B, N, C]`` tensor in irrep-major order ``[A1|A2|B1|B2|x4|x5|x6|x7]`` and blocks [k, depth) are standard.
* **invariant-early** (``invariant=True``): at the break the features are invariantized (``invariant_type``) and
  projected back to C by ``invariant_proj``; the outputs are then exactly D8-invariant.
* **fully octic** (k = depth, or -1): every block is octic. Output head (our choice, the reference has none):
  ``LayerNormD8 -> invariantization -> invariant_proj (Linear) -> fc_norm (LayerNorm)``, so cls *and* patch
  tokens are invariant ``[.., C]`` features; ``x_prenorm`` is the irrep-major concat of the last block.

Two parameter layouts, both identical to the published octic-vits code (checkpoints load with strict keys):
``style="dinov2"`` (cls/mask/register tokens as 8 x ``[.., C/8]``, layer scales ``ls1``/``ls2``, init 1e-5) and
``style="deit"`` (cls token as 4 x ``[1,1,C/8]`` + ``[1,1,2,C/4]``, layer scales ``gamma_1``/``gamma_2``,
init 1e-4). Only the A1 entries of cls/mask/register tokens are trainable (the others are frozen zeros), so these
tokens are invariant. The cls token gets no positional embedding (as upstream).

``get_intermediate_layers`` works for every block: octic blocks give the irrep-major concat ``[B, N, C]`` after a
parameter-free LayerNormD8 when ``norm=True`` (raw otherwise); in the fully octic model ``norm=True`` gives the
invariant head output instead (so the last block equals ``x_norm_patchtokens``). Standard blocks use ``norm``.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ...layers import Block, drop_path_rates
from ..base import Encoder
from ..registry import register_encoder
from . import checkpoint_mapping
from .group import SQRT2_OVER_2, D8Tokens, pack, packed_irrep_major, to_5tuple, unpack
from .invariants import build_invariant
from .layers import BlockD8, LayerNormD8, LayerScaleBlock, LayerScaleBlockD8, PatchEmbedD8, octic_pos_embed

STYLES = ("dinov2", "deit")


def _init_linear(module: nn.Module):
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _frozen_list(shapes, trainable_first: bool = True) -> nn.ParameterList:
    """ParameterList of zeros; only entry 0 (the A1 part) is trainable."""
    return nn.ParameterList([nn.Parameter(torch.zeros(s), requires_grad=(i == 0 and trainable_first))
                             for i, s in enumerate(shapes)])


class OcticVisionTransformer(Encoder):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, drop_path_rate: float = 0.0,
                 drop_path_uniform: bool = True, init_values: float | None = None, style: str = "dinov2",
                 octic_equi_break_layer: int | None = None, invariant: bool = False,
                 invariant_type: str = "power_spectrum", num_register_tokens: int = 0, num_classes: int = 0,
                 attn_backend: str = "sdpa", layerscale: float | None = None, ffn_layer: str = "mlp",
                 require_even_grid: bool = False, interpolate_antialias: bool = False,
                 interpolate_offset: float = 0.0, block_chunks: int = 0):
        """``interpolate_antialias``/``interpolate_offset``/``block_chunks`` are accepted for config compatibility
        with the DINOv2 ViT and ignored (octic pos-embeds use plain bicubic resizing, blocks are never chunked)."""
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"style={style!r} is not one of {STYLES}")
        if embed_dim % 8:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by 8 for octic layers")
        if embed_dim % num_heads or (embed_dim // num_heads) % 8:
            raise ValueError(f"octic attention needs head_dim = embed_dim/num_heads divisible by 8; got "
                             f"embed_dim={embed_dim}, num_heads={num_heads}")
        if ffn_layer != "mlp":
            raise ValueError(f"octic ViTs support ffn_layer='mlp' only, got {ffn_layer!r}")
        if patch_size % 2:
            raise ValueError(f"octic ViTs need an even patch_size (quarter-kernel lift), got {patch_size}")
        grid = img_size // patch_size
        if img_size % patch_size or grid % 2:
            raise ValueError(f"img_size={img_size} must be a multiple of 2*patch_size={2 * patch_size} (the stored "
                             "octic positional embedding is an even grid of quarter tensors)")
        if layerscale is not None:
            init_values = layerscale
        if init_values is None:
            init_values = 1e-4 if style == "deit" else 1e-5
        k = depth // 2 if octic_equi_break_layer is None else int(octic_equi_break_layer)
        if k == -1:
            k = depth
        if not 0 <= k <= depth:
            raise ValueError(f"octic_equi_break_layer={octic_equi_break_layer} must be in [0, depth={depth}] "
                             "(or -1 / depth for a fully octic model)")
        self.style = style
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = int(patch_size)
        self.num_register_tokens = num_register_tokens
        self.num_classes = num_classes
        self.n_blocks = depth
        self.num_heads = num_heads
        self.octic_equi_break_layer = k
        self.fully_octic = k == depth
        self.invariant = bool(invariant) or self.fully_octic
        self.invariant_type = invariant_type
        self.require_even_grid = require_even_grid
        self.pos_grid = (grid, grid)
        c = embed_dim // 8

        self.patch_embed = PatchEmbedD8(patch_size, in_chans, embed_dim)
        if style == "deit":
            self.cls_token = _frozen_list([(1, 1, c)] * 4 + [(1, 1, 2, 2 * c)])
        else:
            self.cls_token = _frozen_list([(1, 1, c)] * 8)
        self.register_tokens = _frozen_list([(1, num_register_tokens, c)] * 8) if num_register_tokens else None
        self.mask_token = _frozen_list([(1, c)] * 8)
        self.pos_embed = nn.ParameterList([nn.Parameter(torch.zeros(grid // 2, grid // 2, c)) for _ in range(6)])

        dpr = drop_path_rates(drop_path_rate, depth, drop_path_uniform)
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_bias=proj_bias, ffn_bias=ffn_bias,
                      init_values=init_values, attn_backend=attn_backend)
        octic_cls = LayerScaleBlockD8 if style == "deit" else BlockD8
        std_cls = LayerScaleBlock if style == "deit" else Block
        self.blocks = nn.ModuleList(
            (octic_cls if i < k else std_cls)(embed_dim, num_heads, drop_path=dpr[i], **common) for i in range(depth))
        if self.fully_octic:
            self.norm = LayerNormD8(embed_dim)
        else:
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if self.invariant:
            self.invariantization = build_invariant(invariant_type, embed_dim)
            self.invariant_proj = nn.Linear(self.invariantization.output_dim, embed_dim)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if self.fully_octic else None
        self.inter_norm = LayerNormD8(embed_dim, elementwise_affine=False)  # parameter-free, for intermediates
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None
        self.init_weights()

    # --- init ----------------------------------------------------------------------------------------------
    def init_weights(self):
        std = 8 * 0.02  # upstream: pos/cls std scaled by 8 relative to the ViT baseline
        for p in self.pos_embed:
            nn.init.trunc_normal_(p, std=SQRT2_OVER_2 * std)
        if self.style == "deit":
            nn.init.trunc_normal_(self.cls_token[0], std=std)
        else:
            nn.init.normal_(self.cls_token[0], std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens[0], std=1e-6)
        nn.init.zeros_(self.mask_token[0])
        self.apply(_init_linear)

    def set_attn_backend(self, backend: str):
        for blk in self.blocks:
            blk.attn.attn_backend = backend

    # --- token preparation ---------------------------------------------------------------------------------
    def token_grid(self, x):
        h, w = super().token_grid(x)
        if self.require_even_grid and (h % 2 or w % 2):
            m = 2 * self.patch_size
            raise ValueError(f"input size {x.shape[-2]}x{x.shape[-1]} gives an odd {h}x{w} token grid; this octic "
                             f"encoder was built with require_even_grid=True: use sides that are a multiple of "
                             f"2*patch_size={m}")
        return h, w

    @staticmethod
    def _as_5tuple(plist):
        """8- or 5-entry token ParameterList -> 5-tuple of tensors."""
        vals = list(plist)
        return tuple(vals) if len(vals) == 5 else to_5tuple(tuple(vals))

    def prepare_tokens(self, x, mask=None):
        hw = self.token_grid(x)
        xs = self.patch_embed(x)
        B = x.shape[0]
        if mask is not None:  # iBOT: masked patches become the invariant mask token, before pos-embed
            mt = to_5tuple(tuple(self.mask_token))
            m = mask.unsqueeze(-1)
            xs = tuple(torch.where(m, t.to(v.dtype), v) for t, v in zip(mt[:4], xs[:4])) + (
                torch.where(m.unsqueeze(-1), mt[4].to(xs[4].dtype), xs[4]),)
        pos = octic_pos_embed(tuple(self.pos_embed), hw)
        xs = tuple(v + p.unsqueeze(0).to(v.dtype) for v, p in zip(xs, pos))
        prefix = [self._as_5tuple(self.cls_token)]
        if self.register_tokens is not None:
            prefix.append(self._as_5tuple(self.register_tokens))
        out = []
        for i, v in enumerate(xs):
            parts = [p[i].expand(B, *p[i].shape[1:]).to(v.dtype) for p in prefix]
            out.append(torch.cat(parts + [v], dim=1))
        return tuple(out), hw

    # --- trunk ---------------------------------------------------------------------------------------------
    def _octic_trunk(self, x, mask=None) -> D8Tokens:
        xs, _ = self.prepare_tokens(x, mask)
        t = pack(xs)
        for blk in self.blocks[: self.octic_equi_break_layer]:
            t = blk(t)
        return t

    def octic_trunk_features(self, x, mask=None):
        """5-tuple after the octic blocks (before the break): D8-equivariant under the joint token action."""
        return unpack(self._octic_trunk(x, mask))

    def _invariant_head(self, t: D8Tokens):
        """Fully octic output head: LayerNormD8 -> invariants -> Linear -> LayerNorm."""
        return self.fc_norm(self.invariant_proj(self.invariantization(unpack(self.norm(t)))))

    def _break(self, t: D8Tokens):
        if self.invariant:
            return self.invariant_proj(self.invariantization(unpack(t)))
        return packed_irrep_major(t)

    def _features(self, x, mask):
        xs = self._octic_trunk(x, mask)
        if self.fully_octic:
            x_pre = packed_irrep_major(xs)
            t_norm = self._invariant_head(xs)
        else:
            t = self._break(xs)
            for blk in self.blocks[self.octic_equi_break_layer:]:
                t = blk(t)
            x_pre, t_norm = t, self.norm(t)
        R = self.num_register_tokens
        return {"x_norm_clstoken": t_norm[:, 0], "x_norm_regtokens": t_norm[:, 1:R + 1],
                "x_norm_patchtokens": t_norm[:, R + 1:], "x_prenorm": x_pre, "masks": mask}

    def _intermediate(self, x, indices, norm):
        xs, hw = self.prepare_tokens(x, None)
        xs = pack(xs)
        wanted, outs, k = set(indices), {}, self.octic_equi_break_layer
        t = None
        for i, blk in enumerate(self.blocks[: max(indices) + 1]):
            if i < k:
                xs = blk(xs)
                if i in wanted:
                    if not norm:
                        outs[i] = packed_irrep_major(xs)
                    elif self.fully_octic:
                        outs[i] = self._invariant_head(xs)
                    else:
                        outs[i] = packed_irrep_major(self.inter_norm(xs))
            else:
                if t is None:
                    t = self._break(xs)
                t = blk(t)
                if i in wanted:
                    outs[i] = self.norm(t) if norm else t
        R = self.num_register_tokens
        return [(outs[i][:, R + 1:], outs[i][:, 0], hw) for i in indices]

    # --- optimisation helpers ------------------------------------------------------------------------------

    def layer_id(self, param_name: str) -> int:
        if param_name.startswith("invariant_proj") and not self.fully_octic:
            return self.octic_equi_break_layer  # sits between block k-1 and block k
        return super().layer_id(param_name)

    # --- checkpoints ---------------------------------------------------------------------------------------
    def convert_state_dict(self, sd, report):
        return checkpoint_mapping.convert_state_dict(self, sd, report)

    def adapt_to_state_dict(self, sd, report):
        checkpoint_mapping.adapt_model_to_state_dict(self, sd, report)


# --- registry --------------------------------------------------------------------------------------------------
SIZES = {
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
TEST_OVERRIDES = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=32)


def _make(base_kwargs, **overrides):
    kwargs = dict(base_kwargs)
    kwargs.update(overrides)
    return OcticVisionTransformer(**kwargs)


def _register(name, description, **kwargs):
    register_encoder(name, family="octic", test_overrides=TEST_OVERRIDES, test_img_size=32,
                     description=description)(partial(_make, kwargs))


for _size, _dims in SIZES.items():
    _w = f"{_dims['embed_dim']}/{_dims['depth']}/{_dims['num_heads']}"
    # DINOv2 arch names (patch 16 as the released octic DINOv2 models; override patch_size=14 freely)
    _register(f"hybrid_vit_{_size}", f"hybrid octic ViT {_w} (DINOv2 layout)", style="dinov2", **_dims)
    _register(f"vit_{_size}_inv_early", f"invariant-early octic ViT {_w} (DINOv2 layout)", style="dinov2",
              invariant=True, **_dims)
    _register(f"d8_vit_{_size}", f"fully octic ViT {_w} (DINOv2 layout, invariant head)", style="dinov2",
              octic_equi_break_layer=-1, **_dims)

_DEIT = {"small": 16, "base": 16, "large": 16, "huge": 14}
for _size, _patch in _DEIT.items():
    _dims = SIZES[_size]
    _w = f"{_dims['embed_dim']}/{_dims['depth']}/{_dims['num_heads']} p{_patch}"
    _register(f"hybrid_deit_{_size}_patch{_patch}", f"hybrid octic DeiT III {_w}", style="deit",
              patch_size=_patch, **_dims)
    _register(f"d8_inv_early_deit_{_size}_patch{_patch}", f"invariant-early octic DeiT III {_w}", style="deit",
              patch_size=_patch, invariant=True, **_dims)
