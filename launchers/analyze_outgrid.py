"""OutGridViT attention analysis: MAD + normalised entropy per stage (JSON/CSV) and PNG visualisations.

    python launchers/analyze_outgrid.py --arch outgrid_cifar100_64 --arch-kwargs num_classes=100 \
        --weights run/export/teacher.safetensors --dataset cifar100:root=/data:split=test \
        --output-dir analysis/outgrid64 --n-images 64 --seeds 0 1 2

Writes ``attention_metrics.{json,csv}`` (grid_mad, grid_mad_norm, grid_entropy_norm, kernel_mad, kernel_mad_norm,
kernel_entropy_norm per stage, mean and std over seeds), ``grid/*.png`` (query heatmaps) and ``kernel/*.png``
(dynamic-kernel overlays).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eval.analysis.cli import add_common_args, image_dataset, load_model  # noqa: E402


def main(argv=None):
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="query-sampling seeds")
    p.add_argument("--n-queries", type=int, default=32, help="grid queries per group")
    p.add_argument("--n-positions", type=int, default=64, help="dynamic-kernel positions per image")
    p.add_argument("--n-plot-images", type=int, default=2)
    args = p.parse_args(argv)
    from eval.analysis.outgrid import analyze

    model = load_model(args)
    if not args.arch.startswith("outgrid"):
        raise SystemExit(f"--arch {args.arch!r} is not an OutGridViT encoder (outgrid_*)")
    ds = image_dataset(args, model)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(ds), generator=g)[: args.n_images].tolist()
    images = torch.stack([ds[i][0] for i in idx])
    res = analyze(model, images, args.output_dir, seeds=tuple(args.seeds), n_queries=args.n_queries,
                  n_positions=args.n_positions, n_plot_images=args.n_plot_images, mean=args.mean, std=args.std,
                  batch_size=min(args.batch_size, 16))
    print(json.dumps(res["stages"], indent=1))
    print(f"wrote {args.output_dir}/attention_metrics.json, .csv and {len(res['pngs'])} PNGs")


if __name__ == "__main__":
    main()
