"""Timing helper on a fake clock (independent numpy statistics) and the RSS sampler on a known allocation."""
import time

import numpy as np
import pytest
import torch

from pretrain.benchmark import memory, timing


class FakeClock:
    """perf_counter replacement: each workload call advances time by the next scripted duration."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = list(durations)
        self.calls = []

    def perf_counter(self):
        return self.now

    def work(self, name="w"):
        def fn():
            self.calls.append(name)
            self.now += self.durations.pop(0)
        return fn


def test_measure_median_spread_iqr(monkeypatch):
    durs = [9.0, 9.0, 0.3, 0.1, 0.5, 0.2, 0.4, 1.0]  # 2 warm-up calls (ignored), then 6 timed
    clock = FakeClock(durs)
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    st = timing.measure(clock.work(), warmup=2, repeats=6)
    ref = np.array(durs[2:])
    assert st.samples == pytest.approx(ref.tolist())
    assert st.median == pytest.approx(np.median(ref))
    assert st.spread == pytest.approx((ref.max() - ref.min()) / np.median(ref))
    assert st.iqr == pytest.approx(np.percentile(ref, 75) - np.percentile(ref, 25))
    assert st.rate(8) == pytest.approx(8 / np.median(ref))
    assert len(clock.calls) == 8


def test_alternate_interleaves_and_rotates(monkeypatch):
    # warm-up a, b; then rounds: (a, b), (b, a), (a, b)
    clock = FakeClock([0, 0, 1.0, 2.0, 2.2, 1.2, 0.8, 1.8])
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    st = timing.alternate({"a": clock.work("a"), "b": clock.work("b")}, warmup=1, repeats=3)
    assert clock.calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert st["a"].samples == pytest.approx([1.0, 1.2, 0.8])
    assert st["b"].samples == pytest.approx([2.0, 2.2, 1.8])
    assert st["b"].median / st["a"].median == pytest.approx(2.0)


def test_real_sleep_workload():
    st = timing.measure(lambda: time.sleep(0.01), warmup=1, repeats=3)
    assert 0.009 <= st.median < 0.2


def test_bad_repeats_clear_error():
    with pytest.raises(ValueError, match="repeats"):
        timing.measure(lambda: None, repeats=0)


def test_rss_fallback_sees_a_known_allocation():
    """The RSS sampler (fallback when the profiler's allocation timeline is unavailable), in a fresh process:
    a process whose malloc already owns free memory (e.g. after pretrain.cpu_allocator tuning) would read ~0."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import time, torch
        from pretrain.benchmark import memory
        def alloc():
            x = torch.ones(40 * 2 ** 20)  # 160 MiB, touched
            time.sleep(0.05)
            del x
        with memory.RSSPeak() as big:
            alloc()
        with memory.RSSPeak() as small:
            time.sleep(0.02)
        print(big.delta_bytes / 2 ** 20, small.delta_bytes / 2 ** 20)
    """)
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
                       env=dict(os.environ, OCTO_MALLOC_TUNING="0"))
    assert r.returncode == 0, r.stderr
    big, small = map(float, r.stdout.split())
    assert 120 <= big <= 400
    assert small < 60
