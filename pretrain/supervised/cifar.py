"""Single-process CIFAR-scale recipes (``launchers/train_cifar.py``): one GPU when present, else the CPU.

Same loop as DeiT III (``engine.train``) without Slurm or DDP: AMP (bf16, else fp16 + loss scaling) on CUDA and
fp32 on CPU; validation on a held-out split of the train set with EVAL transforms; the official test split
reported separately for the selected best weights; optional corruption robustness (``train.eval_robustness``).
"""
from __future__ import annotations

import os
import time

from omegaconf import DictConfig

from .. import distributed as du
from ..config import ConfigError
from .config import load_supervised_config

__all__ = ["load_cifar_config", "run"]


def load_cifar_config(config_file: str | None, overrides=(), output_dir: str | None = None) -> DictConfig:
    cfg = load_supervised_config("cifar", config_file, list(overrides), world_size=1)
    if output_dir:
        cfg.train.output_dir = output_dir
    return cfg


def run(config_file: str | None, overrides=(), output_dir: str | None = None, log_fn=None) -> dict:
    from .. import preemption
    from .engine import train

    cfg = load_cifar_config(config_file, overrides, output_dir)
    if du.get_world_size() > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("the CIFAR recipes run in one process; use launchers/train_deit3.py for several")
    preemption.install_handlers()
    t0 = time.time()
    summary = train(cfg, None, log_fn=log_fn)
    summary["wall_time_s"] = round(time.time() - t0, 1)
    return summary
