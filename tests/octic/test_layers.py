"""Every octic layer commutes with all 8 group elements (fp32, atol 1e-5), and is not trivially symmetric."""
import math

import numpy as np
import pytest
import torch

from octic_testutils import max_abs, max_diff, rand5
from pretrain.models.octic import group as G
from pretrain.models.octic import layers as L

ATOL = 1e-5
torch.set_num_threads(1)


def _check_equivariant(f, xs, act_in, act_out, min_change=1e-2, atol=ATOL):
    """f(g.x) == g.f(x) for all g; guards: output not ~0 and g.f(x) != f(x) for g != e."""
    y = f(xs)
    assert max_abs(y) > 1e-3, "output is ~zero: the check would be vacuous"
    for g in G.ELEMENTS:
        lhs, rhs = f(act_in(g, xs)), act_out(g, y)
        assert max_diff(lhs, rhs) < atol, (g, max_diff(lhs, rhs))
        if g != "e":
            assert max_diff(rhs, y) > min_change, f"output trivially symmetric under {g}"


def _on_5tuples(layer):
    """Layers run on packed D8Tokens; the group actions are written on 5-tuples."""
    return lambda xs: G.unpack(layer(G.pack(xs)))


def _pointwise(f, xs):
    act = G.isotypic_action
    _check_equivariant(_on_5tuples(f), xs, act, act)


def _tokens(f, xs, hw, n_prefix):
    act = lambda g, t: G.token_action(g, t, hw, n_prefix)  # noqa: E731
    _check_equivariant(_on_5tuples(f), xs, act, act)


def _naive_linear(lin, xs):
    """Reference LinearD8 on a 5-tuple: one nn.Linear per 1-D irrep, lin_E on each E component row."""
    return (lin.lin_A1(xs[0]), lin.lin_A2(xs[1]), lin.lin_B1(xs[2]), lin.lin_B2(xs[3]), lin.lin_E(xs[4]))


@torch.no_grad()
def test_linear_d8_equivariant_and_no_bias_off_a1():
    torch.manual_seed(0)
    lin = L.LinearD8(64, 128)
    xs = rand5(2, 5, 8)
    _pointwise(lin, xs)
    assert max_diff(G.unpack(lin(G.pack(xs))), _naive_linear(lin, xs)) < 1e-5
    # the slot-layout paths used around the GELU agree with the packed one
    ones, e0, e1 = lin.forward_to_slots(G.pack(xs))
    h = torch.cat((ones, e0, e1))
    ref = G.to_8tuple(_naive_linear(lin, xs))
    for i in range(8):
        torch.testing.assert_close(h[i].view(2, 5, 16), ref[i])
    lin2 = L.LinearD8(128, 64)
    y = lin2.forward_from_slots(h[:4], h[4:], (2, 5))
    assert max_diff(G.unpack(y), _naive_linear(lin2, _naive_linear(lin, xs))) < 1e-5
    assert lin.lin_A1.bias is not None and all(getattr(lin, f"lin_{n}").bias is None
                                               for n in ("A2", "B1", "B2", "E"))


@torch.no_grad()
def test_layernorm_d8_equivariant_and_matches_naive_formula():
    torch.manual_seed(0)
    ln = L.LayerNormD8(64)
    for p in ln.parameters():
        p.normal_()
    xs = rand5(2, 5, 8, seed=1, scale=2.0)
    _pointwise(ln, xs)
    # naive numpy reference of the spec formula (per token loops)
    a = [x.numpy().astype(np.float64) for x in xs]
    out = G.unpack(ln(G.pack(xs)))
    s = ln.scaling
    for b in range(2):
        for n in range(5):
            var = sum(np.var(a[i][b, n]) for i in range(4)) + np.mean([np.var(a[4][b, n, r]) for r in range(2)])
            sigma = math.sqrt(2) / 4 * math.sqrt(var + 1e-5)
            exp_a1 = (a[0][b, n] - a[0][b, n].mean()) / sigma * s.alpha_A1.numpy() + s.beta.numpy()
            np.testing.assert_allclose(out[0][b, n].numpy(), exp_a1, rtol=1e-4, atol=1e-5)
            for r in range(2):
                exp_e = (a[4][b, n, r] - a[4][b, n, r].mean()) / sigma * s.alpha_E.numpy()
                np.testing.assert_allclose(out[4][b, n, r].numpy(), exp_e, rtol=1e-4, atol=1e-5)


def _erf_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


@torch.no_grad()
def test_gelu_d8_equivariant_and_matches_naive():
    xs = rand5(2, 3, 4, seed=2)
    _check_equivariant(L.gelu_d8, xs, G.isotypic_action, G.isotypic_action)
    q = G.Q.numpy()
    x8 = [t.numpy().astype(np.float64) for t in G.to_8tuple(xs)]
    out8 = [t.numpy() for t in G.to_8tuple(L.gelu_d8(xs))]
    for b in range(2):
        for n in range(3):
            for j in range(4):
                v = np.array([x8[i][b, n, j] for i in range(8)])
                exp = q @ _erf_gelu(q.T @ v)
                got = np.array([out8[i][b, n, j] for i in range(8)])
                np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_mlp_d8_equivariant():
    torch.manual_seed(0)
    _pointwise(L.MlpD8(64, 256), rand5(2, 5, 8, seed=3))


@torch.no_grad()
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_attention_d8_equivariant(backend):
    torch.manual_seed(0)
    attn = L.AttentionD8(64, num_heads=2, attn_backend=backend)
    xs = rand5(2, 1 + 16, 8, seed=4)
    _tokens(attn, xs, (4, 4), 1)


@torch.no_grad()
def test_attention_backends_agree():
    torch.manual_seed(0)
    attn = L.AttentionD8(64, num_heads=2)
    xs = rand5(2, 9, 8, seed=5)
    y1 = G.unpack(attn(G.pack(xs)))
    attn.attn_backend = "math"
    assert max_diff(y1, G.unpack(attn(G.pack(xs)))) < 1e-5


@torch.no_grad()
def test_attention_head_packing_round_trip_and_order():
    B, N, c, H = 2, 3, 8, 2
    xs = rand5(B, N, c, seed=6)
    q, k, v = L.pack_heads(G.pack(tuple(torch.cat([x, x, x], -1) for x in xs[:4])
                                  + (torch.cat([xs[4], xs[4], xs[4]], -1),)), H)
    # head 0 of q reads [A1[:c/H] | A2[:c/H] | B1 | B2 | x4,x6 part of comp0 | comp1]
    assert q.shape == (B, H, N, 8 * c // H)
    torch.testing.assert_close(q[:, 0, :, :c // H], xs[0][..., :c // H])
    torch.testing.assert_close(q[:, 1, :, c // H: 2 * c // H], xs[1][..., c // H: 2 * c // H])
    # head 1 of k: its E comp1 part is the second 2c/H chunk of row 1 of X_E
    torch.testing.assert_close(k[:, 1, :, 6 * c // H:], xs[4][:, :, 1, 2 * c // H: 4 * c // H])
    back = G.unpack(L.unpack_heads(v))
    assert max_diff(back, xs) == 0.0


@pytest.mark.parametrize("style", ["dinov2", "deit"])
@torch.no_grad()
def test_octic_blocks_equivariant(style):
    torch.manual_seed(0)
    cls = L.BlockD8 if style == "dinov2" else L.LayerScaleBlockD8
    blk = cls(64, 2, init_values=0.5)
    xs = rand5(2, 1 + 16, 8, seed=7)
    _tokens(blk, xs, (4, 4), 1)
    # the residual branch matters (otherwise the block test is the identity test)
    y = G.unpack(blk(G.pack(xs)))
    assert max_diff(y, xs) > 1e-2


@torch.no_grad()
@pytest.mark.parametrize("patch", [4, 8])
def test_lift_patch_embed_equivariant(patch):
    torch.manual_seed(0)
    pe = L.PatchEmbedD8(patch, 3, 64)
    img = torch.randn(2, 3, 4 * patch, 4 * patch)
    y = pe(img)
    assert y[0].shape == (2, 16, 8) and y[4].shape == (2, 16, 2, 16)
    for g in G.ELEMENTS:
        lhs = pe(G.image_action(g, img))
        rhs = G.token_action(g, y, (4, 4))
        assert max_diff(lhs, rhs) < ATOL, g
        if g != "e":
            assert max_diff(rhs, y) > 1e-2


def test_lift_kernels_are_the_isotypic_projection():
    """K_rho = sqrt2/4 * sum_g chi_rho(g) g.W0 with W0 = quarter weight in the top-left quadrant (spec §1.5)."""
    chars = {"A1": (1, 1), "A2": (1, -1), "B1": (-1, 1), "B2": (-1, -1)}  # chi(r), chi(m)
    for irrep, (chi_r, chi_m) in chars.items():
        conv = L.LiftIrrepD8Conv2d(3, 2, 8, 8, bias=False, irrep=irrep)
        w = conv.weight.detach()
        w0 = torch.zeros(2, 3, 8, 8)
        w0[..., :4, :4] = w
        expected = sum(chi_r ** g.count("r") * (chi_m if g.startswith("m") else 1) * G.image_action(g, w0)
                       for g in G.ELEMENTS) * math.sqrt(2) / 4
        torch.testing.assert_close(conv.expand_weight().detach(), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="only equivariant on the A1"):
        L.LiftIrrepD8Conv2d(3, 2, 8, 8, bias=True, irrep="B1")
    with pytest.raises(ValueError, match="no A2 component"):
        L.LiftIrrepD8Conv2d(3, 2, 2, 2, bias=False, irrep="A2")


def _pos_fixed_point(quarters, hw):
    pos = tuple(p.unsqueeze(0) for p in L.octic_pos_embed(quarters, hw))
    assert max_abs(pos) > 1e-2
    for g in G.ELEMENTS:
        moved = G.token_action(g, pos, hw)
        target = tuple(p.unsqueeze(0) for p in L.octic_pos_embed(quarters, G.acted_grid(g, hw)))
        assert max_diff(moved, target) < ATOL, (g, hw)


@torch.no_grad()
@pytest.mark.parametrize("hw", [(4, 4), (6, 6), (5, 5), (16, 16), (6, 8)])
def test_pos_embed_is_fixed_point_native_and_interpolated(hw):
    """Native 4x4 grid (2x2 quarters) and resized grids (even, odd, rectangular) stay group fixed points."""
    torch.manual_seed(0)
    quarters = [torch.randn(2, 2, 8) for _ in range(6)]
    _pos_fixed_point(quarters, hw)
    if hw == (4, 4):  # native grid: 1-D maps are sum_g chi(g) g.W0 with W0 = quarter in the top-left corner
        pos = L.octic_pos_embed(quarters, hw)
        chars = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
        for i, (chi_r, chi_m) in enumerate(chars):
            w0 = torch.zeros(8, 4, 4)
            w0[:, :2, :2] = quarters[i].permute(2, 0, 1)
            exp = sum(chi_r ** g.count("r") * (chi_m if g.startswith("m") else 1) * G.image_action(g, w0)
                      for g in G.ELEMENTS)
            torch.testing.assert_close(pos[i].reshape(4, 4, 8).permute(2, 0, 1), exp, rtol=0, atol=1e-6)
        # 6 quarter tensors hold 3/16 of a standard [M*M, C] positional embedding
        assert sum(q.numel() for q in quarters) * 16 == 3 * 16 * 64


@torch.no_grad()
def test_drop_path_d8_shares_one_draw_per_sample():
    torch.manual_seed(0)
    dp = L.DropPathD8(0.5).train()
    xs = G.pack(tuple(torch.ones_like(x) for x in rand5(64, 3, 4)))
    ys = G.unpack(dp(xs))
    keep = ys[0][:, 0, 0]
    assert set(keep.unique().tolist()) <= {0.0, 2.0} and 0 < (keep == 0).sum() < 64
    for y in ys[:4]:
        assert torch.equal(y, keep.view(-1, 1, 1).expand_as(y))
    assert torch.equal(ys[4], keep.view(-1, 1, 1, 1).expand_as(ys[4]))
    assert dp.eval()(xs) is xs


def test_hand_written_backwards_match_autograd():
    """The fused LayerNormD8 normalisation and the octic GELU have hand-written backward passes: gradcheck them in
    float64 against finite differences; the LayerNorm forward (fused-kernel statistics) equals the plain formula,
    also for a constant row."""
    gen = torch.Generator().manual_seed(0)
    ones = torch.randn(4, 2, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    e = torch.randn(2, 2, 3, 10, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: L._NormalizeD8.apply(a, b, 1e-5), (ones, e))
    # and it equals the plain-op version (which autograd differentiates itself)
    with torch.no_grad():
        ones[0, 1, 2] = 3.0  # a constant slot row (variance 0)
    ref = L._normalize_d8(ones, e, 1e-5)
    for got, exp in zip(L._NormalizeD8.apply(ones, e, 1e-5), ref):
        torch.testing.assert_close(got, exp)
    h = [torch.randn(k, 7, 3, dtype=torch.float64, generator=gen, requires_grad=True) for k in (4, 2, 2)]
    assert torch.autograd.gradcheck(lambda *a: L.gelu_d8_slots(*a), tuple(h))
