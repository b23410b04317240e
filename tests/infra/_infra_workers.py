"""Helpers shared by the tests in tests/infra: tiny models, a 2-process gloo launcher, spawned workers.

Workers run in fresh processes started by ``torch.multiprocessing.spawn``; they write their results with
``torch.save`` (tensors only) into a directory given by the test, which compares them in the parent.
"""
from __future__ import annotations

import os
import traceback

import torch
import torch.distributed as dist
from torch import nn

from pretrain.distributed import free_port

WORLD = 2


class TinyNet(nn.Module):
    """A tiny ViT backbone + linear head (what the FSDP test trains)."""

    def __init__(self):
        super().__init__()
        from pretrain.models import build_encoder

        self.backbone = build_encoder("vit_small", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.backbone(x))


class MetaArch(nn.Module):
    """student/teacher ModuleDicts like the DINOv2 meta-architecture (naming used by the checkpoints)."""

    def __init__(self):
        super().__init__()
        from pretrain.models import build_encoder

        def branch():
            return nn.ModuleDict({
                "backbone": build_encoder("vit_small", embed_dim=32, depth=2, num_heads=2, patch_size=8,
                                          img_size=32),
                "dino_head": nn.Linear(32, 7)})
        torch.manual_seed(0)
        self.student = branch()
        self.teacher = branch()
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def loss(self, x):
        s = self.student["dino_head"](self.student["backbone"](x))
        with torch.no_grad():
            t = self.teacher["dino_head"](self.teacher["backbone"](x))
        return ((s - t) ** 2).mean() + s.pow(2).mean()


def shard_cfg(strategy="FULL_SHARD"):
    return {"sharding_strategy": strategy,
            "mixed_precision": {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}}


def data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g)


def tiny_encoder(seed=0):
    from pretrain.models import build_encoder

    torch.manual_seed(seed)
    return build_encoder("vit_small", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)


def multicrop_batch():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 16, 16, generator=g)]


def multicrop_loss(enc, crops):
    outs = enc(crops, is_training=True)
    return sum(o["x_norm_clstoken"].pow(2).mean() + o["x_norm_patchtokens"].mean() for o in outs)


def _entry(rank, fn, port, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    except Exception:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


def run_world2(fn, *args):
    """Run ``fn(rank, *args)`` in 2 gloo processes on CPU; raises if any of them fails."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(fn, free_port(), args), nprocs=WORLD, join=True)


# ------------------------------------------------------------------------------------------------------
# helpers shared by the checkpoint tests
def full_state(model) -> dict:
    """Full (unsharded) CPU model state, gathered with DCP's state-dict API (works sharded or plain)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def full_optim_state(model, opt) -> dict:
    """``{"<fqn>/<stat>": tensor, "lr": ...}`` of ``opt``, full tensors, keyed by parameter names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    out = {}
    for fqn, stats in osd["state"].items():
        for k, v in stats.items():
            out[f"{fqn}/{k}"] = torch.as_tensor(v).detach().cpu().clone()
    out["lr"] = torch.tensor([g["lr"] for g in osd["param_groups"]])
    return out


def shard_meta(meta: MetaArch, strategy="FULL_SHARD"):
    from pretrain.fsdp import shard_module

    for who in ("student", "teacher"):
        mods = getattr(meta, who)
        for k in list(mods.keys()):
            mods[k] = shard_module(mods[k], shard_cfg(strategy), "cpu")
    return meta


def meta_steps(meta: MetaArch, opt, x, steps=2) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = meta.loss(x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        l = loss.detach().clone()
        if dist.is_initialized():
            dist.all_reduce(l)
            l /= dist.get_world_size()
        losses.append(float(l))
    return losses


def ckpt_worker(rank, out):
    """World 2: train sharded, save; reload into a fresh sharded model; load a world-1 checkpoint; export."""
    from pretrain.checkpoint import Checkpointer, export_backbone

    x = data(8, seed=3)[0].chunk(WORLD)[rank]
    meta = shard_meta(MetaArch())
    opt = torch.optim.AdamW(meta.student.parameters(), lr=1e-2)
    meta_steps(meta, opt, x)
    ck = Checkpointer(os.path.join(out, "w2"), max_to_keep=2)
    ck.save(2, {"model": meta}, {"optimizer": opt}, extra={"iteration": 2, "scaler": {"scale": 1024.0}})
    after_save = torch.rand(3)  # the RNG state saved is the one right before this draw
    ref = {"model": full_state(meta), "optim": full_optim_state(meta, opt)}
    next_loss = meta_steps(meta, opt, x, steps=1)
    export_backbone(meta.teacher["backbone"], os.path.join(out, "teacher_w2.safetensors"))
    teacher_full = full_state(meta.teacher["backbone"])

    torch.manual_seed(99)  # different initial weights
    fresh = shard_meta(MetaArch())
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fopt = torch.optim.AdamW(fresh.student.parameters(), lr=5e-4)
    extra = ck.load(ck.latest(), {"model": fresh}, {"optimizer": fopt})
    after_load = torch.rand(3)
    got = {"model": full_state(fresh), "optim": full_optim_state(fresh, fopt)}
    resumed_loss = meta_steps(fresh, fopt, x, steps=1)

    w1 = shard_meta(MetaArch())
    w1opt = torch.optim.AdamW(w1.student.parameters(), lr=5e-4)
    Checkpointer(os.path.join(out, "w1"), create=False).load(os.path.join(out, "w1"), {"model": w1},
                                                             {"optimizer": w1opt})
    got_w1 = {"model": full_state(w1), "optim": full_optim_state(w1, w1opt)}
    if rank == 0:
        torch.save({"ref": ref, "got": got, "got_w1": got_w1, "teacher_full": teacher_full,
                    "next_loss": torch.tensor(next_loss), "resumed_loss": torch.tensor(resumed_loss),
                    "extra_scale": torch.tensor(extra["scaler"]["scale"])}, os.path.join(out, "w2_result.pt"))
    torch.save({"after_save": after_save, "after_load": after_load}, os.path.join(out, f"rng_{rank}.pt"))


# ------------------------------------------------------------------------------------------------------
# FSDP worker
STRATEGY_LIST = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD")


def fsdp_worker(rank, out, steps, max_norm):
    """For each strategy: train TinyNet sharded on this rank's half batch; EMA on shards; error cases."""
    from torch.distributed.tensor import DTensor

    from pretrain.fsdp import clip_grad_norm_, ema_update_, shard_module

    x, y = data()
    xs, ys = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
    res = {}
    for strategy in STRATEGY_LIST:
        torch.manual_seed(0)
        m = TinyNet()
        shard_module(m.backbone, shard_cfg(strategy), "cpu")
        shard_module(m, shard_cfg(strategy), "cpu")
        assert all(isinstance(p, DTensor) for p in m.parameters())
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        losses, norms = [], []
        for _ in range(steps):
            loss = nn.functional.cross_entropy(m(xs), ys)
            loss.backward()
            norms.append(clip_grad_norm_(m.parameters(), max_norm).reshape(()))
            opt.step()
            opt.zero_grad()
            l = loss.detach().clone()
            dist.all_reduce(l)
            losses.append(l / WORLD)
        res[strategy] = {"losses": torch.stack(losses), "norms": torch.stack(norms),
                         "params": {k: v.full_tensor().detach().clone() for k, v in m.state_dict().items()}}
    # multi-crop list input through forward(is_training=True) -> forward_features (registered forward method),
    # plus get_intermediate_layers, on a sharded root: same data on both ranks, so grads equal one process
    enc = tiny_encoder()
    shard_module(enc, shard_cfg("FULL_SHARD"), "cpu")
    crops = multicrop_batch()
    multicrop_loss(enc, crops).backward()
    res["multicrop"] = {"grads": {k: p.grad.full_tensor() for k, p in enc.named_parameters() if p.grad is not None},
                        "inter": enc.get_intermediate_layers(crops[0], n=1)[0].detach()}
    # EMA on local shards vs full tensors
    teacher, student = TinyNet(), TinyNet()
    full_t = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    full_s = {k: v.detach().clone() for k, v in student.state_dict().items()}
    for mod in (teacher, student):
        shard_module(mod.backbone, shard_cfg("FULL_SHARD"), "cpu")
        shard_module(mod, shard_cfg("FULL_SHARD"), "cpu")
    ema_update_(teacher, student, 0.9)
    res["ema"] = {"teacher0": full_t, "student": full_s,
                  "teacher1": {k: v.full_tensor().detach().clone() for k, v in teacher.state_dict().items()}}
    # sharded differently -> clear error
    other = TinyNet()
    shard_module(other, shard_cfg("NO_SHARD"), "cpu")
    try:
        ema_update_(other, student, 0.9)
        res["mismatch_error"] = ""
    except ValueError as e:
        res["mismatch_error"] = str(e)
    if rank == 0:
        torch.save(res, os.path.join(out, "fsdp_result.pt"))


# ------------------------------------------------------------------------------------------------------
# one 2-process run shared by test_fsdp.py and test_checkpoint.py (process start-up dominates on CPU)
FSDP_STEPS, FSDP_MAX_NORM = 3, 0.5
_SHARED: dict = {}


def _all_worker(rank, out):
    fsdp_worker(rank, out, FSDP_STEPS, FSDP_MAX_NORM)
    ckpt_worker(rank, out)


def world2_results(out_dir: str) -> dict:
    """Run every world-2 check once per pytest session; returns the results and the world-1 reference."""
    if "res" not in _SHARED:
        from pretrain.checkpoint import Checkpointer

        torch.manual_seed(0)
        meta = MetaArch()
        opt = torch.optim.AdamW(meta.student.parameters(), lr=1e-2)
        meta_steps(meta, opt, data(8, seed=3)[0], 3)  # a world-1 checkpoint that world 2 will load
        Checkpointer(os.path.join(out_dir, "w1")).save(3, {"model": meta}, {"optimizer": opt},
                                                       extra={"iteration": 3})
        ref_w1 = {"model": full_state(meta), "optim": full_optim_state(meta, opt)}
        run_world2(_all_worker, out_dir)
        _SHARED["res"] = {
            "out": out_dir, "ref_w1": ref_w1,
            "fsdp": torch.load(os.path.join(out_dir, "fsdp_result.pt"), weights_only=True),
            "ckpt": torch.load(os.path.join(out_dir, "w2_result.pt"), weights_only=True)}
    return _SHARED["res"]
