import math

import pytest

from pretrain.dinov2.schedules import CosineScheduler


def test_freeze_warmup_cosine_and_beyond():
    base, final, start = 1.0, 0.1, 0.2
    total, warm, freeze = 40, 10, 5
    s = CosineScheduler(base, final, total, warmup_iters=warm, start_warmup_value=start, freeze_iters=freeze)
    assert len(s) == total
    for i in range(freeze):
        assert s[i] == 0.0
    assert s[freeze] == pytest.approx(start)  # warm-up start
    assert s[freeze + warm - 1] == pytest.approx(base)  # warm-up end (linspace includes both ends)
    assert s[freeze + 3] == pytest.approx(start + 3 * (base - start) / (warm - 1))
    n = total - warm - freeze
    for i in (0, 7, n // 2, n - 1):  # cosine part, written out
        expected = final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n))
        assert s[freeze + warm + i] == pytest.approx(expected)
    assert s[freeze + warm] == pytest.approx(base)
    assert s[total] == final and s[10 * total] == final


def test_constant_and_no_warmup():
    s = CosineScheduler(0.07, 0.07, 5)
    assert [s[i] for i in range(6)] == pytest.approx([0.07] * 6)
    s = CosineScheduler(0.992, 1.0, 4)
    assert s[0] == pytest.approx(0.992) and s[2] == pytest.approx(0.996)


def test_bad_lengths_raise():
    with pytest.raises(ValueError, match="warmup_iters"):
        CosineScheduler(1.0, 0.0, 10, warmup_iters=8, freeze_iters=3)
