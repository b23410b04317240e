"""The encoder contract, checked for every registered encoder at small sizes (new encoders join automatically)."""
import pytest
import torch

from pretrain.models import build_encoder, get_encoder_spec, list_encoders, load_pretrained

ENCODERS = list_encoders()
KEYS = ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm", "masks")


def _build(name, seed=0, **extra):
    spec = get_encoder_spec(name)
    torch.manual_seed(seed)
    kwargs = dict(spec.test_overrides)
    kwargs.update(extra)
    model = build_encoder(name, **kwargs)
    return model, spec.test_img_size


def _all_outputs(d):
    return torch.cat([d["x_norm_clstoken"].flatten(1), d["x_norm_patchtokens"].flatten(1),
                      d["x_norm_regtokens"].flatten(1)], dim=1)


def test_registry_is_populated_and_names_are_helpful():
    assert {"vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant2"} <= set(ENCODERS)
    with pytest.raises(KeyError, match="did you mean.*vit_small"):
        build_encoder("vit_smal")


@pytest.mark.parametrize("name", ENCODERS)
def test_contract_shapes_and_attributes(name):
    model, s = _build(name)
    model.eval()
    p = model.patch_size
    assert isinstance(model.embed_dim, int) and isinstance(p, int) and isinstance(model.num_register_tokens, int)
    B, h = 2, s // p
    out = model.forward_features(torch.randn(B, 3, s, s))
    assert set(KEYS) <= set(out)
    D, R = model.embed_dim, model.num_register_tokens
    assert out["x_norm_clstoken"].shape == (B, D)
    assert out["x_norm_regtokens"].shape == (B, R, D)
    assert out["x_norm_patchtokens"].shape == (B, h * h, D)
    assert torch.isfinite(_all_outputs(out)).all()
    # forward() without classes returns the cls feature
    assert torch.allclose(model(torch.randn(B, 3, s, s)).shape[-1] * torch.ones(1), torch.tensor([float(D)]))


@pytest.mark.parametrize("name", ENCODERS)
def test_list_input_matches_single_calls_and_second_resolution(name):
    model, s = _build(name)
    model.eval()
    p = model.patch_size
    s2 = s + 2 * p if (s // p) % 2 == 0 else s + p  # a second resolution (keeps token grids even)
    xa, xb = torch.randn(2, 3, s, s), torch.randn(3, 3, s2, s2)
    with torch.no_grad():
        outs = model.forward_features([xa, xb], masks=[None, None])
        single_a, single_b = model.forward_features(xa), model.forward_features(xb)
    assert isinstance(outs, list) and len(outs) == 2
    assert outs[1]["x_norm_patchtokens"].shape == (3, (s2 // p) ** 2, model.embed_dim)
    torch.testing.assert_close(_all_outputs(outs[0]), _all_outputs(single_a), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_all_outputs(outs[1]), _all_outputs(single_b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ENCODERS)
def test_bad_input_size_fails_clearly(name):
    model, s = _build(name)
    if model.patch_size == 1:
        pytest.skip("patch_size 1 accepts every size")  # not a missing feature: every size is valid
    with pytest.raises(ValueError, match="multiple"):
        model.forward_features(torch.randn(1, 3, s + 1, s + 1))


@pytest.mark.parametrize("name", ENCODERS)
def test_masks_replace_only_masked_inputs(name):
    model, s = _build(name)
    model.eval()
    p, h = model.patch_size, s // model.patch_size
    x = torch.randn(2, 3, s, s)
    mask = torch.zeros(2, h * h, dtype=torch.bool)
    mask[0, ::3] = True
    mask[1, 1::4] = True
    # perturb the pixels of the masked patches only
    pix = mask.reshape(2, 1, h, 1, h, 1).expand(2, 3, h, p, h, p).reshape(2, 3, s, s)
    x2 = torch.where(pix, torch.randn_like(x) * 3, x)
    with torch.no_grad():
        m1 = _all_outputs(model.forward_features(x, masks=mask))
        m2 = _all_outputs(model.forward_features(x2, masks=mask))
        unmasked = _all_outputs(model.forward_features(x))
        unmasked2 = _all_outputs(model.forward_features(x2))
    torch.testing.assert_close(m1, m2, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmasked, unmasked2, atol=1e-4), "perturbation should matter without a mask"
    assert not torch.allclose(m1, unmasked, atol=1e-5), "masking must change the output"
    with pytest.raises(ValueError, match="bool tensor of shape"):
        model.forward_features(x, masks=mask[:, :-1])


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_flow(name):
    model, s = _build(name)
    model.train()
    h = s // model.patch_size
    mask = torch.zeros(2, h * h, dtype=torch.bool)
    mask[:, ::2] = True
    out = model.forward_features(torch.randn(2, 3, s, s), masks=mask)
    (_all_outputs(out).pow(2).mean()).backward()
    unused = set(getattr(model, "params_unused_in_features", ())) | {n for n, _ in model.named_parameters()
                                                                     if n.startswith("head.")}
    no_grad = [n for n, q in model.named_parameters() if q.requires_grad and q.grad is None and n not in unused]
    assert not no_grad, f"parameters without gradient: {no_grad[:10]}"
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ENCODERS)
def test_intermediate_layers(name):
    model, s = _build(name)
    model.eval()
    h = s // model.patch_size
    x = torch.randn(2, 3, s, s)
    outs = model.get_intermediate_layers(x, n=1, reshape=True, return_class_token=True)
    assert len(outs) == 1
    patch, cls = outs[0]
    assert patch.shape == (2, model.embed_dim, h, h) and cls.shape == (2, model.embed_dim)
    n_all = model.get_intermediate_layers(x, n=list(range(model.n_blocks)))
    assert len(n_all) == model.n_blocks and n_all[0].shape == (2, h * h, model.embed_dim)
    # the last block's normed output is the final patch-token output
    with torch.no_grad():
        feats = model.forward_features(x)
    torch.testing.assert_close(n_all[-1], feats["x_norm_patchtokens"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ENCODERS)
def test_state_dict_strict_round_trip(name):
    a, s = _build(name, seed=0)
    b, _ = _build(name, seed=1)
    a.eval(), b.eval()
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        assert not torch.allclose(_all_outputs(a.forward_features(x)), _all_outputs(b.forward_features(x)))
    report = load_pretrained(b, a.state_dict())
    assert report.ok
    with torch.no_grad():
        torch.testing.assert_close(_all_outputs(a.forward_features(x)), _all_outputs(b.forward_features(x)))


@pytest.mark.parametrize("name", ENCODERS)
def test_classifier_head(name):
    model, s = _build(name, num_classes=5)
    model.eval()
    assert model(torch.randn(2, 3, s, s)).shape == (2, 5)
