"""Published octic-vits checkpoints (reference key layout, built here from the spec's naming) load strictly."""
import pytest
import torch

from pretrain.models import StrictLoadError, build_encoder, load_pretrained
from pretrain.models.octic import group as G

torch.set_num_threads(1)
C, DEPTH, HEADS, P, IMG = 64, 4, 2, 8, 32


def _d8_lin(prefix, cin, cout, bias=True):
    i, o = cin // 8, cout // 8
    keys = {f"{prefix}.lin_{n}.weight": (o, i) for n in ("A1", "A2", "B1", "B2")}
    keys[f"{prefix}.lin_E.weight"] = (2 * o, 2 * i)
    if bias:
        keys[f"{prefix}.lin_A1.bias"] = (o,)
    return keys


def _affine(prefix, bias):
    c = C // 8
    keys = {f"{prefix}.alpha_{n}": (c,) for n in ("A1", "A2", "B1", "B2")}
    keys[f"{prefix}.alpha_E"] = (2 * c,)
    if bias:
        keys[f"{prefix}.beta"] = (c,)
    return keys


def reference_layout(style, invariant_width=None, num_classes=0, grid=IMG // P, R=0, k=DEPTH // 2):
    """Key -> shape of an octic-vits state dict (OcticVisionTransformer / OcticDinoVisionTransformer)."""
    c = C // 8
    keys = {"patch_embed.lift8.conv_A1.bias": (c,)}
    for n in ("A1", "A2", "B1", "B2", "E_left", "E_right"):
        keys[f"patch_embed.lift8.conv_{n}.weight"] = (c, 3, P // 2, P // 2)
    keys.update({f"pos_embed.{i}": (grid // 2, grid // 2, c) for i in range(6)})
    if style == "deit":
        keys.update({f"cls_token.{i}": (1, 1, c) for i in range(4)})
        keys["cls_token.4"] = (1, 1, 2, 2 * c)
    else:
        keys.update({f"cls_token.{i}": (1, 1, c) for i in range(8)})
        keys.update({f"mask_token.{i}": (1, c) for i in range(8)})
        if R:
            keys.update({f"register_tokens.{i}": (1, R, c) for i in range(8)})
    for b in range(DEPTH):
        p = f"blocks.{b}"
        if b < k:
            keys.update(_affine(f"{p}.norm1.scaling", True))
            keys.update(_affine(f"{p}.norm2.scaling", True))
            keys.update(_d8_lin(f"{p}.attn.qkv", C, 3 * C))
            keys.update(_d8_lin(f"{p}.attn.proj", C, C))
            keys.update(_d8_lin(f"{p}.mlp.fc1", C, 4 * C))
            keys.update(_d8_lin(f"{p}.mlp.fc2", 4 * C, C))
            ls = ("gamma_1", "gamma_2") if style == "deit" else ("ls1", "ls2")
            for name in ls:
                keys.update(_affine(f"{p}.{name}", False))
        else:
            for n, shape in [("norm1.weight", (C,)), ("norm1.bias", (C,)), ("attn.qkv.weight", (3 * C, C)),
                             ("attn.qkv.bias", (3 * C,)), ("attn.proj.weight", (C, C)), ("attn.proj.bias", (C,)),
                             ("norm2.weight", (C,)), ("norm2.bias", (C,)), ("mlp.fc1.weight", (4 * C, C)),
                             ("mlp.fc1.bias", (4 * C,)), ("mlp.fc2.weight", (C, 4 * C)), ("mlp.fc2.bias", (C,))]:
                keys[f"{p}.{n}"] = shape
            if style == "deit":
                keys[f"{p}.gamma_1"] = keys[f"{p}.gamma_2"] = (C,)
            else:
                keys[f"{p}.ls1.gamma"] = keys[f"{p}.ls2.gamma"] = (C,)
    if invariant_width:
        keys["invariant_proj.weight"] = (C, invariant_width)
        keys["invariant_proj.bias"] = (C,)
    keys["norm.weight"] = keys["norm.bias"] = (C,)
    if num_classes:
        keys["head.weight"] = (num_classes, C)
        keys["head.bias"] = (num_classes,)
    return keys


def random_state_dict(layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sd = {k: 0.1 * torch.randn(s, generator=gen) for k, s in layout.items()}
    # frozen (non-A1) token entries are zeros in the released weights
    for k in sd:
        if k.split(".")[0] in ("cls_token", "mask_token", "register_tokens") and not k.endswith(".0"):
            sd[k].zero_()
    return sd


def _build(name, **kw):
    args = dict(embed_dim=C, depth=DEPTH, num_heads=HEADS, patch_size=P, img_size=IMG)
    args.update(kw)
    return build_encoder(name, **args).eval()


def _assert_loaded(model, sd, skip=()):
    msd = model.state_dict()
    for k, v in sd.items():
        if k not in skip:
            assert torch.equal(msd[k], v), k


@pytest.mark.parametrize("name,inv", [("hybrid_vit_small", None), ("vit_small_inv_early", 6 * C // 8)])
def test_dinov2_teacher_checkpoint_loads_strictly(tmp_path, name, inv):
    sd = random_state_dict(reference_layout("dinov2", invariant_width=inv, R=2))
    # DINOv2 training checkpoints wrap the teacher backbone (and heads, which are ignored)
    wrapped = {"teacher": {f"backbone.{k}": v for k, v in sd.items()} | {"dino_head.mlp.0.weight": torch.zeros(2)}}
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(wrapped, path)
    model = _build(name, num_register_tokens=2)
    report = load_pretrained(model, str(path))
    assert report.ok and set(model.state_dict()) == set(sd)
    _assert_loaded(model, sd)
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, IMG, IMG))
    assert torch.isfinite(out["x_norm_clstoken"]).all()


@pytest.mark.parametrize("name,inv", [("hybrid_deit_small_patch16", None),
                                      ("d8_inv_early_deit_small_patch16", 6 * C // 8)])
def test_deit_checkpoint_loads_with_and_without_head(name, inv):
    sd = random_state_dict(reference_layout("deit", invariant_width=inv, num_classes=10))
    model = _build(name, num_classes=10)
    report = load_pretrained(model, sd)
    assert report.ok and any("mask_token" in n for n in report.notes)
    _assert_loaded(model, sd)
    assert all(torch.equal(model.state_dict()[f"mask_token.{i}"], torch.zeros(1, C // 8)) for i in range(8))
    # as a feature encoder (num_classes=0) the classifier is reported as ignored
    enc = _build(name)
    report = load_pretrained(enc, sd)
    assert report.ok and {"head.weight", "head.bias"} <= set(report.ignored)
    with torch.no_grad():
        x = torch.randn(2, 3, IMG, IMG)
        torch.testing.assert_close(enc(x), model.forward_features(x)["x_norm_clstoken"])


def test_deit_polynomial_checkpoint_switches_invariant_type():
    """The paper's DeiT parameter counts imply PolynomialInvariant (4C wide invariant_proj input)."""
    sd = random_state_dict(reference_layout("deit", invariant_width=4 * C, num_classes=10))
    model = _build("d8_inv_early_deit_small_patch16", num_classes=10)
    assert model.invariant_type == "power_spectrum"
    report = load_pretrained(model, sd)
    assert report.ok and model.invariant_type == "polynomial"
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        a = model.forward_features(x)["x_norm_clstoken"]
        b = model.forward_features(G.image_action("mr", x))["x_norm_clstoken"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_deit_checkpoint_into_dinov2_layout_gives_same_features():
    sd = random_state_dict(reference_layout("deit", num_classes=0))
    deit = _build("hybrid_deit_small_patch16")
    dino = _build("hybrid_vit_small")
    assert load_pretrained(deit, sd).ok and load_pretrained(dino, sd).ok
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(deit.forward_features(x)["x_norm_patchtokens"],
                                   dino.forward_features(x)["x_norm_patchtokens"])


def test_checkpoint_pos_grid_is_adopted():
    sd = random_state_dict(reference_layout("dinov2", grid=8))  # trained at 64 px
    model = _build("hybrid_vit_small")  # built for 32 px
    report = load_pretrained(model, sd)
    assert report.ok and model.pos_grid == (8, 8)
    assert torch.equal(model.pos_embed[3], sd["pos_embed.3"])
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 48, 48))["x_norm_patchtokens"].shape == (1, 36, C)


def test_missing_or_wrong_keys_fail_strictly():
    sd = random_state_dict(reference_layout("dinov2"))
    del sd["blocks.0.attn.qkv.lin_E.weight"]
    with pytest.raises(StrictLoadError, match="lin_E"):
        load_pretrained(_build("hybrid_vit_small"), sd)
    sd = random_state_dict(reference_layout("dinov2", k=DEPTH))  # a fully octic trunk into a hybrid
    with pytest.raises(StrictLoadError):
        load_pretrained(_build("hybrid_vit_small"), sd)
