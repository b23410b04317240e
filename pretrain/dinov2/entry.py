"""Process entry point of the DINOv2 launcher (picklable for submitit and multiprocessing)."""
from __future__ import annotations

import os

from .config import load_ssl_config


def config_from_args(args, world_size: int | None = None):
    overrides = list(getattr(args, "opts", None) or [])
    if getattr(args, "output_dir", None):
        overrides.append(f"train.output_dir={os.path.abspath(args.output_dir)}")
    return load_ssl_config(args.config_file, overrides, world_size=world_size)


def train_entry(args):
    """Runs in every training process: resolve the config for the actual world size, then train."""
    from .. import distributed as D
    from .train import run

    info = D.init_distributed()
    cfg = config_from_args(args, world_size=info.world_size)
    return run(cfg)
