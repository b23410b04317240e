"""FLOP counting with fvcore's ``FlopCountAnalysis`` plus handlers for the ops it does not know.

Convention (fvcore's, also used by the ViT/DeiT/DINOv2 papers): **one multiply-add = one FLOP**, i.e. the
numbers are MACs. Counted:

* fvcore built-ins: ``aten::linear``, ``addmm``, ``mm``, ``matmul``, ``bmm``, ``_convolution`` (patch embeds,
  the octic lift convs, ConvMixer convs), ``einsum`` (see below), ``layer_norm``/``group_norm``/``batch_norm``,
  ``adaptive_avg_pool2d``, ``upsample_*``;
* added here: fused attention -- ``aten::scaled_dot_product_attention`` and its CPU/CUDA kernels --
  as ``B*H*(N*M*d_qk + N*M*d_v)`` (the ``q k^T`` and ``attn @ v`` matmuls; softmax not counted),
  ``aten::_convolution_mode`` (convs with ``padding='same'``), and
  ``aten::einsum`` of two operands as the product of the sizes of all indices (exact for one pairwise
  contraction, with ``...`` broadcasting). The octic GELU's ``Q^T v`` / ``Q v`` change of basis traces as two
  ``mm`` and is counted by fvcore (the octic layers switch to plain ops under tracing; their hand-written
  autograd Functions are invisible to the JIT).

Skipped (fvcore ignores them; listed per model in ``FlopReport.skipped``): element-wise ops (add, mul, div,
GELU, softmax, exp, sqrt, clamp...), reductions (mean, var, sum) -- so the octic LayerNormD8, which traces as
var_mean/addcmul, costs 0 while ``nn.LayerNorm`` is counted by fvcore's norm handler (< 1 % of a ViT either
way) -- and pure data movement (cat, reshape, permute, rot90, flip, index). Counts come from a JIT trace at
batch 1, so data-dependent branches follow the traced input.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn

SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_attention_math",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)


def _shape(v) -> list[int]:
    t = v.type()
    sizes = t.sizes() if hasattr(t, "sizes") else None
    if sizes is None:
        raise ValueError("FLOP counting needs static shapes in the traced graph")
    return list(sizes)


def sdpa_flop_jit(inputs, outputs) -> int:
    """q ``[.., N, d]``, k ``[.., M, d]``, v ``[.., M, dv]`` -> ``prod(batch) * N * M * (d + dv)``."""
    q, k, v = (_shape(x) for x in inputs[:3])
    *batch, n, d = q
    m, dv = k[-2], v[-1]
    return prod(batch) * n * m * (d + dv)


def _einsum_sizes(equation: str, shapes: list[list[int]]) -> dict[str, int]:
    lhs = equation.replace(" ", "").split("->")[0]
    sizes: dict[str, int] = {}
    for term, shape in zip(lhs.split(","), shapes):
        if "..." in term:
            pre, post = term.split("...")
            n_ell = len(shape) - len(pre) - len(post)
            letters = list(pre) + [f"_e{i}" for i in range(n_ell)] + list(post)
            # right-align the ellipsis dims so that broadcasting operands share names
            letters = list(pre) + [f"_e{i + 64 - n_ell}" for i in range(n_ell)] + list(post)
        else:
            letters = list(term)
        if len(letters) != len(shape):
            raise ValueError(f"einsum term {term!r} does not match shape {shape}")
        for ch, s in zip(letters, shape):
            sizes[ch] = max(sizes.get(ch, 1), s)
    return sizes


def einsum_flop_jit(inputs, outputs) -> int:
    """Two-operand einsum: MACs = product of the sizes of every index (output and contracted)."""
    equation = inputs[0].toIValue()
    operands = list(inputs[1].node().inputs())
    shapes = [_shape(v) for v in operands]
    if len(shapes) != 2:
        from fvcore.nn.jit_handles import einsum_flop_jit as fv_einsum

        return fv_einsum(inputs, outputs)
    return prod(_einsum_sizes(equation, shapes).values())


def conv_any_flop_jit(inputs, outputs) -> int:
    """Any convolution: ``numel(output) * prod(weight.shape[1:])`` (weight ``[Cout, Cin/groups, *kernel]``);
    used for ``aten::_convolution_mode`` (``padding='same'``, e.g. ConvMixer), which fvcore does not know."""
    return prod(_shape(outputs[0])) * prod(_shape(inputs[1])[1:])


EXTRA_HANDLES = {**{op: sdpa_flop_jit for op in SDPA_OPS}, "aten::einsum": einsum_flop_jit,
                 "aten::_convolution_mode": conv_any_flop_jit}

# ops that move data only (reported separately from the arithmetic that fvcore skips)
_DATA_MOVEMENT = re.compile(r"aten::(cat|stack|view|reshape|permute|transpose|contiguous|flatten|unflatten|"
                            r"expand|expand_as|select|slice|index|index_select|gather|chunk|split|unbind|rot90|"
                            r"flip|squeeze|unsqueeze|t|to|type_as|size|numel|zeros|zeros_like|ones|full|new_zeros|"
                            r"new_empty|empty|clone|copy_|detach|masked_fill|where|_unsafe_view|lift_fresh|"
                            r"contiguous|pad|constant_pad_nd|repeat|repeat_interleave|dropout|alias|narrow)$")


@dataclass
class FlopReport:
    total: int
    by_operator: dict[str, int]
    by_module: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)        # arithmetic ops fvcore did not count
    data_movement: dict[str, int] = field(default_factory=dict)  # ops without arithmetic

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def to_dict(self) -> dict:
        return {"total": self.total, "gflops": self.gflops, "by_operator": self.by_operator,
                "skipped_ops": self.skipped, "data_movement_ops": self.data_movement}


def count_flops(model: nn.Module, inputs, per_sample: bool = True) -> FlopReport:
    """fvcore count of ``model(*inputs)`` (MACs); divided by the batch size when ``per_sample``."""
    from fvcore.nn import FlopCountAnalysis

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    was_training = model.training
    model.eval()
    try:
        fa = FlopCountAnalysis(model, tuple(inputs))
        fa.set_op_handle(**EXTRA_HANDLES)
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        fa.tracer_warnings("none")
        with torch.no_grad():
            total = fa.total()
            by_op = dict(fa.by_operator())
            by_mod = {k: v for k, v in fa.by_module().items() if k.count(".") <= 1}
            unsupported = Counter(fa.unsupported_ops())
    finally:
        model.train(was_training)
    b = inputs[0].shape[0] if per_sample else 1
    skipped = {k: v for k, v in unsupported.items() if not _DATA_MOVEMENT.match(k)}
    moved = {k: v for k, v in unsupported.items() if _DATA_MOVEMENT.match(k)}
    return FlopReport(total // b, {k: v // b for k, v in by_op.items()}, {k: v // b for k, v in by_mod.items()},
                      skipped, moved)


def build_empty(build_fn, device="cpu") -> nn.Module:
    """Build a model on the meta device and materialise *uninitialised* storage: fast for FLOP counting of huge
    models (weights are garbage -- never use for anything that reads values)."""
    from ..models import list_encoders

    list_encoders()  # import every model module *outside* the meta context (module-level tensors stay on CPU)
    with torch.device("meta"):
        model = build_fn()
    return model.to_empty(device=device)


def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
