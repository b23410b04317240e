"""Calibration / uncertainty evaluation of a classifier checkpoint (ECE with 15 bins, NLL, Brier, entropy, MI).

    python launchers/eval_uncertainty.py --arch snodevit_small \
        --arch-kwargs num_classes=10 img_size=32 patch_size=4 --weights ckpt.safetensors \
        --dataset cifar10:root=/data:split=test --num-samples 16 --output-dir eval/unc

SNodeViT models are sampled ``--num-samples`` times with diffusion noise on (seeded generator: reproducible);
other classifiers are evaluated deterministically. Writes ``uncertainty.json`` and ``uncertainty_reliability.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eval.analysis.cli import add_common_args, image_dataset, load_model  # noqa: E402


def main(argv=None):
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    p.add_argument("--num-samples", type=int, default=16, help="stochastic passes (SNodeViT)")
    p.add_argument("--n-bins", type=int, default=15)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0 = all)")
    args = p.parse_args(argv)
    import torch
    from torch.utils.data import DataLoader, Subset

    from eval.uncertainty import evaluate_uncertainty, save_report

    model = load_model(args)
    if getattr(model, "head", None) is None:
        raise SystemExit(f"{args.arch} has no classifier head: pass --arch-kwargs num_classes=N matching the weights")
    ds = image_dataset(args, model)
    if args.limit:
        ds = Subset(ds, range(min(args.limit, len(ds))))
    dl = DataLoader(ds, batch_size=args.batch_size, num_workers=args.num_workers)
    res = evaluate_uncertainty(model, dl, num_samples=args.num_samples, seed=args.seed,
                               device=torch.device(args.device), n_bins=args.n_bins)
    paths = save_report(res, args.output_dir, n_bins=args.n_bins)
    print(json.dumps(res["metrics"], indent=1))
    print(f"wrote {paths['json']} and {paths['png']}")


if __name__ == "__main__":
    main()
