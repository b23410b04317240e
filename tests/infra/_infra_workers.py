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
