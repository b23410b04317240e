"""The octic (dihedral, order 8) group D8 as data, and its actions on images, irreps and token sequences.

Conventions (must match the published octic-vits weights, see shared/specs/octic.md §1):

* elements ``("e","r","rr","rrr","m","mr","mrr","mrrr")``; on images (last two dims H, W) ``r^k`` is
  ``rot90(k, dims=(-2,-1))`` and ``m r^k`` is ``rot90(k)`` followed by ``flip(-1)`` (rotate first, then mirror).
* features live in the *isotypic* basis. Per channel the 8 numbers are ``(A1, A2, B1, B2, x4, x5, x6, x7)`` where
  (x4, x5) and (x6, x7) are two copies of the 2-D irrep E (column vectors).
* canonical layout used by every layer (the "5-tuple"): ``(A1, A2, B1, B2, X_E)`` with A*/B* ``[..., c]`` and
  ``X_E [..., 2, 2c]``: ``X_E[...,0,:c]=x4, X_E[...,1,:c]=x5, X_E[...,0,c:]=x6, X_E[...,1,c:]=x7`` (c = C/8).
  All conversions between layouts live in this module.
* inside the blocks the same numbers are *packed* as :class:`D8Tokens` ``(ones [4, ..., c], e [2, ..., 2c])``:
  the four 1-D slots stacked in front, and ``X_E`` with its component axis moved in front. This turns the
  equivariant linear map into one batched matmul plus one matmul, and every element-wise op into two
  contiguous passes (see ``layers.py``); :func:`pack` / :func:`unpack` convert.
* the *regular* representation permutes 8 slots, ``out[i] = in[perm[i]]``; ``Q`` (scaled by 1/(2*sqrt2)) maps
  regular -> isotypic and satisfies ``Q P_reg(g) = P_iso(g) Q``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

ELEMENTS = ("e", "r", "rr", "rrr", "m", "mr", "mrr", "mrrr")
IRREPS_8 = ("A1", "A2", "B1", "B2", "E1_0", "E1_1", "E2_0", "E2_1")  # names of the 8 isotypic slots

SQRT2 = math.sqrt(2.0)
SQRT2_OVER_2 = SQRT2 / 2
SQRT2_OVER_4 = SQRT2 / 4


def decompose(g: str) -> tuple[bool, int]:
    """``g = m^a r^k`` -> (a == 1, k)."""
    if g not in ELEMENTS:
        raise ValueError(f"unknown D8 element {g!r}; expected one of {ELEMENTS}")
    mirror = g.startswith("m")
    return mirror, g.count("r")


def compose(a: bool, k: int) -> str:
    return ("m" if a else "") + "r" * (k % 4) if (a or k % 4) else "e"


def multiply(g1: str, g2: str) -> str:
    """Group product g1*g2 (acting as g1(g2(x))); uses r m = m r^-1."""
    a1, k1 = decompose(g1)
    a2, k2 = decompose(g2)
    # m^a1 r^k1 m^a2 r^k2 = m^(a1+a2) r^((-1)^a2 k1 + k2)
    k = (-k1 if a2 else k1) + k2
    return compose(a1 != a2, k)


def inverse(g: str) -> str:
    return next(h for h in ELEMENTS if multiply(g, h) == "e")


def image_action(g: str, img: torch.Tensor) -> torch.Tensor:
    """Act on the last two (spatial) dims: rotate by k quarter turns, then mirror W if g contains m."""
    mirror, k = decompose(g)
    out = torch.rot90(img, k, dims=(-2, -1)) if k else img
    return out.flip(-1) if mirror else out


# --- isotypic action: the generators r and m as 8x8 matrices acting on the column (A1,A2,B1,B2,x4,x5,x6,x7) ----
_E_ROT = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
_E_MIR = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])


def _block_diag(scalars: Sequence[float], e_block: torch.Tensor) -> torch.Tensor:
    return torch.block_diag(torch.diag(torch.tensor(scalars, dtype=torch.float64)), e_block.double(), e_block.double())


ISO_R = _block_diag([1, 1, -1, -1], _E_ROT)
ISO_M = _block_diag([1, -1, 1, -1], _E_MIR)


def iso_matrix(g: str) -> torch.Tensor:
    """8x8 float64 matrix of ``g`` on the isotypic 8-vector: M(m^a r^k) = M(m)^a M(r)^k."""
    mirror, k = decompose(g)
    mat = torch.linalg.matrix_power(ISO_R, k)
    return ISO_M @ mat if mirror else mat


# regular representation: out[i] = in[perm[i]]
REGULAR_PERMS = {
    "e": [0, 1, 2, 3, 4, 5, 6, 7],
    "r": [1, 2, 3, 0, 7, 4, 5, 6],
    "rr": [2, 3, 0, 1, 6, 7, 4, 5],
    "rrr": [3, 0, 1, 2, 5, 6, 7, 4],
    "m": [4, 5, 6, 7, 0, 1, 2, 3],
    "mr": [7, 4, 5, 6, 1, 2, 3, 0],
    "mrr": [6, 7, 4, 5, 2, 3, 0, 1],
    "mrrr": [5, 6, 7, 4, 3, 0, 1, 2],
}


def regular_matrix(g: str) -> torch.Tensor:
    """Permutation matrix P with (P x)[i] = x[perm[i]]."""
    p = torch.zeros(8, 8, dtype=torch.float64)
    p[torch.arange(8), torch.tensor(REGULAR_PERMS[g])] = 1.0
    return p


# regular -> isotypic (rows: A1, A2, B1, B2, x4, x5, x6, x7; columns: regular slots), orthogonal
Q = SQRT2_OVER_4 * torch.tensor([
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, -1, -1, -1, -1],
    [1, -1, 1, -1, 1, -1, 1, -1],
    [1, -1, 1, -1, -1, 1, -1, 1],
    [1, 1, -1, -1, -1, -1, 1, 1],
    [1, -1, -1, 1, 1, -1, -1, 1],
    [1, -1, -1, 1, -1, 1, 1, -1],
    [-1, -1, 1, 1, -1, -1, 1, 1],
], dtype=torch.float64)


# --- layout conversions (the only place that knows how the 8 slots map onto the 5-tuple) -------------------------
def to_8tuple(xs):
    """5-tuple (A1,A2,B1,B2,X_E[...,2,2c]) -> 8-tuple of [..., c] tensors."""
    a1, a2, b1, b2, xe = xs
    c = xe.shape[-1] // 2
    return (a1, a2, b1, b2, xe[..., 0, :c], xe[..., 1, :c], xe[..., 0, c:], xe[..., 1, c:])


def to_5tuple(xs8):
    """8-tuple -> 5-tuple; ``X_E = cat(stack(x4,x5), stack(x6,x7))`` along the multiplicity dim."""
    xe = torch.cat((torch.stack(xs8[4:6], dim=-2), torch.stack(xs8[6:8], dim=-2)), dim=-1)
    return (xs8[0], xs8[1], xs8[2], xs8[3], xe)


def stack_8(xs) -> torch.Tensor:
    """5-tuple -> one tensor ``[..., 8, c]`` (slot-major)."""
    return torch.stack(to_8tuple(xs), dim=-2)


def unstack_8(x: torch.Tensor):
    """``[..., 8, c]`` -> 5-tuple."""
    return to_5tuple(tuple(x.unbind(dim=-2)))


def irrep_major_concat(xs) -> torch.Tensor:
    """5-tuple -> ``[..., C]`` ordered ``[A1|A2|B1|B2|x4|x5|x6|x7]`` (each c wide); used where equivariance ends."""
    return torch.cat(to_8tuple(xs), dim=-1)


def from_irrep_major(x: torch.Tensor):
    """Inverse of :func:`irrep_major_concat`."""
    return to_5tuple(tuple(x.chunk(8, dim=-1)))


class D8Tokens(NamedTuple):
    """Packed octic features used inside the blocks (one pytree, so FSDP / compile / hooks see two tensors).

    ``ones [4, *lead, c]``: slots A1, A2, B1, B2. ``e [2, *lead, 2c]``: ``e[r] = X_E[..., r, :]``, the r-th E
    component of both copies (``[copy0 (c) | copy1 (c)]``), i.e. ``e[0] = [x4|x6]``, ``e[1] = [x5|x7]``.
    """

    ones: torch.Tensor
    e: torch.Tensor


def pack(xs) -> D8Tokens:
    """5-tuple -> :class:`D8Tokens` (one copy)."""
    return D8Tokens(torch.stack(tuple(xs[:4])), xs[4].movedim(-2, 0).contiguous())


def unpack(t: D8Tokens):
    """:class:`D8Tokens` -> 5-tuple (views)."""
    return tuple(t.ones.unbind(0)) + (t.e.movedim(0, -2),)


def packed_irrep_major(t: D8Tokens) -> torch.Tensor:
    """:class:`D8Tokens` -> ``[*lead, C]`` in the order of :func:`irrep_major_concat` (one copy)."""
    lead, c = t.ones.shape[1:-1], t.ones.shape[-1]
    ones = t.ones.movedim(0, -2)  # [*lead, 4, c]
    e = t.e.unflatten(-1, (2, c)).movedim(0, -2)  # [*lead, copy, comp, c] = x4, x5, x6, x7
    return torch.cat((ones, e.reshape(*lead, 4, c)), dim=-2).flatten(-2)


# --- actions on features ----------------------------------------------------------------------------------------
def isotypic_action(g: str, xs):
    """Act with ``g`` on the irrep index of a 5-tuple (no spatial part)."""
    m = iso_matrix(g)
    x = stack_8(xs)
    y = torch.einsum("ij,...jc->...ic", m.to(x.dtype).to(x.device), x)
    return unstack_8(y)


def token_action(g: str, xs, hw: tuple[int, int], n_prefix: int = 0):
    """Joint spatial + isotypic action on a 5-tuple of token tensors ``[B, n_prefix + h*w, ...]``.

    Patch tokens are in row-major grid order; the first ``n_prefix`` tokens (cls / registers) only get the
    isotypic action. ``hw`` is the grid *before* the action (it is transposed by odd rotations).
    """
    h, w = hw
    out = []
    for x in xs:
        pre, pat = x[:, :n_prefix], x[:, n_prefix:]
        tail = pat.shape[2:]
        grid = pat.reshape(pat.shape[0], h, w, -1).permute(0, 3, 1, 2)
        grid = image_action(g, grid)
        pat = grid.permute(0, 2, 3, 1).reshape(pat.shape[0], -1, *tail)
        out.append(torch.cat((pre, pat), dim=1))
    return isotypic_action(g, tuple(out))


def acted_grid(g: str, hw: tuple[int, int]) -> tuple[int, int]:
    _, k = decompose(g)
    return (hw[1], hw[0]) if k % 2 else tuple(hw)
