"""Datasets addressed by strings: ``build_dataset("cifar10:root=/data:split=train")``.

Every dataset returns ``(image, target)``; ``image`` is a PIL RGB image (``decode=pil``, the default) or a
``uint8`` CHW tensor (``decode=tensor``; faster with the tensor augmentations). Unlabelled images have target -1.
File decode failures raise :class:`~pretrain.data.robust.ImageDecodeError` (wrap in ``SafeImageDataset`` to skip).

Spec grammar: ``name[:key=value]*``. A colon inside a value (``root=C:/x``) is kept: a piece without ``=`` is
glued back onto the previous value. Names are case-insensitive; DINOv2's ``ImageNet:split=TRAIN:root=..:extra=..``
works (``extra`` is accepted and ignored; no split-length asserts).
"""
from __future__ import annotations

import difflib
import functools
import os
import pickle
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .robust import ImageDecodeError, logger

__all__ = ["build_dataset", "list_datasets", "parse_dataset_spec", "register_dataset", "ImageFileDataset",
           "ArrayImageDataset", "TransformedSubset", "split_dataset", "IMG_EXTENSIONS", "drop_target"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
_TV_DECODABLE = (".jpg", ".jpeg", ".png", ".webp")
DECODE_MODES = ("pil", "tensor")


def drop_target(_target) -> tuple:
    """``target_transform`` for SSL (picklable, unlike a lambda): labels are not used."""
    return ()


# --------------------------------------------------------------------------------------------- base classes
class _Base(Dataset):
    classes: list[str]
    targets: list[int]

    def __init__(self, transform=None, target_transform=None, decode: str = "pil"):
        if decode not in DECODE_MODES:
            raise ValueError(f"decode={decode!r} is not valid; use one of {DECODE_MODES}")
        self.transform, self.target_transform, self.decode = transform, target_transform, decode

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int):  # -> (image, target) without transforms
        raise NotImplementedError

    def __getitem__(self, index: int):
        image, target = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __len__(self) -> int:
        return len(self.targets)


# torchvision >= 0.29 deprecates its image decoders in favour of TorchCodec; they still work and are the fast
# path for decode=tensor. Silence only that notice; fall back to PIL when torchvision.io stops providing them.
try:
    from torchvision.io import ImageReadMode as _ReadMode, decode_image as _tv_decode, read_file as _tv_read
except ImportError:  # pragma: no cover
    _tv_decode = None


def _decode_file(path: str, mode: str, index: int):
    try:
        if mode == "tensor" and _tv_decode is not None and path.lower().endswith(_TV_DECODABLE):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities",
                                        category=DeprecationWarning)
                return _tv_decode(_tv_read(path), mode=_ReadMode.RGB)
        with open(path, "rb") as f:
            img = Image.open(f)
            img = img.convert("RGB")  # forces the full decode inside the try
        if mode == "tensor":
            return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
        return img
    except Exception as e:  # noqa: BLE001 - any decoder failure is a decode error for this file
        raise ImageDecodeError(index, path, e) from e


class ImageFileDataset(_Base):
    """A list of image files with integer targets (-1 = unlabelled)."""

    def __init__(self, paths: list[str], targets: list[int], classes: list[str], transform=None,
                 target_transform=None, decode: str = "pil", root: str = ""):
        super().__init__(transform, target_transform, decode)
        self.paths, self.targets, self.classes, self.root = list(paths), [int(t) for t in targets], list(classes), root

    def sample_path(self, index: int) -> str:
        return self.paths[index]

    def load(self, index: int):
        return _decode_file(self.paths[index], self.decode, index), self.targets[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, n={len(self)}, classes={self.num_classes})"


class ArrayImageDataset(_Base):
    """In-memory ``uint8`` images ``[N, H, W, 3]`` (CIFAR, SVHN, digits)."""

    def __init__(self, images: np.ndarray, targets, classes: list[str], transform=None, target_transform=None,
                 decode: str = "pil", name: str = ""):
        super().__init__(transform, target_transform, decode)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N,H,W,3], got {images.dtype} {images.shape}")
        self.images = np.ascontiguousarray(images)
        self.targets = [int(t) for t in targets]
        self.classes, self.name = list(classes), name
        if len(self.targets) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")

    def load(self, index: int):
        arr = self.images[index]
        if self.decode == "tensor":
            return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous(), self.targets[index]
        return Image.fromarray(arr), self.targets[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, n={len(self)}, size={self.images.shape[1:3]})"


class SyntheticDataset(_Base):
    """Deterministic random images (class-tinted noise); sample ``i`` depends only on ``(seed, i)``."""

    def __init__(self, n: int, size: int, classes: int, seed: int = 0, transform=None, target_transform=None,
                 decode: str = "pil"):
        super().__init__(transform, target_transform, decode)
        if n < 1 or size < 1 or classes < 1:
            raise ValueError(f"synthetic needs n, size, classes >= 1 (got n={n}, size={size}, classes={classes})")
        self.n, self.size, self.seed = n, size, seed
        self.classes = [str(c) for c in range(classes)]
        self.targets = [i % classes for i in range(n)]
        self._tints = np.random.default_rng(seed).integers(0, 256, size=(classes, 3))

    def load(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        noise = rng.integers(0, 256, size=(self.size, self.size, 3))
        img = ((noise + self._tints[self.targets[index]]) // 2).astype(np.uint8)
        if self.decode == "tensor":
            return torch.from_numpy(img).permute(2, 0, 1).contiguous(), self.targets[index]
        return Image.fromarray(img), self.targets[index]


# --------------------------------------------------------------------------------------------- subsets / splits
class TransformedSubset(Dataset):
    """``dataset[indices[i]]`` followed by this subset's own transforms (so train/val can differ)."""

    def __init__(self, dataset: Dataset, indices, transform=None, target_transform=None):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.transform, self.target_transform = transform, target_transform

    def with_transform(self, transform=None, target_transform=None) -> "TransformedSubset":
        return TransformedSubset(self.dataset, self.indices, transform, target_transform)

    @property
    def targets(self) -> list[int]:
        t = self.dataset.targets
        return [t[i] for i in self.indices]

    @property
    def classes(self):
        return self.dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, target = self.dataset[self.indices[i]]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def split_dataset(ds: Dataset, val_fraction: float, seed: int = 0) -> tuple[TransformedSubset, TransformedSubset]:
    """Random disjoint (train, val) subsets; ``round(len*val_fraction)`` samples go to val (at least 1).

    Build ``ds`` without transforms and give each subset its own via ``.with_transform(...)``, so the
    held-out split is evaluated with eval transforms (unlike the reference recipes that split an augmented set).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(ds)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training samples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return TransformedSubset(ds, sorted(perm[n_val:])), TransformedSubset(ds, sorted(perm[:n_val]))


# --------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _Entry:
    factory: Callable
    options: tuple[str, ...]
    required: tuple[str, ...]
    layout: str


_REGISTRY: dict[str, _Entry] = {}
_COMMON = ("decode",)


def register_dataset(name: str, options=(), required=(), layout: str = ""):
    """Register ``factory(transform, target_transform, decode, **options) -> Dataset`` under ``name``."""
    def deco(fn):
        key = name.lower()
        if key in _REGISTRY:
            raise KeyError(f"dataset {name!r} already registered")
        _REGISTRY[key] = _Entry(fn, tuple(options) + _COMMON, tuple(required), layout)
        return fn
    return deco


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def parse_dataset_spec(spec: str) -> tuple[str, dict[str, str]]:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset spec must be a non-empty string like 'cifar10:root=/data:split=train', got {spec!r}")
    pieces = spec.strip().split(":")
    name, opts, last = pieces[0].strip().lower(), {}, None
    for p in pieces[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            k = k.strip().lower()
            if not k:
                raise ValueError(f"empty option name in dataset spec {spec!r}")
            if k in opts:
                raise ValueError(f"option {k!r} given twice in dataset spec {spec!r}")
            opts[k] = v
            last = k
        elif last is not None:  # a ':' inside a value, e.g. a Windows drive letter
            opts[last] += ":" + p
        elif p:
            raise ValueError(f"malformed piece {p!r} in dataset spec {spec!r}; expected key=value")
    return name, opts


def build_dataset(spec: str, transform=None, target_transform=None) -> Dataset:
    """Build a dataset from a spec string (see module docstring and :func:`list_datasets`)."""
    name, opts = parse_dataset_spec(spec)
    entry = _REGISTRY.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown dataset {name!r} in spec {spec!r}.{hint} Valid names: {', '.join(list_datasets())}")
    unknown = sorted(set(opts) - set(entry.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {name!r}; valid options: {list(entry.options)}")
    missing = [k for k in entry.required if k not in opts]
    if missing:
        raise ValueError(f"dataset {name!r} needs option(s) {missing}, e.g. '{name}:root=/path'. Layout: {entry.layout}")
    decode = opts.pop("decode", "pil").lower()
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r} is not valid; use one of {DECODE_MODES}")
    if "root" in opts:
        root = os.path.expanduser(opts["root"])
        if not os.path.isdir(root):
            raise FileNotFoundError(f"dataset {name!r}: root {root!r} does not exist or is not a directory. "
                                    f"Expected layout: {entry.layout}")
        opts["root"] = root
    return entry.factory(transform=transform, target_transform=target_transform, decode=decode, **opts)


def _split(value: str, valid: tuple[str, ...], name: str) -> str:
    v = value.lower()
    if v not in valid:
        raise ValueError(f"dataset {name!r}: split={value!r} is not valid; use one of {list(valid)}")
    return v


def _int(value: str, key: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"dataset {name!r}: option {key}={value!r} must be an integer") from None


# --------------------------------------------------------------------------------------------- folders
def _is_image(fname: str) -> bool:
    return fname.lower().endswith(IMG_EXTENSIONS) and not fname.startswith(".")


def _images_in(folder: str, recursive: bool) -> list[str]:
    out = []
    if recursive:
        for dirpath, dirnames, files in os.walk(folder, followlinks=True):
            dirnames.sort()
            out.extend(os.path.join(dirpath, f) for f in sorted(files) if _is_image(f))
    else:
        out = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
               if _is_image(f) and os.path.isfile(os.path.join(folder, f))]
    return out


def _subdirs(folder: str) -> list[str]:
    return sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def _class_folders(root: str, class_to_idx: dict[str, int] | None = None):
    classes = _subdirs(root) if class_to_idx is None else sorted(class_to_idx, key=class_to_idx.get)
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    paths, targets = [], []
    for c in _subdirs(root):
        if c not in class_to_idx:
            raise ValueError(f"class folder {os.path.join(root, c)!r} is not among the {len(class_to_idx)} "
                             "training classes")
        files = _images_in(os.path.join(root, c), recursive=True)
        paths += files
        targets += [class_to_idx[c]] * len(files)
    return paths, targets, classes


_FOLDER_LAYOUT = ("root/<class>/**/*.jpg (one sub-folder per class; labels = sorted folder names) or a flat/"
                  "nested folder of images with labels=none (targets -1)")


@register_dataset("imagefolder", options=("root", "labels"), required=("root",), layout=_FOLDER_LAYOUT)
def _imagefolder(root, transform, target_transform, decode, labels="auto"):
    labels = labels.lower()
    if labels not in ("auto", "folders", "none"):
        raise ValueError(f"imagefolder: labels={labels!r} is not valid; use auto|folders|none")
    if labels == "auto":
        labels = "folders" if any(_images_in(os.path.join(root, d), True) for d in _subdirs(root)) else "none"
    if labels == "folders":
        paths, targets, classes = _class_folders(root)
        stray = _images_in(root, recursive=False)
        if stray:
            logger.warning("imagefolder %s: %d images directly under the root are ignored (class folders found; "
                           "use labels=none to take every image, unlabelled)", root, len(stray))
    else:
        paths = _images_in(root, recursive=True)
        targets, classes = [-1] * len(paths), []
    if not paths:
        raise FileNotFoundError(f"imagefolder: no images ({', '.join(IMG_EXTENSIONS)}) under {root!r}. "
                                f"Expected layout: {_FOLDER_LAYOUT}")
    return ImageFileDataset(paths, targets, classes, transform, target_transform, decode, root)


_IMAGENET_LAYOUT = ("root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG (validation images sorted into class "
                    "folders, e.g. with the common valprep.sh); optional root/test/*.JPEG (unlabelled)")


@register_dataset("imagenet", options=("root", "split", "extra"), required=("root",), layout=_IMAGENET_LAYOUT)
def _imagenet(root, transform, target_transform, decode, split="train", extra=None):
    split = _split(split, ("train", "val", "test"), "imagenet")
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"imagenet: {folder!r} is missing. Expected layout: {_IMAGENET_LAYOUT}")
    if split == "test":
        paths = _images_in(folder, recursive=True)
        return ImageFileDataset(paths, [-1] * len(paths), [], transform, target_transform, decode, folder)
    if not _subdirs(folder):
        raise FileNotFoundError(f"imagenet: {folder!r} has no class folders (the official val tarball is flat; "
                                f"sort it into <wnid>/ folders first). Expected layout: {_IMAGENET_LAYOUT}")
    train_dir = os.path.join(root, "train")
    class_to_idx = ({c: i for i, c in enumerate(_subdirs(train_dir))}
                    if split != "train" and os.path.isdir(train_dir) else None)
    paths, targets, classes = _class_folders(folder, class_to_idx)
    if not paths:
        raise FileNotFoundError(f"imagenet: no images under {folder!r}. Expected layout: {_IMAGENET_LAYOUT}")
    return ImageFileDataset(paths, targets, classes, transform, target_transform, decode, folder)


_TIN_LAYOUT = ("root = tiny-imagenet-200/ (or its parent) with wnids.txt, train/<wnid>/images/*.JPEG, "
               "val/images/*.JPEG + val/val_annotations.txt, test/images/*.JPEG; labels = sorted wnids")


@register_dataset("tinyimagenet", options=("root", "split"), required=("root",), layout=_TIN_LAYOUT)
def _tinyimagenet(root, transform, target_transform, decode, split="train"):
    split = _split(split, ("train", "val", "test"), "tinyimagenet")
    if not os.path.isfile(os.path.join(root, "wnids.txt")) and os.path.isfile(
            os.path.join(root, "tiny-imagenet-200", "wnids.txt")):
        root = os.path.join(root, "tiny-imagenet-200")
    wnids_file = os.path.join(root, "wnids.txt")
    if not os.path.isfile(wnids_file):
        raise FileNotFoundError(f"tinyimagenet: {wnids_file!r} is missing. Expected layout: {_TIN_LAYOUT}")
    with open(wnids_file) as f:
        classes = sorted({w.strip() for w in f if w.strip()})
    idx = {c: i for i, c in enumerate(classes)}
    paths, targets = [], []
    if split == "train":
        for c in classes:
            d = os.path.join(root, "train", c, "images")
            if not os.path.isdir(d):
                raise FileNotFoundError(f"tinyimagenet: {d!r} is missing. Expected layout: {_TIN_LAYOUT}")
            files = _images_in(d, recursive=False)
            paths += files
            targets += [idx[c]] * len(files)
    elif split == "val":
        ann = os.path.join(root, "val", "val_annotations.txt")
        if not os.path.isfile(ann):
            raise FileNotFoundError(f"tinyimagenet: {ann!r} is missing. Expected layout: {_TIN_LAYOUT}")
        with open(ann) as f:
            rows = sorted(line.rstrip("\n").split("\t")[:2] for line in f if line.strip())
        for fname, wnid in rows:
            if wnid not in idx:
                raise ValueError(f"tinyimagenet: {ann!r} names class {wnid!r} missing from wnids.txt")
            paths.append(os.path.join(root, "val", "images", fname))
            targets.append(idx[wnid])
    else:
        d = os.path.join(root, "test", "images")
        if not os.path.isdir(d):
            raise FileNotFoundError(f"tinyimagenet: {d!r} is missing. Expected layout: {_TIN_LAYOUT}")
        paths = _images_in(d, recursive=False)
        targets = [-1] * len(paths)
    return ImageFileDataset(paths, targets, classes, transform, target_transform, decode, root)


# --------------------------------------------------------------------------------------------- array formats
def _load_pickle(path: str) -> dict:
    # The official CIFAR batches are Python pickles; only load files you trust (they come from the CIFAR site).
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar(root, transform, target_transform, decode, split, variant, label="fine"):
    folder_name = "cifar-10-batches-py" if variant == 10 else "cifar-100-python"
    layout = (f"root = {folder_name}/ (or its parent) with " +
              ("data_batch_1..5, test_batch, batches.meta" if variant == 10 else "train, test, meta") +
              " (the official python version)")
    name = f"cifar{variant}"
    split = _split(split, ("train", "test"), name)
    if os.path.isdir(os.path.join(root, folder_name)):
        root = os.path.join(root, folder_name)
    files = ([f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]) if variant == 10 \
        else [split]
    missing = [f for f in files if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError(f"{name}: missing {missing} in {root!r}. Expected layout: {layout}")
    if variant == 100:
        label = label.lower()
        if label not in ("fine", "coarse"):
            raise ValueError(f"cifar100: label={label!r} is not valid; use fine|coarse")
        key = b"fine_labels" if label == "fine" else b"coarse_labels"
    else:
        key = b"labels"
    data, labels = [], []
    for f in files:
        d = _load_pickle(os.path.join(root, f))
        if b"data" not in d or key not in d:
            raise ValueError(f"{name}: {os.path.join(root, f)!r} lacks keys b'data'/{key!r}; not an official batch")
        data.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels += list(d[key])
    images = np.concatenate(data).transpose(0, 2, 3, 1)
    meta_file = os.path.join(root, "batches.meta" if variant == 10 else "meta")
    meta_key = b"label_names" if variant == 10 else (b"fine_label_names" if key == b"fine_labels"
                                                      else b"coarse_label_names")
    n_cls = 10 if variant == 10 else (100 if key == b"fine_labels" else 20)
    classes = [str(i) for i in range(n_cls)]
    if os.path.isfile(meta_file):
        meta = _load_pickle(meta_file)
        if meta_key in meta:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[meta_key]]
    return ArrayImageDataset(images, labels, classes, transform, target_transform, decode, f"{name}/{split}")


@register_dataset("cifar10", options=("root", "split"), required=("root",),
                  layout="root = cifar-10-batches-py/ (or its parent): data_batch_1..5, test_batch")
def _cifar10(root, transform, target_transform, decode, split="train"):
    return _cifar(root, transform, target_transform, decode, split, 10)


@register_dataset("cifar100", options=("root", "split", "label"), required=("root",),
                  layout="root = cifar-100-python/ (or its parent): train, test, meta")
def _cifar100(root, transform, target_transform, decode, split="train", label="fine"):
    return _cifar(root, transform, target_transform, decode, split, 100, label)


_SVHN_LAYOUT = "root containing the official train_32x32.mat, test_32x32.mat, extra_32x32.mat"


@register_dataset("svhn", options=("root", "split"), required=("root",), layout=_SVHN_LAYOUT)
def _svhn(root, transform, target_transform, decode, split="train"):
    import scipy.io
    split = _split(split, ("train", "test", "extra"), "svhn")
    path = os.path.join(root, f"{split}_32x32.mat")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"svhn: {path!r} is missing. Expected layout: {_SVHN_LAYOUT}")
    m = scipy.io.loadmat(path)
    x, y = m["X"], np.asarray(m["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"svhn: {path!r} has X of shape {x.shape}; expected [32, 32, 3, N]")
    y[y == 10] = 0  # the official files label the digit 0 as 10
    return ArrayImageDataset(x.transpose(3, 0, 1, 2).astype(np.uint8), y, [str(i) for i in range(10)],
                             transform, target_transform, decode, f"svhn/{split}")


DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8


@register_dataset("digits", options=("split", "size"), layout="bundled with scikit-learn (no files needed)")
def _digits(transform, target_transform, decode, split="train", size="32"):
    """scikit-learn's 1797 8x8 digits (grey 0..16) -> uint8 RGB, bicubic-upscaled to ``size``.

    Split: ``np.random.default_rng(0).permutation(1797)``; the first 80% (1437) are train, the rest (360) test.
    """
    split = _split(split, ("train", "test"), "digits")
    size = _int(size, "size", "digits")
    if size < 8:
        raise ValueError(f"digits: size={size} must be >= 8")
    rgb, targets = _digits_arrays(split, size)
    return ArrayImageDataset(rgb, targets, [str(i) for i in range(10)], transform, target_transform, decode,
                             f"digits/{split}")


@functools.lru_cache(maxsize=8)
def _digits_arrays(split: str, size: int):
    from sklearn.datasets import load_digits
    d = load_digits()
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(d.target))
    n_train = int(DIGITS_TRAIN_FRACTION * len(perm))
    sel = perm[:n_train] if split == "train" else perm[n_train:]
    grey = np.clip(np.round(d.images[sel] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    if size != 8:
        grey = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BICUBIC)) for g in grey])
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb.setflags(write=False)
    return rgb, tuple(int(t) for t in d.target[sel])


@register_dataset("synthetic", options=("n", "size", "classes", "seed"), layout="generated in memory")
def _synthetic(transform, target_transform, decode, n="1000", size="64", classes="10", seed="0"):
    return SyntheticDataset(_int(n, "n", "synthetic"), _int(size, "size", "synthetic"),
                            _int(classes, "classes", "synthetic"), _int(seed, "seed", "synthetic"),
                            transform, target_transform, decode)
