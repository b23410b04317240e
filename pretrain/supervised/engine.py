"""The supervised train/eval loop shared by the DeiT III recipe and the single-GPU CIFAR-scale recipes.

``train(cfg, device)`` runs a whole training: datasets (train, a validation split with EVAL transforms, an optional
test split), model (+ optional fine-tuning start), EMA, optimiser + per-iteration schedule, DDP when several
processes exist, AMP on CUDA, mixup/cutmix, the loss, periodic evaluation of BOTH the raw and the EMA weights
(distributed, no duplicates), best-on-val selection, resumable checkpoints and preemption.

Files in ``train.output_dir``::

    config.yaml                     the resolved config
    metrics.jsonl                   training lines + one record per evaluation (``val_top1``, ``val_top1_ema``, ..)
    checkpoints/iter_*/             resumable state (model, EMA, optimiser, scaler, epoch, best so far)
    best_model.safetensors          raw weights at the best validation epoch
    best_model_ema.safetensors      EMA weights at the best validation epoch (when ema.enabled)
    best.json                       epoch, metrics and which of raw/EMA was selected (``train.select_on``)
    last_model[_ema].safetensors    final weights
    results.json                    final summary (val, test of the selected best weights, robustness)
"""
from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from .. import distributed as du
from .. import preemption
from ..checkpoint import Checkpointer, export_backbone
from ..config import ConfigError, save_config
from ..logging_utils import MetricLogger
from .augment import build_train_transform, eval_transform
from .config import model_kwargs
from .ema import ModelEMA
from .losses import ClassificationLoss
from .mixup import MixupCutmix
from .optim import build_optimizer, lr_schedule, set_lr
from .samplers import RepeatedAugSampler

SSL_ONLY_PARAMS = ("mask_token",)  # frozen here: DDP requires every trainable parameter to get a gradient

__all__ = ["train", "evaluate", "build_datasets", "build_model", "resolve_device", "amp_setup"]


# ------------------------------------------------------------------------------------------------ setup
def resolve_device(cfg: DictConfig, default: torch.device | None = None) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available; use train.device=auto or cpu")
    if want == "cpu":
        return torch.device("cpu")
    if default is not None:
        return default
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def amp_setup(mode: str, device: torch.device):
    """(autocast context factory, GradScaler or None, dtype name). AMP only on CUDA; CPU always runs fp32."""
    if device.type != "cuda" or mode == "off":
        return contextlib.nullcontext, None, "fp32"
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler, mode


class _Datasets:
    def __init__(self, train, val, test, num_classes, test_raw=None):
        self.train, self.val, self.test, self.num_classes, self.test_raw = train, val, test, num_classes, test_raw


def build_datasets(cfg: DictConfig) -> _Datasets:
    """Train (train transforms), val (held-out split of train or ``data.val_dataset``; EVAL transforms), test."""
    from ..data.datasets import build_dataset, split_dataset

    d, a = cfg.data, cfg.augment
    train_tf = build_train_transform(
        d.img_size, tuple(d.mean), tuple(d.std), crop=a.crop, rrc_scale=tuple(a.rrc_scale), pad=a.pad,
        hflip=a.hflip, three_augment=a.three_augment, color_jitter=a.color_jitter, randaugment_n=a.randaugment_n,
        randaugment_m=a.randaugment_m, random_erasing=a.random_erasing,
        random_erasing_scale=tuple(a.random_erasing_scale), interpolation=a.interpolation)
    eval_size = d.eval_img_size or d.img_size
    eval_tf = eval_transform(eval_size, tuple(d.mean), tuple(d.std), d.eval_crop_ratio)
    base = build_dataset(d.train_dataset)
    if d.val_dataset:
        train = build_dataset(d.train_dataset, transform=train_tf)
        val = build_dataset(d.val_dataset, transform=eval_tf)
    else:
        tr, va = split_dataset(base, d.val_fraction, d.split_seed)
        train, val = tr.with_transform(train_tf), va.with_transform(eval_tf)
    test = build_dataset(d.test_dataset, transform=eval_tf) if d.test_dataset else None
    classes = getattr(base, "classes", None)
    num_classes = int(d.num_classes or (len(classes) if classes is not None else 0))
    if num_classes < 2:
        raise ConfigError(f"could not infer the number of classes of {d.train_dataset!r}; set data.num_classes")
    if len(train) < d.batch_size_per_gpu * du.get_world_size():
        raise ConfigError(f"the training set has {len(train)} samples, fewer than one global batch "
                          f"({d.batch_size_per_gpu} x {du.get_world_size()} processes); lower data.batch_size_per_gpu")
    return _Datasets(train, val, test, num_classes)


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    from ..models import build_encoder

    model = build_encoder(cfg.model.arch, **model_kwargs(cfg, num_classes))
    if getattr(model, "num_classes", 0) != num_classes or getattr(model, "head", None) is None:
        raise ConfigError(f"model.arch={cfg.model.arch!r} did not build a classifier with {num_classes} classes "
                          "(its constructor must accept num_classes and create a .head)")
    if cfg.model.finetune_from:
        load_finetune(model, cfg.model.finetune_from, cfg.model.finetune_reset_head)
    return model


def load_finetune(model: nn.Module, path: str, reset_head: bool = False):
    """Start from ``path`` strictly, except the classifier head, which is kept freshly initialised when its shape
    differs (another class count) or ``reset_head``. A ViT adopts the checkpoint's pos-embed grid and interpolates
    it to the training resolution at run time (train low-res, fine-tune high-res)."""
    from ..models.loading import load_pretrained, read_state_dict, unwrap_state_dict

    sd, _ = unwrap_state_dict(dict(read_state_dict(path)), prefer="model")
    own = model.state_dict()
    notes = []
    pos, mine = sd.get("pos_embed"), own.get("pos_embed")
    if pos is not None and mine is not None and pos.shape != mine.shape and pos.ndim == 3 and \
            pos.shape[-1] == mine.shape[-1] and hasattr(model, "pos_grid"):
        from ..models.vit import interpolate_grid_embedding

        n_extra = mine.shape[1] - model.pos_grid[0] * model.pos_grid[1]  # cls slot(s) before the patch grid
        side = int(round(math.sqrt(pos.shape[1] - n_extra)))
        if side * side == pos.shape[1] - n_extra:
            patch = interpolate_grid_embedding(pos[:, n_extra:], (side, side), tuple(model.pos_grid))
            sd["pos_embed"] = torch.cat([pos[:, :n_extra], patch], dim=1)
            notes_pos = f"pos_embed grid {side}x{side} -> {model.pos_grid[0]}x{model.pos_grid[1]} (bicubic)"
            notes.append(notes_pos)
    for k in [k for k in own if k.startswith("head.")]:
        if reset_head or k not in sd or sd[k].shape != own[k].shape:
            notes.append(f"classifier re-initialised: {k} {tuple(sd[k].shape) if k in sd else 'absent'} -> "
                         f"{tuple(own[k].shape)}")
            sd[k] = own[k]
    report = load_pretrained(model, sd, strict=True)
    report.source = path
    report.notes += notes
    if du.is_main_process():
        print(f"[finetune] {report}", flush=True)
    return report


# ------------------------------------------------------------------------------------------------ eval
@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast=contextlib.nullcontext,
             channels_last: bool = False) -> dict:
    """Top-1 / top-5 (%) and mean CE loss over the loader's samples summed across ranks (use a sampler without
    duplicates). ``model`` must be the unwrapped module (no collectives in its forward)."""
    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss sum, n
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[-1])
        topk = logits.topk(k, dim=-1).indices
        hit = topk == y[:, None]
        stats[0] += hit[:, 0].sum()
        stats[1] += hit.any(dim=1).sum()
        stats[2] += F.cross_entropy(logits, y, reduction="sum")
        stats[3] += y.numel()
    model.train(was_training)
    du.all_reduce_sum(stats)
    n = max(stats[3].item(), 1.0)
    return {"top1": 100.0 * stats[0].item() / n, "top5": 100.0 * stats[1].item() / n,
            "loss": stats[2].item() / n, "n": int(stats[3].item())}


# ------------------------------------------------------------------------------------------------ helpers
class _SkipFirst(torch.utils.data.Sampler):
    """The first ``skip`` indices of ``sampler`` removed (resuming in the middle of an epoch)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, int(skip)

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return max(0, len(self.sampler) - self.skip)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _write_json(path: str, obj: dict):
    if du.is_main_process():
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ train
def train(cfg: DictConfig, device: torch.device | None = None, log_fn=None) -> dict:
    """Run the recipe described by ``cfg`` in this process (call once per rank). Returns the final summary."""
    from ..data.loaders import make_data_loader
    from ..data.samplers import DistributedEvalSampler, EpochSampler

    out = cfg.train.output_dir
    rank, world = du.get_rank(), du.get_world_size()
    device = resolve_device(cfg, device)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.train.seed + rank)
    autocast, scaler, amp_name = amp_setup(cfg.train.amp, device)
    data = build_datasets(cfg)
    C = data.num_classes
    cfg.data.num_classes = C  # recorded, so that config.yaml rebuilds the same classifier
    if du.is_main_process():
        os.makedirs(out, exist_ok=True)
        save_config(cfg, out)

    # ---- loaders
    bs = cfg.data.batch_size_per_gpu
    ebs = cfg.data.eval_batch_size_per_gpu or max(1, int(1.5 * bs))
    if cfg.data.repeated_aug:
        train_sampler = RepeatedAugSampler(len(data.train), rank, world, repeats=cfg.data.repeats,
                                           seed=cfg.train.seed, truncate=cfg.data.ra_truncate)
    else:
        train_sampler = EpochSampler(len(data.train), rank, world, seed=cfg.train.seed, shuffle=True)
    iters_per_epoch = len(train_sampler) // bs
    if cfg.train.max_iters_per_epoch > 0:
        iters_per_epoch = min(iters_per_epoch, cfg.train.max_iters_per_epoch)
    if iters_per_epoch < 1:
        raise ConfigError(f"one epoch has no full batch per process ({len(train_sampler)} samples per process, "
                          f"batch {bs}); lower data.batch_size_per_gpu")

    def eval_loader(ds):
        return make_data_loader(ds, ebs, cfg.data.num_workers, sampler=DistributedEvalSampler(len(ds), rank, world),
                                drop_last=False, seed=cfg.train.seed, rank=rank)

    val_loader = eval_loader(data.val)
    test_loader = eval_loader(data.test) if data.test is not None else None

    # ---- model, EMA, optimiser
    model = build_model(cfg, C).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    for n, p in model.named_parameters():  # SSL-only parameters never get a gradient in supervised training
        if n.split(".")[0] in SSL_ONLY_PARAMS:
            p.requires_grad_(False)
    ema = ModelEMA(model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
    optimizer = build_optimizer(cfg, model)
    schedule = lr_schedule(cfg, iters_per_epoch)
    criterion = ClassificationLoss(cfg.loss.name, C, cfg.loss.label_smoothing, cfg.loss.bce_threshold)
    mixup = MixupCutmix(cfg.mixup.mixup_alpha, cfg.mixup.cutmix_alpha, cfg.mixup.prob, cfg.mixup.switch_prob,
                        seed=cfg.train.seed * 1000 + rank)
    train_model = model
    if world > 1 and cfg.distributed.strategy == "ddp":
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.distributed.find_unused_parameters)
    elif world > 1:
        raise ConfigError(f"distributed.strategy={cfg.distributed.strategy!r} with {world} processes; use ddp")
    if cfg.train.compile:
        train_model = torch.compile(train_model)

    # ---- resume
    ckpt = Checkpointer(os.path.join(out, "checkpoints"), cfg.train.max_to_keep)
    models = {"model": model}
    if ema is not None:
        models["model_ema"] = ema.module
    start_epoch, skip_iters = 0, 0
    best = {"metric": -math.inf, "epoch": -1}
    latest = ckpt.latest() if cfg.train.resume else None
    if latest:
        extra = ckpt.load(latest, models, {"optimizer": optimizer})
        start_epoch, skip_iters = int(extra["epoch"]), int(extra["iter_in_epoch"])
        best = extra.get("best", best)
        if ema is not None:
            ema.updates = int(extra.get("ema_updates", 0))
        if scaler is not None and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        mixup.rng = np.random.default_rng(cfg.train.seed * 1000 + rank + 7919 * (
            start_epoch * iters_per_epoch + skip_iters))
        if du.is_main_process():
            print(f"[resume] {latest}: epoch {start_epoch}, iteration {skip_iters} of the epoch", flush=True)

    mlog = MetricLogger(output_dir=out if du.is_main_process() else None, tensorboard=cfg.train.tensorboard,
                        log_fn=log_fn)
    say = mlog.log_fn
    if du.is_main_process():
        say(f"[supervised] {cfg.model.arch}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
            f"{C} classes, train {len(data.train)} / val {len(data.val)}"
            f"{f' / test {len(data.test)}' if data.test is not None else ''}, {world} process(es) on {device}, "
            f"amp {amp_name}, global batch {bs * world}, lr {cfg.optim.lr:.3g}, {iters_per_epoch} it/epoch")

    def save_state(epoch, iter_in_epoch):
        extra = {"epoch": epoch, "iter_in_epoch": iter_in_epoch, "best": best,
                 "ema_updates": ema.updates if ema is not None else 0,
                 "scaler": scaler.state_dict() if scaler is not None else {}}
        return ckpt.save(epoch * iters_per_epoch + iter_in_epoch, models, {"optimizer": optimizer}, extra)

    def run_eval(epoch, global_it):
        nonlocal best
        raw = evaluate(model, val_loader, device, autocast, cfg.train.channels_last)
        rec = {"event": "eval", "epoch": epoch, "val_top1": raw["top1"], "val_top5": raw["top5"],
               "val_loss": raw["loss"]}
        if ema is not None:
            e = evaluate(ema.module, val_loader, device, autocast, cfg.train.channels_last)
            rec.update(val_top1_ema=e["top1"], val_top5_ema=e["top5"], val_loss_ema=e["loss"])
        sel = cfg.train.select_on
        if sel == "max" and ema is not None:
            sel = "ema" if rec["val_top1_ema"] > rec["val_top1"] else "raw"
        elif sel == "max":
            sel = "raw"
        metric = rec["val_top1_ema"] if sel == "ema" else rec["val_top1"]
        if metric > best["metric"]:
            best = {"metric": metric, "epoch": epoch, "selected": sel, **rec}
            export_backbone(model, os.path.join(out, "best_model.safetensors"))
            if ema is not None:
                export_backbone(ema.module, os.path.join(out, "best_model_ema.safetensors"))
            _write_json(os.path.join(out, "best.json"), best)
        rec.update(best_val_top1=best["metric"], best_epoch=best["epoch"])
        mlog.write(global_it, rec)
        if du.is_main_process():
            say(f"[eval] epoch {epoch}: val top-1 {rec['val_top1']:.2f} (top-5 {rec['val_top5']:.2f})"
                + (f", EMA top-1 {rec['val_top1_ema']:.2f}" if ema is not None else "")
                + f"; best {best['metric']:.2f} ({best.get('selected', 'raw')}) at epoch {best['epoch']}")
        return rec

    # ---- loop
    epochs = cfg.optim.epochs
    for epoch in range(start_epoch, epochs):
        train_sampler.set_epoch(epoch)
        skip = skip_iters if epoch == start_epoch else 0
        sampler = _SkipFirst(train_sampler, skip * bs) if skip else train_sampler
        loader = make_data_loader(data.train, bs, cfg.data.num_workers, sampler=sampler, drop_last=True,
                                  seed=cfg.train.seed * 100003 + epoch, rank=rank)
        train_model.train()
        first = epoch * iters_per_epoch + skip
        last = (epoch + 1) * iters_per_epoch
        it = first
        for x, y in mlog.log_every(loader, cfg.train.print_freq, f"Epoch [{epoch}]", n_iterations=last,
                                   start_iteration=first, images_per_iter=bs * world):
            lr = float(schedule[it])
            set_lr(optimizer, lr)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x, labels = mixup(x, y)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = train_model(x)
            loss = criterion(logits, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, iteration {it}; lower "
                                         "optim.base_lr, enable optim.clip_grad or use train.amp=bf16/off")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            gnorm = None
            if cfg.optim.clip_grad > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if ema is not None and (it + 1) % cfg.ema.update_every == 0:
                ema.update(model)
            meters = {"loss": loss.item(), "lr": lr}
            if gnorm is not None:
                meters["grad_norm"] = float(gnorm)
            mlog.update(**meters)
            it += 1
            if it < last and preemption.stop_requested():
                save_state(epoch, it - epoch * iters_per_epoch)
                preemption.requeue_and_exit()
        done = epoch + 1
        if done % cfg.train.eval_period_epochs == 0 or done == epochs:
            run_eval(epoch, last)
        if done % cfg.train.checkpoint_period_epochs == 0 or done == epochs:
            save_state(done, 0)
        if done < epochs and preemption.stop_requested():
            if done % cfg.train.checkpoint_period_epochs:
                save_state(done, 0)
            preemption.requeue_and_exit()

    # ---- final: last weights, test of the selected best weights, robustness
    export_backbone(model, os.path.join(out, "last_model.safetensors"))
    if ema is not None:
        export_backbone(ema.module, os.path.join(out, "last_model_ema.safetensors"))
    summary = {k: v for k, v in best.items() if k not in ("metric", "event")}
    summary["best_val_top1"] = best["metric"]
    eval_model = _best_model(cfg, C, best, out, device)
    if test_loader is not None:
        t = evaluate(eval_model, test_loader, device, autocast)
        summary.update(test_top1=t["top1"], test_top5=t["top5"], test_n=t["n"])
        lt = evaluate(model, test_loader, device, autocast)
        summary["test_top1_last"] = lt["top1"]
        if ema is not None:
            summary["test_top1_last_ema"] = evaluate(ema.module, test_loader, device, autocast)["top1"]
    if cfg.train.eval_robustness:
        from eval.robustness import evaluate_robustness
        from ..data.datasets import build_dataset

        raw_tf = eval_transform(cfg.data.eval_img_size or cfg.data.img_size, crop_ratio=cfg.data.eval_crop_ratio,
                                normalize=False)
        if cfg.data.test_dataset:
            ds = build_dataset(cfg.data.test_dataset, transform=raw_tf)
        elif cfg.data.val_dataset:
            ds = build_dataset(cfg.data.val_dataset, transform=raw_tf)
        else:
            ds = data.val.with_transform(raw_tf)
        r = evaluate_robustness(eval_model, ds, list(cfg.data.mean), list(cfg.data.std),
                                corruptions=list(cfg.train.robustness_corruptions),
                                severities=list(cfg.train.robustness_severities), batch_size=ebs, device=device,
                                seed=cfg.train.seed, autocast=autocast)
        summary.update(robustness_mean_top1=r["mean"], robustness_clean_top1=r["clean"],
                       robustness_per_corruption=r["per_corruption"], robustness_split="test" if
                       cfg.data.test_dataset else "val")
    mlog.write(epochs * iters_per_epoch, {"event": "final", **{k: v for k, v in summary.items()
                                                               if isinstance(v, (int, float)) and k != "event"}})
    _write_json(os.path.join(out, "results.json"), summary)
    if du.is_main_process():
        say("[done] " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in summary.items() if not isinstance(v, dict)))
    mlog.close()
    return summary


def _best_model(cfg, num_classes, best, out, device) -> nn.Module:
    """A fresh model holding the selected best weights (raw or EMA)."""
    from ..models import build_encoder, load_pretrained

    name = "best_model_ema.safetensors" if best.get("selected") == "ema" else "best_model.safetensors"
    m = build_encoder(cfg.model.arch, **model_kwargs(cfg, num_classes))
    du.barrier()
    load_pretrained(m, os.path.join(out, name), strict=True)
    return m.to(device).eval()

