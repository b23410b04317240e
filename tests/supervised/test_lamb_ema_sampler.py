"""LAMB vs an independent numpy implementation; EMA maths; repeated-augmentation sharding."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from pretrain.supervised.ema import ModelEMA
from pretrain.supervised.lamb import Lamb
from pretrain.supervised.samplers import RepeatedAugSampler


def _numpy_lamb(w, grads, lr, b1, b2, eps, wd, adapt):
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
        u = mh / (np.sqrt(vh) + eps) + wd * w
        r = 1.0
        if adapt:
            wn, un = np.sqrt((w * w).sum()), np.sqrt((u * u).sum())
            r = wn / un if wn > 0 and un > 0 else 1.0
        w = w - lr * r * u
    return w


def test_lamb_two_steps_match_numpy_reference():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(3, 4)), rng.normal(size=4)
    gw = [rng.normal(size=(3, 4)) for _ in range(2)]
    gb = [rng.normal(size=4) for _ in range(2)]
    W = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    Bp = nn.Parameter(torch.tensor(b0, dtype=torch.float64))
    opt = Lamb([{"params": [W], "weight_decay": 0.1}, {"params": [Bp], "weight_decay": 0.0}],
               lr=0.01, betas=(0.9, 0.99), eps=1e-6)
    for s in range(2):
        W.grad, Bp.grad = torch.tensor(gw[s]), torch.tensor(gb[s])
        opt.step()
    np.testing.assert_allclose(W.detach().numpy(), _numpy_lamb(w0, gw, 0.01, 0.9, 0.99, 1e-6, 0.1, True), rtol=1e-10)
    # no weight decay -> no trust ratio (apex FusedLAMB semantics): plain Adam step
    np.testing.assert_allclose(Bp.detach().numpy(), _numpy_lamb(b0, gb, 0.01, 0.9, 0.99, 1e-6, 0.0, False),
                               rtol=1e-10)
    # and the trust ratio really matters: always_adapt differs from plain Adam for the bias
    assert not np.allclose(_numpy_lamb(b0, gb, 0.01, 0.9, 0.99, 1e-6, 0.0, True), Bp.detach().numpy())


def test_ema_decay_zero_equals_model_and_decay_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(4, 3))
    ema.update(model)
    for k, v in model.state_dict().items():
        assert torch.equal(ema.state_dict()[k], v), k
    ema9 = ModelEMA(model, decay=0.9)
    old = {k: v.clone() for k, v in ema9.state_dict().items()}
    with torch.no_grad():
        model[0].weight.mul_(3)
    ema9.update(model)
    np.testing.assert_allclose(ema9.module[0].weight.numpy(),
                               0.9 * old["0.weight"].numpy() + 0.1 * model[0].weight.detach().numpy(), rtol=1e-6)
    assert not any(p.requires_grad for p in ema9.module.parameters())


@pytest.mark.parametrize("n,world,repeats,truncate", [(10, 3, 3, False), (11, 4, 3, False), (7, 5, 3, False),
                                                       (100, 4, 3, True), (9, 3, 3, True), (13, 2, 3, False)])
def test_repeated_aug_sampler_sharding(n, world, repeats, truncate):
    samplers = [RepeatedAugSampler(n, r, world, repeats=repeats, seed=1, truncate=truncate) for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    shards = [list(s) for s in samplers]
    assert len({len(sh) for sh in shards}) == 1  # equal lengths across ranks
    assert all(len(sh) == len(s) for sh, s in zip(shards, samplers))
    # where each copy goes: the global order is index-major, so copy k of index i has position p -> rank p % W
    order = samplers[0].global_order()
    kept = {(pos % world, pos // world) for pos in range(len(order)) if pos // world < samplers[0].num_samples}
    ranks_of = {}
    for pos, idx in enumerate(order[: n * repeats]):
        if (pos % world, pos // world) in kept:
            ranks_of.setdefault(idx, []).append(pos % world)
    for idx, ranks in ranks_of.items():
        if world >= repeats:
            assert len(set(ranks)) == len(ranks), (idx, ranks)  # each copy on a different rank
        else:
            counts = np.bincount(ranks, minlength=world)
            assert counts.max() - counts.min() <= 1 or len(ranks) < repeats
    union = set(itertools.chain(*shards))
    if truncate:
        assert len(shards[0]) == -(-n // world)
        assert len(union) >= n // repeats
    else:
        assert union == set(range(n))  # the union covers the dataset
        padding = order[n * repeats:]
        assert len(padding) < world
        for i in range(n):  # every index appears `repeats` times in total, plus wrap-around padding
            assert sum(sh.count(i) for sh in shards) == repeats + padding.count(i)


def test_repeated_aug_single_process_and_epochs():
    s = RepeatedAugSampler(12, 0, 1, repeats=3, seed=0, truncate=False)
    a = list(s)
    assert sorted(a) == sorted(list(range(12)) * 3)
    s.set_epoch(1)
    assert list(s) != a  # reshuffled per epoch
    t = RepeatedAugSampler(12, 0, 1, repeats=3, truncate=True)
    assert len(list(t)) == 12
    with pytest.raises(ValueError, match="rank"):
        RepeatedAugSampler(12, 2, 2)
