#!/usr/bin/env python
"""Train the DeiT III supervised recipe (any registered encoder) locally or on a Slurm cluster.

    python launchers/train_deit3.py --config-file configs/deit3/tiny_cpu.yaml --local --ngpus 2
    python launchers/train_deit3.py --config-file configs/deit3/deit3_base.yaml --nodes 1 --ngpus 8 \
        --partition gpu --output-dir /ckpt/deit3_base data.train_dataset=imagenet:root=/data/in1k:split=train \
        data.val_dataset=imagenet:root=/data/in1k:split=val
    # fine-tune the 192-px model at 224 px
    python launchers/train_deit3.py --config-file configs/deit3/deit3_finetune_224.yaml --ngpus 8 \
        model.finetune_from=/ckpt/deit3_base/best_model.safetensors

``data.batch_size_per_gpu`` is per process; ``optim.base_lr`` is absolute (``optim.scaling_rule: none``, DeiT III's
``--unscale-lr``). Re-running the same command with the same --output-dir resumes from the latest checkpoint.
"""
import argparse
import sys

from pretrain.config import ConfigError
from pretrain.launch import add_launcher_args, launch
from pretrain.supervised.deit3 import config_from_args, train_entry


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_launcher_args(parser)
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("--config-file is required (e.g. configs/deit3/deit3_small.yaml)")
    try:  # validate before submitting anything
        cfg = config_from_args(args, world_size=args.nodes * args.ngpus)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if not getattr(args, "output_dir", None):
        args.output_dir = cfg.train.output_dir
    result = launch(train_entry, args)
    if isinstance(result, dict):
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
