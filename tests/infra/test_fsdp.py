"""FSDP2 via shard_module: 2-process gloo training equals one process on the concatenated batch; shard-local
EMA equals the full-tensor EMA; DTensor-aware clipping; config handling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from _infra_workers import (FSDP_MAX_NORM, FSDP_STEPS, STRATEGY_LIST, TinyNet, data, multicrop_batch, multicrop_loss,
                            shard_cfg, tiny_encoder, world2_results)
from pretrain.fsdp import (clip_grad_norm_, ema_update_, find_fsdp_units, mixed_precision_policy, shard_module,
                           torch_dtype)

STEPS, MAX_NORM = FSDP_STEPS, FSDP_MAX_NORM


def _reference():
    """Unsharded single process, full batch, torch's own clip_grad_norm_."""
    torch.manual_seed(0)
    m = TinyNet()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x, y = data()
    losses, norms = [], []
    for _ in range(STEPS):
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(m.parameters(), MAX_NORM)))
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, norms, {k: v.detach() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
    return _reference()


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return world2_results(str(tmp_path_factory.mktemp("world2")))["fsdp"]


@pytest.mark.parametrize("strategy", STRATEGY_LIST)
def test_sharded_training_equals_single_process(world2, reference, strategy):
    losses, norms, params = reference
    got = world2[strategy]
    np.testing.assert_allclose(got["losses"].numpy(), losses, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["norms"].numpy(), norms, atol=1e-5, rtol=1e-5)
    assert norms[0] > MAX_NORM  # clipping was active
    assert set(got["params"]) == set(params)
    for k, v in params.items():
        torch.testing.assert_close(got["params"][k], v, atol=1e-5, rtol=0, msg=k)


def test_multicrop_and_extra_forward_methods_on_sharded_root(world2):
    enc = tiny_encoder()
    crops = multicrop_batch()
    multicrop_loss(enc, crops).backward()
    got = world2["multicrop"]["grads"]
    assert set(got) == {k for k, p in enc.named_parameters() if p.grad is not None}
    for k, p in enc.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[k], p.grad, atol=1e-6, rtol=1e-5, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(world2["multicrop"]["inter"], enc.get_intermediate_layers(crops[0], n=1)[0])


def test_ema_on_shards_equals_full_ema(world2):
    e = world2["ema"]
    for k, t0 in e["teacher0"].items():
        expect = 0.9 * t0.double() + 0.1 * e["student"][k].double()
        torch.testing.assert_close(e["teacher1"][k].double(), expect, atol=1e-6, rtol=0, msg=k)
    assert any(not torch.equal(e["teacher0"][k], e["teacher1"][k]) for k in e["teacher0"])


def test_ema_sharding_mismatch_is_a_clear_error(world2):
    assert "sharded identically" in world2["mismatch_error"] or "sharded in one" in world2["mismatch_error"]


def test_single_process_is_unchanged_and_ema_plain():
    m = TinyNet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert shard_module(m, shard_cfg(), "cpu") is m
    assert all(type(p) is nn.Parameter for p in m.parameters())
    s = TinyNet()
    ema_update_(m, s, 0.75)
    for k, p in m.state_dict().items():
        np.testing.assert_allclose(p.numpy(), 0.75 * before[k].numpy() + 0.25 * s.state_dict()[k].numpy(),
                                   atol=1e-6)
    with pytest.raises(ValueError, match="parameters differ"):
        ema_update_(m, nn.Linear(2, 2), 0.5)


def test_clip_grad_norm_plain_matches_numpy():
    ps = [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(2))]
    for p in ps[:2]:
        p.grad = torch.randn_like(p) * 3
    grads = [p.grad.numpy().copy() for p in ps[:2]]
    total = np.sqrt(sum((g ** 2).sum() for g in grads))
    n = clip_grad_norm_(ps, 1.0)
    assert abs(float(n) - total) < 1e-4
    for p, g in zip(ps, grads):
        np.testing.assert_allclose(p.grad.numpy(), g * min(1.0, 1.0 / (total + 1e-6)), rtol=1e-5)
    clipped = [p.grad.clone() for p in ps[:2]]
    assert float(clip_grad_norm_(ps, 100.0)) == pytest.approx(1.0, abs=1e-4)  # below the limit: unchanged
    for p, g in zip(ps, clipped):
        assert torch.equal(p.grad, g)


def test_dtypes_and_precision_policy():
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="fp32, fp16, bf16"):
        torch_dtype("fp8")
    fp16 = {"mixed_precision": {"param_dtype": "fp16", "reduce_dtype": "fp16", "buffer_dtype": "fp32"}}
    pol, buf = mixed_precision_policy(fp16, "cpu")
    assert pol.param_dtype is None and pol.reduce_dtype is None and buf is torch.float32  # fp16 -> fp32 on CPU
    pol, _ = mixed_precision_policy(fp16, "cuda")
    assert pol.param_dtype is torch.float16 and pol.reduce_dtype is torch.float16
    pol, _ = mixed_precision_policy({"mixed_precision": {"param_dtype": "bf16"}}, "cpu")
    assert pol.param_dtype is torch.bfloat16 and pol.reduce_dtype is torch.float32
    with pytest.raises(ValueError, match="sharding_strategy"):
        shard_module(nn.Linear(2, 2), {"sharding_strategy": "ZERO9"}, "cpu")


def test_fsdp_units_found_in_stages_and_hook():
    class Stage(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    class Staged(nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList([Stage(), Stage()])
            self.head = nn.Linear(2, 2)

    s = Staged()
    assert find_fsdp_units(s) == [s.stages[0].blocks[0], s.stages[0].blocks[1], s.stages[1].blocks[0],
                                  s.stages[1].blocks[1]]

    class Custom(Staged):
        def fsdp_units(self):
            return [self.head]

    c = Custom()
    assert find_fsdp_units(c) == [c.head]
