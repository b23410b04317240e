"""Shared helpers for the octic tests (unique module name: pytest puts this folder on sys.path)."""
import torch

from pretrain.models.octic.group import ELEMENTS

NON_IDENTITY = [g for g in ELEMENTS if g != "e"]


def rand5(B, N, c, seed=0, scale=1.0):
    """Random 5-tuple of token features: 4 x [B, N, c] and [B, N, 2, 2c]."""
    gen = torch.Generator().manual_seed(seed)
    ones = tuple(scale * torch.randn(B, N, c, generator=gen) for _ in range(4))
    return ones + (scale * torch.randn(B, N, 2, 2 * c, generator=gen),)


def max_diff(xs, ys):
    return max((x - y).abs().max().item() for x, y in zip(xs, ys))


def max_abs(xs):
    return max(x.abs().max().item() for x in xs)
