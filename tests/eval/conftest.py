"""Tiny datasets written in their exact on-disk formats (JPEG ImageFolder, ADE20K, VOC with palette PNGs)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

TINY_VIT = ["--arch", "vit_small", "--arch-kwargs", "embed_dim=32", "depth=2", "num_heads=2", "patch_size=8",
            "img_size=32", "layerscale=1.0"]
COLOURS = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 220], [230, 220, 40]], dtype=np.int64)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def write_imagefolder(root, n_per_class, n_classes=3, size=32, seed=0):
    """root/<class_i>/img_j.jpg: class = dominant colour plus noise."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        d = os.path.join(root, f"class_{c}")
        os.makedirs(d, exist_ok=True)
        for j in range(n_per_class):
            img = COLOURS[c] + rng.integers(-40, 40, size=(size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(d, f"img_{j}.jpg"), quality=95)
    return str(root)


def _seg_sample(rng, size, n_classes):
    """An image made of coloured rectangles and its label map (class k = colour k)."""
    label = np.zeros((size, size), dtype=np.int64)
    k1, k2 = rng.choice(n_classes, size=2, replace=False)
    label[:] = k1
    cut = int(rng.integers(size // 4, 3 * size // 4))
    if rng.random() < 0.5:
        label[:, cut:] = k2
    else:
        label[cut:, :] = k2
    palette = np.array([[(37 * k) % 256, (91 * k + 40) % 256, (151 * k + 80) % 256] for k in range(n_classes)])
    img = palette[label] + rng.integers(-10, 10, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), label


def write_ade20k(parent, n_train=6, n_val=3, size=40, seed=0):
    """parent/ADEChallengeData2016/{images,annotations}/{training,validation}: labels 1..4 used, 0 = ignore."""
    rng = np.random.default_rng(seed)
    base = os.path.join(parent, "ADEChallengeData2016")
    for split, n in (("training", n_train), ("validation", n_val)):
        os.makedirs(os.path.join(base, "images", split), exist_ok=True)
        os.makedirs(os.path.join(base, "annotations", split), exist_ok=True)
        for i in range(n):
            img, label = _seg_sample(rng, size, 4)
            ann = (label + 1).astype(np.uint8)  # ADE20K: 0 = "other" (ignored), classes 1..150
            ann[:2, :] = 0
            name = f"ADE_{split[:5]}_{i:08d}"
            Image.fromarray(img).save(os.path.join(base, "images", split, name + ".jpg"), quality=95)
            Image.fromarray(ann, mode="L").save(os.path.join(base, "annotations", split, name + ".png"))
    return str(parent)


def voc_palette():
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_voc(parent, n_train=6, n_val=3, size=40, seed=1):
    """parent/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}; 255 borders."""
    rng = np.random.default_rng(seed)
    base = os.path.join(parent, "VOCdevkit", "VOC2012")
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    names = {"train": [], "val": []}
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            img, label = _seg_sample(rng, size, 3)
            label = label * 7 % 21  # classes 0, 7, 14 (background, car, horse ...)
            ann = label.astype(np.uint8)
            ann[:, :1] = 255  # object borders are 255 in VOC
            name = f"2007_{split}{i:04d}"
            Image.fromarray(img).save(os.path.join(base, "JPEGImages", name + ".jpg"), quality=95)
            p = Image.fromarray(ann, mode="P")
            p.putpalette(voc_palette())
            p.save(os.path.join(base, "SegmentationClass", name + ".png"))
            names[split].append(name)
    for split, ns in names.items():
        with open(os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
            f.write("\n".join(ns) + "\n")
    return str(parent)
