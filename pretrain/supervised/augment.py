"""Train/eval transforms of the supervised recipes: DeiT III's 3-Augment and the CIFAR-style pipelines.

3-Augment (Touvron et al., DeiT III, sec. 3): geometry (RandomResizedCrop, or "Simple Random Crop" = resize +
reflect-padded random crop) + horizontal flip, then EXACTLY ONE of {grayscale, solarize (threshold 128), Gaussian
blur (sigma ~ U(0.1, 2))} chosen uniformly, then colour jitter (brightness/contrast/saturation, no hue).

The CIFAR pipelines (OutGridViT, ConvMixer seeds) use the same builder with other switches: padded random crop,
flip, RandAugment(n, m), colour jitter and random erasing (after normalisation).
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

__all__ = ["ThreeAugmentChoice", "build_train_transform", "eval_transform", "IMAGENET_MEAN", "IMAGENET_STD",
           "CIFAR100_MEAN", "CIFAR100_STD", "CROP_MODES"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CROP_MODES = ("rrc", "src", "pad_crop", "resize")
INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                  "nearest": InterpolationMode.NEAREST}


class ThreeAugmentChoice:
    """Apply exactly one of grayscale / solarize / Gaussian blur, chosen uniformly at random.

    ``last_op`` holds the name of the op applied by the latest call and ``on_choice(name)`` (optional) is called
    with it, so the choice can be inspected. Works on PIL images and on uint8/float CHW tensors.
    """

    OPS = ("grayscale", "solarize", "gaussian_blur")

    def __init__(self, blur_sigma: Sequence[float] = (0.1, 2.0), solarize_threshold: int = 128,
                 on_choice: Callable[[str], None] | None = None):
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.solarize_threshold = solarize_threshold
        self.on_choice = on_choice
        self.last_op: str | None = None

    def __call__(self, img):
        op = self.OPS[random.randrange(3)]
        self.last_op = op
        if self.on_choice is not None:
            self.on_choice(op)
        return getattr(self, "_" + op)(img)

    @staticmethod
    def _grayscale(img):
        if isinstance(img, Image.Image):
            return ImageOps.grayscale(img).convert("RGB")
        return TF.rgb_to_grayscale(img, num_output_channels=3)

    def _solarize(self, img):
        if isinstance(img, Image.Image):
            return ImageOps.solarize(img.convert("RGB"), self.solarize_threshold)
        thr = self.solarize_threshold if img.dtype == torch.uint8 else self.solarize_threshold / 255.0
        return TF.solarize(img, thr)

    def _gaussian_blur(self, img):
        sigma = random.uniform(*self.blur_sigma)
        if isinstance(img, Image.Image):
            return img.filter(ImageFilter.GaussianBlur(radius=sigma))
        k = 2 * int(round(3 * sigma)) + 1
        return TF.gaussian_blur(img, [k, k], [sigma, sigma])

    def __repr__(self) -> str:
        return f"ThreeAugmentChoice(ops={self.OPS}, blur_sigma={self.blur_sigma})"


def _geometry(crop: str, img_size: int, rrc_scale, pad: int, interp) -> list:
    if crop == "rrc":
        return [T.RandomResizedCrop(img_size, scale=tuple(rrc_scale), interpolation=interp)]
    if crop == "src":  # DeiT III "Simple Random Crop"
        return [T.Resize(img_size, interpolation=interp), T.RandomCrop(img_size, padding=pad, padding_mode="reflect")]
    if crop == "pad_crop":  # CIFAR style: (resize if needed) + zero-padded random crop
        return [T.Resize(img_size, interpolation=interp), T.RandomCrop(img_size, padding=pad)]
    if crop == "resize":
        return [T.Resize(img_size, interpolation=interp), T.CenterCrop(img_size)]
    raise ValueError(f"augment.crop={crop!r} is not one of {CROP_MODES}")


def build_train_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, crop: str = "rrc",
                          rrc_scale=(0.08, 1.0), pad: int = 0, hflip: bool = True, three_augment: bool = False,
                          color_jitter: float = 0.0, randaugment_n: int = 0, randaugment_m: int = 9,
                          random_erasing: float = 0.0, random_erasing_scale=(0.02, 0.33),
                          interpolation: str = "bicubic") -> T.Compose:
    """Geometry -> flip -> [3-Augment] -> [RandAugment] -> [colour jitter] -> tensor -> normalise -> [erasing].

    ``pad=0`` means ``max(4, img_size // 8)`` for the padded crops (the OutGrid seed's rule).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"augment.interpolation={interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
    interp = INTERPOLATIONS[interpolation]
    pad = pad or max(4, img_size // 8)
    ops = _geometry(crop, img_size, rrc_scale, pad, interp)
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    if three_augment:
        ops.append(ThreeAugmentChoice())
    if randaugment_n > 0:
        ops.append(T.RandAugment(num_ops=randaugment_n, magnitude=randaugment_m, interpolation=interp))
    if color_jitter > 0:
        ops.append(T.ColorJitter(color_jitter, color_jitter, color_jitter))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if random_erasing > 0:
        ops.append(T.RandomErasing(p=random_erasing, scale=tuple(random_erasing_scale), value="random"))
    return T.Compose(ops)


def eval_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_ratio: float = 1.0,
                   normalize: bool = True):
    """``Resize(int(size / crop_ratio)) -> CenterCrop(size) -> float [-> normalise]`` (DeiT III: ratio 1.0).

    ``normalize=False`` keeps images in [0, 1] (the robustness evaluation corrupts them before normalising).
    """
    from ..data.transforms import make_eval_transform

    if not 0 < crop_ratio <= 1:
        raise ValueError(f"data.eval_crop_ratio={crop_ratio} must be in (0, 1]")
    if not normalize:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return make_eval_transform(resize=int(round(img_size / crop_ratio)), crop=img_size, mean=mean, std=std)
