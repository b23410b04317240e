"""Dense inference: padding to the patch size, sliding windows, multi-scale + flip test-time augmentation.

``logits_fn(x [B,3,h,w]) -> [B, C, h', w']`` returns token-grid logits for an input whose sides are multiples of
the patch size. :func:`predict_logits` makes any input size work (pad right/bottom, upsample bilinearly, crop),
:func:`slide_logits` tiles a large image with ``crop x crop`` windows at ``stride`` and averages overlaps, and
:func:`tta_probs` averages softmax probabilities over scales and flips at the label resolution.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), value=value) if (ph or pw) else x


def predict_logits(logits_fn, x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Logits ``[B, C, h, w]`` at the input resolution for any ``h, w``."""
    h, w = x.shape[-2:]
    xp = pad_to_multiple(x, patch_size)
    logits = logits_fn(xp)
    logits = F.interpolate(logits, size=xp.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :h, :w]


def _starts(size: int, crop: int, stride: int) -> list[int]:
    if size <= crop:
        return [0]
    n = math.ceil((size - crop) / stride) + 1
    return [min(i * stride, size - crop) for i in range(n)]


def slide_logits(logits_fn, x: torch.Tensor, patch_size: int, crop: int, stride: int) -> torch.Tensor:
    """Sliding-window logits (mmseg ``slide`` mode): windows cover the image, overlaps are averaged."""
    if crop <= 0:
        return predict_logits(logits_fn, x, patch_size)
    if stride <= 0 or stride > crop:
        raise ValueError(f"sliding window stride={stride} must be in (0, crop={crop}]")
    B, _, H, W = x.shape
    out, count = None, torch.zeros(1, 1, H, W, device=x.device)
    for top in _starts(H, crop, stride):
        for left in _starts(W, crop, stride):
            win = x[..., top:top + crop, left:left + crop]
            lg = predict_logits(logits_fn, win, patch_size)
            if out is None:
                out = torch.zeros(B, lg.shape[1], H, W, device=x.device)
            out[..., top:top + win.shape[-2], left:left + win.shape[-1]] += lg
            count[..., top:top + win.shape[-2], left:left + win.shape[-1]] += 1
    return out / count


def tta_probs(logits_fn, x: torch.Tensor, out_size, patch_size: int, scales=(1.0,), flip: bool = False,
              crop: int = 0, stride: int = 0) -> torch.Tensor:
    """Mean softmax over ``scales`` x (flip) at ``out_size`` (the label size)."""
    total, n = None, 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = xs.flip(-1) if flipped else xs
            lg = slide_logits(logits_fn, xi, patch_size, crop, stride)
            if flipped:
                lg = lg.flip(-1)
            p = F.interpolate(lg, size=tuple(out_size), mode="bilinear", align_corners=False).softmax(1)
            total = p if total is None else total + p
            n += 1
    return total / n
