import itertools
import time

import pytest

from pretrain.data import DistributedEvalSampler, EpochSampler, ShardedInfiniteSampler, global_position


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_deterministic_and_every_pass_is_a_permutation():
    a = take(ShardedInfiniteSampler(37, seed=5), 37 * 3)
    assert a == take(ShardedInfiniteSampler(37, seed=5), 37 * 3)
    assert a != take(ShardedInfiniteSampler(37, seed=6), 37 * 3)
    passes = [a[i * 37:(i + 1) * 37] for i in range(3)]
    for p in passes:
        assert sorted(p) == list(range(37))
    assert passes[0] != passes[1] and passes[0] != list(range(37))
    assert take(ShardedInfiniteSampler(5, shuffle=False), 12) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_ranks_take_strided_slices_of_the_global_stream():
    size, W = 23, 3
    glob = take(ShardedInfiniteSampler(size, seed=1), 200)
    for r in range(W):
        assert take(ShardedInfiniteSampler(size, r, W, seed=1), 60) == glob[r::W][:60]


@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2), (2, 4)])
def test_exact_advance(rank, world):
    full = take(ShardedInfiniteSampler(31, rank, world, seed=2), 150)
    for start in (0, 1, 7, 31, 45, 100):
        assert take(ShardedInfiniteSampler(31, rank, world, seed=2, start=start), 50) == full[start:start + 50]
        s = ShardedInfiniteSampler(31, rank, world, seed=2)
        s.advance(start)
        assert take(s, 50) == full[start:start + 50]


def test_advance_is_cheap():
    t0 = time.perf_counter()
    s = ShardedInfiniteSampler(1000, 1, 2, seed=0, start=10**12)
    a = take(s, 5)
    assert time.perf_counter() - t0 < 1.0
    # consistent with a slightly earlier start
    b = take(ShardedInfiniteSampler(1000, 1, 2, seed=0, start=10**12 - 3), 8)
    assert b[3:] == a


def test_resume_same_world_size_from_state_dict():
    size, W, b, it = 41, 2, 3, 9
    full = [take(ShardedInfiniteSampler(size, r, W, seed=4), 200) for r in range(W)]
    state = ShardedInfiniteSampler(size, 0, W, seed=4).state_dict(iteration=it, global_batch_size=b * W)
    for r in range(W):
        s = ShardedInfiniteSampler(size, r, W, seed=4)
        s.load_state_dict(state)
        assert take(s, 30) == full[r][it * b:it * b + 30]


def test_resume_world_size_2_to_1_continues_the_global_order():
    size, b, it = 30, 4, 3  # 2 ranks x batch 4 x 3 iterations = 24 samples, then 1 rank continues
    ranks = [ShardedInfiniteSampler(size, r, 2, seed=9) for r in range(2)]
    streams = [take(s, it * b) for s in ranks]
    consumed = [streams[k % 2][k // 2] for k in range(it * b * 2)]  # global order = interleaving of the ranks
    state = ranks[0].state_dict(iteration=it, global_batch_size=b * 2)
    assert state["global_position"] == global_position(it, 2 * b) == 24
    single = ShardedInfiniteSampler(size, 0, 1, seed=9)
    single.load_state_dict(state)
    rest = take(single, 2 * size - 24)
    ref = take(ShardedInfiniteSampler(size, 0, 1, seed=9), 2 * size)  # the never-interrupted single-rank run
    assert consumed + rest == ref
    # the first pass is covered exactly once across the world-size change
    assert sorted((consumed + rest)[:size]) == list(range(size))


def test_state_dict_checks_dataset_and_seed():
    s = ShardedInfiniteSampler(10, seed=1)
    with pytest.raises(ValueError, match="seed"):
        ShardedInfiniteSampler(10, seed=2).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="size"):
        ShardedInfiniteSampler(11, seed=1).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="rank"):
        ShardedInfiniteSampler(10, rank=2, world_size=2)


def test_eval_samplers_cover_without_duplicates():
    size, W = 11, 4
    parts = [list(DistributedEvalSampler(size, r, W)) for r in range(W)]
    assert sorted(sum(parts, [])) == list(range(size))
    assert [len(DistributedEvalSampler(size, r, W)) for r in range(W)] == [len(p) for p in parts]
    ep = [list(EpochSampler(size, r, W, seed=0)) for r in range(W)]
    assert all(len(p) == 3 for p in ep)  # padded: ceil(11/4)
    assert set(sum(ep, [])) == set(range(size)) and len(sum(ep, [])) == 12
    e0 = EpochSampler(size, 0, 1, seed=0)
    first = list(e0)
    e0.set_epoch(1)
    assert sorted(list(e0)) == list(range(size)) and list(e0) != first
    dl = [list(EpochSampler(size, r, W, drop_last=True)) for r in range(W)]
    assert all(len(p) == 2 for p in dl) and len(set(sum(dl, []))) == 8
