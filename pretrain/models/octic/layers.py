"""D8-equivariant layers on the 5-tuple layout ``(A1, A2, B1, B2, X_E[..., 2, 2c])`` (see ``group.py``).

Parameter names follow the published octic-vits code so that its checkpoints load with the identity mapping
(``lift8.conv_A1.weight``, ``lin_A1``..``lin_E``, ``alpha_A1``..``alpha_E``/``beta``, ``gamma_1``/``gamma_2``...).
Formulas are those of shared/specs/octic.md §1.5-1.12, including the LayerNormD8 E-variance weighting quirk.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ...layers.attention import attention, resolve_backend
from ...layers.mlp import Mlp
from .group import Q, SQRT2_OVER_4, to_5tuple, to_8tuple

ONE_D_IRREPS = ("A1", "A2", "B1", "B2")


def tuple_add(xs, ys):
    return tuple(x + y for x, y in zip(xs, ys))


# --- quarter-tensor unfolding (shared by the lift kernels and the positional embedding) ------------------------
def unfold_quarter(w: torch.Tensor, irrep: str, dims: tuple[int, int]):
    """Unfold a quarter tensor (spatial ``dims`` of size s x s) to 2s x 2s, isotypic of type ``irrep``.

    1-D irreps: tile ``T = [[w, chi(r^3) rot270 w], [chi(r) rot90 w, chi(r^2) rot180 w]]`` (chi(r)=-1 for B*),
    then ``T + flip_W T`` (A1, B1) or ``T - flip_W T`` (A2, B2). E: ``e = [w; flip_H w]``,
    ``comp0 = [e, -flip_W e]``; returns ``(comp0, rot90 comp0)``, the two E components.
    """
    dh, dw = dims
    if irrep == "E":
        e = torch.cat((w, w.flip(dh)), dim=dh)
        comp0 = torch.cat((e, -e.flip(dw)), dim=dw)
        return comp0, comp0.rot90(1, dims=dims)
    sign = -1.0 if irrep in ("B1", "B2") else 1.0
    left = torch.cat((w, sign * w.rot90(1, dims=dims)), dim=dh)
    right = torch.cat((sign * w.rot90(3, dims=dims), w.rot90(2, dims=dims)), dim=dh)
    t = torch.cat((left, right), dim=dw)
    return t + t.flip(dw) if irrep in ("A1", "B1") else t - t.flip(dw)


# --- lifting / patch embedding ---------------------------------------------------------------------------------
class LiftIrrepD8Conv2d(nn.Module):
    """Strided conv whose (even, square) kernel is the ``irrep``-isotypic projection of a quarter kernel.

    1-D irreps scale the quarter weight by sqrt2/4, E by 1/2. E returns two maps: conv with K and with rot90(K).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool,
                 irrep: str = "A1"):
        super().__init__()
        if irrep not in ONE_D_IRREPS + ("E",):
            raise ValueError(f"irrep must be one of A1, A2, B1, B2, E; got {irrep!r}")
        if bias and irrep != "A1":
            raise ValueError(f"a bias is only equivariant on the A1 irrep (got bias=True for {irrep})")
        if kernel_size % 2:
            raise ValueError(f"octic lifting needs an even patch_size, got {kernel_size}")
        if kernel_size == 2 and irrep in ("A2", "B1"):
            raise ValueError(f"no {irrep} component exists in 2x2 kernels; use patch_size >= 4")
        self.kernel_size, self.stride, self.irrep = kernel_size, stride, irrep
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size // 2, kernel_size // 2))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def expand_weight(self):
        if self.irrep == "E":
            return unfold_quarter(0.5 * self.weight, "E", (-2, -1))[0]
        return unfold_quarter(SQRT2_OVER_4 * self.weight, self.irrep, (-2, -1))

    def forward(self, x):
        k = self.expand_weight()
        if self.irrep == "E":
            return (F.conv2d(x, k, None, stride=self.stride),
                    F.conv2d(x, k.rot90(1, dims=(-2, -1)), None, stride=self.stride))
        return F.conv2d(x, k, self.bias, stride=self.stride)


class LiftD8(nn.Module):
    """Six lifting convs (A1 with bias, A2, B1, B2, two E copies), each with C/8 outputs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool = True):
        super().__init__()
        if out_channels % 8:
            raise ValueError(f"embed_dim={out_channels} must be divisible by 8 for octic layers")
        c = out_channels // 8
        conv = partial(LiftIrrepD8Conv2d, in_channels, c, kernel_size, stride)
        self.conv_A1 = conv(bias=bias, irrep="A1")
        self.conv_A2 = conv(bias=False, irrep="A2")
        self.conv_B1 = conv(bias=False, irrep="B1")
        self.conv_B2 = conv(bias=False, irrep="B2")
        self.conv_E_left = conv(bias=False, irrep="E")
        self.conv_E_right = conv(bias=False, irrep="E")

    def forward(self, img):
        """-> 8-tuple of maps ``[B, c, h, w]``."""
        return (self.conv_A1(img), self.conv_A2(img), self.conv_B1(img), self.conv_B2(img),
                *self.conv_E_left(img), *self.conv_E_right(img))


class PatchEmbedD8(nn.Module):
    """Octic patch embedding: image ``[B,3,H,W]`` -> 5-tuple of tokens ``[B, h*w, ...]`` (row-major grid)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, bias: bool = True):
        super().__init__()
        self.patch_size = int(patch_size)
        self.lift8 = LiftD8(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)

    def forward(self, x):
        maps = self.lift8(x)
        return to_5tuple(tuple(m.flatten(2).transpose(1, 2) for m in maps))


# --- positional embedding --------------------------------------------------------------------------------------
def unfold_pos_embed(quarters) -> tuple:
    """Six ``[M/2, M/2, c]`` quarter tensors (A1, A2, B1, B2, E_left, E_right) -> 8 maps ``[M, M, c]``.

    Same tiling as the lift, without its scale factors. The result is a fixed point of the joint spatial +
    isotypic action.
    """
    dims = (0, 1)
    ones = tuple(unfold_quarter(q, irrep, dims) for q, irrep in zip(quarters[:4], ONE_D_IRREPS))
    return ones + unfold_quarter(quarters[4], "E", dims) + unfold_quarter(quarters[5], "E", dims)


def octic_pos_embed(quarters, hw: tuple[int, int]):
    """5-tuple positional embedding for a token grid ``hw`` (tensors ``[h*w, c]`` / ``[h*w, 2, 2c]``).

    Off the stored grid, each unfolded ``[M, M, c]`` map is resized with bicubic interpolation (no antialias,
    align_corners=False), as the original octic-vits code did at training time. Such a resize commutes with
    rot90/flips (and maps an HxW grid to its transpose consistently), so the result is still a fixed point of
    the group action on any target grid.
    """
    maps = unfold_pos_embed(quarters)
    M = maps[0].shape[0]
    if tuple(hw) != (M, M):
        stacked = torch.stack(maps, 0).float().permute(0, 3, 1, 2)  # [8, c, M, M]
        stacked = F.interpolate(stacked, size=tuple(hw), mode="bicubic", align_corners=False, antialias=False)
        maps = tuple(stacked.permute(0, 2, 3, 1).to(quarters[0].dtype).unbind(0))
    return to_5tuple(tuple(m.reshape(hw[0] * hw[1], -1) for m in maps))


# --- linear / affine / norm ------------------------------------------------------------------------------------
class LinearD8(nn.Module):
    """Equivariant linear map (Schur): 4 x Linear(in/8, out/8) + Linear(in/4, out/4) shared by both E components.

    1/8 of a dense layer's weights, 3/16 of its MACs. Bias only on A1.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if in_features % 8 or out_features % 8:
            raise ValueError(f"LinearD8 needs in/out features divisible by 8, got {in_features} -> {out_features}")
        self.in_features, self.out_features = in_features, out_features
        i8, o8 = in_features // 8, out_features // 8
        self.lin_A1 = nn.Linear(i8, o8, bias=bias)
        self.lin_A2 = nn.Linear(i8, o8, bias=False)
        self.lin_B1 = nn.Linear(i8, o8, bias=False)
        self.lin_B2 = nn.Linear(i8, o8, bias=False)
        self.lin_E = nn.Linear(2 * i8, 2 * o8, bias=False)

    def forward(self, xs):
        return (self.lin_A1(xs[0]), self.lin_A2(xs[1]), self.lin_B1(xs[2]), self.lin_B2(xs[3]), self.lin_E(xs[4]))

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.lin_A1.bias is not None}"


class AffineD8(nn.Module):
    """Per-channel scales per irrep (alpha_E shared by both E components) and a shift on A1 only."""

    def __init__(self, dim: int, bias: bool = True, init_value: float = 1.0):
        super().__init__()
        if dim % 8:
            raise ValueError(f"dim={dim} must be divisible by 8")
        c = dim // 8
        self.alpha_A1 = nn.Parameter(torch.full((c,), float(init_value)))
        self.alpha_A2 = nn.Parameter(torch.full((c,), float(init_value)))
        self.alpha_B1 = nn.Parameter(torch.full((c,), float(init_value)))
        self.alpha_B2 = nn.Parameter(torch.full((c,), float(init_value)))
        self.alpha_E = nn.Parameter(torch.full((2 * c,), float(init_value)))
        self.beta = nn.Parameter(torch.zeros(c)) if bias else None

    def forward(self, xs):
        a1 = self.alpha_A1 * xs[0]
        if self.beta is not None:
            a1 = a1 + self.beta
        return (a1, self.alpha_A2 * xs[1], self.alpha_B1 * xs[2], self.alpha_B2 * xs[3], self.alpha_E * xs[4])


class LayerScaleD8(AffineD8):
    """DINOv2-style layer scale (``ls1``/``ls2``): AffineD8 without shift, initialised to ``init_values``."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__(dim, bias=False, init_value=init_values)


class LayerNormD8(nn.Module):
    """Octic LayerNorm with the reference formula (kept for weight compatibility).

    Each of the five tensors has its own mean removed (per E component row for X_E);
    ``sigma = sqrt2/4 * sqrt(var A1 + var A2 + var B1 + var B2 + mean_rows(var X_E) + eps)`` (biased variances),
    i.e. E is weighted by 1 rather than 4 -- equivariant, but not LayerNorm in the regular basis.
    """

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.scaling = AffineD8(dim, bias=bias) if elementwise_affine else nn.Identity()

    def forward(self, xs):
        var = sum(x.var(dim=-1, unbiased=False, keepdim=True) for x in xs[:4])
        var = var + xs[4].var(dim=-1, unbiased=False, keepdim=True).mean(dim=-2)
        std = SQRT2_OVER_4 * torch.sqrt(var + self.eps)
        out = tuple((x - x.mean(dim=-1, keepdim=True)) / std for x in xs[:4])
        out = out + ((xs[4] - xs[4].mean(dim=-1, keepdim=True)) / std.unsqueeze(-1),)
        return self.scaling(out)


# --- nonlinearity ----------------------------------------------------------------------------------------------
def gelu_d8(xs):
    """``Q gelu(Q^T v)`` per channel: isotypic -> regular (a permutation representation), exact GELU, back."""
    v = torch.stack(to_8tuple(xs), dim=-2)  # [..., 8, c]
    q = Q.to(device=v.device, dtype=v.dtype)
    reg = torch.einsum("ji,...jc->...ic", q, v)  # Q^T v
    out = torch.einsum("ij,...jc->...ic", q, F.gelu(reg))
    return to_5tuple(tuple(out.unbind(dim=-2)))


class GeluD8(nn.Module):
    def forward(self, xs):
        return gelu_d8(xs)


class DropoutD8(nn.Module):
    """Dropout with one mask per channel shared by all irrep slots of that channel (per-sample equivariant)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, xs):
        if not self.training or self.p == 0.0:
            return xs
        keep = xs[0].new_empty(xs[0].shape).bernoulli_(1 - self.p) / (1 - self.p)
        return (xs[0] * keep, xs[1] * keep, xs[2] * keep, xs[3] * keep,
                xs[4] * torch.cat((keep, keep), dim=-1).unsqueeze(-2))


class DropPathD8(nn.Module):
    """Stochastic depth: one Bernoulli draw per sample, shared by all irreps."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, xs):
        if self.drop_prob == 0.0 or not self.training:
            return xs
        keep = 1.0 - self.drop_prob
        x0 = xs[0]
        mask = x0.new_empty((x0.shape[0],) + (1,) * (x0.ndim - 1)).bernoulli_(keep) / keep
        return tuple(x * mask for x in xs[:4]) + (xs[4] * mask.unsqueeze(-1),)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class MlpD8(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=GeluD8, bias: bool = True, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = LinearD8(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = LinearD8(hidden_features, out_features, bias=bias)
        self.drop = DropoutD8(drop)

    def forward(self, xs):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(xs)))))


# --- attention -------------------------------------------------------------------------------------------------
def pack_heads(qkv, num_heads: int):
    """LinearD8(dim -> 3 dim) output -> q, k, v ``[B, H, N, hd]``.

    Each head vector reads ``[A1 | A2 | B1 | B2 | E comp0 (2c/H) | E comp1 (2c/H)]`` (c = dim/8).
    """
    B, N, c3 = qkv[0].shape
    c, H = c3 // 3, num_heads
    ones = [t.reshape(B, N, 3, H, c // H) for t in qkv[:4]]
    e = qkv[4].reshape(B, N, 2, 3, H, 2 * c // H).permute(0, 1, 3, 4, 2, 5).flatten(-2)
    packed = torch.cat(ones + [e], dim=-1).permute(2, 0, 3, 1, 4)  # [3, B, H, N, hd]
    return packed.unbind(0)


def unpack_heads(x: torch.Tensor):
    """``[B, H, N, hd]`` -> 5-tuple ``[B, N, c]`` x4 and ``[B, N, 2, 2c]``."""
    B, H, N, hd = x.shape
    c = hd * H // 8
    x1, x2 = x.chunk(2, dim=-1)
    ones = tuple(t.transpose(1, 2).reshape(B, N, c) for t in x1.chunk(4, dim=-1))
    e = x2.reshape(B, H, N, 2, 2 * c // H).permute(0, 2, 3, 1, 4).reshape(B, N, 2, 2 * c)
    return ones + (e,)


class AttentionD8(nn.Module):
    """Octic multi-head attention; q.k is a sum of per-irrep inner products, so the attention map is invariant."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, attn_backend: str = "sdpa"):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 8:
            raise ValueError(f"octic attention needs head_dim = embed_dim/num_heads divisible by 8; "
                             f"got embed_dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = LinearD8(dim, 3 * dim, bias=qkv_bias)
        self.proj = LinearD8(dim, dim, bias=proj_bias)
        self.attn_drop = attn_drop
        self.proj_drop = DropoutD8(proj_drop)
        resolve_backend(attn_backend)
        self.attn_backend = attn_backend

    def forward(self, xs):
        q, k, v = pack_heads(self.qkv(xs), self.num_heads)
        out = attention(q, k, v, self.attn_backend, None, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(unpack_heads(out)))


# --- blocks ----------------------------------------------------------------------------------------------------
class BlockD8(nn.Module):
    """DINOv2-style octic block: ``x + dp(ls1(attn(norm1 x)))``, ``x + dp(ls2(mlp(norm2 x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, drop_path: float = 0.0, init_values=None,
                 attn_backend: str = "sdpa"):
        super().__init__()
        self.norm1 = LayerNormD8(dim)
        self.attn = AttentionD8(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_backend=attn_backend)
        self.ls1 = LayerScaleD8(dim, init_values) if init_values else nn.Identity()
        self.norm2 = LayerNormD8(dim)
        self.mlp = MlpD8(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScaleD8(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPathD8(drop_path)
        self.drop_path2 = DropPathD8(drop_path)

    def forward(self, xs):
        xs = tuple_add(xs, self.drop_path1(self.ls1(self.attn(self.norm1(xs)))))
        return tuple_add(xs, self.drop_path2(self.ls2(self.mlp(self.norm2(xs)))))


class LayerScaleBlockD8(nn.Module):
    """DeiT III-style octic block: layer scales ``gamma_1``/``gamma_2`` (AffineD8 without shift)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, drop_path: float = 0.0, init_values: float = 1e-4,
                 attn_backend: str = "sdpa"):
        super().__init__()
        self.norm1 = LayerNormD8(dim)
        self.attn = AttentionD8(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_backend=attn_backend)
        self.drop_path = DropPathD8(drop_path)
        self.norm2 = LayerNormD8(dim)
        self.mlp = MlpD8(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.gamma_1 = AffineD8(dim, bias=False, init_value=init_values)
        self.gamma_2 = AffineD8(dim, bias=False, init_value=init_values)

    def forward(self, xs):
        xs = tuple_add(xs, self.drop_path(self.gamma_1(self.attn(self.norm1(xs)))))
        return tuple_add(xs, self.drop_path(self.gamma_2(self.mlp(self.norm2(xs)))))


class LayerScaleBlock(nn.Module):
    """Standard DeiT III block (``Layer_scale_init_Block``): parameters ``gamma_1``/``gamma_2`` on the block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, drop_path: float = 0.0, init_values: float = 1e-4,
                 attn_backend: str = "sdpa"):
        super().__init__()
        from ...layers.attention import Attention
        from ...layers.regularization import DropPath

        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_backend=attn_backend)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x):
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
