#!/usr/bin/env python
"""Train the DINOv2 recipe with any registered encoder, on a laptop CPU, a workstation or a Slurm cluster.

    python launchers/train_dinov2.py --config-file configs/quickstart.yaml
    python launchers/train_dinov2.py --config-file configs/hybrid_vith16.yaml --nodes 2 --ngpus 8 \
        --partition gpu --output-dir /ckpt/hybrid_vith16 train.dataset_path=imagenet:root=/data/imagenet:split=train

Submits through submitit when a Slurm cluster is reachable (or ``--cluster slurm``); otherwise runs locally with
``--ngpus`` processes (gloo on CPU). Re-running the same command resumes from the latest checkpoint.
"""

import sys

from pretrain.launch import training_main
from pretrain.dinov2.entry import config_from_args, train_entry


def main(argv=None):
    return training_main(__doc__, config_from_args, train_entry, "configs/quickstart.yaml", argv)


if __name__ == "__main__":
    sys.exit(main())
