"""DINO / iBOT projection head: MLP -> L2-normalise -> unit-norm prototypes.

The prototypes ("last layer") are a bias-free linear map whose weight rows are re-normalised to unit length in
every forward pass. This is exactly DINOv2's ``weight_norm(Linear)`` with the magnitude ``weight_g`` frozen at 1
(``w = g * v / ||v||`` with ``g = 1``), but it stores one plain parameter ``last_layer.weight`` (the direction
``v``), so FSDP2 ``fully_shard`` and DCP state dicts see an ordinary tensor. Reference checkpoints that carry
``last_layer.weight_g`` / ``last_layer.weight_v`` (or the parametrisation keys
``last_layer.parametrizations.weight.original0/1``) are converted on load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _l2_eps(dtype: torch.dtype) -> float:
    # as the reference: 1e-6 keeps the eps representable in half precision
    return 1e-6 if dtype in (torch.float16, torch.bfloat16) else 1e-12


class _UnitRowLinear(torch.autograd.Function):
    """``y = x @ normalize(w, dim=1).T`` computed as ``(x @ w.T) * (1 / ||w_k||)`` (column scaling of the output).

    Normalising the ``[K, D]`` weight would cost several passes (and allocations) over it in the forward and
    backward; scaling the ``[R, K]`` output costs one in-place pass. Backward, with ``G = (g * inv)^T x``:
    ``dx = (g * inv) w``, ``dw_k = G_k - inv_k^2 (w_k . G_k) w_k`` (the part of ``G_k`` orthogonal to ``w_k``),
    and no norm gradient for rows whose norm is clamped to ``eps`` (as ``F.normalize``).
    """

    @staticmethod
    def forward(ctx, x, w, eps: float):
        norm = torch.linalg.vector_norm(w, dim=1)
        inv = norm.clamp_min(eps).reciprocal()
        y = _scaled_logits(x, w, inv)
        ctx.save_for_backward(x, w, inv, norm > eps)
        ctx.compute_dtype = y.dtype  # the GEMM's dtype (bf16 under autocast); the backward GEMMs use it too
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, inv, free = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        cdt = ctx.compute_dtype  # mixed precision: GEMMs in the forward's dtype, the projection in w's dtype
        xc, wc = x.to(cdt), w.to(cdt)
        dx = torch.zeros_like(xc) if need_x else None
        dw = torch.empty_like(w) if need_w else None
        K = w.shape[0]
        chunk = max(PROTOTYPE_CHUNK, CHUNK_ELEMENTS // max(1, g.shape[0]))  # temporaries <= ~64 MiB (fp32)
        for a in range(0, K, chunk):  # chunks of prototypes
            b = min(K, a + chunk)
            gs = (g[:, a:b] * inv[a:b]).to(cdt)
            if need_x:
                dx.addmm_(gs, wc[a:b])
            if need_w:
                if cdt == w.dtype:
                    G = torch.mm(gs.t(), xc, out=dw[a:b])
                else:
                    G = dw[a:b].copy_(torch.mm(gs.t(), xc))
                coef = torch.linalg.vecdot(w[a:b], G) * inv[a:b].square() * free[a:b]
                G.addcmul_(w[a:b], coef.unsqueeze(1), value=-1.0)
        return (dx.to(x.dtype) if need_x else None), dw, None


PROTOTYPE_CHUNK = 8192  # fewest prototypes per backward chunk
CHUNK_ELEMENTS = 2 ** 24  # a chunk's [rows, chunk] temporaries hold at most this many elements (one chunk on CPU)
TILED_MAX_ROWS = 1024  # CPU forward: up to this many rows, tiled transposed GEMM (below)
TILE_ELEMENTS = 2 ** 18  # a forward tile [prototypes, rows] holds about this many elements (1 MiB fp32: L2-resident)
MIN_TILE = 256


def _scaled_logits(x: torch.Tensor, w: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """``(x @ w.T) * inv`` as a contiguous ``[R, K]`` tensor.

    On CPU with few rows (a DINOv2 step's few hundred cls + masked-patch rows against 65536 prototypes), MKL's GEMM
    is slower writing the long-row ``[R, K]`` output than writing ``[K', R]``; ``python launchers/benchmark.py
    prototypes`` times both paths side by side (and shows them equal at ~1100 rows). So the prototypes are walked in tiles: each tile's ``w[a:b] @ x.T`` lands in
    a small cache-resident ``[K', R]`` buffer, and one transposing multiply by ``inv`` stores it into ``y[:, a:b]``
    (the column scaling costs no extra pass over ``y``). Elsewhere: one GEMM and an in-place scaling.
    """
    if uses_tiled_forward(x.device.type, x.shape[0]):
        return tiled_scaled_logits(x, w, inv)
    return one_gemm_scaled_logits(x, w, inv)


def uses_tiled_forward(device_type: str, rows: int) -> bool:
    return device_type == "cpu" and 0 < rows <= TILED_MAX_ROWS


def forward_tile(rows: int) -> int:
    """Prototypes per tile of the tiled forward for ``rows`` rows."""
    return max(MIN_TILE, TILE_ELEMENTS // max(1, rows))


def one_gemm_scaled_logits(x: torch.Tensor, w: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    return torch.mm(x, w.t()).mul_(inv)


def tiled_scaled_logits(x: torch.Tensor, w: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """The tiled CPU path of :func:`_scaled_logits` (any device; used there for up to ``TILED_MAX_ROWS`` rows)."""
    R, K = x.shape[0], w.shape[0]
    # the dtype autocast would give the GEMM (``out=`` calls are not autocast, so cast the operands once)
    dev = x.device.type
    cdt = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
           else torch.promote_types(x.dtype, w.dtype))
    xt, wc = x.to(cdt).t(), w.to(cdt)
    tile = forward_tile(R)
    y = x.new_empty((R, K), dtype=cdt)
    buf = x.new_empty((min(tile, K), R), dtype=cdt)
    for a in range(0, K, tile):
        b = min(K, a + tile)
        part = torch.mm(wc[a:b], xt, out=buf[: b - a])
        torch.mul(part.t(), inv[a:b], out=y[:, a:b])
    return y


class PrototypeLayer(nn.Module):
    """``y = x @ normalize(weight, dim=1).T``: a bias-free Linear whose rows always have unit L2 norm."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_features, self.out_features = in_dim, out_dim
        # nn.Linear's default (kaiming-uniform) init, as the reference which builds the prototypes after its
        # trunc_normal init pass; only the direction of each row matters.
        self.weight = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())

    def normalized_weight(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=1, eps=_l2_eps(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return F.linear(x, self.normalized_weight())  # plain ops for tracers / Inductor, any leading dims
        return _UnitRowLinear.apply(x, self.weight, _l2_eps(self.weight.dtype))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # accept torch.nn.utils.weight_norm / parametrizations.weight_norm layouts (magnitude must be 1)
        for g_key, v_key in ((prefix + "weight_g", prefix + "weight_v"),
                             (prefix + "parametrizations.weight.original0",
                              prefix + "parametrizations.weight.original1")):
            if v_key in state_dict and prefix + "weight" not in state_dict:
                v = state_dict.pop(v_key)
                g = state_dict.pop(g_key, None)
                if g is not None and not torch.allclose(g.float(), torch.ones_like(g, dtype=torch.float32)):
                    v = v * (g / v.norm(dim=1, keepdim=True).clamp_min(1e-12))  # effective weight
                state_dict[prefix + "weight"] = v
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, unit_norm_rows=True"


def _build_mlp(nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int, use_bn: bool,
               bias: bool) -> nn.Sequential:
    if nlayers == 1:
        return nn.Sequential(nn.Linear(in_dim, bottleneck_dim, bias=bias))
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=bias)]
    for _ in range(nlayers - 2):
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim, bias=bias)]
    if use_bn:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim, bias=bias)]
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """MLP (``nlayers`` Linear layers with GELU) -> L2 normalise -> ``out_dim`` unit-norm prototypes.

    Parameter names follow DINOv2 (``mlp.<i>.weight``, ``last_layer.weight``) so reference heads load.
    """

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False, nlayers: int = 3, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, mlp_bias: bool = True):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1 (dino.head_n_layers / ibot.head_n_layers), got {nlayers}")
        for key, v in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim),
                       ("bottleneck_dim", bottleneck_dim)):
            if int(v) <= 0:
                raise ValueError(f"DINOHead {key} must be a positive int, got {v}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mlp = _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim, use_bn, mlp_bias)
        self.mlp.apply(self._init_weights)
        self.last_layer = PrototypeLayer(bottleneck_dim, out_dim)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"DINOHead expects inputs [..., {self.in_dim}] (backbone embed_dim), "
                             f"got {tuple(x.shape)}")
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=_l2_eps(x.dtype))
        return self.last_layer(x)
