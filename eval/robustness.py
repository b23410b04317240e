"""Corruption robustness: accuracy of a classifier under corruptions x severities computed on the fly in torch.

Corruptions act on float images ``[B, 3, H, W]`` in ``[0, 1]`` (before normalisation) and are deterministic for a
given ``seed``. Severities 1..5 grow monotonically (parameters in ``SEVERITY_PARAMS``, scaled to the image size
where the effect is spatial); their shapes follow ImageNet-C (Hendrycks & Dietterich, 2019) but the fog pattern
is a multi-octave value noise rather than the diamond-square plasma, so numbers are comparable between octo models,
not with the published -C datasets.

Library use (e.g. from ``launchers/train_cifar.py`` with ``train.eval_robustness=true``)::

    res = evaluate_robustness(model, dataset_without_normalisation, mean, std, device=dev)
    res["mean"], res["clean"], res["table"][name][severity]

Standalone (a finished supervised run)::

    python -m eval.robustness --config-file out/config.yaml --weights out/best_model.safetensors \\
        --dataset cifar10:root=/data/cifar:split=test --severities 1 2 3 4 5 --output-dir out/robustness
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["CORRUPTIONS", "SEVERITY_PARAMS", "corrupt", "evaluate_robustness", "main"]

SEVERITY_PARAMS = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],          # noise std
    "motion_blur": [0.04, 0.07, 0.10, 0.14, 0.19],             # kernel length / image side
    "jpeg": [30, 20, 15, 10, 7],                               # JPEG quality
    "fog": [1.5, 2.0, 2.5, 3.0, 3.5],                          # fog amplitude
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],                    # contrast factor
    "pixelate": [2, 3, 4, 5, 6],                               # block side (x max(1, side // 64))
}
DEFAULT_CORRUPTIONS = ("gaussian_noise", "motion_blur", "jpeg", "fog", "contrast", "pixelate")


def _check(x: torch.Tensor, severity: int):
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"corruptions take float images [B, 3, H, W] in [0, 1]; got shape {tuple(x.shape)}")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")


def gaussian_noise(x, severity, gen):
    sigma = SEVERITY_PARAMS["gaussian_noise"][severity - 1]
    noise = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    return (x + sigma * noise).clamp(0, 1)


def motion_blur(x, severity, gen):
    """Average along a line of ``L`` pixels at a random angle (one per call), reflect-padded."""
    side = min(x.shape[-2:])
    length = max(2, int(round(SEVERITY_PARAMS["motion_blur"][severity - 1] * side)) + severity)
    angle = float(torch.rand((), generator=gen)) * math.pi
    k = 2 * length + 1
    kernel = torch.zeros(k, k, dtype=torch.float64)
    for t in np.linspace(0.0, float(length), 4 * length + 1):  # one-sided streak, as a camera shake trail
        cy, cx = length + t * math.sin(angle), length + t * math.cos(angle)
        y0, x0 = int(math.floor(cy)), int(math.floor(cx))
        fy, fx = cy - y0, cx - x0
        for yy, xx, w in ((y0, x0, (1 - fy) * (1 - fx)), (y0 + 1, x0, fy * (1 - fx)),
                          (y0, x0 + 1, (1 - fy) * fx), (y0 + 1, x0 + 1, fy * fx)):
            if 0 <= yy < k and 0 <= xx < k:
                kernel[yy, xx] += w
    kernel = (kernel / kernel.sum()).to(x.dtype).to(x.device)
    weight = kernel.expand(3, 1, k, k)
    pad = k // 2
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(xp, weight, groups=3).clamp(0, 1)


def jpeg(x, severity, gen):
    quality = SEVERITY_PARAMS["jpeg"][severity - 1]
    out = []
    for img in x:
        arr = (img.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return torch.stack(out).to(x.device, x.dtype)


def _fog_pattern(h, w, gen, octaves=5, decay=2.0):
    """Multi-octave value noise in [0, 1]: bilinearly upsampled random grids, amplitude / ``decay`` per octave."""
    total = torch.zeros(1, 1, h, w)
    amp = 1.0
    for o in range(octaves):
        n = 2 ** (o + 1)
        grid = torch.rand(1, 1, n + 1, n + 1, generator=gen)
        total += amp * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)
        amp /= decay
    total -= total.min()
    return total / total.max().clamp_min(1e-8)


def fog(x, severity, gen):
    """``(x + a * fog) * M / (M + a)`` with ``M`` the per-image max (ImageNet-C's formula)."""
    a = SEVERITY_PARAMS["fog"][severity - 1]
    pattern = _fog_pattern(x.shape[-2], x.shape[-1], gen).to(x.device, x.dtype)
    m = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + a * pattern) * m / (m + a)).clamp(0, 1)


def contrast(x, severity, gen):
    c = SEVERITY_PARAMS["contrast"][severity - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp(0, 1)


def pixelate(x, severity, gen):
    """Average over ``b x b`` blocks and repeat each block mean (edge blocks may be partial)."""
    h, w = x.shape[-2:]
    b = SEVERITY_PARAMS["pixelate"][severity - 1] * max(1, min(h, w) // 64)
    small = F.avg_pool2d(x, b, stride=b, ceil_mode=True, count_include_pad=False)
    return small.repeat_interleave(b, dim=-2).repeat_interleave(b, dim=-1)[..., :h, :w]


CORRUPTIONS: dict[str, Callable] = {"gaussian_noise": gaussian_noise, "motion_blur": motion_blur, "jpeg": jpeg,
                                    "fog": fog, "contrast": contrast, "pixelate": pixelate}


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to float images in [0, 1]; deterministic for ``seed``."""
    if name not in CORRUPTIONS:
        raise KeyError(f"unknown corruption {name!r}; available: {sorted(CORRUPTIONS)}")
    _check(x, severity)
    gen = torch.Generator().manual_seed(int(seed))
    return CORRUPTIONS[name](x.float(), int(severity), gen)


@torch.no_grad()
def evaluate_robustness(model: torch.nn.Module, dataset, mean: Sequence[float], std: Sequence[float], *,
                        corruptions: Sequence[str] = DEFAULT_CORRUPTIONS, severities: Sequence[int] = (1, 2, 3, 4, 5),
                        batch_size: int = 128, device: torch.device | str = "cpu", num_workers: int = 0,
                        seed: int = 0, autocast=None) -> dict:
    """Top-1 (%) on ``dataset`` (yields ``(float tensor in [0,1], label)``, NOT normalised) clean and corrupted.

    Sharded over ranks without duplicates when a process group exists. Returns ``{"clean", "mean", "table":
    {name: {severity: acc}}, "per_corruption": {name: mean over severities}, "n"}``.
    """
    from torch.utils.data import DataLoader

    from pretrain import distributed as du
    from pretrain.data.samplers import DistributedEvalSampler

    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        raise KeyError(f"unknown corruption(s) {bad}; available: {sorted(CORRUPTIONS)}")
    device = torch.device(device)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    sampler = DistributedEvalSampler(len(dataset), du.get_rank(), du.get_world_size())
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    keys = [("clean", 0)] + [(c, sv) for c in corruptions for sv in severities]
    correct = torch.zeros(len(keys), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for bi, (x, y) in enumerate(loader):
        if x.min() < -1e-6 or x.max() > 1 + 1e-6:
            raise ValueError("evaluate_robustness needs images in [0, 1] (an eval transform WITHOUT Normalize); "
                             f"got values in [{float(x.min()):.2f}, {float(x.max()):.2f}]")
        y = y.to(device)
        for ki, (name, sev) in enumerate(keys):
            xc = x if name == "clean" else corrupt(x, name, sev, seed=seed * 7919 + bi * 101 + ki)
            xc = (xc.to(device) - m) / s
            ctx = autocast() if autocast is not None else contextlib.nullcontext()
            with ctx:
                logits = model(xc)
            correct[ki] += (logits.argmax(-1) == y).sum()
        count += y.numel()
    model.train(was_training)
    du.all_reduce_sum(correct)
    du.all_reduce_sum(count)
    acc = (100.0 * correct / count.clamp_min(1)).tolist()
    table: dict = {c: {} for c in corruptions}
    for (name, sev), a in zip(keys[1:], acc[1:]):
        table[name][int(sev)] = a
    per = {c: float(np.mean(list(table[c].values()))) for c in corruptions}
    return {"clean": acc[0], "mean": float(np.mean(acc[1:])) if len(acc) > 1 else acc[0], "table": table,
            "per_corruption": per, "n": int(count.item()), "severities": [int(v) for v in severities]}


def format_table(res: dict) -> list[list]:
    sev = res["severities"]
    return [[c] + [res["table"][c][v] for v in sev] + [res["per_corruption"][c]] for c in res["table"]]


# ------------------------------------------------------------------------------------------------ CLI
def main(argv=None) -> dict:
    from eval.common import parse_kwargs, print_table, write_results
    from pretrain.data.datasets import build_dataset
    from pretrain.models import build_encoder, load_pretrained
    from pretrain.supervised.augment import eval_transform

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, help="config.yaml of a supervised run (model, sizes, mean/std)")
    p.add_argument("--arch", default=None)
    p.add_argument("--arch-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="constructor keywords incl. num_classes=N when not using --config-file")
    p.add_argument("--weights", required=True,
                   help="best_model.safetensors / best_model_ema.safetensors of a supervised run, or any weights")
    p.add_argument("--dataset", required=True, help="e.g. cifar10:root=/data:split=test")
    p.add_argument("--img-size", type=int, default=0, help="default: data.eval_img_size/img_size of the config")
    p.add_argument("--mean", type=float, nargs=3, default=None)
    p.add_argument("--std", type=float, nargs=3, default=None)
    p.add_argument("--corruptions", nargs="*", default=list(DEFAULT_CORRUPTIONS))
    p.add_argument("--severities", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=None)
    args = p.parse_args(argv)
    arch, kwargs, img, mean, std, crop = args.arch, {}, args.img_size, args.mean, args.std, 1.0
    if args.config_file:
        from pretrain.supervised.config import load_supervised_config, model_kwargs
        cfg = load_supervised_config(None, args.config_file, [], world_size=1)
        arch, kwargs = cfg.model.arch, model_kwargs(cfg)
        img = img or (cfg.data.eval_img_size or cfg.data.img_size)
        mean, std, crop = mean or list(cfg.data.mean), std or list(cfg.data.std), cfg.data.eval_crop_ratio
    if args.arch:
        arch = args.arch
    kwargs.update(parse_kwargs(args.arch_kwargs))
    if not arch or not img:
        sys.exit("robustness: give --config-file of a supervised run, or --arch, --arch-kwargs num_classes=N and "
                 "--img-size")
    mean, std = mean or [0.485, 0.456, 0.406], std or [0.229, 0.224, 0.225]
    model = build_encoder(arch, **kwargs)
    if not getattr(model, "num_classes", 0) or getattr(model, "head", None) is None:
        sys.exit(f"robustness: {arch} was built without a classifier; pass --arch-kwargs num_classes=N (or a "
                 "--config-file whose data.num_classes is set)")
    print(load_pretrained(model, args.weights, strict=True))
    ds = build_dataset(args.dataset, transform=eval_transform(img, crop_ratio=crop, normalize=False))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = evaluate_robustness(model.to(device), ds, mean, std, corruptions=args.corruptions,
                              severities=args.severities, batch_size=args.batch_size, device=device, seed=args.seed)
    print_table(f"robustness of {arch} on {args.dataset}: clean {res['clean']:.2f}, mean corrupted "
                f"{res['mean']:.2f} (top-1 %)", ["corruption"] + [f"s{v}" for v in res["severities"]] + ["mean"],
                format_table(res))
    if args.output_dir:
        write_results(args.output_dir, "robustness.jsonl", dict(res, weights=args.weights, dataset=args.dataset))
    return res


if __name__ == "__main__":
    main()
