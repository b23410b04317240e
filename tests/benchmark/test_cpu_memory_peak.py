"""CPU peak memory = peak of live tensor bytes during the call (profiler memory timeline), checked against calls
whose allocations are known exactly, and growing with the batch for a real model after warm-up."""
import torch

from pretrain.benchmark.memory import peak_memory_mb


def test_known_allocations():
    n = 2_500_000  # 10 MB of float32

    def two_alive():
        a = torch.ones(n)
        b = a + 1  # a and b alive together: 20 MB
        del a
        return b.sum()

    def one_at_a_time():
        for _ in range(3):
            torch.ones(n).sum()  # each 10 MB block is freed before the next

    r2, r1 = peak_memory_mb(two_alive), peak_memory_mb(one_at_a_time)
    assert r2["kind"] == r1["kind"] == "cpu_tensor_peak"
    mb = n * 4 / 2 ** 20
    assert abs(r2["peak_mb"] - 2 * mb) < 0.05 * mb, r2
    assert abs(r1["peak_mb"] - mb) < 0.05 * mb, r1


def test_model_step_peak_is_meaningful_after_warmup():
    from pretrain.models import build_encoder

    torch.manual_seed(0)
    model = build_encoder("vit_small", patch_size=16, img_size=224, depth=2)

    def step(b):
        def run():
            for p in model.parameters():
                p.grad = None
            model(torch.randn(b, 3, 224, 224)).float().mean().backward()
        return run

    for b in (2, 8):
        step(b)()  # warm-up: the process already owns the memory (an RSS delta would read ~0 now)
    small, big = peak_memory_mb(step(2))["peak_mb"], peak_memory_mb(step(8))["peak_mb"]
    # activations dominate at 224 px: [8, 197, 384] fp32 is 2.3 MB per saved tensor, dozens per block
    assert small > 5 and big > 3 * small, (small, big)
