"""Invariantization: 5-tuple of equivariant features -> ``[..., D]`` D8-invariant features (no parameters).

Selectable by name (``invariant_type=``):

=================  ========  ===========================================================================
name               D         features per channel j
=================  ========  ===========================================================================
``linear``         C/8       \\|A1\\|
``power_spectrum`` 6C/8      A1, \\|A2\\|, \\|B1\\|, \\|B2\\|, ||(x4,x5)||, ||(x6,x7)|| (default, the released code)
``third_order``    15C/8     degree <= 3 invariants
``polynomial``     4C        32 polynomial invariants up to degree 5 (matches the paper's DeiT parameter counts)
=================  ========  ===========================================================================

The polynomial term lists follow the published octic-vits code (same order) so ``invariant_proj`` weights load.
"""
from __future__ import annotations

import torch
from torch import nn


def _split(xs):
    """5-tuple -> the 8 per-channel variables x0..x7 (x0=A1, x1=A2, x2=B1, x3=B2, (x4,x5), (x6,x7) = E copies)."""
    a1, a2, b1, b2, xe = xs
    c = xe.shape[-1] // 2
    return a1, a2, b1, b2, xe[..., 0, :c], xe[..., 1, :c], xe[..., 0, c:], xe[..., 1, c:]


class Invariant(nn.Module):
    #: output width as a fraction of embed_dim, times 8 (D = factor * C / 8)
    factor: int = 8

    def __init__(self, dim: int):
        super().__init__()
        if dim % 8:
            raise ValueError(f"dim={dim} must be divisible by 8")
        self.input_dim = dim
        self.output_dim = self.factor * dim // 8


class LinearInvariant(Invariant):
    factor = 1

    def forward(self, xs):
        return xs[0].abs()


class PowerSpectrumInvariant(Invariant):
    factor = 6

    def forward(self, xs):
        return torch.cat((xs[0], xs[1].abs(), xs[2].abs(), xs[3].abs(),
                          torch.linalg.vector_norm(xs[4], dim=-2)), dim=-1)


def _third_order_terms(x0, x1, x2, x3, x4, x5, x6, x7):
    """The 8 cubic couplings shared by the third-order and the polynomial invariant."""
    return [
        x3 * x6 * x7,
        x3 * x5 * x6 + x3 * x4 * x7,
        x3 * x4 * x5,
        x2 * x6 ** 2 - x2 * x7 ** 2,
        x2 * x4 * x6 - x2 * x5 * x7,
        x2 * x4 ** 2 - x2 * x5 ** 2,
        x1 * x5 * x6 - x1 * x4 * x7,
        x1 * x2 * x3,
    ]


class ThirdOrderInvariant(Invariant):
    factor = 15

    def forward(self, xs):
        x0, x1, x2, x3, x4, x5, x6, x7 = _split(xs)
        quad = [x6 ** 2 + x7 ** 2, x4 * x6 + x5 * x7, x4 ** 2 + x5 ** 2, x3 ** 2, x2 ** 2, x1 ** 2]
        terms = [x0 ** 3] + [x0 * q for q in quad] + _third_order_terms(x0, x1, x2, x3, x4, x5, x6, x7)
        return torch.cat(terms, dim=-1)


class PolynomialInvariant(Invariant):
    factor = 32

    def forward(self, xs):
        x0, x1, x2, x3, x4, x5, x6, x7 = _split(xs)
        terms = [
            x0,
            x6 ** 2 + x7 ** 2, x4 * x6 + x5 * x7, x4 ** 2 + x5 ** 2,
            x3 ** 2, x2 ** 2, x1 ** 2,
        ]
        terms += _third_order_terms(x0, x1, x2, x3, x4, x5, x6, x7)
        terms += [
            x6 ** 4 + x7 ** 4,
            x4 * x6 ** 3 + x5 * x7 ** 3,
            x4 ** 2 * x6 ** 2 + x5 ** 2 * x7 ** 2,
            x4 ** 3 * x6 + x5 ** 3 * x7,
            x4 ** 4 + x5 ** 4,
            x2 * x3 * x5 * x6 - x2 * x3 * x4 * x7,
            x1 * x3 * x6 ** 2 - x1 * x3 * x7 ** 2,
            x1 * x3 * x4 * x6 - x1 * x3 * x5 * x7,
            x1 * x3 * x4 ** 2 - x1 * x3 * x5 ** 2,
            x1 * x2 * x6 * x7,
            x1 * x2 * x5 * x6 + x1 * x2 * x4 * x7,
            x1 * x2 * x4 * x5,
            x1 * x6 ** 3 * x7 - x1 * x6 * x7 ** 3,
            x1 * x5 * x6 ** 3 - x1 * x4 * x7 ** 3,
            x1 * x4 * x5 * x6 ** 2 - x1 * x4 * x5 * x7 ** 2,
            x1 * x4 ** 2 * x5 * x6 - x1 * x4 * x5 ** 2 * x7,
            x1 * x4 ** 3 * x5 - x1 * x4 * x5 ** 3,
        ]
        return torch.cat(terms, dim=-1)


INVARIANTS = {
    "linear": LinearInvariant,
    "power_spectrum": PowerSpectrumInvariant,
    "third_order": ThirdOrderInvariant,
    "polynomial": PolynomialInvariant,
}
_ALIASES = {"powerspectrum": "power_spectrum", "power-spectrum": "power_spectrum", "poly": "polynomial",
            "thirdorder": "third_order"}


def build_invariant(name: str, dim: int) -> Invariant:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in INVARIANTS:
        raise ValueError(f"invariant_type={name!r} is not one of {sorted(INVARIANTS)}")
    return INVARIANTS[key](dim)


def invariant_type_for_width(width: int, dim: int) -> str | None:
    """Name of the invariant whose output width is ``width`` for embed dim ``dim`` (to read checkpoints)."""
    for name, cls in INVARIANTS.items():
        if cls.factor * dim // 8 == width:
            return name
    return None
