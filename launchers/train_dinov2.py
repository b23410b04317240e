#!/usr/bin/env python
"""Train the DINOv2 recipe with any registered encoder, on a laptop CPU, a workstation or a Slurm cluster.

    python launchers/train_dinov2.py --config-file configs/quickstart.yaml
    python launchers/train_dinov2.py --config-file configs/hybrid_vith16.yaml --nodes 2 --ngpus 8 \
        --partition gpu --output-dir /ckpt/hybrid_vith16 train.dataset_path=imagenet:root=/data/imagenet:split=train

Submits through submitit when a Slurm cluster is reachable (or ``--cluster slurm``); otherwise runs locally with
``--ngpus`` processes (gloo on CPU). Re-running the same command resumes from the latest checkpoint.
"""
import argparse
import sys

from pretrain.config import ConfigError
from pretrain.dinov2.entry import config_from_args, train_entry
from pretrain.launch import add_launcher_args, launch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_launcher_args(parser)
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("--config-file is required (e.g. configs/quickstart.yaml)")
    try:  # validate before submitting anything: bad input fails in seconds, not after queueing
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
