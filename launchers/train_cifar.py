#!/usr/bin/env python
"""Single-GPU (or CPU) CIFAR-scale supervised recipes: one process, no Slurm.

    python launchers/train_cifar.py --config-file configs/cifar/digits_small.yaml
    python launchers/train_cifar.py --config-file configs/cifar/outgrid_a7m_cifar100.yaml \
        data.train_dataset=cifar100:root=/data/cifar100:split=train \
        data.test_dataset=cifar100:root=/data/cifar100:split=test
    python launchers/train_cifar.py --config-file configs/cifar/convmixer_256_8_cifar10.yaml train.eval_robustness=true

CUDA is used when present (AMP bf16/fp16), else the CPU in fp32. Results: <train.output_dir>/results.json.
"""
import argparse
import sys

from pretrain.config import ConfigError
from pretrain.supervised.cifar import run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="e.g. configs/cifar/digits_small.yaml")
    parser.add_argument("--output-dir", default=None, help="overrides train.output_dir")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value")
    args = parser.parse_args(argv)
    opts = [o for o in args.opts if o != "--"]
    try:
        summary = run(args.config_file, opts, args.output_dir)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
