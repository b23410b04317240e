"""Cost claims: LinearD8 has 1/8 of a dense layer's weights and 3/16 of its MACs; model sizes match the paper."""
import warnings

import pytest
import torch

from pretrain.models import build_encoder
from pretrain.models.octic.group import D8Tokens
from pretrain.models.octic.layers import LinearD8


def _macs(module, inputs):
    with warnings.catch_warnings():  # fvcore imports torch.jit.script (deprecated) at import time
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    fca = FlopCountAnalysis(module, (inputs,))
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return fca.total()  # fvcore counts one multiply-add per "flop" for linear/matmul


@pytest.mark.parametrize("cin,cout", [(64, 64), (64, 256), (128, 32)])
def test_linear_d8_weights_and_macs(cin, cout):
    B, N = 2, 10
    lin = LinearD8(cin, cout, bias=False)
    dense = torch.nn.Linear(cin, cout, bias=False)
    n_d8 = sum(p.numel() for p in lin.parameters())
    assert n_d8 * 8 == dense.weight.numel()
    c = cin // 8
    xs = D8Tokens(torch.randn(4, B, N, c), torch.randn(2, B, N, 2 * c))
    macs_d8 = _macs(lin, xs)
    macs_dense = _macs(dense, torch.randn(B, N, cin))
    assert macs_dense == B * N * cin * cout  # fvcore's count for the dense layer, independent of our layer
    assert macs_d8 * 16 == macs_dense * 3, (macs_d8, macs_dense)


# parameter counts in the octic-vits README (DeiT III, ImageNet-1k heads): model -> millions
README = {
    ("hybrid_deit_large_patch16", "power_spectrum"): 171,
    ("d8_inv_early_deit_large_patch16", "polynomial"): 175,
    ("hybrid_deit_huge_patch14", "power_spectrum"): 356,
    ("d8_inv_early_deit_huge_patch14", "polynomial"): 362,
}


def _count(name, **kw):
    with torch.device("meta"):  # no memory, no init cost
        model = build_encoder(name, **kw)
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.mark.parametrize("key", list(README))
def test_parameter_counts_match_readme(key):
    name, inv = key
    n = _count(name, num_classes=1000, invariant_type=inv)
    assert abs(n - README[key]) < 0.6, f"{name}: {n:.2f}M vs README {README[key]}M"


def test_power_spectrum_invariant_is_smaller_than_readme():
    """The released code's default (power spectrum) gives ~172M / ~357M: the README counts are the polynomial's."""
    assert abs(_count("d8_inv_early_deit_large_patch16", num_classes=1000) - 172.1) < 0.1
    assert abs(_count("d8_inv_early_deit_huge_patch14", num_classes=1000) - 357.0) < 0.1
