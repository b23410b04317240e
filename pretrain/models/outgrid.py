"""OutGridViT ("Outlook-Grid Vision Transformer", pablo-reyes8) as an octo encoder.

Model A (``OutGridNet``, every block = dynamic kernel -> MBConv -> grid attention -> MLP)::

    x -> stem: Conv3x3(3->stem_dim, stride 1, no bias) + BN + SiLU     (no downsampling)
      -> proj_in: Conv1x1(stem_dim->dim0) if stem_dim != dim0
      -> stage s: depth_s x OutGridBlock(dim_s), then Downsample(dim_s->dim_{s+1}) except after the last stage
      -> norm: BatchNorm2d(dim_last) -> mean over (H, W) -> head Linear

Model B (``outlooker front``): the stem is followed by ``front_depth`` dynamic-kernel blocks at dim0, and the
stages hold grid-only blocks (MBConv -> grid attention -> MLP).

The "outlook attention" of the seed repository is *not* VOLO's: it is a per-pixel dynamic k x k kernel
(involution-like), implemented here as :class:`DynamicKernel2d` (the repo calls it ``OutlookAttention2d``).

``grid_size`` keeps the ORIGINAL OutGrid semantics: g is the *number of groups per axis*, i.e. the dilation
stride. Group (gy, gx) holds tokens {(i*g+gy, j*g+gx)}, so a group has (H/g)*(W/g) tokens. (timm/MaxViT's
``grid_size`` G is the opposite - tokens per axis per group - so OutGrid g corresponds to MaxViT G = H/g.)
There is no window attention and no relative-position bias, as in the seed.

Encoder contract mapping: ``patch_size`` = total stride 2^(stages-1) (8 for 4 stages); patch tokens = the final
map after the BN norm (row-major); cls feature = its spatial mean (exactly the classifier input). Masks, given on
the final token grid, are applied at the stem: the masked pixels of the input are zeroed AND the stem output at
masked positions (mask upsampled to the stride-1 stem grid) is replaced by a learned ``mask_token``, so nothing
from masked pixels reaches any output. ``n_blocks`` = number of last-stage blocks (the only blocks whose output
lies on the final token grid); ``layer_id`` numbers all blocks of all stages for layer-wise lr decay
(ids 0 .. ``num_lr_layers`` - 1, see ``Encoder.num_lr_layers``).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DropPath, Mlp, attention, resolve_backend
from ..layers.patch_embed import check_divisible
from .base import Encoder
from .registry import register_encoder


# ------------------------------------------------------------------------------------------------ grid partition
def grid_partition(x: torch.Tensor, g: int) -> torch.Tensor:
    """``[B,H,W,C]`` -> ``[B*g*g, H/g, W/g, C]``; group (gy, gx) holds the tokens (i*g+gy, j*g+gx)."""
    B, H, W, C = x.shape
    if H % g or W % g:
        raise ValueError(f"grid_partition: feature map {H}x{W} is not a multiple of grid_size={g}")
    x = x.view(B, H // g, g, W // g, g, C).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B * g * g, H // g, W // g, C)


def grid_unpartition(x: torch.Tensor, g: int, H: int, W: int) -> torch.Tensor:
    """Exact inverse of :func:`grid_partition`."""
    C = x.shape[-1]
    B = x.shape[0] // (g * g)
    x = x.view(B, g, g, H // g, W // g, C).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, H, W, C)


# ------------------------------------------------------------------------------------------------ layers
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW map."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class DynamicKernel2d(nn.Module):
    """Per-pixel dynamic k x k kernel (the seed repo's ``OutlookAttention2d``; involution-like, NOT VOLO).

    For every position p and head h: ``a[h, p, :] = softmax_kk(attn(x)[h*k*k : (h+1)*k*k, p])`` (logit channel
    layout: head-major, then kernel offsets row-major (dy, dx)); ``y[h, :, p] = sum_o a[h, p, o] v[h, :, p + o]``
    over the k x k neighbourhood with zero padding, then ``proj``. No 1/sqrt(d) scale, no fold (as the seed).
    Cost O(HW C k^2); the k^2 shifted views are accumulated, so the unfolded [B, C k^2, HW] tensor is never built.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"outlook_kernel (dynamic kernel size) must be odd and > 0, got {kernel_size}")
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dynamic kernel: dim={dim} must be divisible by heads={num_heads}")
        self.num_heads, self.kernel_size = num_heads, kernel_size
        self.attn = nn.Conv2d(dim, num_heads * kernel_size ** 2, 1)   # logits (hooked by the analysis tools)
        self.v = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, C, H, W = x.shape
        k, nh = self.kernel_size, self.num_heads
        a = self.attn(x).view(B, nh, k * k, H, W).softmax(dim=2)
        a = self.attn_drop(a)
        v = F.pad(self.v(x), (k // 2,) * 4).view(B, nh, C // nh, H + k - 1, W + k - 1)
        y = 0
        for o in range(k * k):
            dy, dx = divmod(o, k)
            y = y + a[:, :, o:o + 1] * v[..., dy:dy + H, dx:dx + W]
        return self.proj_drop(self.proj(y.reshape(B, C, H, W)))


class Mlp2d(nn.Module):
    def __init__(self, dim: int, ratio: float, drop: float = 0.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = F.silu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.expand(s))


class MBConv(nn.Module):
    """Inverted residual (stride 1): 1x1 expand -> BN/SiLU -> DW3x3 -> BN/SiLU -> SE -> 1x1 project -> BN, + x.

    SE acts on the expanded channels with ``int(se_ratio * expanded)`` hidden units (seed: no pre-norm, no
    drop path, no final activation)."""

    def __init__(self, dim: int, expand_ratio: float = 4.0, se_ratio: float = 0.25):
        super().__init__()
        mid = int(dim * expand_ratio)
        self.expand = nn.Conv2d(dim, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.se = SqueezeExcite(mid, max(1, int(mid * se_ratio)))
        self.project = nn.Conv2d(mid, dim, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(dim)

    def forward(self, x):
        h = F.silu(self.bn1(self.expand(x)))
        h = self.se(F.silu(self.bn2(self.dw(h))))
        return x + self.bn3(self.project(h))


class GridAttention(nn.Module):
    """Multi-head self-attention inside each of the g x g dilated groups of a BHWC map.

    ``grid_size`` g = number of groups per axis = dilation stride (original OutGrid semantics, see module doc).
    Attention runs through :func:`pretrain.layers.attention.attention` (SDPA by default). The analysis tools
    recover the attention maps with :meth:`attention_maps` from the captured input; the forward never forms them.
    """

    def __init__(self, dim: int, num_heads: int, grid_size: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 attn_backend: str = "sdpa"):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"grid attention: dim={dim} must be divisible by num_heads={num_heads}")
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        self.num_heads, self.grid_size, self.head_dim = num_heads, grid_size, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        resolve_backend(attn_backend)
        self.attn_backend = attn_backend

    def _qkv(self, x):
        B, H, W, C = x.shape
        t = grid_partition(x, self.grid_size).reshape(-1, (H // self.grid_size) * (W // self.grid_size), C)
        qkv = self.qkv(t).reshape(t.shape[0], t.shape[1], 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x):
        B, H, W, C = x.shape
        q, k, v = self._qkv(x)
        out = attention(q, k, v, self.attn_backend, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(-1, H // self.grid_size, W // self.grid_size, C)
        return self.proj_drop(self.proj(grid_unpartition(out, self.grid_size, H, W)))

    @torch.no_grad()
    def attention_maps(self, x):
        """Softmax attention ``[B*g*g, heads, N, N]`` for the (normed) BHWC input ``x`` of this module."""
        q, k, _ = self._qkv(x)
        return ((q @ k.transpose(-2, -1)) * self.head_dim ** -0.5).softmax(-1)


class OutlookerBlock2d(nn.Module):
    """Pre-LN residual dynamic kernel + pre-LN residual Conv-MLP (ratio 2), NCHW."""

    def __init__(self, dim, heads, kernel_size=3, mlp_ratio=2.0, drop_path=0.0):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.dyn = DynamicKernel2d(dim, heads, kernel_size)
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        self.mlp2d = Mlp2d(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.dyn(self.norm1(x)))
        return x + self.drop_path(self.mlp2d(self.norm2(x)))


class GridMixer(nn.Module):
    """BHWC pre-LN residual grid attention + pre-LN residual MLP (ratio 4); NCHW in and out."""

    def __init__(self, dim, heads, grid_size, mlp_ratio=4.0, drop_path=0.0, attn_backend="sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.grid_attn = GridAttention(dim, heads, grid_size, attn_backend=attn_backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self.grid_attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


class OutGridBlock(nn.Module):
    """Model A block: dynamic kernel sub-block -> MBConv -> grid attention + MLP (``grid=None``: grid-only
    block of Model B, i.e. no dynamic-kernel sub-block)."""

    def __init__(self, dim, heads, grid_size, kernel_size=3, outlook_mlp_ratio=2.0, expand_ratio=4.0,
                 se_ratio=0.25, mlp_ratio=4.0, drop_path=0.0, with_outlooker=True, attn_backend="sdpa"):
        super().__init__()
        self.outlooker = (OutlookerBlock2d(dim, heads, kernel_size, outlook_mlp_ratio, drop_path)
                          if with_outlooker else None)
        self.mbconv = MBConv(dim, expand_ratio, se_ratio)
        self.grid = GridMixer(dim, heads, grid_size, mlp_ratio, drop_path, attn_backend)

    def forward(self, x):
        if self.outlooker is not None:
            x = self.outlooker(x)
        return self.grid(self.mbconv(x))


def conv_bn_act(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


# ------------------------------------------------------------------------------------------------ model
class OutGridViT(Encoder):
    """OutGridViT Model A (``front_depth=0``) or Model B (``front_depth>0``: outlooker front, grid-only stages).

    Args:
        dims, depths, heads, grid_sizes: per stage; heads = grid-attention heads = dynamic-kernel heads.
        grid_sizes: number of groups per axis (= dilation stride) at each stage; every stage's H and W must be
            multiples of it.
        drop_path_rate: linearly spaced 0..rate over all blocks (front blocks included), one value per block.
    """

    def __init__(self, dims: Sequence[int] = (64, 128, 256, 384), depths: Sequence[int] = (2, 2, 3, 1),
                 heads: Sequence[int] = (2, 4, 8, 6), grid_sizes: Sequence[int] = (8, 8, 4, 2), stem_dim: int = 64,
                 kernel_size: int = 3, outlook_mlp_ratio: float = 2.0, expand_ratio: float = 4.0,
                 se_ratio: float = 0.25, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 front_depth: int = 0, num_classes: int = 0, in_chans: int = 3, attn_backend: str = "sdpa",
                 img_size: int | None = None):
        super().__init__()
        lens = {len(dims), len(depths), len(heads), len(grid_sizes)}
        if len(lens) != 1:
            raise ValueError(f"dims/depths/heads/grid_sizes must have one entry per stage; got {dims}, {depths}, "
                             f"{heads}, {grid_sizes}")
        for s, (d, h) in enumerate(zip(dims, heads)):
            if h < 1 or d % h:
                raise ValueError(f"stage {s}: dims[{s}]={d} must be divisible by heads[{s}]={h} (grid attention and "
                                 "dynamic-kernel heads)")
        if min(depths) < 1:
            raise ValueError(f"every stage needs depth >= 1, got depths={depths}")
        self.dims, self.depths = tuple(dims), tuple(depths)
        self.heads, self.grid_sizes = tuple(heads), tuple(grid_sizes)
        self.front_depth = front_depth
        n_stages = len(dims)
        self.embed_dim = self.num_features = dims[-1]
        self.patch_size = 2 ** (n_stages - 1)
        self.num_register_tokens = 0
        self.num_classes = num_classes
        self.n_blocks = depths[-1]
        self.default_img_size = img_size
        total = front_depth + sum(depths)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else drop_path_rate for i in range(total)]
        self.num_lr_layers = total + 2  # layer_id range for lr decay: embeddings 0, blocks 1..total, head total+1

        self.stem = conv_bn_act(in_chans, stem_dim, 3, 1)
        self.proj_in = nn.Conv2d(stem_dim, dims[0], 1) if stem_dim != dims[0] else nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(dims[0]))
        self.front = nn.ModuleList(OutlookerBlock2d(dims[0], heads[0], kernel_size, outlook_mlp_ratio, dpr[i])
                                   for i in range(front_depth))
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        j = front_depth
        for s in range(n_stages):
            blocks = nn.ModuleList()
            for _ in range(depths[s]):
                blocks.append(OutGridBlock(dims[s], heads[s], grid_sizes[s], kernel_size, outlook_mlp_ratio,
                                           expand_ratio, se_ratio, mlp_ratio, dpr[j], with_outlooker=front_depth == 0,
                                           attn_backend=attn_backend))
                j += 1
            self.stages.append(blocks)
            if s < n_stages - 1:
                self.downsamples.append(conv_bn_act(dims[s], dims[s + 1], 3, 2))
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else None
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------ size checks
    def token_grid(self, x):
        hw = check_divisible(x, self.patch_size, "patch_size (total stride 2^(stages-1))")
        H, W = x.shape[-2:]
        for s, g in enumerate(self.grid_sizes):
            h, w = H // 2 ** s, W // 2 ** s
            if h % g or w % g:
                raise ValueError(
                    f"input {H}x{W}: stage {s} runs at {h}x{w}, which is not a multiple of its grid_size={g} "
                    f"(groups per axis); OutGrid needs H and W to be multiples of 2^s * grid_size[s] at every stage, "
                    f"i.e. multiples of {self.size_multiple()} for grid_sizes={self.grid_sizes}")
        return hw

    def size_multiple(self) -> int:
        import math
        m = 1
        for s, g in enumerate(self.grid_sizes):
            m = m * (2 ** s * g) // math.gcd(m, 2 ** s * g)
        return m

    # ------------------------------------------------------------------------------------------ forward
    def embed(self, x, mask):
        h, w = self.token_grid(x)
        if mask is not None:
            p = self.patch_size
            m = mask.reshape(x.shape[0], 1, h, w).repeat_interleave(p, 2).repeat_interleave(p, 3)
            x = x.masked_fill(m, 0.0)
        y = self.proj_in(self.stem(x))
        if mask is not None:
            y = torch.where(m, self.mask_token.to(y.dtype).view(1, -1, 1, 1), y)
        for blk in self.front:
            y = blk(y)
        return y

    def _run_until_last_stage(self, y):
        for s in range(len(self.stages) - 1):
            for blk in self.stages[s]:
                y = blk(y)
            y = self.downsamples[s](y)
        return y

    @staticmethod
    def _tokens(y):
        return y.flatten(2).transpose(1, 2)

    def _features(self, x, mask):
        y = self._run_until_last_stage(self.embed(x, mask))
        for blk in self.stages[-1]:
            y = blk(y)
        tokens = self._tokens(self.norm(y))
        cls = tokens.mean(dim=1)
        pre = self._tokens(y)
        return {
            "x_norm_clstoken": cls,
            "x_norm_regtokens": tokens.new_zeros(tokens.shape[0], 0, tokens.shape[-1]),
            "x_norm_patchtokens": tokens,
            "x_prenorm": torch.cat([pre.mean(dim=1, keepdim=True), pre], dim=1),
            "masks": mask,
        }

    def _intermediate(self, x, indices, norm):
        hw = self.token_grid(x)
        y = self._run_until_last_stage(self.embed(x, None))
        wanted, outs = set(indices), {}
        for i, blk in enumerate(self.stages[-1][: max(indices) + 1]):
            y = blk(y)
            if i in wanted:
                t = self._tokens(self.norm(y) if norm else y)
                outs[i] = (t, t.mean(dim=1), hw)
        return [outs[i] for i in indices]

    # ------------------------------------------------------------------------------------------ lr decay
    def layer_id(self, param_name: str) -> int:
        """Depth order over ALL blocks, ids 0 .. ``num_lr_layers`` - 1: embeddings (stem, proj_in, mask_token) 0;
        front block i -> i+1; stage blocks numbered on after the front across all stages; a downsample gets the
        id of the first block it feeds; norm/head the last id."""
        if param_name.startswith(("stem.", "proj_in.", "mask_token")):
            return 0
        m = re.match(r"front\.(\d+)\.", param_name)
        if m:
            return int(m.group(1)) + 1
        offsets = [self.front_depth + sum(self.depths[:s]) for s in range(len(self.depths))]
        m = re.match(r"stages\.(\d+)\.(\d+)\.", param_name)
        if m:
            return offsets[int(m.group(1))] + int(m.group(2)) + 1
        m = re.match(r"downsamples\.(\d+)\.", param_name)
        if m:
            return offsets[int(m.group(1)) + 1] + 1
        return self.num_lr_layers - 1

    def set_attn_backend(self, backend: str):
        resolve_backend(backend)
        for m in self.modules():
            if isinstance(m, GridAttention):
                m.attn_backend = backend

    def no_weight_decay_names(self):
        return {"mask_token"}


# ------------------------------------------------------------------------------------------------ named configs
_C14 = dict(dims=(64, 128, 256, 384), depths=(2, 2, 3, 1), heads=(2, 4, 8, 6), grid_sizes=(8, 8, 4, 2))
OUTGRID_CONFIGS = {
    # name: (kwargs, num_classes the reported params were counted with, reported params, img size)
    "outgrid_cifar100_7m": (dict(dims=(48, 96, 192, 256), depths=(1, 2, 3, 1), heads=(2, 3, 6, 8),
                                 grid_sizes=(8, 8, 4, 2), drop_path_rate=0.07), 100, 7.52e6, 32),
    "outgrid_cifar100_14m": (dict(_C14, drop_path_rate=0.08), 100, 14.60e6, 32),
    "outgrid_cifar100_64": (dict(_C14, drop_path_rate=0.1), 100, 14.60e6, 64),
    "outgrid_svhn": (dict(_C14, drop_path_rate=0.1), 10, 14.56e6, 32),
    "outgrid_tinyimagenet_22m": (dict(_C14, depths=(2, 3, 4, 2), drop_path_rate=0.11), 200, 22.54e6, 64),
    "outgrid_tinyimagenet_c_6m": (dict(dims=(48, 96, 192, 256), depths=(1, 2, 2, 1), heads=(2, 3, 6, 8),
                                       grid_sizes=(8, 8, 4, 2), drop_path_rate=0.1), 200, 6.26e6, 64),
    "outgrid_cifar100_large": (dict(dims=(80, 160, 320, 448), depths=(2, 3, 4, 2), heads=(2, 5, 10, 8),
                                    grid_sizes=(4, 4, 2, 1), drop_path_rate=0.12), 100, 32.97e6, 32),
    "outgrid_cifar100_model_b": (dict(_C14, front_depth=3, drop_path_rate=0.1), 100, 12.27e6, 32),
}

_OUTGRID_TEST = dict(dims=(16, 32), depths=(1, 2), heads=(2, 2), grid_sizes=(2, 2), stem_dim=8)


def _make_outgrid(name, **overrides):
    kwargs, _, _, img = OUTGRID_CONFIGS[name]
    kwargs = dict(kwargs, img_size=img)
    kwargs.update(overrides)
    return OutGridViT(**kwargs)


for _name, (_kw, _ncls, _params, _img) in OUTGRID_CONFIGS.items():
    register_encoder(_name, family="outgrid", test_overrides=_OUTGRID_TEST, test_img_size=16,
                     description=f"OutGridViT {'Model B' if _kw.get('front_depth') else 'Model A'} "
                                 f"dims {_kw['dims']} depths {_kw['depths']}, ~{_params / 1e6:.2f}M params with "
                                 f"{_ncls} classes, trained at {_img} px")(partial(_make_outgrid, _name))
