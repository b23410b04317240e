"""The DINOv2 training loop: data, optimiser, schedules, checkpoints, preemption, exports, logging.

``run(cfg)`` is what every process executes (one process per GPU, or per CPU "GPU" with gloo). It resumes from
the latest complete checkpoint in ``<output_dir>/checkpoints`` with the exact data position, optimizer, RNG and
teacher state, whatever the world size of the run that wrote it.
"""
from __future__ import annotations

import copy
import datetime
import os
import random
import time
from functools import partial

import torch
from omegaconf import DictConfig

from .. import distributed as D
from ..checkpoint import Checkpointer, check_writable, export_backbone
from ..config import save_config
from ..data.augmentations import DataAugmentationDINO
from ..data.collate import collate_data_and_cast
from ..data.datasets import build_dataset
from ..data.masking import MaskingGenerator
from ..data.robust import SafeImageDataset, SkipTracker
from ..data.samplers import ShardedInfiniteSampler, global_position
from ..data.seeding import PositionedSampler, PositionSeededDataset, position_seed
from ..fsdp import clip_grad_norm_
from ..logging_utils import MetricLogger, peak_memory_mb
from .meta_arch import SSLMetaArch
from .param_groups import fuse_params_groups, get_params_groups
from .schedules import CosineScheduler


class NonFiniteLossError(FloatingPointError):
    pass


# ----------------------------------------------------------------------------------------------------------
def build_schedules(cfg: DictConfig) -> dict:
    EL = cfg.train.OFFICIAL_EPOCH_LENGTH
    total = cfg.optim.epochs * EL
    lr = CosineScheduler(cfg.optim.lr, cfg.optim.min_lr, total, warmup_iters=cfg.optim.warmup_epochs * EL)
    last_layer_lr = CosineScheduler(cfg.optim.lr, cfg.optim.min_lr, total, warmup_iters=cfg.optim.warmup_epochs * EL)
    last_layer_lr.schedule[: cfg.optim.freeze_last_layer_epochs * EL] = 0.0
    return {
        "lr": lr,
        "wd": CosineScheduler(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total),
        "momentum": CosineScheduler(cfg.teacher.momentum_teacher, cfg.teacher.final_momentum_teacher, total),
        "teacher_temp": CosineScheduler(cfg.teacher.teacher_temp, cfg.teacher.teacher_temp,
                                        cfg.teacher.warmup_teacher_temp_epochs * EL,
                                        warmup_iters=cfg.teacher.warmup_teacher_temp_epochs * EL,
                                        start_warmup_value=cfg.teacher.warmup_teacher_temp),
        "last_layer_lr": last_layer_lr,
        "total_iters": total,
    }


def apply_optim_schedules(optimizer, lr: float, wd: float, last_layer_lr: float):
    for g in optimizer.param_groups:
        g["weight_decay"] = wd * g["wd_multiplier"]
        g["lr"] = (last_layer_lr if g["is_last_layer"] else lr) * g["lr_multiplier"]


def build_optimizer(cfg: DictConfig, model: SSLMetaArch):
    groups = fuse_params_groups(get_params_groups(model.student, lr_decay_rate=cfg.optim.layerwise_decay,
                                                  patch_embed_lr_mult=cfg.optim.patch_embed_lr_mult))
    return torch.optim.AdamW(groups, betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2),
                             **fast_optimizer_kwargs(model.student.parameters()))


def fast_optimizer_kwargs(params) -> dict:
    """``fused`` AdamW for plain tensors (one kernel per step: ~3x faster than the loop on CPU), ``foreach`` for
    FSDP2's DTensor shards."""
    from torch.distributed.tensor import DTensor

    return {"foreach": True} if any(isinstance(p, DTensor) for p in params) else {"fused": True}


# ----------------------------------------------------------------------------------------------------------
def build_ssl_dataset(cfg: DictConfig):
    c = cfg.crops
    aug = DataAugmentationDINO(tuple(c.global_crops_scale), tuple(c.local_crops_scale), c.local_crops_number,
                               global_crops_size=c.global_crops_size, local_crops_size=c.local_crops_size,
                               global1_blur_prob=c.global1_blur_prob, global2_blur_prob=c.global2_blur_prob,
                               local_blur_prob=c.local_blur_prob, global2_solarize_prob=c.global2_solarize_prob)
    return SafeImageDataset(build_dataset(cfg.train.dataset_path, transform=aug))


def _collate(samples, cfg, mask_generator, n_tokens):
    positions = [s[-1] for s in samples]
    samples = [s[:-1] for s in samples]
    rng = random.Random(position_seed(cfg.train.seed, positions[0], salt=1))  # masks depend on the position only
    mask_generator = copy.copy(mask_generator)
    mask_generator.rng = rng  # block positions too (not the process-global `random`)
    batch = collate_data_and_cast(samples, mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
                                  mask_probability=cfg.ibot.mask_sample_probability, n_tokens=n_tokens,
                                  mask_generator=mask_generator, generator=rng)
    batch["positions"] = torch.tensor(positions)
    return batch


def build_data_loader(cfg: DictConfig, dataset, start_iter: int, rank: int, world: int, patch_size: int):
    n = cfg.crops.global_crops_size // patch_size
    # an explicit Random (replaced per batch in _collate): the default, the `random` module, cannot be pickled
    # into the DataLoader workers of a spawned rank
    mask_generator = MaskingGenerator((n, n), max_num_patches=0.5 * n * n, rng=random.Random(cfg.train.seed))
    sampler = ShardedInfiniteSampler(len(dataset), rank=rank, world_size=world, seed=cfg.train.seed,
                                     start_global=global_position(start_iter, cfg.train.batch_size_per_gpu * world))
    loader = torch.utils.data.DataLoader(
        PositionSeededDataset(dataset, cfg.train.seed), batch_size=cfg.train.batch_size_per_gpu,
        sampler=PositionedSampler(sampler), num_workers=cfg.train.num_workers, drop_last=True,
        pin_memory=torch.cuda.is_available(), persistent_workers=cfg.train.num_workers > 0,
        collate_fn=partial(_collate, cfg=cfg, mask_generator=mask_generator, n_tokens=n * n),
        generator=torch.Generator().manual_seed(cfg.train.seed))  # keeps the global RNG untouched
    return loader


def gather_skipped(skipped: list, device) -> list:
    """This step's unreadable-image records of every rank, on every rank (rank order).

    Each rank reads its own share of the stream; gathering makes ``skipped_images`` in metrics.jsonl and the
    ``train.max_skipped_images`` ceiling global (and every rank aborts together). One scalar all-reduce per
    step; the records themselves travel only when some rank skipped an image.
    """
    if not D.is_dist():
        return list(skipped)
    import torch.distributed as dist

    n = D.all_reduce_sum(torch.tensor([float(len(skipped))], device=device))
    if n.item() == 0:
        return []
    parts = [None] * D.get_world_size()
    dist.all_gather_object(parts, [tuple(s) for s in skipped])
    return [s for part in parts for s in part]


def auto_cpu_threads(procs_per_node: int, workers_per_proc: int) -> int:
    """Cores left for one training process's intra-op threads once its data workers have theirs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, procs_per_node) - workers_per_proc)


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------
def _mp_autocast(cfg, device):
    """Autocast for the forward pass on CUDA when the student backbone's param dtype is fp16/bf16."""
    dt = cfg.compute_precision.student.backbone.mixed_precision.param_dtype
    if device.type == "cuda" and dt in ("fp16", "bf16") and D.get_world_size() == 1:
        return torch.autocast("cuda", dtype=torch.float16 if dt == "fp16" else torch.bfloat16)
    if device.type == "cpu" and dt == "bf16" and D.get_world_size() == 1:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def run(cfg: DictConfig) -> dict:
    """Train (or resume) the DINOv2 recipe described by ``cfg``; returns a summary dict (rank 0)."""
    info = D.init_distributed(cfg.distributed.backend)
    rank, world, device = info.rank, info.world_size, info.device
    out = cfg.train.output_dir
    if rank == 0:
        check_writable(out)
    # the data first: a missing dataset root fails with its expected layout before anything is built or written
    dataset = build_ssl_dataset(cfg)
    threads = cfg.train.num_threads or (auto_cpu_threads(info.local_world_size, cfg.train.num_workers)
                                        if device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank (and student == teacher)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    model = SSLMetaArch(cfg).to(device)
    model.prepare_for_distributed_training(device.type)
    model.train()
    optimizer = build_optimizer(cfg, model)
    sched = build_schedules(cfg)
    max_iter = sched["total_iters"]
    scaler = None
    if cfg.compute_precision.grad_scaler and device.type == "cuda" and \
            cfg.compute_precision.student.backbone.mixed_precision.param_dtype == "fp16":
        scaler = torch.amp.GradScaler("cuda")

    def say(msg: str):  # rank 0: console, mirrored to <output_dir>/log.txt
        if rank == 0:
            print(msg, flush=True)
            with open(os.path.join(out, "log.txt"), "a") as f:
                f.write(msg + "\n")

    ckpt = Checkpointer(os.path.join(out, "checkpoints"), max_to_keep=cfg.checkpointing.max_to_keep)
    start_iter = 0
    latest = ckpt.latest() if cfg.checkpointing.resume else None
    if latest is not None:
        extra = ckpt.load(latest, models={"model": model}, optimizers={"optimizer": optimizer})
        start_iter = int(extra["iteration"])
        if scaler is not None and extra.get("grad_scaler"):
            scaler.load_state_dict(extra["grad_scaler"])
        say(f"resumed from {latest} at iteration {start_iter} (world size now {world})")
    if rank == 0:  # after a successful resume: a run that cannot load its checkpoint keeps its config.yaml
        save_config(cfg, out)
    if latest is None:  # per-rank stream for drop path etc.; a resumed run restored its RNG from the checkpoint
        torch.manual_seed(cfg.train.seed * 1000 + rank)

    skips = SkipTracker(cfg.train.max_skipped_images if cfg.train.max_skipped_images < 1
                        else int(cfg.train.max_skipped_images), dataset_size=len(dataset))
    loader = build_data_loader(cfg, dataset, start_iter, rank, world, model.student["backbone"].patch_size)
    logger = MetricLogger(output_dir=out, tensorboard=cfg.logging.tensorboard)
    global_batch = cfg.train.batch_size_per_gpu * world

    def save(iteration: int):
        path = ckpt.save(iteration, models={"model": model}, optimizers={"optimizer": optimizer},
                         extra={"iteration": iteration, "global_position": global_position(iteration, global_batch),
                                "grad_scaler": scaler.state_dict() if scaler is not None else {}})
        return path

    from ..preemption import requeue_and_exit, stop_requested

    it = start_iter
    data_iter = iter(loader)
    t_data = t_start = time.perf_counter()
    stop_at = cfg.train.stop_at_iteration
    while it < max_iter:
        batch = next(data_iter)
        skips.update(gather_skipped(batch.pop("skipped_images", []), device))
        batch = _to_device(batch, device)
        data_time = time.perf_counter() - t_data
        t0 = time.perf_counter()
        apply_optim_schedules(optimizer, sched["lr"][it], sched["wd"][it], sched["last_layer_lr"][it])
        optimizer.zero_grad(set_to_none=True)
        with _mp_autocast(cfg, device):
            losses = model.forward_backward(batch, teacher_temp=sched["teacher_temp"][it], loss_scaler=scaler)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if cfg.optim.clip_grad:
            for m in model.student.values():  # per sub-module, as the reference
                clip_grad_norm_(m.parameters(), cfg.optim.clip_grad)
        # NaN guard: agree across ranks before stepping, so nothing non-finite reaches the weights
        stacked = torch.stack([v.float() for v in losses.values()])
        D.all_reduce_mean(stacked)
        if not torch.isfinite(stacked).all():
            vals = {k: float(v) for k, v in zip(losses.keys(), stacked)}
            raise NonFiniteLossError(
                f"non-finite loss at iteration {it}: {vals}. Nothing was stepped or saved; the last good checkpoint "
                f"({ckpt.latest()}) is intact. Lower optim.base_lr, raise optim.warmup_epochs or check the data.")
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        model.update_teacher(sched["momentum"][it])
        it += 1
        step_time = time.perf_counter() - t0
        record = {**{k: float(v) for k, v in zip(losses.keys(), stacked)},
                  "lr": sched["lr"][it - 1], "wd": sched["wd"][it - 1], "mom": sched["momentum"][it - 1],
                  "last_layer_lr": sched["last_layer_lr"][it - 1], "teacher_temp": sched["teacher_temp"][it - 1],
                  "skipped_images": skips.n_unique, "data_time": data_time, "iter_time": step_time + data_time,
                  "img_per_s": global_batch / max(step_time + data_time, 1e-9), "max_mem_mb": peak_memory_mb()}
        logger.update(**{k: v for k, v in record.items() if k.endswith("loss")})
        logger.write(it, record)
        if rank == 0 and (it % cfg.logging.print_freq == 0 or it == max_iter or it == start_iter + 1):
            elapsed = time.perf_counter() - t_start
            eta = datetime.timedelta(seconds=int(elapsed / (it - start_iter) * (max_iter - it)))
            say(f"[{it:>{len(str(max_iter))}}/{max_iter}] eta {eta}  {logger}  lr {record['lr']:.2e}  "
                f"wd {record['wd']:.3f}  mom {record['mom']:.4f}  t_temp {record['teacher_temp']:.3f}  "
                f"img/s {record['img_per_s']:.1f}  data {data_time:.3f}s  mem {record['max_mem_mb']:.0f}MB")
        if it % cfg.checkpointing.period_iterations == 0 or it == max_iter:
            save(it)
        ev = cfg.evaluation.eval_period_iterations
        if ev and it % ev == 0 and it != max_iter:
            export_backbone(model.teacher["backbone"], os.path.join(out, "eval", f"training_{it}",
                                                                    "teacher_backbone.safetensors"))
        if stop_requested() or it == stop_at:
            if it % cfg.checkpointing.period_iterations != 0 and it != max_iter:
                save(it)
            logger.close()
            if it == stop_at:
                return {"stopped_at": it}
            requeue_and_exit()
        t_data = time.perf_counter()

    final = os.path.join(out, "teacher_backbone.safetensors")
    export_backbone(model.teacher["backbone"], final)
    logger.close()
    summary = {"iterations": it, "teacher": final, "skipped_images": skips.n_unique}
    if cfg.evaluation.knn_train_dataset:
        from .quick_eval import knn_after_training

        summary.update(knn_after_training(cfg, final))
    D.barrier()
    return summary
