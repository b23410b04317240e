"""OutGridViT pieces against naive references: grid partition, dynamic kernel, size checks, analysis metrics."""
import json
import math
import os

import numpy as np
import pytest
import torch

from pretrain.models import build_encoder
from pretrain.models.outgrid import DynamicKernel2d, GridAttention, OutGridViT, grid_partition, grid_unpartition

TINY = dict(dims=(8, 16), depths=(1, 2), heads=(2, 2), grid_sizes=(2, 2), stem_dim=8)


def test_grid_partition_semantics_and_round_trip():
    B, H, W, C, g = 2, 6, 4, 3, 2
    x = torch.randn(B, H, W, C)
    parts = grid_partition(x, g)
    assert parts.shape == (B * g * g, H // g, W // g, C)
    # group (gy, gx) of image b holds the dilated tokens (i*g+gy, j*g+gx): g = groups per axis = stride
    for b in range(B):
        for gy in range(g):
            for gx in range(g):
                grp = parts[b * g * g + gy * g + gx]
                for i in range(H // g):
                    for j in range(W // g):
                        assert torch.equal(grp[i, j], x[b, i * g + gy, j * g + gx])
    assert torch.equal(grid_unpartition(parts, g, H, W), x)
    with pytest.raises(ValueError, match="grid_size=4"):
        grid_partition(x, 4)


def test_grid_attention_equals_per_group_naive_attention():
    torch.manual_seed(0)
    dim, heads, g, H, W = 8, 2, 2, 4, 6
    m = GridAttention(dim, heads, g).double()
    x = torch.randn(1, H, W, dim, dtype=torch.double)
    out = m(x)
    qkv = (x @ m.qkv.weight.T + m.qkv.bias).detach().numpy()
    ref = np.zeros((H, W, dim))
    d = dim // heads
    for gy in range(g):
        for gx in range(g):
            pos = [(i, j) for i in range(gy, H, g) for j in range(gx, W, g)]
            t = np.stack([qkv[0, i, j] for i, j in pos])  # [N, 3*dim]
            for h in range(heads):
                q, k, v = (t[:, s * dim + h * d: s * dim + (h + 1) * d] for s in range(3))
                a = q @ k.T / math.sqrt(d)
                a = np.exp(a - a.max(1, keepdims=True))
                a /= a.sum(1, keepdims=True)
                o = a @ v
                for n, (i, j) in enumerate(pos):
                    ref[i, j, h * d:(h + 1) * d] = o[n]
    ref = ref @ m.proj.weight.detach().numpy().T + m.proj.bias.detach().numpy()
    np.testing.assert_allclose(out[0].detach().numpy(), ref, rtol=1e-9, atol=1e-10)


def test_dynamic_kernel_equals_naive_per_pixel_loop():
    torch.manual_seed(0)
    C, heads, k, H, W = 6, 2, 3, 5, 4
    m = DynamicKernel2d(C, heads, k).double()
    x = torch.randn(2, C, H, W, dtype=torch.double)
    out = m(x).detach().numpy()
    xn = x.numpy()
    conv = lambda mod, t: np.einsum("oc,bchw->bohw", mod.weight.detach().numpy()[:, :, 0, 0], t) \
        + mod.bias.detach().numpy()[None, :, None, None]
    logits, v = conv(m.attn, xn), conv(m.v, xn)
    y = np.zeros_like(v)
    d, r = C // heads, k // 2
    for b in range(2):
        for h in range(heads):
            for py in range(H):
                for px in range(W):
                    lg = logits[b, h * k * k:(h + 1) * k * k, py, px]
                    a = np.exp(lg - lg.max())
                    a /= a.sum()
                    acc = np.zeros(d)
                    for o in range(k * k):
                        yy, xx = py + o // k - r, px + o % k - r
                        if 0 <= yy < H and 0 <= xx < W:  # zero padding
                            acc += a[o] * v[b, h * d:(h + 1) * d, yy, xx]
                    y[b, h * d:(h + 1) * d, py, px] = acc
    np.testing.assert_allclose(out, conv(m.proj, y), rtol=1e-9, atol=1e-10)


def test_build_time_checks_are_clear():
    with pytest.raises(ValueError, match="odd"):
        DynamicKernel2d(8, 2, 4)
    with pytest.raises(ValueError, match="divisible by heads"):
        DynamicKernel2d(9, 2, 3)
    with pytest.raises(ValueError, match=r"stage 0: dims\[0\]=8 must be divisible by heads\[0\]=3"):
        OutGridViT(**dict(TINY, heads=(3, 2)))
    m = OutGridViT(dims=(8, 16, 16), depths=(1, 1, 1), heads=(2, 2, 2), grid_sizes=(2, 2, 3), stem_dim=8)
    assert m.patch_size == 4
    with pytest.raises(ValueError, match=r"stage 2 runs at 4x4.*grid_size=3"):
        m.forward_features(torch.randn(1, 3, 16, 16))
    m.forward_features(torch.randn(1, 3, 48, 48))  # multiple of lcm(2, 4, 12) = 12 and of 4


def test_model_b_structure_and_layer_ids():
    m = OutGridViT(**TINY, front_depth=2)
    assert len(m.front) == 2 and all(b.outlooker is None for s in m.stages for b in s)
    a = OutGridViT(**TINY)
    assert all(b.outlooker is not None for s in a.stages for b in s)
    full = {n: a.layer_id(n) for n, _ in a.named_parameters()}
    assert full["stem.0.weight"] == 0 and full["mask_token"] == 0
    assert full["stages.0.0.mbconv.expand.weight"] == 1
    assert full["downsamples.0.0.weight"] == 2 == full["stages.1.0.grid.mlp.fc1.weight"]
    assert full["stages.1.1.grid.mlp.fc1.weight"] == 3
    assert full["norm.weight"] == a.num_lr_layers - 1 == 4  # all stages count, not only the last one
    assert a.n_blocks == 2  # last-stage blocks only


def test_mask_does_not_leak_through_the_stride1_stem():
    torch.manual_seed(0)
    m = OutGridViT(**TINY).eval()
    x = torch.randn(1, 3, 8, 8)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True  # final-grid token (1, 1) -> pixels 2..3 x 2..3
    x2 = x.clone()
    x2[..., 2:4, 2:4] += 5.0
    with torch.no_grad():
        a = m.forward_features(x, masks=mask)["x_norm_patchtokens"]
        b = m.forward_features(x2, masks=mask)["x_norm_patchtokens"]
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ analysis
def test_grid_mad_and_entropy_on_known_attention():
    from eval.analysis.outgrid import grid_metrics

    g, H, W = 2, 8, 8  # 4x4 tokens per group
    N = 16
    # uniform attention: MAD = g * (E|di| + E|dj|) over the inner queries, entropy = 1
    rec = {"attn": torch.full((g * g, 2, N, N), 1.0 / N), "g": g, "H": H, "W": W}
    m = grid_metrics(rec, n_queries=100)
    inner = [1, 2]
    e = np.mean([np.mean([abs(i - k) for k in range(4)]) for i in inner])
    assert m["grid_mad"] == pytest.approx(g * 2 * e)
    assert m["grid_mad_norm"] == pytest.approx(g * 2 * e / (H + W - 2))
    assert m["grid_entropy_norm"] == pytest.approx(1.0)
    # one-hot attention to self: MAD 0, entropy 0
    rec["attn"] = torch.eye(N).expand(g * g, 2, N, N).clone()
    m = grid_metrics(rec)
    assert m["grid_mad"] == pytest.approx(0.0) and m["grid_entropy_norm"] == pytest.approx(0.0, abs=1e-6)


def test_kernel_mad_on_known_logits():
    from eval.analysis.outgrid import kernel_metrics

    logits = torch.full((1, 2 * 9, 5, 5), -1e4)
    logits[:, 1::9] = 0.0  # every head puts all weight on offset (0, 1): distance 1 from the centre
    m = kernel_metrics({"logits": logits, "heads": 2, "k": 3})
    assert m["kernel_mad"] == pytest.approx(1.0) and m["kernel_mad_norm"] == pytest.approx(0.5)
    m = kernel_metrics({"logits": torch.zeros(1, 18, 5, 5), "heads": 2, "k": 3})
    assert m["kernel_mad"] == pytest.approx((4 * 2 + 4 * 1) / 9) and m["kernel_entropy_norm"] == pytest.approx(1.0)


def test_analyze_writes_metrics_and_pngs(tmp_path):
    from eval.analysis.outgrid import analyze

    torch.manual_seed(0)
    model = build_encoder("outgrid_cifar100_7m", **TINY)
    images = torch.randn(3, 3, 8, 8)  # a random tensor "dataset"
    res = analyze(model, images, str(tmp_path), seeds=(0, 1), n_plot_images=1, batch_size=2)
    assert set(res["stages"]) == {0, 1}
    with open(tmp_path / "attention_metrics.json") as f:
        js = json.load(f)
    assert set(js) == {"0", "1"} and "grid_mad" in js["0"] and "kernel_entropy_norm" in js["1"]
    assert 0 <= js["0"]["grid_entropy_norm"] <= 1 + 1e-6 and 0 <= js["0"]["kernel_mad"] <= 2
    assert (tmp_path / "attention_metrics.csv").read_text().startswith("stage,")
    pngs = [p for p in res["pngs"] if p]
    assert len(pngs) == 6 and all(os.path.getsize(p) > 1000 for p in pngs)  # 3 blocks x (grid + kernel)
