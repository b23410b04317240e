"""D8 as data: group law vs the image action, isotypic/regular matrices vs the spec tables, Q intertwines."""
import itertools

import numpy as np
import pytest
import torch

from pretrain.models.octic import group as G

# spec §1.2, written out independently: output slot i = sign * input[src]
SPEC_ISO = {
    "e": [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1)],
    "r": [(0, 1), (1, 1), (2, -1), (3, -1), (5, -1), (4, 1), (7, -1), (6, 1)],
    "rr": [(0, 1), (1, 1), (2, 1), (3, 1), (4, -1), (5, -1), (6, -1), (7, -1)],
    "rrr": [(0, 1), (1, 1), (2, -1), (3, -1), (5, 1), (4, -1), (7, 1), (6, -1)],
    "m": [(0, 1), (1, -1), (2, 1), (3, -1), (4, -1), (5, 1), (6, -1), (7, 1)],
    "mr": [(0, 1), (1, -1), (2, -1), (3, 1), (5, 1), (4, 1), (7, 1), (6, 1)],
    "mrr": [(0, 1), (1, -1), (2, 1), (3, -1), (4, 1), (5, -1), (6, 1), (7, -1)],
    "mrrr": [(0, 1), (1, -1), (2, -1), (3, 1), (5, -1), (4, -1), (7, -1), (6, -1)],
}
SPEC_PRODUCTS = [("r", "m", "mrrr"), ("m", "r", "mr"), ("mr", "mr", "e"), ("r", "rrr", "e"), ("rr", "mr", "mrrr"),
                 ("mrrr", "m", "r"), ("mrr", "mrrr", "r")]


def _spec_matrix(g):
    m = np.zeros((8, 8))
    for i, (src, sign) in enumerate(SPEC_ISO[g]):
        m[i, src] = sign
    return m


def _naive_image_action(g, img):
    """numpy version: rotate (np.rot90 on the last two axes), then mirror the last axis."""
    k = g.count("r")
    out = np.rot90(img, k, axes=(-2, -1))
    return out[..., ::-1] if g.startswith("m") else out


def test_image_action_matches_numpy():
    img = torch.randn(2, 3, 5, 7)
    for g in G.ELEMENTS:
        np.testing.assert_array_equal(G.image_action(g, img).numpy(), _naive_image_action(g, img.numpy()))


def test_all_64_products_consistent_with_image_action():
    img = torch.randn(1, 2, 6, 6)
    seen = set()
    for g1, g2 in itertools.product(G.ELEMENTS, G.ELEMENTS):
        prod = G.multiply(g1, g2)
        lhs = G.image_action(g1, G.image_action(g2, img))
        assert torch.equal(lhs, G.image_action(prod, img)), (g1, g2, prod)
        seen.add(prod)
        # the same law for the isotypic and regular representations
        np.testing.assert_allclose(G.iso_matrix(g1) @ G.iso_matrix(g2), G.iso_matrix(prod), atol=1e-12)
        np.testing.assert_allclose(G.regular_matrix(g1) @ G.regular_matrix(g2), G.regular_matrix(prod), atol=0)
    assert seen == set(G.ELEMENTS)
    # the 8 image actions are distinct (a faithful action)
    outs = [G.image_action(g, img) for g in G.ELEMENTS]
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(outs, 2))


def test_spec_products_and_inverses():
    for g1, g2, p in SPEC_PRODUCTS:
        assert G.multiply(g1, g2) == p
    for g in G.ELEMENTS:
        assert G.multiply(g, G.inverse(g)) == "e"


def test_isotypic_matrices_match_spec_table():
    for g in G.ELEMENTS:
        np.testing.assert_array_equal(G.iso_matrix(g).numpy(), _spec_matrix(g), err_msg=g)


def test_q_orthogonal_and_intertwines():
    q = G.Q.numpy()
    np.testing.assert_allclose(q @ q.T, np.eye(8), atol=1e-12)
    assert abs(q[0, 0] - 1 / (2 * np.sqrt(2))) < 1e-15
    for g in G.ELEMENTS:
        np.testing.assert_allclose(q @ G.regular_matrix(g).numpy(), G.iso_matrix(g).numpy() @ q, atol=1e-12,
                                   err_msg=g)


def test_regular_perms_are_spec_perms():
    assert G.REGULAR_PERMS["r"] == [1, 2, 3, 0, 7, 4, 5, 6]
    assert G.REGULAR_PERMS["m"] == [4, 5, 6, 7, 0, 1, 2, 3]
    x = torch.arange(8.0)
    assert torch.equal(G.regular_matrix("mr").float() @ x, torch.tensor([7.0, 4, 5, 6, 1, 2, 3, 0]))


def test_layout_conversions_round_trip():
    c = 3
    xe = torch.randn(2, 4, 2, 2 * c)
    xs = (torch.randn(2, 4, c),) * 4 + (xe,)
    x8 = G.to_8tuple(xs)
    assert torch.equal(x8[4], xe[..., 0, :c]) and torch.equal(x8[5], xe[..., 1, :c])
    assert torch.equal(x8[6], xe[..., 0, c:]) and torch.equal(x8[7], xe[..., 1, c:])
    back = G.to_5tuple(x8)
    assert all(torch.equal(a, b) for a, b in zip(back, xs))
    flat = G.irrep_major_concat(xs)
    assert flat.shape == (2, 4, 8 * c) and torch.equal(flat[..., 5 * c:6 * c], xe[..., 1, :c])
    assert all(torch.equal(a, b) for a, b in zip(G.from_irrep_major(flat), xs))


def test_unknown_element_is_rejected():
    with pytest.raises(ValueError, match="unknown D8 element"):
        G.image_action("rm", torch.zeros(1, 2, 2))
