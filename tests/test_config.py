"""Config loading: layering, unknown keys with suggestions, wrong types, derived values, resolved dump."""
import os

import pytest
from omegaconf import OmegaConf

from pretrain.config import ConfigError, save_config, scaled_lr
from pretrain.dinov2.config import load_ssl_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layering_default_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("student:\n  arch: vit_small\ntrain:\n  batch_size_per_gpu: 32\n")
    cfg = load_ssl_config(str(f), ["train.batch_size_per_gpu=16", "optim.base_lr=0.001"], world_size=1)
    assert cfg.student.arch == "vit_small"           # from the file
    assert cfg.train.batch_size_per_gpu == 16         # the CLI wins over the file
    assert cfg.dino.head_n_prototypes == 65536        # recipe default
    assert cfg.optim.base_lr == 0.001


def test_unknown_key_names_full_path_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_ssl_config(None, ["optim.base_lrr=0.1"])
    msg = str(e.value)
    assert "optim.base_lrr" in msg and "did you mean 'optim.base_lr'" in msg


def test_unknown_key_in_yaml_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("student:\n  drop_path_rat: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_ssl_config(str(f))
    msg = str(e.value)
    assert "student.drop_path_rat" in msg and "student.drop_path_rate" in msg and str(f) in msg


def test_misplaced_key_suggests_other_section():
    with pytest.raises(ConfigError, match="train.batch_size_per_gpu"):
        load_ssl_config(None, ["optim.batch_size_per_gpu=4"])


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError) as e:
        load_ssl_config(None, ["train.batch_size_per_gpu=big"])
    msg = str(e.value)
    assert "train.batch_size_per_gpu" in msg and "'big'" in msg and "int" in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_ssl_config(None, ["train.batch_size_per_gpu"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_ssl_config("/nonexistent/x.yaml")


def test_crop_not_divisible_by_patch():
    with pytest.raises(ConfigError, match="crops.local_crops_size=100 is not a multiple of student.patch_size=16"):
        load_ssl_config(None, ["crops.local_crops_size=100"])


def test_derived_lr_uses_named_rule_and_world_size():
    cfg = load_ssl_config(None, ["train.batch_size_per_gpu=64", "optim.base_lr=0.004"], world_size=32)
    # sqrt rule w.r.t. 1024: global batch 2048 -> base_lr * sqrt(2)
    assert cfg.optim.lr == pytest.approx(0.004 * 2 ** 0.5)
    cfg = load_ssl_config(None, ["optim.scaling_rule=linear_wrt_256", "train.batch_size_per_gpu=128"], world_size=2)
    assert cfg.optim.lr == pytest.approx(0.004 * 256 / 256)
    with pytest.raises(ConfigError, match="scaling_rule"):
        scaled_lr("cubic", 1.0, 10)


def test_blur_preset_as_trained():
    cfg = load_ssl_config(None, ["crops.blur_preset=as_trained"])
    assert (cfg.crops.global1_blur_prob, cfg.crops.global2_blur_prob, cfg.crops.local_blur_prob) == (0.0, 0.9, 0.5)


def test_resolved_config_written(tmp_path):
    cfg = load_ssl_config(None, ["train.batch_size_per_gpu=8"], world_size=1)
    path = save_config(cfg, str(tmp_path))
    again = OmegaConf.load(path)
    assert again.train.batch_size_per_gpu == 8 and again.optim.lr == pytest.approx(cfg.optim.lr)


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(REPO, "configs"))
                                        if n.endswith(".yaml") and n != "ssl_default.yaml"))
def test_every_ssl_config_loads(name):
    path = os.path.join(REPO, "configs", name)
    cfg = load_ssl_config(path, world_size=1)
    assert cfg.student.arch


@pytest.mark.parametrize("name", ["hybrid_vith16.yaml", "hybrid_vitl16.yaml", "vith16_inv_early.yaml",
                                  "vitl16_inv_early.yaml", "vith16.yaml", "vitl16.yaml", "vitl16_short.yaml",
                                  "vitl14.yaml", "vitg14.yaml"])
def test_reference_configs_build_their_student(name):
    """The configs build their student (on the meta device: no memory, seconds)."""
    import torch

    from pretrain.dinov2.meta_arch import build_backbone

    cfg = load_ssl_config(os.path.join(REPO, "configs", name), world_size=1)
    with torch.device("meta"):
        student = build_backbone(cfg)
    n = sum(p.numel() for p in student.parameters())
    assert student.patch_size == cfg.student.patch_size and n > 1e8
    if name.startswith("hybrid_vith16"):
        assert cfg.student.arch == "hybrid_vit_huge" and 3.4e8 < n < 3.7e8  # ~355M vs ViT-H/16's ~630M
