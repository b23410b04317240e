#!/usr/bin/env python
"""Semantic segmentation on a frozen encoder (pure PyTorch): ADE20K or Pascal VOC 2012 in their official layouts.

Protocols: ``linear`` (BN + 1x1 conv on last-layer patch tokens), ``ms`` (last 4 layers, multi-scale + flip,
sliding window), ``knn`` (training-free prototypes / nearest labelled patches).

    python launchers/eval_segmentation.py --arch vit_small --arch-kwargs patch_size=14 img_size=518 \
        --weights dinov2_vits14_pretrain.pth --dataset ade20k --root /data/ade --protocol linear \
        --crop-size 518 --eval-size 518 --slide-crop 518 --slide-stride 341 --output-dir out/seg --ngpus 8

Results: ``<output-dir>/results_eval_segmentation.json`` (mIoU, per-class IoU, pixel accuracy) and palette PNGs
of a few validation predictions in ``<output-dir>/predictions``.
"""

import sys

from eval.segmentation.protocols import add_segmentation_args, main as seg_main
from pretrain.launch import evaluation_main


def main(argv=None):
    return evaluation_main(__doc__, add_segmentation_args, seg_main, argv)


if __name__ == "__main__":
    main()
    sys.exit(0)
