"""Whole-model properties: invariant models are exactly D8-invariant, the hybrid trunk is equivariant."""
import pytest
import torch

from octic_testutils import max_diff
from pretrain.models import build_encoder
from pretrain.models.octic import group as G

torch.set_num_threads(1)
SMALL = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=32, init_values=0.5)
ATOL = 1e-5


def _build(name, **kw):
    torch.manual_seed(0)
    args = dict(SMALL)
    args.update(kw)
    return build_encoder(name, **args).eval()


def _assert_invariant(model, img, masks=None):
    hw = model.token_grid(img)
    with torch.no_grad():
        ref = model.forward_features(img, masks=masks)
        cls = ref["x_norm_clstoken"]
        assert cls.abs().max() > 1e-2
        for g in G.ELEMENTS:
            m = None
            if masks is not None:  # transform the mask pattern with the image
                grid = masks.reshape(-1, 1, *hw)
                m = G.image_action(g, grid).reshape(masks.shape[0], -1)
            out = model.forward_features(G.image_action(g, img), masks=m)
            torch.testing.assert_close(out["x_norm_clstoken"], cls, rtol=0, atol=ATOL)
            # patch tokens are invariant features that move with the grid
            patches = ref["x_norm_patchtokens"].reshape(img.shape[0], *hw, -1).permute(0, 3, 1, 2)
            moved = G.image_action(g, patches).permute(0, 2, 3, 1).reshape(img.shape[0], -1, patches.shape[1])
            torch.testing.assert_close(out["x_norm_patchtokens"], moved, rtol=0, atol=ATOL)
        swapped = model.forward_features(img[:, [1, 0, 2]])["x_norm_clstoken"]
    assert (swapped - cls).abs().max() > 1e-3, "a colour-channel swap must change the invariant features"


INVARIANT_MODELS = ["vit_small_inv_early", "d8_inv_early_deit_small_patch16", "d8_vit_small"]


@pytest.mark.parametrize("name", INVARIANT_MODELS)
@pytest.mark.parametrize("inv", ["power_spectrum", "polynomial", "linear", "third_order"])
def test_invariant_models_are_invariant(name, inv):
    model = _build(name, invariant_type=inv)
    _assert_invariant(model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("name", INVARIANT_MODELS)
def test_invariance_with_registers_masks_and_other_grids(name):
    model = _build(name, num_register_tokens=2)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 5, 6]] = True
    mask[1, [0, 15]] = True
    _assert_invariant(model, torch.randn(2, 3, 32, 32), masks=mask)
    _assert_invariant(model, torch.randn(1, 3, 48, 48))  # 6x6: interpolated pos-embed
    _assert_invariant(model, torch.randn(1, 3, 40, 40))  # 5x5: odd grid also works


def test_fully_octic_has_only_octic_blocks():
    from pretrain.models.octic.layers import BlockD8

    model = _build("d8_vit_small", depth=3)
    assert model.fully_octic and all(isinstance(b, BlockD8) for b in model.blocks)


@pytest.mark.parametrize("name,R", [("hybrid_vit_small", 0), ("hybrid_vit_small", 2),
                                    ("hybrid_deit_small_patch16", 0), ("vit_small_inv_early", 1)])
def test_octic_trunk_is_equivariant(name, R):
    model = _build(name, depth=4, num_register_tokens=R)
    assert model.octic_equi_break_layer == 2
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.octic_trunk_features(img)
        for g in G.ELEMENTS:
            out = model.octic_trunk_features(G.image_action(g, img))
            moved = G.token_action(g, ref, (4, 4), n_prefix=1 + R)
            assert max_diff(out, moved) < ATOL, g
            if g != "e":
                assert max_diff(moved, ref) > 1e-2
        # the hybrid's outputs are not invariant (its second half is a standard ViT)
        if name.startswith("hybrid"):
            a = model(img)
            b = model(G.image_action("r", img))
            assert (a - b).abs().max() > 1e-4


def test_break_layer_options_and_errors():
    assert _build("hybrid_vit_small", depth=4, octic_equi_break_layer=0).octic_equi_break_layer == 0
    assert _build("hybrid_vit_small", depth=4, octic_equi_break_layer=-1).fully_octic
    with pytest.raises(ValueError, match="octic_equi_break_layer"):
        _build("hybrid_vit_small", depth=4, octic_equi_break_layer=5)
    with pytest.raises(ValueError, match="divisible by 8"):
        _build("hybrid_vit_small", embed_dim=64, num_heads=16)  # head dim 4
    with pytest.raises(ValueError, match="invariant_type"):
        _build("vit_small_inv_early", invariant_type="max")


def test_odd_grid_error_when_required():
    model = _build("hybrid_vit_small", require_even_grid=True)
    with pytest.raises(ValueError, match="multiple of 2\\*patch_size=16"):
        model.forward_features(torch.randn(1, 3, 40, 40))
    model.forward_features(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("name", ["hybrid_vit_small", "d8_vit_small", "hybrid_deit_small_patch16"])
def test_intermediate_layers_from_octic_blocks(name):
    model = _build(name, depth=4, num_register_tokens=1)
    img = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        outs = model.get_intermediate_layers(img, n=[0, 1, 2, 3], reshape=True, return_class_token=True)
        raw = model.get_intermediate_layers(img, n=[0], norm=False)[0]
        trunk = model.octic_trunk_features(img)
    assert model.patch_size == 8
    for patch, cls in outs:
        assert patch.shape == (2, 64, 6, 6) and cls.shape == (2, 64)
    if not model.fully_octic:
        # block 1 is the last octic block: its raw output is the irrep-major concat of the trunk
        raw1 = model.get_intermediate_layers(img, n=[1], norm=False)[0]
        torch.testing.assert_close(raw1, G.irrep_major_concat(trunk)[:, 2:])
    assert raw.shape == (2, 36, 64)
