"""Shared pieces of the evaluators: the encoder from CLI args (strict weights), transforms, sharded feature
extraction gathered in dataset order, and small result/printing helpers.

Model selection (every evaluator):

* ``--arch NAME [--arch-kwargs k=v ...]`` builds any registered encoder (``pretrain.models.list_encoders()``),
  e.g. ``--arch vit_small --arch-kwargs patch_size=14 num_register_tokens=4 img_size=518``;
* or ``--config-file train_run/config.yaml [student.x=y ...]``: the encoder is built from ``student.*`` exactly
  like training does (``--arch`` / ``--arch-kwargs`` still override);
* ``--weights PATH`` (octo checkpoint directory, exported ``.safetensors``, DINOv2 backbone ``.pth``, octic-vits
  checkpoint) is loaded **strictly**: any missing/unexpected/mismatched key aborts with a readable report, so a
  wrong config never silently evaluates random weights. ``--random-init`` (explicit) evaluates an untrained
  encoder as a baseline.
"""
from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from pretrain import distributed as du

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class EvalArgsError(ValueError):
    """A user-facing problem with the evaluation arguments."""


# ------------------------------------------------------------------------------------------------ CLI args
def add_model_args(parser, *, default_batch: int = 64, default_resize: int = 256, default_crop: int = 224):
    """Model/weights/data-loading arguments shared by every evaluator."""
    g = parser.add_argument_group("encoder")
    g.add_argument("--arch", default=None, help="registered encoder name (default: student.arch of --config-file)")
    g.add_argument("--arch-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="constructor keywords, e.g. patch_size=14 num_register_tokens=4 img_size=518")
    g.add_argument("--weights", default=None,
                   help="checkpoint dir, .safetensors, .pth backbone state dict or published checkpoint")
    g.add_argument("--random-init", action="store_true", help="evaluate randomly initialised weights (baseline)")
    g.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                   help="autocast dtype on CUDA (ignored on CPU, which always runs fp32)")
    g.add_argument("--seed", type=int, default=0)
    d = parser.add_argument_group("data")
    d.add_argument("--batch-size", type=int, default=default_batch, help="images per process")
    d.add_argument("--num-workers", type=int, default=4)
    d.add_argument("--resize", type=int, default=default_resize, help="eval: resize shorter side to this")
    d.add_argument("--crop", type=int, default=default_crop, help="eval: center crop")
    d.add_argument("--mean", type=float, nargs=3, default=list(IMAGENET_MEAN))
    d.add_argument("--std", type=float, nargs=3, default=list(IMAGENET_STD))
    return parser


def parse_value(text: str):
    """``'14'`` -> 14, ``'0.1'`` -> 0.1, ``'true'`` -> True, ``'[1,2]'`` -> [1, 2]; anything else stays a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_kwargs(items: Sequence[str], what: str = "--arch-kwargs") -> dict:
    out = {}
    for item in items or ():
        if "=" not in item or item.startswith("="):
            raise EvalArgsError(f"{what} entries must look like key=value (e.g. patch_size=14), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


# ------------------------------------------------------------------------------------------------ encoder
def encoder_spec_from_config(config_file: str | None, opts: Sequence[str] = ()) -> tuple[str, dict]:
    """``(arch, kwargs)`` of the training run's teacher backbone, built exactly as the DINOv2 recipe builds it."""
    from pretrain.dinov2.config import load_ssl_config
    from pretrain.dinov2.meta_arch import backbone_kwargs

    cfg = load_ssl_config(config_file, list(opts or ()), world_size=1)
    return str(cfg.student.arch), backbone_kwargs(cfg, teacher=True)


def build_model_from_args(args, device: torch.device | None = None, verbose: bool = True):
    """The frozen encoder described by ``args`` (see module docstring), in eval mode on ``device``."""
    from pretrain.models import load_pretrained

    config_file = getattr(args, "config_file", None)
    arch, kwargs = None, {}
    if config_file:
        arch, kwargs = encoder_spec_from_config(config_file, getattr(args, "opts", None) or ())
    elif getattr(args, "opts", None):
        raise EvalArgsError(f"trailing overrides {args.opts} need --config-file (a training config.yaml); "
                            "use --arch-kwargs key=value to change the encoder constructor")
    if args.arch:
        arch = args.arch
    if not arch:
        raise EvalArgsError("no encoder given: pass --arch NAME (see pretrain.models.list_encoders()) or "
                            "--config-file of the training run")
    kwargs.update(parse_kwargs(args.arch_kwargs))
    if not args.weights and not args.random_init:
        raise EvalArgsError("no --weights given; evaluating random weights needs the explicit --random-init flag")
    if args.weights and args.random_init:
        raise EvalArgsError("--weights and --random-init exclude each other")
    torch.manual_seed(getattr(args, "seed", 0))
    from pretrain.models import build_encoder

    model = build_encoder(arch, **kwargs)
    if args.weights:
        report = load_pretrained(model, args.weights, strict=True)
        if verbose and du.is_main_process():
            print(f"[eval] {report}")
    elif verbose and du.is_main_process():
        print(f"[eval] {arch}: RANDOM initialisation (--random-init)")
    model.eval().requires_grad_(False)
    return model.to(device or du.init_distributed().device)


def autocast(device: torch.device, precision: str = "fp32"):
    if device.type == "cuda" and precision != "fp32":
        return torch.autocast("cuda", dtype=PRECISIONS[precision])
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ transforms
def eval_transform(resize: int, crop: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``Resize(resize, bicubic) -> CenterCrop(crop) -> ToTensor -> Normalize`` (crop 0 = no crop)."""
    try:
        from pretrain.data import make_eval_transform  # the training package's version when available

        return make_eval_transform(resize, crop, tuple(mean), tuple(std))
    except ImportError:
        pass
    from torchvision import transforms as T

    ops = []
    if resize:
        ops.append(T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC))
    if crop:
        ops.append(T.CenterCrop(crop))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def train_transform(crop: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment: str = "rrc"):
    """Linear-probe training transform: ``RandomResizedCrop + HFlip`` (``augment=rrc``) or the eval pipeline."""
    from torchvision import transforms as T

    if augment == "none":
        return T.Compose([T.Resize(crop, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop),
                          T.ToTensor(), T.Normalize(mean, std)])
    if augment != "rrc":
        raise EvalArgsError(f"--train-augment={augment!r} must be 'rrc' or 'none'")
    return T.Compose([T.RandomResizedCrop(crop, interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def build_dataset(spec: str, transform=None):
    from pretrain.data.datasets import build_dataset as _build

    return _build(spec, transform=transform)


def dataset_targets(ds: Dataset) -> torch.Tensor:
    targets = getattr(ds, "targets", None)
    if targets is None:
        raise EvalArgsError(f"dataset {ds!r} has no .targets; a labelled dataset is required")
    t = torch.as_tensor(list(targets), dtype=torch.long)
    if len(t) and int(t.min()) < 0:
        raise EvalArgsError(f"dataset {ds!r} has unlabelled samples (target -1); evaluation needs labels")
    return t


def num_classes_of(*datasets) -> int:
    n = 0
    for ds in datasets:
        if ds is None:
            continue
        classes = getattr(ds, "classes", None)
        n = max(n, len(classes) if classes else 0, int(dataset_targets(ds).max()) + 1 if len(ds) else 0)
    return n


# ------------------------------------------------------------------------------------------------ features
def shard_indices(n: int, rank: int | None = None, world: int | None = None) -> list[int]:
    """Indices ``rank, rank+world, ...`` of ``range(n)``: disjoint shards covering each sample exactly once."""
    from pretrain.data.samplers import DistributedEvalSampler

    rank = du.get_rank() if rank is None else rank
    world = du.get_world_size() if world is None else world
    return list(DistributedEvalSampler(n, rank, world))


def loader(ds: Dataset, batch_size: int, num_workers: int, shuffle: bool = False, drop_last: bool = False):
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=shuffle, drop_last=drop_last,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


@torch.inference_mode()
def extract_local_features(feature_fn: Callable[[torch.Tensor], torch.Tensor], ds: Dataset, batch_size: int,
                           num_workers: int, device: torch.device, precision: str = "fp32",
                           store_device: torch.device | str = "cpu"):
    """Features of this rank's shard (``shard_indices``): ``(global_indices [n], features [n, D], labels [n])``."""
    idx = shard_indices(len(ds))
    feats, labels = [], []
    for images, targets in loader(Subset(ds, idx), batch_size, num_workers):
        with autocast(device, precision):
            f = feature_fn(images.to(device, non_blocking=True))
        feats.append(f.float().to(store_device))
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    if feats:
        feats_t = torch.cat(feats)
    else:  # an empty shard (fewer samples than ranks): the feature width comes from the other ranks
        feats_t = torch.empty(0, 0)
    labels_t = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    return torch.as_tensor(idx, dtype=torch.long), feats_t, labels_t


def gather_in_order(indices: torch.Tensor, values: torch.Tensor, n: int, device="cpu") -> torch.Tensor:
    """Every rank's ``values[i]`` (for global ``indices[i]``) placed at row ``indices[i]`` of an ``[n, ...]`` tensor.

    Shards may differ in length by one; they are padded to equal size for the collective and the padding
    (index -1) is dropped. The result is identical on every rank and independent of the world size.
    """
    world = du.get_world_size()
    if world == 1:
        out = torch.empty((n,) + tuple(values.shape[1:]), dtype=values.dtype, device=device)
        out[indices.to(device)] = values.to(device)
        return out
    per_rank = math.ceil(n / world)
    # agree on the trailing shape (an empty shard does not know the feature width)
    trailing = torch.tensor(list(values.shape[1:]) if values.numel() else [-1] * (values.dim() - 1),
                            dtype=torch.long)
    trailing = du.all_gather_cat(trailing.unsqueeze(0)).max(0).values.tolist()
    comm = du.init_distributed().device if du.init_distributed().backend == "nccl" else torch.device("cpu")
    pad_v = torch.zeros([per_rank] + trailing, dtype=values.dtype, device=comm)
    pad_i = torch.full((per_rank,), -1, dtype=torch.long, device=comm)
    if len(indices):
        pad_v[: len(indices)] = values.to(comm)
        pad_i[: len(indices)] = indices.to(comm)
    all_v, all_i = du.all_gather_cat(pad_v), du.all_gather_cat(pad_i)
    keep = all_i >= 0
    out = torch.empty([n] + trailing, dtype=values.dtype, device=device)
    out[all_i[keep].to(device)] = all_v[keep].to(device)
    return out


def cls_feature_fn(model, feature: str = "cls", normalize: bool = True):
    """``cls`` = the normed cls token; ``cls+avgpool`` = cls concatenated with the mean of the patch tokens."""
    if feature not in ("cls", "cls+avgpool"):
        raise EvalArgsError(f"--feature={feature!r} must be 'cls' or 'cls+avgpool'")

    def fn(x):
        out = model.forward_features(x)
        f = out["x_norm_clstoken"]
        if feature == "cls+avgpool":
            f = torch.cat([f, out["x_norm_patchtokens"].mean(1)], dim=-1)
        return F.normalize(f.float(), dim=-1) if normalize else f.float()

    return fn


# ------------------------------------------------------------------------------------------------ results
def write_results(output_dir: str, name: str, record: dict) -> str | None:
    """Append ``record`` (plus a timestamp) as one JSON line to ``output_dir/name`` (rank 0 only)."""
    if not du.is_main_process():
        return None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    record = dict(record, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain fixed-width table (rank 0 prints it); returns the text."""
    cells = [[str(h) for h in header]] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    text = "\n".join([title, line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])
    if du.is_main_process():
        print(text, flush=True)
    return text


def output_dir_of(args) -> str:
    out = getattr(args, "output_dir", None)
    if not out:
        raise EvalArgsError("--output-dir is required (results and checkpoints go there)")
    os.makedirs(out, exist_ok=True)
    return out
