#!/usr/bin/env python
"""k-NN evaluation of a frozen encoder (DINOv2 protocol: cosine similarity, T=0.07 weighted vote).

    python launchers/eval_knn.py --arch vit_small --arch-kwargs patch_size=14 img_size=518 \
        --weights dinov2_vits14_pretrain.pth --train-dataset imagenet:root=/data/in1k:split=train \
        --test-dataset imagenet:root=/data/in1k:split=val --output-dir out/knn --ngpus 8

Runs locally in ``--nodes x --ngpus`` processes (gloo on CPU) or on Slurm, like training.
Results: ``<output-dir>/results_eval_knn.json`` (one JSON line per run).
"""

import sys

from eval.knn import add_knn_args, main as knn_main
from pretrain.launch import evaluation_main


def main(argv=None):
    return evaluation_main(__doc__, add_knn_args, knn_main, argv)


if __name__ == "__main__":
    main()
    sys.exit(0)
