"""FSDP2 sharding, shard-local EMA and DTensor-aware gradient clipping (public PyTorch APIs only).

``shard_module(module, shard_cfg, device_type)`` applies ``torch.distributed.fsdp.fully_shard`` to every
block of ``module`` and then to ``module`` itself:

* the units are ``module.fsdp_units()`` when the module defines it, otherwise every element of every
  ``nn.ModuleList`` attribute named ``blocks`` found anywhere below ``module`` (so encoders with stages,
  ``stages[i].blocks[j]``, work too); units are sharded bottom-up, the root last;
* ``shard_cfg.sharding_strategy``: ``FULL_SHARD`` -> ``reshard_after_forward=True`` (ZeRO-3),
  ``SHARD_GRAD_OP`` -> ``reshard_after_forward=False`` (ZeRO-2: parameters stay gathered between forward
  and backward), ``NO_SHARD`` -> a 2-D ``(replicate=world, shard=1)`` HSDP mesh, i.e. every rank holds the
  full parameters and gradients are all-reduced (DDP semantics, but still DTensor parameters, so EMA and
  checkpoints behave the same for all three strategies);
* ``shard_cfg.mixed_precision.{param_dtype,reduce_dtype,buffer_dtype}`` (``fp32|fp16|bf16``) become a
  ``MixedPrecisionPolicy``; FSDP2 does not manage buffers, so floating buffers are cast to ``buffer_dtype``
  once here. On CPU fp16 is replaced by fp32 (logged once); bf16 is honoured.
* Without an initialised process group, or with world size 1, the module is returned unchanged.

Call ``shard_module`` separately on every module whose methods you call directly (DINOv2 shards
``student.backbone``, ``student.dino_head``, ... separately); an ``nn.ModuleDict`` root is handled by sharding
each of its values as its own root. Methods other than ``forward`` that the training/eval code calls on a
root (``forward_features``, ``get_intermediate_layers``) are registered with
``register_fsdp_forward_method`` so that they gather the root's parameters too.

``ema_update_(teacher, student, m)`` updates the teacher in place on *local shards* without communication;
it requires student and teacher to be sharded the same way (same units, same strategy, same mesh size).
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
           "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STRATEGIES = ("NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD")
FORWARD_METHODS = ("forward_features", "get_intermediate_layers")
_LOGGED: set = set()


def _log_once(msg: str):
    if msg not in _LOGGED:
        _LOGGED.add(msg)
        logger.warning(msg)


def torch_dtype(name) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` (or a ``torch.dtype``) -> ``torch.dtype``."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} in compute_precision.*.mixed_precision: "
                         f"expected one of fp32, fp16, bf16") from None


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if _is_dtensor(t) else t


def _cfg_get(cfg, key, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def mixed_precision_policy(shard_cfg, device_type: str):
    """(``MixedPrecisionPolicy``, buffer dtype) from ``shard_cfg.mixed_precision``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    mp = _cfg_get(shard_cfg, "mixed_precision")
    dtypes = {}
    for key in ("param_dtype", "reduce_dtype", "buffer_dtype"):
        dt = torch_dtype(_cfg_get(mp, key, "fp32") or "fp32")
        if device_type == "cpu" and dt == torch.float16:
            _log_once("fp16 requested in mixed_precision on CPU: using fp32 instead (no fast fp16 path on CPU)")
            dt = torch.float32
        dtypes[key] = dt
    param = None if dtypes["param_dtype"] == torch.float32 else dtypes["param_dtype"]
    reduce = None if dtypes["reduce_dtype"] == torch.float32 else dtypes["reduce_dtype"]
    if reduce is None and param is not None:
        reduce = torch.float32  # FSDP2 would otherwise reduce in param_dtype
    return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=reduce), dtypes["buffer_dtype"]


def find_fsdp_units(module: nn.Module) -> list[nn.Module]:
    """Sub-modules that become FSDP units (pre-order: parents before children)."""
    if hasattr(module, "fsdp_units"):
        units = list(module.fsdp_units())
        bad = [type(u).__name__ for u in units if not isinstance(u, nn.Module)]
        if bad:
            raise TypeError(f"{type(module).__name__}.fsdp_units() must return nn.Modules, got {bad}")
        return units
    units, seen = [], set()
    for _, sub in module.named_modules():
        blocks = getattr(sub, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            for blk in blocks:
                if id(blk) not in seen and any(True for _ in blk.parameters()):
                    seen.add(id(blk))
                    units.append(blk)
    return units


def _mesh(strategy: str, device_type: str):
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if strategy == "NO_SHARD":
        return init_device_mesh(device_type, (world, 1), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device_type, (world,), mesh_dim_names=("shard",))


def shard_module(module: nn.Module, shard_cfg, device_type: str, mesh=None) -> nn.Module:
    """Shard ``module`` with FSDP2 as described in the module docstring; returns the (same) module."""
    strategy = str(_cfg_get(shard_cfg, "sharding_strategy", "SHARD_GRAD_OP")).upper()
    if strategy not in STRATEGIES:
        raise ValueError(f"sharding_strategy={strategy!r} in compute_precision.*: expected one of {STRATEGIES}")
    policy, buffer_dtype = mixed_precision_policy(shard_cfg, device_type)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return module
    for buf in module.buffers():
        if buf.is_floating_point() and buf.dtype != buffer_dtype:
            buf.data = buf.data.to(buffer_dtype)
    if isinstance(module, nn.ModuleDict):
        for child in module.values():
            shard_module(child, shard_cfg, device_type, mesh=mesh)
        return module
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(module, FSDPModule):
        raise ValueError(f"shard_module: {type(module).__name__} is already sharded")
    if mesh is None:
        mesh = _mesh(strategy, device_type)
    kw = dict(mesh=mesh, reshard_after_forward=strategy == "FULL_SHARD", mp_policy=policy)
    for unit in reversed(find_fsdp_units(module)):  # children before parents
        if not isinstance(unit, FSDPModule):  # e.g. blocks of a backbone that was sharded on its own
            fully_shard(unit, **kw)
    fully_shard(module, **kw)
    try:
        from torch.distributed.fsdp import register_fsdp_forward_method
    except ImportError:  # pragma: no cover - older torch
        register_fsdp_forward_method = None
    if register_fsdp_forward_method is not None:
        for name in FORWARD_METHODS:
            if callable(getattr(module, name, None)):
                register_fsdp_forward_method(module, name)
    return module


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float):
    """``teacher <- m * teacher + (1 - m) * student`` on matching parameters, shard-locally.

    Works on the local shard of every DTensor parameter (no communication), which is valid only when the
    two modules are sharded identically; any mismatch in names, local shapes or sharding raises.
    """
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        only_t = sorted(set(t_params) - set(s_params))[:5]
        only_s = sorted(set(s_params) - set(t_params))[:5]
        raise ValueError(f"ema_update_: teacher and student parameters differ (only in teacher: {only_t}, "
                         f"only in student: {only_s}); build both from the same architecture")
    t_list, s_list = [], []
    for name, tp in t_params.items():
        sp = s_params[name]
        if _is_dtensor(tp) != _is_dtensor(sp):
            raise ValueError(f"ema_update_: {name} is sharded in one of teacher/student only; shard both with "
                             "shard_module and the same sharding_strategy")
        tl, sl = _local(tp), _local(sp)
        if tl.shape != sl.shape or (_is_dtensor(tp) and tp.placements != sp.placements):
            raise ValueError(f"ema_update_: local shards of {name} differ (teacher {tuple(tl.shape)} vs student "
                             f"{tuple(sl.shape)}); teacher and student must be sharded identically "
                             "(same sharding_strategy and units)")
        t_list.append(tl)
        s_list.append(sl.to(tl.dtype))
    if t_list:  # t + (1 - m) (s - t): one fused pass per tensor list
        torch._foreach_lerp_(t_list, s_list, 1.0 - momentum)


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Clip the global gradient norm of ``parameters`` (plain tensors and/or DTensors) to ``max_norm``.

    Gradients are grouped by (mesh, placements); each group's norm is computed with
    ``torch.nn.utils.get_total_norm`` (a DTensor norm is materialised with ``full_tensor()``, i.e. reduced over
    the shards), the group norms are combined, and every local gradient is scaled by
    ``min(1, max_norm / (total + 1e-6))``. Returns the total norm (float32 tensor, before clipping).
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    groups: dict = {}
    for g in grads:
        key = (id(g.device_mesh), tuple(g.placements)) if _is_dtensor(g) else ("plain", g.device)
        groups.setdefault(key, []).append(g)
    norms = []
    for gs in groups.values():
        n = torch.nn.utils.get_total_norm(gs, norm_type=norm_type)
        if _is_dtensor(n):
            n = n.full_tensor()
        norms.append(n.float().reshape(()))
    device = _local(grads[0]).device
    norms = torch.stack([n.to(device) for n in norms])
    total = norms.max() if norm_type == float("inf") else torch.linalg.vector_norm(norms, norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if device.type == "cpu" and bool(coef >= 1.0):
        return total  # nothing to clip: skip a read-write pass over every gradient (a free check on CPU, no sync)
    locals_ = [_local(g) for g in grads]
    by_dtype: dict = {}
    for t in locals_:
        by_dtype.setdefault((t.dtype, t.device), []).append(t)
    for (dtype, dev), ts in by_dtype.items():
        torch._foreach_mul_(ts, coef.to(device=dev, dtype=dtype))
    return total
