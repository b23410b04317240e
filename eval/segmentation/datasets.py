"""ADE20K and Pascal VOC 2012 in their official on-disk layouts, and the joint image/label transforms.

* ADE20K (SceneParsing ``ADEChallengeData2016``): ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` (uint8; 0 = "other", ignored; classes 1..150 become 0..149).
* VOC 2012: ``VOCdevkit/VOC2012/JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG whose
  indices are the classes 0..20, 255 = border/ignore), ids from ``ImageSets/Segmentation/{train,val}.txt``
  or an explicit list file (e.g. the SBD-augmented ``train_aug.txt``; labels are then looked up in
  ``SegmentationClassAug/`` when present, else ``SegmentationClass/``).

``root`` may point at the dataset folder itself or at any parent that contains it.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

IGNORE = 255


def voc_palette(n: int = 256) -> list[int]:
    """The standard VOC colour map (bit-interleaved class index), flattened ``[r, g, b] * n``."""
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _find(root: str, marker: str) -> str:
    for cand in (root, os.path.join(root, marker)):
        if os.path.isdir(cand) and os.path.basename(os.path.normpath(cand)) == os.path.basename(marker):
            return cand
    raise FileNotFoundError(f"{marker!r} not found at or under {root!r}")


class SegmentationDataset(Dataset):
    """``(image PIL RGB, label LongTensor [H, W])`` with ``IGNORE`` = 255; ``transform(img, label)`` joint."""

    num_classes: int
    class_names: list[str]
    palette: list[int]

    def __init__(self, samples: list[tuple[str, str]], transform=None):
        if not samples:
            raise FileNotFoundError(f"{type(self).__name__}: no images found")
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def map_label(self, arr: np.ndarray) -> np.ndarray:
        return arr

    def load(self, i: int):
        img_path, lbl_path = self.samples[i]
        img = Image.open(img_path).convert("RGB")
        arr = np.array(Image.open(lbl_path))  # palette PNGs give indices, 'L' PNGs give values
        if arr.ndim != 2:
            raise ValueError(f"label {lbl_path} must be a single-channel (L or P mode) PNG, got shape {arr.shape}")
        if arr.shape != (img.height, img.width):
            raise ValueError(f"label {lbl_path} is {arr.shape} but image {img_path} is {(img.height, img.width)}")
        return img, torch.from_numpy(self.map_label(arr).astype(np.int64))

    def __getitem__(self, i):
        img, label = self.load(i)
        return self.transform(img, label) if self.transform is not None else (img, label)

    def name(self, i: int) -> str:
        return os.path.splitext(os.path.basename(self.samples[i][0]))[0]


class ADE20K(SegmentationDataset):
    num_classes = 150
    LAYOUT = "ADEChallengeData2016/{images,annotations}/{training,validation}/*.{jpg,png}"

    def __init__(self, root: str, split: str = "training", transform=None):
        split = {"train": "training", "val": "validation"}.get(split, split)
        if split not in ("training", "validation"):
            raise ValueError(f"ADE20K split={split!r} must be training|validation (or train|val)")
        try:
            base = _find(root, "ADEChallengeData2016")
        except FileNotFoundError:
            raise FileNotFoundError(f"ADE20K: {root!r} does not contain the official layout {self.LAYOUT}") from None
        img_dir, ann_dir = os.path.join(base, "images", split), os.path.join(base, "annotations", split)
        for d in (img_dir, ann_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"ADE20K: {d!r} is missing (layout {self.LAYOUT})")
        samples = []
        for f in sorted(os.listdir(img_dir)):
            if f.lower().endswith(".jpg"):
                ann = os.path.join(ann_dir, os.path.splitext(f)[0] + ".png")
                if not os.path.isfile(ann):
                    raise FileNotFoundError(f"ADE20K: annotation {ann!r} for image {f!r} is missing")
                samples.append((os.path.join(img_dir, f), ann))
        super().__init__(samples, transform)
        self.class_names = [str(i) for i in range(self.num_classes)]
        self.palette = voc_palette()[3:] + [0, 0, 0]  # class c drawn with VOC colour c+1 (0 would be black)

    def map_label(self, arr):
        """0 ("other") -> 255 ignored; 1..150 -> 0..149 (mmseg's ``reduce_zero_label``)."""
        out = arr.astype(np.int64) - 1
        out[arr == 0] = IGNORE
        return out


class VOC2012(SegmentationDataset):
    num_classes = 21
    CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
    LAYOUT = "VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/{train,val}.txt}"

    def __init__(self, root: str, split: str = "train", transform=None, list_file: str | None = None):
        base = None
        for cand in (root, os.path.join(root, "VOC2012"), os.path.join(root, "VOCdevkit", "VOC2012")):
            if os.path.isdir(os.path.join(cand, "JPEGImages")):
                base = cand
                break
        if base is None:
            raise FileNotFoundError(f"VOC2012: {root!r} does not contain the official layout {self.LAYOUT}")
        if list_file is None:
            list_file = os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"VOC2012: image list {list_file!r} is missing (layout {self.LAYOUT})")
        label_dir = os.path.join(base, "SegmentationClass")
        aug = os.path.join(base, "SegmentationClassAug")
        with open(list_file) as f:
            ids = [ln.split()[0] for ln in f if ln.strip()]
        samples = []
        for i in ids:
            i = os.path.splitext(os.path.basename(i))[0]
            lbl = os.path.join(label_dir, i + ".png")
            if not os.path.isfile(lbl) and os.path.isfile(os.path.join(aug, i + ".png")):
                lbl = os.path.join(aug, i + ".png")
            if not os.path.isfile(lbl):
                raise FileNotFoundError(f"VOC2012: label {lbl!r} for id {i!r} (from {list_file}) is missing")
            samples.append((os.path.join(base, "JPEGImages", i + ".jpg"), lbl))
        super().__init__(samples, transform)
        self.class_names = list(self.CLASSES)
        self.palette = voc_palette()


def build_segmentation_dataset(name: str, root: str, split: str, transform=None, list_file: str | None = None):
    name = name.lower()
    if name == "ade20k":
        if list_file:
            raise ValueError("--train-list is only for voc")
        return ADE20K(root, split, transform)
    if name in ("voc", "voc2012"):
        return VOC2012(root, split, transform, list_file)
    raise ValueError(f"--dataset {name!r} must be ade20k or voc")


# ------------------------------------------------------------------------------------------------ transforms
def _to_tensor(img: Image.Image, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class TrainTransform:
    """Random rescale (short side = ``crop * U(ratio)``), pad with ignore, random ``crop x crop``, h-flip."""

    def __init__(self, crop: int, ratio=(0.5, 2.0), mean=None, std=None):
        self.crop, self.ratio, self.mean, self.std = crop, ratio, mean, std

    def __call__(self, img: Image.Image, label: torch.Tensor):
        short = max(1, int(round(self.crop * random.uniform(*self.ratio))))
        s = short / min(img.height, img.width)
        h, w = max(1, int(round(img.height * s))), max(1, int(round(img.width * s)))
        x = _to_tensor(img.resize((w, h), Image.BICUBIC), self.mean, self.std)
        y = F.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        ph, pw = max(0, self.crop - h), max(0, self.crop - w)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=IGNORE)
        top = random.randint(0, x.shape[1] - self.crop)
        left = random.randint(0, x.shape[2] - self.crop)
        x = x[:, top:top + self.crop, left:left + self.crop]
        y = y[top:top + self.crop, left:left + self.crop]
        if random.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


class EvalTransform:
    """Image resized so its short side is ``size`` (0 = unchanged); the label stays at full resolution."""

    def __init__(self, size: int, mean=None, std=None):
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, img: Image.Image, label: torch.Tensor):
        if self.size:
            s = self.size / min(img.height, img.width)
            img = img.resize((max(1, int(round(img.width * s))), max(1, int(round(img.height * s)))), Image.BICUBIC)
        return _to_tensor(img, self.mean, self.std), label
