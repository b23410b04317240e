"""The three families plug into the optimizer's layer-wise lr decay (ids within [0, num_lr_layers-1], depth-monotone)."""
import pytest
import torch

from pretrain.dinov2.param_groups import get_params_groups
from pretrain.models import build_encoder

NAMES = ["outgrid_cifar100_14m", "outgrid_cifar100_model_b", "convmixer_256_8", "snodevit_small"]


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_accept_the_encoder(name):
    with torch.device("meta"):
        model = build_encoder(name, num_classes=10)
    groups = {g["name"]: g["lr_multiplier"] for g in get_params_groups(model, lr_decay_rate=0.5)}
    assert len(groups) == len(list(model.parameters()))
    emb = [k for k in groups if k.startswith(("stem.", "patch_embed.", "mask_token"))]
    assert emb and all(groups[k] == 0.5 ** (model.num_lr_layers - 1) for k in emb)
    assert groups["head.weight"] == 1.0
