"""D8-equivariant layers. The lift and the positional embedding produce the 5-tuple ``(A1, A2, B1, B2, X_E)``;
every layer inside the blocks works on the packed :class:`~.group.D8Tokens` layout (see ``group.py``).

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
from .group import Q, SQRT2_OVER_4, D8Tokens, pack, to_5tuple, unpack

ONE_D_IRREPS = ("A1", "A2", "B1", "B2")


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
# Every layer below maps D8Tokens -> D8Tokens (``group.pack`` / ``group.unpack`` convert from / to the 5-tuple).
# Leading dims are flattened to L = prod(lead) rows: ``ones`` is read as ``[4, L, c]`` and ``e`` as ``[2L, 2c]``.

def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    return t.reshape(t.shape[0], -1, width)


_Q_CACHE: dict = {}


def _q(device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, Q^T)`` (regular -> isotypic change of basis, both contiguous) on ``device``/``dtype``, built once."""
    key = (device, dtype)
    if key not in _Q_CACHE:
        q = Q.to(device=device, dtype=dtype)
        _Q_CACHE[key] = (q, q.t().contiguous())
    return _Q_CACHE[key]


class LinearD8(nn.Module):
    """Equivariant linear map (Schur): 4 x Linear(in/8, out/8) + Linear(in/4, out/4) shared by both E components.

    1/8 of a dense layer's weights, 3/16 of its MACs. Bias only on A1. On :class:`D8Tokens` this is one ``bmm``
    over the four stacked 1-D weights plus one matmul of both E components (``e`` as ``[2L, 2c]``); the
    ``lin_*`` parameters keep the published names, the stack is taken at forward time (1/8 of a dense weight).
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

    def forward_ones(self, ones: torch.Tensor) -> torch.Tensor:
        """``[4, *lead, in/8]`` -> ``[4, L, out/8]``: the four 1-D irreps as one batched matmul."""
        w = torch.stack((self.lin_A1.weight, self.lin_A2.weight, self.lin_B1.weight, self.lin_B2.weight))
        y = torch.bmm(_rows(ones, w.shape[-1]), w.transpose(1, 2))
        if self.lin_A1.bias is not None:
            y[0].add_(self.lin_A1.bias)
        return y

    def forward(self, t: D8Tokens) -> D8Tokens:
        t = D8Tokens(*t)  # tracing (fvcore, jit) hands plain tuples
        lead = t.ones.shape[1:-1]
        ones = self.forward_ones(t.ones).view(4, *lead, -1)
        return D8Tokens(ones, F.linear(t.e, self.lin_E.weight))

    def forward_to_slots(self, t: D8Tokens):
        """-> hidden slots ``(ones [4, L, o8], e0 [2, L, o8], e1 [2, L, o8])``: A1..B2, then the two E output copies
        ``(x4, x5)`` and ``(x6, x7)`` (component-major): the layout the octic GELU reads."""
        o8 = self.out_features // 8
        w = self.lin_E.weight  # rows [copy0 (o8) | copy1 (o8)]
        e0, e1 = F.linear(t.e, w[:o8]), F.linear(t.e, w[o8:])  # [comp, *lead, o8] each
        return self.forward_ones(t.ones), e0.reshape(2, -1, o8), e1.reshape(2, -1, o8)

    def forward_from_slots(self, ones: torch.Tensor, e: torch.Tensor, lead) -> D8Tokens:
        """Hidden slots ``ones [4, L, i8]``, ``e [4, L, i8]`` (x4..x7) -> D8Tokens."""
        i8 = self.in_features // 8
        w = self.lin_E.weight  # [2 o8, 2 i8]; columns [copy0 | copy1] of the input
        e = e.reshape(2, -1, i8)  # [copy, 2L (comp, row), i8]
        y = torch.addmm(torch.mm(e[0], w[:, :i8].t()), e[1], w[:, i8:].t())  # [2L, 2 o8]
        return D8Tokens(self.forward_ones(ones).view(4, *lead, -1), y.view(2, *lead, -1))

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

    def _ones_scale(self, ndim: int) -> torch.Tensor:
        a = torch.stack((self.alpha_A1, self.alpha_A2, self.alpha_B1, self.alpha_B2))
        return a.view(4, *([1] * (ndim - 2)), a.shape[-1])

    def _ones_shift(self, ndim: int):
        if self.beta is None:
            return None
        b = torch.cat((self.beta.unsqueeze(0), self.beta.new_zeros(3, self.beta.shape[0])))
        return b.view(4, *([1] * (ndim - 2)), b.shape[-1])

    def forward(self, t: D8Tokens) -> D8Tokens:
        t = D8Tokens(*t)  # tracing (fvcore, jit) hands plain tuples
        nd = t.ones.ndim
        shift = self._ones_shift(nd)
        scale = self._ones_scale(nd)
        ones = t.ones * scale if shift is None else torch.addcmul(shift, t.ones, scale)
        return D8Tokens(ones, t.e * self.alpha_E)

    def residual_add(self, x: D8Tokens, y: D8Tokens) -> D8Tokens:
        """``x + self(y)`` in one pass per tensor (no shift: the layer-scale case)."""
        if self.beta is not None:
            z = self(y)
            return D8Tokens(x.ones + z.ones, x.e + z.e)
        return D8Tokens(torch.addcmul(x.ones, y.ones, self._ones_scale(y.ones.ndim)),
                        torch.addcmul(x.e, y.e, self.alpha_E))


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

    def forward(self, t: D8Tokens) -> D8Tokens:
        t = D8Tokens(*t)  # tracing (fvcore, jit) hands plain tuples
        if _tracing():
            out = _normalize_d8(t.ones, t.e, self.eps)  # plain ops: visible to tracers / Inductor
        else:
            out = D8Tokens(*_NormalizeD8.apply(t.ones, t.e, self.eps))
        return self.scaling(out)


def _normalize_d8(ones, e, eps):
    """Centre every slot (every E component row) and divide all by the shared ``sigma`` (reference formula)."""
    var1, mu1 = torch.var_mean(ones, dim=-1, correction=0, keepdim=True)  # [4, *lead, 1]
    var_e, mu_e = torch.var_mean(e, dim=-1, correction=0, keepdim=True)  # [2, *lead, 1]
    inv = torch.rsqrt(var1.sum(0) + var_e.mean(0) + eps) / SQRT2_OVER_4  # 1/sigma, [*lead, 1]
    # (x - mu) / sigma as one addcmul per tensor: x * inv + (-mu * inv)
    return D8Tokens(torch.addcmul(-mu1 * inv, ones, inv), torch.addcmul(-mu_e * inv, e, inv))


LN_EPS = 1e-12  # only keeps the fused kernel finite on constant rows; subtracted again from the variances


class _NormalizeD8(torch.autograd.Function):
    """:func:`_normalize_d8` with a hand-written backward (two passes per tensor instead of autograd's ~8).

    With ``y = (x - mean_slot x) / sigma``, ``sigma^2 = 1/8 (sum_a w_a (x_a - mean)^2 + eps)`` (w = 1/c on the
    1-D slots, 1/(4c) on the E rows): ``dx = (g - mean_slot g - P w / 8 * y) / sigma`` with ``P = sum_a g_a y_a``
    per token.
    """

    @staticmethod
    def forward(ctx, ones, e, eps):
        # per-slot statistics from the fused LayerNorm kernel (~6x faster than var_mean over 96-wide rows):
        # y_s = (x - mu_s) * r_s with r_s = 1/sqrt(var_s + LN_EPS); then rescale every row by (1/r_s) / sigma
        y1, _, r1 = torch.native_layer_norm(ones, [ones.shape[-1]], None, None, LN_EPS)
        ye, _, re = torch.native_layer_norm(e, [e.shape[-1]], None, None, LN_EPS)
        var = (r1.square().reciprocal().sum(0) + re.square().reciprocal().mean(0) - 5 * LN_EPS).clamp_min_(0.0)
        inv = torch.rsqrt(var + eps) / SQRT2_OVER_4  # 1/sigma, [*lead, 1]
        y1.mul_(r1.reciprocal().mul_(inv))
        ye.mul_(re.reciprocal().mul_(inv))
        ctx.save_for_backward(y1, ye, inv)
        return y1, ye

    @staticmethod
    def backward(ctx, g1, ge):
        y1, ye, inv = ctx.saved_tensors
        c = y1.shape[-1]
        p = torch.linalg.vecdot(g1, y1).sum(0) + torch.linalg.vecdot(ge, ye).sum(0)  # [*lead]
        p = p.unsqueeze(-1) * inv
        d1 = torch.addcmul(-g1.mean(-1, keepdim=True) * inv, g1, inv).addcmul_(y1, p, value=-1.0 / (8 * c))
        de = torch.addcmul(-ge.mean(-1, keepdim=True) * inv, ge, inv).addcmul_(ye, p, value=-1.0 / (32 * c))
        return d1, de, None


# --- nonlinearity ----------------------------------------------------------------------------------------------
class _GeluD8Slots(torch.autograd.Function):
    """``Q gelu(Q^T v)`` on hidden slots ``v [8, n]``.

    Saves the regular-basis pre-activation ``r = Q^T v`` (the size of ``v``) instead of ``v``, so the backward is
    ``Q (gelu'(r) * Q^T g)`` with nothing recomputed: four ``[8 x 8] @ [8, n]`` matmuls and two GELU passes in
    all, where autograd through ``stack``/``einsum`` needed about twice the memory traffic.
    """

    @staticmethod
    def forward(ctx, v):
        q, qt = _q(v.device, v.dtype)
        with torch.autocast(v.device.type, enabled=False):
            reg = torch.mm(qt, v)
            out = torch.mm(q, F.gelu(reg))
        ctx.save_for_backward(reg)
        return out

    @staticmethod
    def backward(ctx, g):
        (reg,) = ctx.saved_tensors
        q, qt = _q(reg.device, reg.dtype)
        with torch.autocast(reg.device.type, enabled=False):
            return torch.mm(q, torch.ops.aten.gelu_backward(torch.mm(qt, g.contiguous()), reg))


def gelu_d8_slots(ones: torch.Tensor, e0: torch.Tensor, e1: torch.Tensor):
    """``Q gelu(Q^T v)`` per channel on hidden slots ``ones [4, ...]`` (A1..B2), ``e0 [2, ...]`` (x4, x5) and
    ``e1 [2, ...]`` (x6, x7): isotypic -> regular (a permutation representation), exact GELU, back.

    Returns ``(ones [4, ...], e [4, ...])`` with the E slots in order x4..x7.
    """
    shape = ones.shape[1:]
    v = torch.cat((ones.reshape(4, -1), e0.reshape(2, -1), e1.reshape(2, -1)))
    if _tracing():  # plain ops, visible to tracers (fvcore FLOP counts) and Inductor
        q, qt = _q(v.device, v.dtype)
        out = torch.mm(q, F.gelu(torch.mm(qt, v)))
    else:
        out = _GeluD8Slots.apply(v)
    o, e = out.split(4)  # split, not two slices: its backward is one cat, not two zero-filled copies
    return o.reshape(4, *shape), e.reshape(4, *shape)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def gelu_d8(xs):
    """5-tuple version of :func:`gelu_d8_slots` (tests, analysis)."""
    t = pack(xs)
    lead, c = t.ones.shape[1:-1], t.ones.shape[-1]
    e = t.e.unflatten(-1, (2, c)).movedim(-2, 0)  # [copy, comp, *lead, c]
    ones, e = gelu_d8_slots(t.ones, e[0], e[1])
    e = e.reshape(2, 2, *lead, c).movedim(0, -2).flatten(-2)  # [comp, *lead, 2c]
    return unpack(D8Tokens(ones, e))


class GeluD8(nn.Module):
    """The octic GELU on hidden slot tensors (see :func:`gelu_d8_slots`)."""

    def forward(self, ones, e0, e1):
        return gelu_d8_slots(ones, e0, e1)


class DropoutD8(nn.Module):
    """Dropout with one mask per channel shared by all irrep slots of that channel (per-sample equivariant)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def active(self) -> bool:
        return self.training and self.p > 0.0

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_empty(like.shape).bernoulli_(1 - self.p) / (1 - self.p)

    def forward(self, t: D8Tokens) -> D8Tokens:
        if not self.active():
            return t
        t = D8Tokens(*t)  # tracing (fvcore, jit) hands plain tuples
        keep = self.mask(t.ones[0])  # [*lead, c]
        return D8Tokens(t.ones * keep, t.e * torch.cat((keep, keep), dim=-1))


class DropPathD8(nn.Module):
    """Stochastic depth: one Bernoulli draw per sample, shared by all irreps."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def active(self) -> bool:
        return self.training and self.drop_prob > 0.0

    def forward(self, t: D8Tokens) -> D8Tokens:
        if not self.active():
            return t
        t = D8Tokens(*t)  # tracing (fvcore, jit) hands plain tuples
        keep = 1.0 - self.drop_prob
        x0 = t.ones[0]  # [B, ...]
        mask = x0.new_empty((1, x0.shape[0]) + (1,) * (x0.ndim - 1)).bernoulli_(keep) / keep
        return D8Tokens(t.ones * mask, t.e * mask)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class MlpD8(nn.Module):
    """fc1 -> octic GELU -> fc2. The hidden features stay in slot layout ``[4 | 2 | 2, L, hidden/8]`` (no re-packing)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=GeluD8, bias: bool = True, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = LinearD8(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = LinearD8(hidden_features, out_features, bias=bias)
        self.drop = DropoutD8(drop)

    def forward(self, t: D8Tokens) -> D8Tokens:
        t = D8Tokens(*t)  # tracing (fvcore, jit) hands plain tuples
        ones, e = self.act(*self.fc1.forward_to_slots(t))
        if self.drop.active():  # one mask per hidden channel, shared by the 8 slots
            keep = self.drop.mask(ones[0])
            ones, e = ones * keep, e * keep
        return self.drop(self.fc2.forward_from_slots(ones, e, t.ones.shape[1:-1]))


# --- attention -------------------------------------------------------------------------------------------------
def pack_heads(qkv: D8Tokens, num_heads: int):
    """LinearD8(dim -> 3 dim) output -> q, k, v ``[B, H, N, hd]`` (views of one tensor; one copy).

    Each head vector reads ``[A1 | A2 | B1 | B2 | E comp0 (2c/H) | E comp1 (2c/H)]`` (c = dim/8), the layout of
    the published octic-vits attention.
    """
    _, B, N, c3 = qkv.ones.shape
    H = num_heads
    d = c3 // 3 // H  # c/H
    ones = qkv.ones.view(4, B, N, 3, H, d).permute(3, 1, 4, 2, 0, 5)  # [3, B, H, N, 4, d]
    e = qkv.e.view(2, B, N, 3, H, 2, d).permute(0, 3, 1, 4, 2, 5, 6)  # [comp, 3, B, H, N, 2, d]
    packed = torch.cat((ones, e[0], e[1]), dim=-2)  # [3, B, H, N, 8, d]
    return packed.flatten(-2).unbind(0)


def unpack_heads(x: torch.Tensor) -> D8Tokens:
    """``[B, H, N, hd]`` -> D8Tokens ``ones [4, B, N, c]``, ``e [2, B, N, 2c]``."""
    B, H, N, hd = x.shape
    d = hd // 8
    x = x.view(B, H, N, 8, d)
    ones = x[..., :4, :].permute(3, 0, 2, 1, 4).reshape(4, B, N, H * d)
    e = x[..., 4:, :].unflatten(-2, (2, 2)).permute(3, 0, 2, 1, 4, 5).reshape(2, B, N, 2 * H * d)
    return D8Tokens(ones, e)


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

    def forward(self, t: D8Tokens) -> D8Tokens:
        t = D8Tokens(*t)  # tracing (fvcore, jit) hands plain tuples
        q, k, v = pack_heads(self.qkv(t), self.num_heads)
        out = attention(q, k, v, self.attn_backend, None, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(unpack_heads(out)))


# --- blocks ----------------------------------------------------------------------------------------------------
def residual(x: D8Tokens, y: D8Tokens, scale: nn.Module, drop_path: DropPathD8) -> D8Tokens:
    """``x + drop_path(scale(y))``; fused into one ``addcmul`` per tensor when drop-path is off."""
    if isinstance(scale, AffineD8) and not drop_path.active():
        return scale.residual_add(x, y)
    z = drop_path(scale(y))
    return D8Tokens(x.ones + z.ones, x.e + z.e)


class BlockD8(nn.Module):
    """DINOv2-style octic block: ``x + dp(ls1(attn(norm1 x)))``, ``x + dp(ls2(mlp(norm2 x)))`` on D8Tokens."""

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

    def forward(self, t: D8Tokens) -> D8Tokens:
        t = D8Tokens(*t)  # tracing (fvcore, jit) hands plain tuples
        t = residual(t, self.attn(self.norm1(t)), self.ls1, self.drop_path1)
        return residual(t, self.mlp(self.norm2(t)), self.ls2, self.drop_path2)


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

    def forward(self, t: D8Tokens) -> D8Tokens:
        t = D8Tokens(*t)  # tracing (fvcore, jit) hands plain tuples
        t = residual(t, self.attn(self.norm1(t)), self.gamma_1, self.drop_path)
        return residual(t, self.mlp(self.norm2(t)), self.gamma_2, self.drop_path)


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
