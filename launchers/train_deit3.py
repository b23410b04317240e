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

import sys

from pretrain.launch import training_main
from pretrain.supervised.deit3 import config_from_args, train_entry


def main(argv=None):
    return training_main(__doc__, config_from_args, train_entry, "configs/deit3/deit3_small.yaml", argv)


if __name__ == "__main__":
    sys.exit(main())
