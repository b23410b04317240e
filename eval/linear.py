"""Linear probe (DINOv2 protocol): a grid of linear heads trained at once on one frozen forward pass per batch.

Features come from ``get_intermediate_layers(x, n_last, return_class_token=True)`` of the frozen encoder (layer
normed). A head with ``n`` blocks and ``avgpool`` sees ``cat(cls_{L-n+1}, ..., cls_L[, mean(patch_L)])``
(dimension ``(n + avgpool) * D``; ``n`` is clipped to the encoder depth). The default grid is 13 learning rates x
{1, 4} blocks x {cls, cls+avgpool} = 52 heads. Heads start from weight ~ N(0, 0.01), bias 0. The loss is the
**sum** of the heads' cross-entropies (one backward serves all); SGD momentum 0.9, no weight decay, each head's
lr scaled by ``global_batch / 256``, cosine annealing to 0 over ``epochs x epoch_length`` iterations.

Selection: every head is scored on the validation split (``--val-dataset``, or ``--val-fraction`` of the train
set held out and evaluated with eval transforms); the best head is reported on ``--test-dataset``.

Resume: heads + optimizer + scheduler + iteration are saved to ``<output-dir>/linear_checkpoint.pth`` every
``--checkpoint-period`` iterations and at the end; rerunning the same command resumes. The train stream is
``ShardedInfiniteSampler`` positioned at ``iteration x global_batch``, so a resumed run sees exactly the samples
an uninterrupted run would (with deterministic transforms the heads are bit-identical).
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from pretrain import distributed as du

from . import common

DEFAULT_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
CHECKPOINT = "linear_checkpoint.pth"


@dataclass(frozen=True)
class HeadSpec:
    n_blocks: int
    avgpool: bool
    lr: float

    @property
    def name(self) -> str:
        return f"blocks{self.n_blocks}_{'avgpool' if self.avgpool else 'cls'}_lr{self.lr:.0e}"


def head_grid(lrs, n_blocks_list, pools, depth: int) -> list[HeadSpec]:
    """All combinations; block counts are clipped to ``depth`` and duplicates removed (order kept)."""
    out, seen = [], set()
    for n in n_blocks_list:
        for pool in pools:
            for lr in lrs:
                spec = HeadSpec(min(int(n), depth), bool(pool), float(lr))
                if spec not in seen:
                    seen.add(spec)
                    out.append(spec)
    return out


def head_input(layers, n: int, avgpool: bool) -> torch.Tensor:
    """``layers``: ``[(patch [B,N,D], cls [B,D])]`` of the last blocks, oldest first."""
    feats = [cls for _, cls in layers[-n:]]
    if avgpool:
        feats.append(layers[-1][0].mean(1))
    return torch.cat(feats, dim=-1).float()


class LinearHeads(nn.Module):
    """One ``nn.Linear`` per :class:`HeadSpec`; ``forward(layers) -> {name: logits}``."""

    def __init__(self, specs: list[HeadSpec], embed_dim: int, num_classes: int):
        super().__init__()
        self.specs = list(specs)
        self.heads = nn.ModuleDict()
        for s in self.specs:
            lin = nn.Linear((s.n_blocks + int(s.avgpool)) * embed_dim, num_classes)
            nn.init.normal_(lin.weight, std=0.01)
            nn.init.zeros_(lin.bias)
            self.heads[s.name] = lin

    def forward(self, layers) -> dict:
        cache = {}
        out = {}
        for s in self.specs:
            key = (s.n_blocks, s.avgpool)
            if key not in cache:
                cache[key] = head_input(layers, *key)
            out[s.name] = self.heads[s.name](cache[key])
        return out


def sync_gradients(params) -> None:
    """Average gradients over ranks (what DDP does), in one flat all-reduce."""
    if du.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    comm = flat if du.init_distributed().backend == "nccl" else flat.cpu()
    du.all_reduce_mean(comm)
    offset = 0
    for g in grads:
        g.copy_(comm[offset:offset + g.numel()].view_as(g).to(g.device))
        offset += g.numel()


@torch.no_grad()
def evaluate_heads(model, heads: LinearHeads, ds, n_last: int, batch_size: int, num_workers: int, device,
                   precision: str = "fp32") -> dict:
    """Top-1 accuracy (%) of every head on ``ds`` (sharded over ranks without duplicates, counts all-reduced)."""
    heads.eval()
    names = [s.name for s in heads.specs]
    correct = torch.zeros(len(names), dtype=torch.float64)
    total = torch.zeros(1, dtype=torch.float64)
    for x, y in common.loader(Subset(ds, common.shard_indices(len(ds))), batch_size, num_workers):
        with common.autocast(device, precision):
            layers = model.get_intermediate_layers(x.to(device), n_last, return_class_token=True)
        logits = heads(layers)
        y = torch.as_tensor(y, device=device)
        correct += torch.tensor([float((logits[n].argmax(1) == y).sum()) for n in names], dtype=torch.float64)
        total += len(y)
    du.all_reduce_sum(correct)
    du.all_reduce_sum(total)
    heads.train()
    return {n: 100.0 * float(c) / max(1.0, float(total)) for n, c in zip(names, correct)}


def _save(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_linear(model, train_ds, val_ds, num_classes: int, *, out_dir: str, specs: list[HeadSpec], epochs: int,
                 epoch_length: int | None, batch_size: int, num_workers: int, device, seed: int = 0,
                 checkpoint_period: int = 0, eval_period: int = 0, stop_at: int | None = None,
                 precision: str = "fp32") -> tuple[LinearHeads, dict]:
    """Train the heads (resuming from ``out_dir`` when a checkpoint exists); returns (heads, val accuracies)."""
    world, rank = du.get_world_size(), du.get_rank()
    global_batch = batch_size * world
    if epoch_length is None or epoch_length <= 0:
        epoch_length = max(1, math.ceil(len(train_ds) / global_batch))
    total = epochs * epoch_length
    n_last = max(s.n_blocks for s in specs)
    heads = LinearHeads(specs, model.embed_dim, num_classes).to(device)
    groups = [{"params": heads.heads[s.name].parameters(), "lr": s.lr * global_batch / 256.0} for s in specs]
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.0)
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    start = 0
    if os.path.isfile(ckpt_path):
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("head_names") != [s.name for s in specs] or state.get("total") != total:
            raise RuntimeError(f"{ckpt_path} belongs to a different linear-probe setup (heads or schedule "
                               f"changed: {state.get('total')} vs {total} iterations); use another --output-dir or "
                               "delete the checkpoint")
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["iteration"])
        if du.is_main_process():
            print(f"[linear] resuming from {ckpt_path} at iteration {start}/{total}", flush=True)

    def checkpoint(iteration):
        if du.is_main_process():
            _save(ckpt_path, {"heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "iteration": iteration, "total": total,
                              "head_names": [s.name for s in specs]})
        du.barrier()

    from pretrain.data.samplers import ShardedInfiniteSampler

    sampler = ShardedInfiniteSampler(len(train_ds), rank, world, seed=seed, start_global=start * global_batch)
    data = iter(DataLoader(train_ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                           drop_last=True, pin_memory=torch.cuda.is_available()))
    heads.train()
    params = list(heads.parameters())
    end = total if stop_at is None else min(total, stop_at)
    for it in range(start, end):
        x, y = next(data)
        with torch.no_grad(), common.autocast(device, precision):
            layers = model.get_intermediate_layers(x.to(device, non_blocking=True), n_last, return_class_token=True)
        y = torch.as_tensor(y, device=device)
        logits = heads([(p.float(), c.float()) for p, c in layers])
        loss = sum(F.cross_entropy(v, y) for v in logits.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(params)
        optimizer.step()
        scheduler.step()
        done = it + 1
        if du.is_main_process() and (done % max(1, epoch_length) == 0 or done == end):
            print(f"[linear] iteration {done}/{total} loss(sum of {len(specs)} heads) {loss.item():.4f}", flush=True)
        if checkpoint_period and done % checkpoint_period == 0 and done != end:
            checkpoint(done)
        if eval_period and done % eval_period == 0 and done != total:
            acc = evaluate_heads(model, heads, val_ds, n_last, batch_size, num_workers, device, precision)
            best = max(acc, key=acc.get)
            if du.is_main_process():
                print(f"[linear] iteration {done}: best val head {best} {acc[best]:.2f}%", flush=True)
    if end > start or not os.path.isfile(ckpt_path):
        checkpoint(end)
    if end < total:
        return heads, {}
    return heads, evaluate_heads(model, heads, val_ds, n_last, batch_size, num_workers, device, precision)


# ------------------------------------------------------------------------------------------------ entry point
def add_linear_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    common.add_model_args(parser, default_batch=128)
    g = parser.add_argument_group("linear probe")
    g.add_argument("--method", default="sgd", choices=["sgd", "logreg"],
                   help="sgd: grid of linear heads on frozen forward passes; logreg: L-BFGS logistic regression "
                        "on cached cls features (small datasets, CPU)")
    g.add_argument("--train-dataset", required=True)
    g.add_argument("--val-dataset", default=None, help="head selection split (default: carved from train)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="held-out part of train when no --val-dataset")
    g.add_argument("--test-dataset", default=None, help="the selected head is reported here")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--epoch-length", type=int, default=0, help="iterations per epoch (0 = one pass over train)")
    g.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS))
    g.add_argument("--n-last-blocks", type=int, nargs="+", default=[1, 4])
    g.add_argument("--pools", default="both", choices=["both", "cls", "avgpool"])
    g.add_argument("--train-augment", default="rrc", choices=["rrc", "none"])
    g.add_argument("--checkpoint-period", type=int, default=0, help="iterations (0 = once per epoch)")
    g.add_argument("--eval-period", type=int, default=0, help="validate every N iterations (0 = only at the end)")
    g.add_argument("--stop-at", type=int, default=None, help="stop after this iteration (preemption drill)")
    # logistic regression
    g.add_argument("--c-values", type=float, nargs="*", default=None, help="logreg: C grid (default 10^linspace(-6,5))")
    g.add_argument("--n-c", type=int, default=45, help="logreg: size of the default C grid")
    g.add_argument("--max-iter", type=int, default=1000, help="logreg: L-BFGS iterations")
    return parser


def _datasets(args, train_tf, eval_tf):
    if args.val_dataset:
        return (common.build_dataset(args.train_dataset, train_tf),
                common.build_dataset(args.val_dataset, eval_tf))
    from pretrain.data.datasets import split_dataset

    full = common.build_dataset(args.train_dataset, None)
    tr, va = split_dataset(full, args.val_fraction, seed=args.seed)
    return tr.with_transform(train_tf), va.with_transform(eval_tf)


def main(args) -> dict:
    if args.method == "logreg":
        from . import logreg

        return logreg.main(args)
    info = du.init_distributed()
    out_dir = common.output_dir_of(args)
    model = common.build_model_from_args(args, info.device)
    eval_tf = common.eval_transform(args.resize, args.crop, args.mean, args.std)
    train_tf = common.train_transform(args.crop, args.mean, args.std, args.train_augment)
    train_ds, val_ds = _datasets(args, train_tf, eval_tf)
    test_ds = common.build_dataset(args.test_dataset, eval_tf) if args.test_dataset else None
    num_classes = common.num_classes_of(train_ds, val_ds, test_ds)
    pools = {"both": (False, True), "cls": (False,), "avgpool": (True,)}[args.pools]
    specs = head_grid(args.lrs, args.n_last_blocks, pools, model.n_blocks)
    epoch_length = args.epoch_length or math.ceil(len(train_ds) / (args.batch_size * info.world_size))
    heads, val_acc = train_linear(
        model, train_ds, val_ds, num_classes, out_dir=out_dir, specs=specs, epochs=args.epochs,
        epoch_length=epoch_length, batch_size=args.batch_size, num_workers=args.num_workers, device=info.device,
        seed=args.seed, checkpoint_period=args.checkpoint_period or epoch_length, eval_period=args.eval_period,
        stop_at=args.stop_at, precision=args.precision)
    if not val_acc:  # stopped early on purpose
        return {"eval": "linear", "stopped_at": args.stop_at}
    best = max(val_acc, key=val_acc.get)
    record = {"eval": "linear", "arch": getattr(model, "encoder_name", None), "weights": args.weights,
              "train_dataset": args.train_dataset, "val_dataset": args.val_dataset or
              f"{args.val_fraction:g} of train", "test_dataset": args.test_dataset, "n_heads": len(specs),
              "best_classifier": best, "val_top1": val_acc[best], "val_top1_all": val_acc}
    rows = [("val", best, val_acc[best])]
    if test_ds is not None:
        best_spec = next(s for s in specs if s.name == best)
        single = LinearHeads([best_spec], model.embed_dim, num_classes).to(info.device)
        single.heads[best].load_state_dict(heads.heads[best].state_dict())
        test_acc = evaluate_heads(model, single, test_ds, best_spec.n_blocks, args.batch_size, args.num_workers,
                                  info.device, args.precision)[best]
        record["test_top1"] = test_acc
        rows.append(("test", best, test_acc))
    common.print_table(f"linear probe ({len(specs)} heads)", ["split", "head", "top-1"], rows)
    if du.is_main_process():
        torch.save({"name": best, "state_dict": heads.heads[best].state_dict()},
                   os.path.join(out_dir, "best_linear_head.pth"))
    common.write_results(out_dir, "results_eval_linear.json", record)
    du.barrier()
    return record
