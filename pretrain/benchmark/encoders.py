"""Per-encoder measurements: params, GFLOPs/image, forward and forward+backward img/s, peak memory.

Workloads (``x`` a random ``[B, 3, S, S]`` batch):

* forward: ``eval()``, ``torch.no_grad()``, ``model.forward_features(x)``;
* forward+backward: ``train()``, grads cleared (``set_to_none``), ``forward_features(x)``, backward of the sum of
  the means of every floating output (touches cls and patch tokens, so the whole trunk is differentiated).

``--compile`` wraps the same call in ``torch.compile``; ``--amp`` runs it under ``torch.autocast`` (bf16 on CPU,
fp16 on CUDA). Side-by-side comparisons (:func:`compare`) interleave the contenders' runs (see timing.alternate).
"""
from __future__ import annotations

import ast
import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..models import build_encoder, get_encoder_spec
from .flops import build_empty, count_flops, param_count
from .memory import peak_memory_mb
from .timing import Stats, alternate, measure


# ------------------------------------------------------------------------------------------------ building
def parse_kwargs(items) -> dict[str, dict]:
    """``["vit_small:init_values=None", "*:patch_size=14"]`` -> ``{name: {key: value}}`` (values are Python
    literals when they parse as such, strings otherwise; ``*`` applies to every encoder)."""
    out: dict[str, dict] = {}
    for item in items or ():
        if ":" not in item or "=" not in item.split(":", 1)[1]:
            raise ValueError(f"--kwargs item {item!r} must look like NAME:KEY=VALUE (e.g. vit_small:patch_size=14)")
        name, kv = item.split(":", 1)
        key, val = kv.split("=", 1)
        try:
            val = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            pass
        out.setdefault(name, {})[key] = val
    return out


def _accepts(factory, key: str) -> bool:
    fn = getattr(factory, "func", factory)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    if key in sig.parameters:
        return True
    # partial(_make, cfg) factories forward **overrides to a class: look at the class the module builds
    return any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()) and _class_accepts(fn, key)


def _class_accepts(fn, key: str) -> bool:
    mod = inspect.getmodule(fn)
    for obj in vars(mod).values() if mod else ():
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == mod.__name__:
            try:
                if key in inspect.signature(obj.__init__).parameters:
                    return True
            except (TypeError, ValueError):
                continue
    return False


def octo_kwargs(name: str, img_size: int | None, kwargs: dict | None = None) -> dict:
    """Constructor keywords: ``img_size`` when the family takes one, then the user's ``--kwargs``."""
    spec = get_encoder_spec(name)
    kw = {}
    if img_size is not None and _accepts(spec.factory, "img_size"):
        kw["img_size"] = img_size
    kw.update(kwargs or {})
    return kw


def build_octo(name: str, img_size: int | None = None, kwargs: dict | None = None, empty: bool = False):
    kw = octo_kwargs(name, img_size, kwargs)
    if empty:
        return build_empty(lambda: build_encoder(name, **kw))
    return build_encoder(name, **kw)


def build_timm(name: str, img_size: int | None = None, **kwargs):
    import timm

    kw = dict(pretrained=False, num_classes=0, **kwargs)
    if img_size is not None and name.startswith(("vit_", "deit")):
        kw["img_size"] = img_size
    return timm.create_model(name, **kw)


# ------------------------------------------------------------------------------------------------ workloads
def _reduce(out) -> torch.Tensor:
    """Sum of the means of every floating tensor in a (nested) output."""
    if isinstance(out, torch.Tensor):
        return out.float().mean() if out.is_floating_point() else out.new_zeros((), dtype=torch.float32)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        vals = [_reduce(o) for o in out if o is not None]
        return torch.stack(vals).sum() if vals else torch.zeros(())
    return torch.zeros(())


class Features(nn.Module):
    """``forward(x) = reduce(model.forward_features(x))``: one module to compile for both workloads."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return _reduce(self.model.forward_features(x))


def autocast_ctx(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


@dataclass
class Workloads:
    fwd: Callable[[], object]
    fwd_bwd: Callable[[], object]


def make_workloads(model: nn.Module, x: torch.Tensor, compile: bool | str = False, amp: bool = False) -> Workloads:
    """``compile=True`` compiles the whole measured call; ``compile="blocks"`` compiles every transformer block of a
    copy of ``model`` (as the recipes do with ``train.compile=true``): one compilation per block class, and
    the eager model stays untouched for interleaved comparisons."""
    device = x.device
    if compile == "blocks":
        import copy

        from ..fsdp import find_fsdp_units

        model = copy.deepcopy(model)
        for unit in find_fsdp_units(model):
            if unit is not model:
                unit.compile()
    feats = Features(model)
    call = torch.compile(feats) if compile is True else feats
    params = [p for p in model.parameters() if p.requires_grad]

    def fwd():
        model.eval()
        with torch.no_grad(), autocast_ctx(device, amp):
            return call(x)

    def fwd_bwd():
        model.train()
        for p in params:
            p.grad = None
        with autocast_ctx(device, amp):
            loss = call(x)
        loss.backward()
        return loss

    return Workloads(fwd, fwd_bwd)


# ------------------------------------------------------------------------------------------------ measuring
@dataclass
class Case:
    """One contender: a label, a builder and its input size."""

    label: str
    build: Callable[[], nn.Module]
    img_size: int
    source: str = "octo"
    info: dict = field(default_factory=dict)


def gflops_of(model: nn.Module, img_size: int) -> tuple[float, dict]:
    rep = count_flops(model, torch.randn(1, 3, img_size, img_size))
    return rep.gflops, rep.skipped


def measure_case(case: Case, batch_size: int, repeats: int = 5, warmup: int = 2, compile: bool = False,
                 amp: bool = False, device: str | torch.device = "cpu", flops: bool = True,
                 memory: bool = True, do_bwd: bool = True, model: nn.Module | None = None) -> dict:
    """All per-encoder numbers for one case (timed alone; use :func:`compare` for ratios)."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = (model if model is not None else case.build()).to(device)
    row = {"encoder": case.label, "source": case.source, "img_size": case.img_size, "batch": batch_size,
           "params_M": param_count(model) / 1e6, "compile": compile, "amp": amp, **case.info}
    if flops:
        g, skipped = gflops_of(model.cpu(), case.img_size)
        model.to(device)
        row["gflops"], row["flops_skipped_ops"] = g, skipped
    x = torch.randn(batch_size, 3, case.img_size, case.img_size, device=device)
    wl = make_workloads(model, x, compile=compile, amp=amp)
    st = measure(wl.fwd, warmup, repeats)
    row.update(fwd_img_s=st.rate(batch_size), fwd_spread=st.spread, fwd=st.to_dict())
    if do_bwd:
        sb = measure(wl.fwd_bwd, warmup, repeats)
        row.update(fwd_bwd_img_s=sb.rate(batch_size), fwd_bwd_spread=sb.spread, fwd_bwd=sb.to_dict())
    if memory:
        row["peak_mem_fwd_mb"] = peak_memory_mb(wl.fwd, device)["peak_mb"]
        if do_bwd:
            m = peak_memory_mb(wl.fwd_bwd, device)
            row["peak_mem_fwd_bwd_mb"], row["mem_kind"] = m["peak_mb"], m["kind"]
    return row


def compare(cases: list[Case], batch_size: int, repeats: int = 5, warmup: int = 2, compile_variants=(False,),
            amp: bool = False, device: str | torch.device = "cpu", do_bwd: bool = True,
            models: list[nn.Module] | None = None, compile_first_only: bool = False) -> list[dict]:
    """Interleaved timing of several cases (and optionally their compiled variants) in one process.

    Returns one row per (case, compiled?) with img/s and ``ratio_*`` relative to the *first* row.
    ``compile_first_only``: only the first case gets a compiled variant (compile time is long on small CPUs).
    """
    device = torch.device(device)
    built = models if models is not None else [c.build() for c in cases]
    x = torch.randn(batch_size, 3, cases[0].img_size, cases[0].img_size, device=device)
    keys, wls = [], {}
    for i, (case, model) in enumerate(zip(cases, built)):
        model.to(device)
        for comp in compile_variants:
            if comp and compile_first_only and i > 0:
                continue
            suffix = " [compiled blocks]" if comp == "blocks" else (" [compiled]" if comp else "")
            k = (case.label + suffix, case, model, comp)
            keys.append(k)
            wls[k[0]] = make_workloads(model, x, compile=comp, amp=amp)
    fwd = alternate({k[0]: wls[k[0]].fwd for k in keys}, warmup, repeats)
    fb = alternate({k[0]: wls[k[0]].fwd_bwd for k in keys}, warmup, repeats) if do_bwd else {}
    rows = []
    ref = keys[0][0]
    for label, case, model, comp in keys:
        r = {"encoder": label, "source": case.source, "img_size": case.img_size, "batch": batch_size,
             "params_M": param_count(model) / 1e6, "compile": comp, "amp": amp,
             "fwd_img_s": fwd[label].rate(batch_size), "fwd_spread": fwd[label].spread,
             "ratio_fwd": fwd[ref].median / fwd[label].median, **case.info}
        if do_bwd:
            r.update(fwd_bwd_img_s=fb[label].rate(batch_size), fwd_bwd_spread=fb[label].spread,
                     ratio_fwd_bwd=fb[ref].median / fb[label].median)
        rows.append(r)
    return rows


def timing_samples(stats: dict[str, Stats]) -> dict:
    return {k: v.to_dict() for k, v in stats.items()}
