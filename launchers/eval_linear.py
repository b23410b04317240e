#!/usr/bin/env python
"""Linear probe of a frozen encoder: 52 linear heads (13 lrs x {1,4} blocks x {cls, cls+avgpool}) trained at once,
best head picked on the validation split, reported on the test split. ``--method logreg`` fits scikit-learn
logistic regression on cached cls features instead (C sweep; small datasets, CPU).

    python launchers/eval_linear.py --arch vit_small --arch-kwargs patch_size=14 img_size=518 \
        --weights dinov2_vits14_pretrain.pth --train-dataset imagenet:root=/data/in1k:split=train \
        --val-dataset imagenet:root=/data/in1k:split=val --output-dir out/linear --ngpus 8

Rerunning the same command resumes from ``<output-dir>/linear_checkpoint.pth``.
"""

import sys

from eval.linear import add_linear_args, main as linear_main
from pretrain.launch import evaluation_main


def main(argv=None):
    return evaluation_main(__doc__, add_linear_args, linear_main, argv)


if __name__ == "__main__":
    main()
    sys.exit(0)
