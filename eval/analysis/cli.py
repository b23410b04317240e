"""Small CLI helpers shared by the analysis / uncertainty launchers: strict model loading and image datasets."""
from __future__ import annotations

import argparse
import ast

import torch

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def parse_kwargs(items) -> dict:
    """``["num_classes=100", "grid_sizes=(4,4,2,1)"]`` -> dict (Python literals, else strings)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--arch-kwargs entry {item!r} must look like key=value")
        k, v = item.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = {"true": True, "false": False, "none": None}.get(v.lower(), v)
    return out


def add_common_args(p: argparse.ArgumentParser, default_img: int | None = None):
    p.add_argument("--arch", required=True, help="registered encoder name, e.g. outgrid_cifar100_14m")
    p.add_argument("--arch-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="constructor keywords, e.g. num_classes=100")
    p.add_argument("--weights", default=None, help="checkpoint (.pth/.safetensors/octo checkpoint dir), strict")
    p.add_argument("--random-init", action="store_true", help="use random weights (explicit baseline)")
    p.add_argument("--dataset", required=True, help="dataset spec for pretrain.data.datasets.build_dataset, "
                                                    "e.g. cifar100:root=/data:split=test")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--img-size", type=int, default=default_img, help="resize + centre-crop side (default: the "
                                                                      "encoder's training resolution)")
    p.add_argument("--mean", type=float, nargs=3, default=list(CIFAR_MEAN))
    p.add_argument("--std", type=float, nargs=3, default=list(CIFAR_STD))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def load_model(args):
    from pretrain.models import build_encoder, load_pretrained

    if bool(args.weights) == bool(args.random_init):
        raise SystemExit("pass exactly one of --weights PATH or --random-init")
    torch.manual_seed(args.seed)
    model = build_encoder(args.arch, **parse_kwargs(args.arch_kwargs))
    if args.weights:
        print(load_pretrained(model, args.weights, strict=True))
    return model.eval().to(args.device)


def image_dataset(args, model):
    """``build_dataset(spec)`` with Resize -> CenterCrop -> ToTensor -> Normalize at ``--img-size``."""
    from torchvision import transforms as T

    from pretrain.data.datasets import build_dataset  # lazy: only the launchers need the data package

    size = args.img_size or getattr(model, "default_img_size", None) or 32
    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(args.mean, args.std)])
    return build_dataset(args.dataset, transform=tf)
