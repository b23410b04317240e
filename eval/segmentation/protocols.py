"""Segmentation protocols on a frozen encoder and the evaluation entry point.

* ``linear``: BatchNorm + 1x1 conv on the last layer's patch tokens; logits upsampled bilinearly to the label
  size; single-scale inference (sliding window when ``--slide-crop`` > 0).
* ``ms``: the last 4 layers concatenated; multi-scale (``--scales``) + flip test-time augmentation with
  sliding-window inference (``--slide-crop``/``--slide-stride``), inputs padded to the patch size.
* ``knn``: training-free. Train patch features (last layer, L2-normalised) are labelled by a majority vote of
  the pixels inside each patch (at least half of the patch must be labelled); ``--knn-mode prototype`` predicts
  by cosine similarity to per-class mean features, ``--knn-mode knn`` by a T-weighted vote of the ``--knn-k``
  nearest labelled patches (a bank of at most ``--bank-per-class`` patches per class).

The head is trained with AdamW + poly decay (DINOv2/mmseg linear configs: lr 1e-3, wd 1e-4), the loss is
pixel cross-entropy with ignore label 255. The confusion matrix is summed over ranks (see ``metrics``).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from pretrain import distributed as du

from .. import common
from .datasets import IGNORE, EvalTransform, TrainTransform, build_segmentation_dataset
from .heads import BNLinearHead
from .inference import pad_to_multiple, tta_probs
from .metrics import confusion_matrix, reduce_confusion, segmentation_metrics

PROTOCOLS = ("linear", "ms", "knn")


def layer_indices(protocol: str, n_blocks: int) -> int:
    return min(4, n_blocks) if protocol == "ms" else 1


def token_maps(model, x, n_layers: int, precision="fp32"):
    with torch.no_grad(), common.autocast(x.device, precision):
        maps = model.get_intermediate_layers(x, n_layers, reshape=True)
    return [m.float() for m in maps]


def _collate(batch):
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def sync_batchnorm_buffers(module) -> None:
    """Average BatchNorm running statistics over ranks (plain BN trains per rank, e.g. with gloo on CPU)."""
    if du.get_world_size() == 1:
        return
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for buf in (m.running_mean, m.running_var):
                t = buf.detach().cpu() if du.init_distributed().backend != "nccl" else buf.detach()
                du.all_reduce_mean(t)
                buf.copy_(t.to(buf.device))


def train_head(model, train_ds, num_classes, args, device) -> BNLinearHead:
    from ..linear import sync_gradients
    from pretrain.data.samplers import ShardedInfiniteSampler

    n_layers = layer_indices(args.protocol, model.n_blocks)
    head = BNLinearHead(model.embed_dim * n_layers, num_classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: max(0.0, 1.0 - it / args.iterations) ** 1.0)
    sampler = ShardedInfiniteSampler(len(train_ds), du.get_rank(), du.get_world_size(), seed=args.seed)
    data = iter(DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                           collate_fn=_collate, drop_last=True))
    head.train()
    for it in range(args.iterations):
        x, y = next(data)
        x, y = x.to(device), y.to(device)
        logits = head(token_maps(model, x, n_layers, args.precision))
        logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(list(head.parameters()))
        opt.step()
        sched.step()
        if du.is_main_process() and ((it + 1) % max(1, args.iterations // 10) == 0 or it == 0):
            print(f"[seg] iteration {it + 1}/{args.iterations} loss {loss.item():.4f}", flush=True)
    sync_batchnorm_buffers(head)
    return head.eval()


# ------------------------------------------------------------------------------------------------ training-free
def patch_labels(label: torch.Tensor, grid, patch: int, num_classes: int, min_fraction: float = 0.5):
    """Majority label of each ``patch x patch`` cell of ``label`` ``[H, W]`` (H, W = grid * patch).

    A cell is ignored when less than ``min_fraction`` of its pixels are labelled.
    """
    h, w = grid
    lab = label[: h * patch, : w * patch].reshape(h, patch, w, patch).permute(0, 2, 1, 3).reshape(h * w, -1)
    valid = lab != IGNORE
    onehot = F.one_hot(torch.where(valid, lab, torch.full_like(lab, num_classes)), num_classes + 1)[..., :num_classes]
    counts = onehot.sum(1)
    out = counts.argmax(1)
    out[valid.float().mean(1) < min_fraction] = IGNORE
    return out


def _resized_label(label: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(label[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()


@torch.no_grad()
def collect_patch_features(model, ds, num_classes, args, device):
    """Per-class feature sums and counts (all-reduced) and a bounded bank of labelled patches (gathered)."""
    p = model.patch_size
    sums = torch.zeros(num_classes, model.embed_dim, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    bank_f, bank_y = [], []
    for i in common.shard_indices(len(ds)):
        x, label = ds[i]
        xp = pad_to_multiple(x[None].to(device), p)
        fmap = token_maps(model, xp, 1, args.precision)[-1][0]  # [D, h, w]
        h, w = fmap.shape[-2:]
        lab = _resized_label(label, x.shape[-2:])
        lab = F.pad(lab, (0, xp.shape[-1] - lab.shape[-1], 0, xp.shape[-2] - lab.shape[-2]), value=IGNORE)
        y = patch_labels(lab, (h, w), p, num_classes)
        f = F.normalize(fmap.flatten(1).T, dim=-1).cpu()
        keep = y != IGNORE
        f, y = f[keep], y[keep].cpu()
        sums.index_add_(0, y, f.double())
        counts += torch.bincount(y, minlength=num_classes).double()
        bank_f.append(f)
        bank_y.append(y)
    du.all_reduce_sum(sums)
    du.all_reduce_sum(counts)
    bank = None
    if args.knn_mode == "knn":
        f = torch.cat(bank_f) if bank_f else torch.empty(0, model.embed_dim)
        y = torch.cat(bank_y) if bank_y else torch.empty(0, dtype=torch.long)
        g = torch.Generator().manual_seed(args.seed + du.get_rank())
        sel = []
        per_rank = max(1, args.bank_per_class // du.get_world_size())
        for c in range(num_classes):
            members = torch.nonzero(y == c).flatten()
            sel.append(members[torch.randperm(len(members), generator=g)[:per_rank]])
        sel = torch.cat(sel) if sel else torch.empty(0, dtype=torch.long)
        f, y = f[sel], y[sel]
        if du.get_world_size() > 1:
            import torch.distributed as dist

            parts = [None] * du.get_world_size()
            dist.all_gather_object(parts, (f, y))
            f, y = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
        bank = (f.to(device), y.to(device))
    protos = F.normalize((sums / counts.clamp(min=1)[:, None]).float(), dim=-1)
    return protos.to(device), (counts > 0).to(device), bank


def knn_logits_fn(model, protos, present, bank, args):
    from ..knn import vote

    def fn(x):
        fmap = token_maps(model, x, 1, args.precision)[-1]  # [B, D, h, w]
        B, D, h, w = fmap.shape
        q = F.normalize(fmap.flatten(2).transpose(1, 2).reshape(-1, D), dim=-1)
        if bank is None:
            scores = q @ protos.T
            scores[:, ~present] = -1e4
        else:
            bf, by = bank
            k = min(args.knn_k, len(by))
            s, i = (q @ bf.T).topk(k, dim=1)
            scores = vote(s, by[i], [k], 0.07, protos.shape[0])[k]
        return scores.reshape(B, h, w, -1).permute(0, 3, 1, 2)

    return fn


# ------------------------------------------------------------------------------------------------ evaluation
def save_prediction_png(pred: torch.Tensor, palette, path: str) -> None:
    img = Image.fromarray(pred.cpu().numpy().astype(np.uint8), mode="P")
    img.putpalette(list(palette)[:768])
    img.save(path)


@torch.no_grad()
def evaluate(logits_fn, ds, num_classes, patch_size, args, device, out_dir) -> dict:
    scales = tuple(args.scales) if args.protocol == "ms" else (1.0,)
    flip = args.protocol == "ms" and not args.no_flip
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    pred_dir = os.path.join(out_dir, "predictions")
    for i in common.shard_indices(len(ds)):
        x, label = ds[i]
        probs = tta_probs(logits_fn, x[None].to(device), label.shape, patch_size, scales, flip,
                          args.slide_crop, args.slide_stride or args.slide_crop)
        pred = probs.argmax(1)[0].cpu()
        conf += confusion_matrix(pred, label, num_classes, IGNORE)
        if i < args.save_predictions:
            os.makedirs(pred_dir, exist_ok=True)
            save_prediction_png(pred, ds.palette, os.path.join(pred_dir, f"{ds.name(i)}.png"))
    return segmentation_metrics(reduce_confusion(conf))


# ------------------------------------------------------------------------------------------------ entry point
def add_segmentation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    common.add_model_args(parser, default_batch=8)
    g = parser.add_argument_group("segmentation")
    g.add_argument("--dataset", required=True, choices=["ade20k", "voc"])
    g.add_argument("--root", required=True, help="folder containing ADEChallengeData2016 / VOCdevkit")
    g.add_argument("--train-list", default=None, help="voc: image-id list for training (e.g. SBD train_aug.txt)")
    g.add_argument("--protocol", default="linear", choices=list(PROTOCOLS))
    g.add_argument("--crop-size", type=int, default=512, help="training crop (multiple of the patch size)")
    g.add_argument("--eval-size", type=int, default=512, help="short side of evaluated images (0 = original)")
    g.add_argument("--iterations", type=int, default=40000)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    g.add_argument("--no-flip", action="store_true", help="ms: disable flip test-time augmentation")
    g.add_argument("--slide-crop", type=int, default=0, help="sliding-window size at inference (0 = whole image)")
    g.add_argument("--slide-stride", type=int, default=0, help="sliding-window stride (default = --slide-crop)")
    g.add_argument("--knn-mode", default="prototype", choices=["prototype", "knn"])
    g.add_argument("--knn-k", type=int, default=10)
    g.add_argument("--bank-per-class", type=int, default=10000)
    g.add_argument("--save-predictions", type=int, default=4, help="palette PNGs for the first N val images")
    return parser


def main(args) -> dict:
    info = du.init_distributed()
    out_dir = common.output_dir_of(args)
    device = info.device
    model = common.build_model_from_args(args, device)
    p = model.patch_size
    if args.protocol != "knn" and args.crop_size % p:
        raise common.EvalArgsError(f"--crop-size={args.crop_size} is not a multiple of the patch size {p}; use "
                                   f"{args.crop_size // p * p} or {(args.crop_size // p + 1) * p}")
    torch.manual_seed(args.seed)
    import random

    random.seed(args.seed + du.get_rank())
    eval_tf = EvalTransform(args.eval_size, args.mean, args.std)
    val_ds = build_segmentation_dataset(args.dataset, args.root, "val", eval_tf)
    num_classes = val_ds.num_classes
    if args.protocol == "knn":
        train_ds = build_segmentation_dataset(args.dataset, args.root, "train", eval_tf, args.train_list)
        protos, present, bank = collect_patch_features(model, train_ds, num_classes, args, device)
        logits_fn = knn_logits_fn(model, protos, present, bank, args)
    else:
        train_ds = build_segmentation_dataset(args.dataset, args.root, "train",
                                              TrainTransform(args.crop_size, (0.5, 2.0), args.mean, args.std),
                                              args.train_list)
        head = train_head(model, train_ds, num_classes, args, device)
        n_layers = layer_indices(args.protocol, model.n_blocks)
        if du.is_main_process():
            torch.save(head.state_dict(), os.path.join(out_dir, f"seg_head_{args.protocol}.pth"))

        def logits_fn(x):
            return head(token_maps(model, x, n_layers, args.precision))

    metrics = evaluate(logits_fn, val_ds, num_classes, p, args, device, out_dir)
    common.print_table(f"segmentation {args.dataset} ({args.protocol})", ["mIoU", "aAcc", "mAcc"],
                       [(metrics["mIoU"], metrics["aAcc"], metrics["mAcc"])])
    record = {"eval": "segmentation", "arch": getattr(model, "encoder_name", None), "weights": args.weights,
              "dataset": args.dataset, "protocol": args.protocol, "n_val": len(val_ds), **metrics}
    common.write_results(out_dir, "results_eval_segmentation.json", record)
    du.barrier()
    return record
