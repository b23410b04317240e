"""DeiT III recipe entry (``launchers/train_deit3.py``): one function per process, started by ``pretrain.launch``.

Recipe (Touvron et al., "DeiT III: Revenge of the ViT", 2022; ``configs/deit3/``): ViT with LayerScale (1e-4) and
uniform stochastic depth, 3-Augment, Mixup 0.8 / CutMix 1.0, binary cross-entropy, repeated augmentation (3 copies
on different ranks), LAMB with a per-iteration cosine schedule and warm-up, model EMA evaluated alongside the raw
weights, low-resolution pre-training then fine-tuning at a higher resolution (``model.finetune_from``).
"""
from __future__ import annotations

from omegaconf import DictConfig

from .. import distributed as du
from .config import load_supervised_config

__all__ = ["config_from_args", "train_entry"]


def config_from_args(args, world_size: int | None = None) -> DictConfig:
    cfg = load_supervised_config("deit3", getattr(args, "config_file", None), list(getattr(args, "opts", []) or []),
                                 world_size=world_size)
    if getattr(args, "output_dir", None):
        cfg.train.output_dir = args.output_dir
    return cfg


def train_entry(args) -> dict:
    """Runs in every process: init distributed (torchrun/Slurm/single), load the config, train."""
    from .engine import train

    cfg = config_from_args(args)  # WORLD_SIZE is in the environment already: derived lr uses it
    info = du.init_distributed(cfg.distributed.backend)
    cfg = config_from_args(args, info.world_size)
    return train(cfg, info.device)
