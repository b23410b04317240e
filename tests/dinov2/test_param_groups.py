import pytest
import torch
from torch import nn

from pretrain.dinov2.heads import DINOHead
from pretrain.dinov2.param_groups import clean_param_name, fuse_params_groups, get_params_groups
from pretrain.models import build_encoder

RATE, PE_MULT, L = 0.5, 0.2, 2


def _model():
    backbone = build_encoder("vit_small", embed_dim=32, depth=L, num_heads=2, patch_size=8, img_size=32)
    return nn.ModuleDict({"backbone": backbone, "dino_head": DINOHead(32, 16, hidden_dim=8, bottleneck_dim=4)})


def _expected_lr(name):
    """Independent reading of the DINOv2 rule, from the name alone."""
    if not name.startswith("backbone."):
        return 1.0
    sub = name[len("backbone."):]
    if sub.split(".")[0] in ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens"):
        layer = 0
    elif sub.startswith("blocks."):
        layer = int(sub.split(".")[1]) + 1
    else:
        layer = L + 1
    mult = RATE ** (L + 1 - layer)
    return mult * PE_MULT if "patch_embed" in sub else mult


def test_per_param_multipliers():
    model = _model()
    groups = get_params_groups(model, lr_decay_rate=RATE, patch_embed_lr_mult=PE_MULT)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    for name, g in by_name.items():
        assert g["lr_multiplier"] == pytest.approx(_expected_lr(name)), name
        no_wd = name.endswith(".bias") or "norm" in name or ".gamma" in name
        assert g["wd_multiplier"] == (0.0 if no_wd else 1.0), name
        assert g["is_last_layer"] == (name == "dino_head.last_layer.weight")
    # spot checks written out
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.25)
    assert by_name["backbone.blocks.1.mlp.fc1.weight"]["lr_multiplier"] == pytest.approx(0.5)
    assert by_name["backbone.patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.125 * 0.2)
    assert by_name["backbone.pos_embed"]["lr_multiplier"] == pytest.approx(0.125)
    assert by_name["backbone.norm.weight"]["lr_multiplier"] == 1.0
    assert by_name["backbone.blocks.0.ls1.gamma"]["wd_multiplier"] == 0.0
    assert by_name["backbone.pos_embed"]["wd_multiplier"] == 1.0  # reference decays embeddings by default


def test_no_wd_on_embeddings_switch_and_frozen_params():
    model = _model()
    model["backbone"].mask_token.requires_grad_(False)
    by_name = {g["name"]: g for g in get_params_groups(model, no_wd_on_embeddings=True)}
    assert "backbone.mask_token" not in by_name
    for n in ("backbone.pos_embed", "backbone.cls_token"):
        assert by_name[n]["wd_multiplier"] == 0.0
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["wd_multiplier"] == 1.0


def test_fused_groups_and_adamw():
    model = _model()
    groups = get_params_groups(model, lr_decay_rate=RATE, patch_embed_lr_mult=PE_MULT)
    fused = fuse_params_groups(groups)
    keys = {(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in groups}
    # ids: 0 (pos/cls/mask: wd 1; patch_embed w: wd 1, b: wd 0), blocks 1..2 (wd 1/0), L+1 (norm + head: wd 1/0),
    # last layer -> {0:wd1, 0pe:wd1, 0pe:wd0, 1:1, 1:0, 2:1, 2:0, 3:1, 3:0, last} = 10 groups
    assert len(fused) == len(keys) == 10
    assert sum(len(g["params"]) for g in fused) == len(list(model.parameters()))
    opt = torch.optim.AdamW(fused, lr=1e-3)
    assert all("lr_multiplier" in g and "is_last_layer" in g for g in opt.param_groups)


def test_wrapper_prefixes_are_stripped():
    assert clean_param_name("backbone._fsdp_wrapped_module.blocks.0.norm1.weight") == "backbone.blocks.0.norm1.weight"
    assert clean_param_name("_orig_mod.backbone.pos_embed") == "backbone.pos_embed"
    assert clean_param_name("backbone._orig_mod.blocks.1.attn.qkv.bias") == "backbone.blocks.1.attn.qkv.bias"


def test_compiled_like_wrapper_still_finds_backbone():
    class Wrapper(nn.Module):  # mimics torch.compile's OptimizedModule layout (_orig_mod)
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    model = _model()
    model["backbone"] = Wrapper(model["backbone"])
    by_name = {g["name"]: g for g in get_params_groups(model, lr_decay_rate=RATE)}
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.25)
