"""Model building from CLI args / training config, strict loading and explicit random init."""
import argparse

import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_VIT
from eval import common
from pretrain.models import StrictLoadError, build_encoder


def _parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--config-file")
    p.add_argument("opts", nargs="*", default=[])
    common.add_model_args(p)
    return p.parse_args(argv)


def test_strict_loading_refuses_other_architecture(tmp_path):
    other = build_encoder("vit_small", embed_dim=32, depth=3, num_heads=2, patch_size=8, img_size=32)
    save_file(other.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(StrictLoadError, match="(?s)unexpected in checkpoint.*blocks.2.*checkpoint has 3 blocks"):
        common.build_model_from_args(_parse(TINY_VIT + ["--weights", str(tmp_path / "w.safetensors")]))
    good = build_encoder("vit_small", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in good.state_dict().items()}}, tmp_path / "ok.pth")
    m = common.build_model_from_args(_parse(TINY_VIT + ["--weights", str(tmp_path / "ok.pth")]))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), good.state_dict().values()))
    assert not any(p.requires_grad for p in m.parameters()) and not m.training


def test_random_init_must_be_explicit():
    with pytest.raises(common.EvalArgsError, match="--random-init"):
        common.build_model_from_args(_parse(TINY_VIT))
    with pytest.raises(common.EvalArgsError, match="key=value"):
        common.parse_kwargs(["patch_size"])


def test_build_from_training_config(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("student:\n  arch: vit_small\n  patch_size: 8\n  num_register_tokens: 2\n"
                   "  extra: {embed_dim: 32, depth: 2, num_heads: 2}\ncrops:\n  global_crops_size: 32\n"
                   "  local_crops_size: 16\n")
    m = common.build_model_from_args(_parse(["--config-file", str(cfg), "--random-init"]))
    assert (m.patch_size, m.num_register_tokens, m.embed_dim, m.n_blocks) == (8, 2, 32, 2)
