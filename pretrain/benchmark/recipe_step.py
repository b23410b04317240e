"""Train-step throughput and its breakdown, for the DINOv2 recipe and the supervised recipe.

DINOv2: real ``SSLMetaArch.forward_backward`` steps on a synthetic batch shaped like ``collate_data_and_cast``
output, with clip + AdamW and the EMA as in ``train.py``. Inside each step, module hooks (``_PhaseClock``) stamp
the phases: data (collate + masks; augmentation itself is the ``data`` mode), teacher backbone fwd, teacher heads
+ centering, student backbone fwd, student heads + losses fwd+bwd (until the gradient reaches the backbone
outputs), student backbone bwd, optimizer, EMA. The overhead fraction is
``(teacher heads + student heads/losses + optimizer + EMA) / (teacher bb fwd + student bb fwd + bwd)``, computed
per step and reported as the median over steps.

Supervised: encoder + linear head + cross-entropy + AdamW step vs the encoder's own fwd+bwd, interleaved.
"""
from __future__ import annotations

import random
import statistics
import time

import torch
from torch import nn

from .encoders import _reduce
from .timing import alternate, sync


def ssl_config(config_file: str | None = None, overrides=()):
    from ..dinov2.config import load_ssl_config

    return load_ssl_config(config_file, list(overrides), world_size=1)


VIT_S_OVERRIDES = ("student.arch=vit_small", "student.patch_size=16", "student.drop_path_rate=0.0",
                   "crops.global_crops_size=224", "crops.local_crops_size=96", "crops.local_crops_number=8",
                   "distributed.strategy=none")


def synthetic_samples(cfg, batch_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    G, L, n = cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.crops.local_crops_number
    samples = []
    for _ in range(batch_size):
        gl = [torch.randn(3, G, G, generator=g) for _ in range(2)]
        samples.append(({"global_crops": gl, "global_crops_teacher": gl,
                         "local_crops": [torch.randn(3, L, L, generator=g) for _ in range(n)], "offsets": ()}, 0))
    return samples


def make_collate(cfg, patch_size: int):
    from ..data.collate import collate_data_and_cast
    from ..data.masking import MaskingGenerator

    n = cfg.crops.global_crops_size // patch_size
    gen = MaskingGenerator((n, n), max_num_patches=0.5 * n * n)

    def collate(samples):
        return collate_data_and_cast(samples, mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
                                     mask_probability=cfg.ibot.mask_sample_probability, n_tokens=n * n,
                                     mask_generator=gen, generator=random.Random(0))

    return collate


class _PhaseClock:
    """Timestamps taken inside one ``forward_backward`` call by module hooks (CUDA-synchronised).

    * pre/post forward hooks on the teacher and student backbones;
    * tensor hooks on every floating output of the student backbone: the *first* gradient to arrive marks the end
      of the heads' and losses' backward, i.e. the start of the backbone's own backward. The CPU autograd engine
      runs ready nodes in decreasing creation order, so every head/loss node (created after the backbone) has run
      before the first node created inside the backbone forward; a later output hook can fire only after whole
      backbone branches (e.g. the local crops') ran, so the last arrival would bill backbone work to the heads.
    """

    def __init__(self, model):
        self.t = {}
        self.handles = []
        for who in ("teacher", "student"):
            bb = getattr(model, who)["backbone"]
            self.handles.append(bb.register_forward_pre_hook(self._stamp(f"{who}_bb_start")))
            self.handles.append(bb.register_forward_hook(self._post(who)))

    def _stamp(self, key):
        def hook(*_):
            sync()
            self.t[key] = time.perf_counter()
        return hook

    def _post(self, who):
        def hook(module, inputs, output):
            sync()
            self.t[f"{who}_bb_end"] = time.perf_counter()
            if who == "student":
                outs = output if isinstance(output, (list, tuple)) else [output]
                for o in outs:
                    for v in o.values():
                        if torch.is_tensor(v) and v.requires_grad:
                            v.register_hook(self._grad_arrival)
        return hook

    def _grad_arrival(self, grad):
        if "grad_at_backbone" not in self.t:
            sync()
            self.t["grad_at_backbone"] = time.perf_counter()
        return None

    def remove(self):
        for h in self.handles:
            h.remove()


def head_macs_per_row(head: nn.Module) -> int:
    """MACs of one row through a DINO head: every Linear / prototype weight is one multiply-add per element."""
    from ..dinov2.heads import PrototypeLayer

    return sum(m.weight.numel() for m in head.modules() if isinstance(m, (nn.Linear, PrototypeLayer)))


def overhead_flop_floor(cfg, model, batch) -> dict:
    """The share of the step's MACs that the heads need, relative to the backbone's (the overhead a perfectly
    efficient implementation would still show, before optimizer and EMA).

    Rows through the heads: the student's cls tokens of every crop plus the masked patches, the teacher's global
    cls tokens plus the masked patches. Backward costs twice the forward (student); the teacher has no backward.
    Backbone MACs come from fvcore at the global and local crop sizes.
    """
    from .flops import count_flops

    B, n_local = cfg.train.batch_size_per_gpu, cfg.crops.local_crops_number
    n_masked = int(batch["n_masked_patches"].reshape(-1)[0]) if model.do_ibot else 0
    dino = head_macs_per_row(model.student["dino_head"])
    ibot = head_macs_per_row(model.student["ibot_head"]) if model.ibot_separate_head else dino
    student_head = B * (2 + n_local) * dino + n_masked * ibot
    teacher_head = 2 * B * dino + n_masked * ibot
    bb = model.student["backbone"]
    # the JIT trace cannot follow DINOv2's scale_factor pos-embed resize (offset 0.1); the resize is not counted
    # anyway, so trace with a size-based resize
    offset = getattr(bb, "interpolate_offset", None)
    try:
        if offset:
            bb.interpolate_offset = 0.0
        g, loc = (count_flops(bb, torch.randn(1, 3, s, s)).total
                  for s in (cfg.crops.global_crops_size, cfg.crops.local_crops_size))
    finally:
        if offset:
            bb.interpolate_offset = offset
        bb.train()
    backbone = 2 * B * g + 3 * (2 * B * g + n_local * B * loc)
    heads = teacher_head + 3 * student_head
    return {"head_gmacs": heads / 1e9, "backbone_gmacs": backbone / 1e9, "floor": heads / backbone,
            "head_rows": {"student": B * (2 + n_local) + n_masked, "teacher": 2 * B + n_masked}}


def dinov2_step_breakdown(cfg, repeats: int = 3, warmup: int = 1, device="cpu") -> dict:
    """Per-phase times of ``repeats`` real train steps (after ``warmup``); every phase is timed inside the same
    step, so load changes of a shared machine hit all phases of a step alike. Medians over steps."""
    from ..dinov2.meta_arch import SSLMetaArch
    from ..dinov2.train import apply_optim_schedules, build_optimizer
    from ..fsdp import clip_grad_norm_

    device = torch.device(device)
    torch.manual_seed(0)
    model = SSLMetaArch(cfg).to(device)
    model.train()
    optimizer = build_optimizer(cfg, model)
    apply_optim_schedules(optimizer, lr=1e-4, wd=0.04, last_layer_lr=1e-4)
    B = cfg.train.batch_size_per_gpu
    samples = synthetic_samples(cfg, B)
    collate = make_collate(cfg, model.student["backbone"].patch_size)
    temp, mom = cfg.teacher.teacher_temp, cfg.teacher.momentum_teacher
    clock = _PhaseClock(model)
    steps = []
    try:
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in collate(samples).items()}
            sync()
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            clock.t.clear()
            model.forward_backward(batch, teacher_temp=temp)
            sync()
            t2 = time.perf_counter()
            if cfg.optim.clip_grad:
                for m in model.student.values():
                    clip_grad_norm_(m.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            sync()
            t3 = time.perf_counter()
            model.update_teacher(mom)
            sync()
            t4 = time.perf_counter()
            c = clock.t
            ph = {
                "data (collate + masks)": t1 - t0,
                "teacher backbone fwd": c["teacher_bb_end"] - c["teacher_bb_start"],
                "teacher heads + centering": c["student_bb_start"] - c["teacher_bb_end"],
                "student backbone fwd": c["student_bb_end"] - c["student_bb_start"],
                "student heads + losses (fwd+bwd)": c["grad_at_backbone"] - c["student_bb_end"],
                "student backbone bwd": t2 - c["grad_at_backbone"],
                "optimizer (clip + AdamW)": t3 - t2,
                "EMA update": t4 - t3,
                "other (zero_grad, batch split)": (c["teacher_bb_start"] - t1),
                "full step": t4 - t0,
            }
            if i >= warmup:
                steps.append(ph)
    finally:
        clock.remove()
    floor = overhead_flop_floor(cfg, model, collate(samples))
    med = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    spread = {k: (max(s[k] for s in steps) - min(s[k] for s in steps)) / med[k] if med[k] > 0 else 0.0
              for k in steps[0]}
    backbone = med["teacher backbone fwd"] + med["student backbone fwd"] + med["student backbone bwd"]
    overhead_keys = ("teacher heads + centering", "student heads + losses (fwd+bwd)", "optimizer (clip + AdamW)",
                     "EMA update")
    # fraction per step, then the median (robust to load changes between steps)
    fracs = [sum(s[k] for k in overhead_keys) / (s["teacher backbone fwd"] + s["student backbone fwd"]
                                                   + s["student backbone bwd"]) for s in steps]
    n_params = {k: sum(p.numel() for p in model.student[k].parameters()) for k in model.student.keys()}
    return {
        "arch": cfg.student.arch, "batch": B, "global_size": cfg.crops.global_crops_size,
        "local_size": cfg.crops.local_crops_size, "n_local": cfg.crops.local_crops_number,
        "img_per_s": B / med["full step"], "phases_s": med, "spread": spread,
        "derived_s": {"backbone compute (teacher fwd + student fwd/bwd)": backbone,
                      "overhead (heads, losses, optimizer, EMA)": sum(med[k] for k in overhead_keys)},
        "overhead_fraction": statistics.median(fracs), "overhead_fraction_per_step": fracs, "params": n_params,
        "head_flop_floor": floor["floor"], "flops": floor,
        "data_fraction": med["data (collate + masks)"] / med["full step"],
    }


def supervised_step_breakdown(arch: str, img_size: int, batch_size: int, num_classes: int = 1000,
                              kwargs: dict | None = None, repeats: int = 3, warmup: int = 1, device="cpu") -> dict:
    """Encoder + linear head + cross-entropy + AdamW step vs the encoder's own forward/backward."""
    from .encoders import build_octo

    device = torch.device(device)
    torch.manual_seed(0)
    enc = build_octo(arch, img_size, kwargs).to(device).train()
    head = nn.Linear(enc.embed_dim, num_classes).to(device)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(enc(x)), y).backward()
        opt.step()

    def backbone():
        for p in params:
            p.grad = None
        enc(x).float().mean().backward()

    st = alternate({"full step": step, "backbone fwd+bwd": backbone}, warmup, repeats)
    full, bb = st["full step"].median, st["backbone fwd+bwd"].median
    return {"arch": arch, "img_size": img_size, "batch": batch_size, "img_per_s": batch_size / full,
            "phases_s": {"full step": full, "backbone fwd+bwd": bb},
            "spread": {k: v.spread for k, v in st.items()}, "overhead_fraction": (full - bb) / bb}


def prototype_forward_timing(rows: int, prototypes: int = 65536, dim: int = 256, repeats: int = 7,
                             warmup: int = 2, device="cpu") -> dict:
    """The prototype layer's forward ``(x @ w.T) * (1 / ||w_k||)`` both ways ``pretrain.dinov2.heads`` has,
    interleaved: one GEMM writing the ``[rows, prototypes]`` output plus an in-place scaling, and the tiled
    transposed GEMM the layer uses on CPU up to ``TILED_MAX_ROWS`` rows; plus the layer's hand-written backward."""
    from ..dinov2 import heads

    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, dim, generator=g).to(device)
    w = torch.randn(prototypes, dim, generator=g).to(device)
    inv = torch.linalg.vector_norm(w, dim=1).reciprocal()
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    grad = torch.randn(rows, prototypes, generator=g).to(device)
    y = heads._UnitRowLinear.apply(xg, wg, 1e-12)

    def backward():
        torch.autograd.grad(y, (xg, wg), grad, retain_graph=True)

    st = alternate({"one GEMM": lambda: heads.one_gemm_scaled_logits(x, w, inv),
                    "tiled": lambda: heads.tiled_scaled_logits(x, w, inv), "backward": backward}, warmup, repeats)
    macs = rows * prototypes * dim
    return {"rows": rows, "prototypes": prototypes, "dim": dim,
            "tile": heads.forward_tile(rows),
            "one_gemm_ms": st["one GEMM"].median * 1e3, "tiled_ms": st["tiled"].median * 1e3,
            "speedup": st["one GEMM"].median / st["tiled"].median,
            "one_gemm_gmac_s": macs / st["one GEMM"].median / 1e9, "tiled_gmac_s": macs / st["tiled"].median / 1e9,
            "backward_ms": st["backward"].median * 1e3, "backward_gmac_s": 2 * macs / st["backward"].median / 1e9,
            "layer_uses": "tiled" if heads.uses_tiled_forward(device.type, rows) else "one GEMM",
            "spread": max(s.spread for s in st.values())}
