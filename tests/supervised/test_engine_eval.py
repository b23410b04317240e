"""evaluate(): top-1/top-5 against a naive count; EMA weights are what gets evaluated; LR schedules; config."""
import numpy as np
import pytest
import torch
from torch import nn

from pretrain.config import ConfigError
from pretrain.supervised.config import load_supervised_config
from pretrain.supervised.ema import ModelEMA
from pretrain.supervised.engine import evaluate
from pretrain.supervised.optim import lr_schedule, param_groups


class _Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 7)

    def forward(self, x):
        return self.fc(x)


def _data(n=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, generator=g), int(torch.randint(7, (), generator=g))) for _ in range(n)]


def _naive(model, data):
    top1 = top5 = 0
    for x, y in data:
        logits = model(x[None])[0].detach().numpy()
        order = np.argsort(-logits)
        top1 += int(order[0] == y)
        top5 += int(y in order[:5])
    return 100 * top1 / len(data), 100 * top5 / len(data)


def test_evaluate_matches_naive_topk():
    torch.manual_seed(0)
    model, data = _Lin(), _data()
    loader = torch.utils.data.DataLoader(data, batch_size=5)
    res = evaluate(model, loader, torch.device("cpu"))
    t1, t5 = _naive(model, data)
    assert res["n"] == len(data)
    assert res["top1"] == pytest.approx(t1) and res["top5"] == pytest.approx(t5)


def test_ema_evaluation_uses_ema_weights():
    torch.manual_seed(0)
    model, data = _Lin(), _data(60, 1)
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    frozen = ModelEMA(model, decay=1.0)   # never moves: keeps the initial weights
    follow = ModelEMA(model, decay=0.0)   # copies the model at every update
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        frozen.update(model)
        follow.update(model)
    raw = evaluate(model, loader, torch.device("cpu"))["top1"]
    assert evaluate(follow.module, loader, torch.device("cpu"))["top1"] == raw
    init = evaluate(frozen.module, loader, torch.device("cpu"))["top1"]
    assert init != raw  # different weights -> a different (here: lower) accuracy
    assert init == pytest.approx(_naive(frozen.module, data)[0])


def test_schedules():
    cfg = load_supervised_config("cifar", None, ["optim.schedule=onecycle", "optim.base_lr=0.05", "optim.epochs=10",
                                                 "optim.warmup_epochs=0"], world_size=1)
    s = lr_schedule(cfg, 10)
    assert len(s) == 100 and s[0] == 0.0
    assert s[40] == pytest.approx(0.05) and s[80] == pytest.approx(0.05 / 20) and s[99] < 0.05 / 20
    assert np.all(np.diff(s[:40]) > 0) and np.all(np.diff(s[40:]) < 0)
    cfg = load_supervised_config("deit3", None, ["optim.epochs=4", "optim.warmup_epochs=1"], world_size=1)
    s = lr_schedule(cfg, 5)
    assert s[0] == pytest.approx(cfg.optim.warmup_lr) and s[4] == pytest.approx(cfg.optim.lr)
    assert s[5] == pytest.approx(cfg.optim.lr) and s[-1] > cfg.optim.min_lr and np.all(np.diff(s[5:]) < 0)


def test_param_groups_exclude_1d_and_named():
    from pretrain.models import build_encoder

    m = build_encoder("vit_small", embed_dim=16, depth=1, num_heads=2, patch_size=4, img_size=8, num_classes=3)
    groups = {g["name"]: g for g in param_groups(m, 0.05)}
    no = {id(p) for p in groups["no_decay"]["params"]}
    named = dict(m.named_parameters())
    assert id(named["pos_embed"]) in no and id(named["cls_token"]) in no and id(named["head.bias"]) in no
    assert id(named["blocks.0.ls1.gamma"]) in no and id(named["head.weight"]) not in no
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0


def test_config_errors_and_all_configs_load():
    import glob

    with pytest.raises(ConfigError, match="did you mean"):
        load_supervised_config("deit3", None, ["optim.lrr=1"], world_size=1)
    with pytest.raises(ConfigError, match="loss.name"):
        load_supervised_config("deit3", None, ["loss.name=focal"], world_size=1)
    with pytest.raises(ConfigError, match="even"):
        load_supervised_config("deit3", None, ["data.batch_size_per_gpu=5"], world_size=1)
    files = sorted(glob.glob("configs/deit3/*.yaml")) + sorted(glob.glob("configs/cifar/*.yaml"))
    assert len(files) >= 18
    for f in files:
        recipe = "deit3" if "/deit3/" in f else "cifar"
        cfg = load_supervised_config(recipe, f, [], world_size=8)
        from pretrain.models import get_encoder_spec
        get_encoder_spec(cfg.model.arch)  # every config names a registered encoder
    cfg = load_supervised_config("deit3", "configs/deit3/deit3_small.yaml", [], world_size=8)
    assert cfg.optim.lr == pytest.approx(4e-3)  # unscaled (DeiT III --unscale-lr)
    assert cfg.loss.name == "bce" and cfg.augment.three_augment and cfg.data.repeated_aug


def test_finetune_resizes_pos_embed_and_resets_head(tmp_path):
    from pretrain.checkpoint import save_safetensors
    from pretrain.models import build_encoder
    from pretrain.models.vit import interpolate_grid_embedding
    from pretrain.supervised.engine import load_finetune

    kw = dict(embed_dim=16, depth=1, num_heads=2, patch_size=4)
    low = build_encoder("vit_small", img_size=16, num_classes=5, **kw)   # 4x4 grid, 5 classes
    path = str(tmp_path / "low.safetensors")
    save_safetensors(low.state_dict(), path)
    high = build_encoder("vit_small", img_size=24, num_classes=7, **kw)  # 6x6 grid, 7 classes
    head_before = high.head.weight.detach().clone()
    report = load_finetune(high, path)
    assert high.pos_embed.shape == (1, 1 + 36, 16)
    expected = interpolate_grid_embedding(low.pos_embed[:, 1:].detach(), (4, 4), (6, 6))
    assert torch.allclose(high.pos_embed[:, 1:], expected) and torch.equal(high.pos_embed[:, :1], low.pos_embed[:, :1])
    assert torch.equal(high.blocks[0].attn.qkv.weight, low.blocks[0].attn.qkv.weight)
    assert torch.equal(high.head.weight, head_before)  # 5 -> 7 classes: the new head is kept
    assert any("classifier" in n for n in report.notes) and any("pos_embed" in n for n in report.notes)
