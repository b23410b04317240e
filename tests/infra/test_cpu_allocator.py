"""glibc malloc tuning: active on Linux/glibc, once per process, and switched off by OCTO_MALLOC_TUNING=0."""
import os
import subprocess
import sys
import textwrap

import pytest

SNIPPET = textwrap.dedent("""
    import torch
    from pretrain.cpu_allocator import tune_cpu_allocator
    print(tune_cpu_allocator(), tune_cpu_allocator())
""")


def _run(env_value):
    env = dict(os.environ)
    env.pop("OCTO_MALLOC_TUNING", None)
    if env_value is not None:
        env["OCTO_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt exists on Linux only")
def test_tuning_is_on_by_default_and_can_be_switched_off():
    assert _run(None) == ["True", "True"]  # idempotent: the second call reports the same state
    assert _run("0") == ["False", "False"]


def test_tuned_process_computes_the_same():
    """The tuning only changes where buffers come from: a model step gives bit-identical results either way."""
    code = textwrap.dedent("""
        import sys, torch
        from pretrain.cpu_allocator import tune_cpu_allocator
        tune_cpu_allocator()
        torch.manual_seed(0)
        from pretrain.models import build_encoder
        m = build_encoder("vit_small", patch_size=8, img_size=32, depth=2)
        x = torch.randn(2, 3, 32, 32)
        y = m(x).sum()
        y.backward()
        print(repr(float(y)), repr(float(m.blocks[0].attn.qkv.weight.grad.abs().sum())))
    """)
    outs = []
    for v in ("1", "0"):
        env = dict(os.environ, OCTO_MALLOC_TUNING=v)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                           cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.strip())
    assert outs[0] == outs[1] and outs[0]
