import numpy as np
import pytest
import torch
from torch import nn

from pretrain.dinov2.heads import DINOHead


def test_shapes_names_and_unit_prototypes():
    torch.manual_seed(0)
    head = DINOHead(16, 50, nlayers=3, hidden_dim=24, bottleneck_dim=8)
    y = head(torch.randn(5, 16))
    assert y.shape == (5, 50)
    names = dict(head.named_parameters())
    assert "last_layer.weight" in names and names["last_layer.weight"].shape == (50, 8)
    assert sorted(n for n in names if n.startswith("mlp")) == sorted(
        ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias"])
    # scale the raw weight: the effective prototypes keep unit-norm rows and the output does not change
    w = head.last_layer.normalized_weight().detach().numpy()
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-6)
    x = torch.randn(5, 16)
    before = head(x).detach()
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)
    torch.testing.assert_close(head(x).detach(), before)


def test_matches_naive_forward():
    torch.manual_seed(1)
    head = DINOHead(6, 11, nlayers=2, hidden_dim=9, bottleneck_dim=4)
    x = torch.randn(3, 6)
    W0, b0 = head.mlp[0].weight.detach().numpy(), head.mlp[0].bias.detach().numpy()
    W1, b1 = head.mlp[2].weight.detach().numpy(), head.mlp[2].bias.detach().numpy()
    V = head.last_layer.weight.detach().numpy()
    from scipy.special import erf
    h = x.numpy() @ W0.T + b0
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    z = h @ W1.T + b1
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    ref = z @ (V / np.linalg.norm(V, axis=1, keepdims=True)).T
    np.testing.assert_allclose(head(x).detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    # |output| <= 1: cosine between unit bottleneck and unit prototypes
    assert np.abs(ref).max() <= 1 + 1e-6


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_equivalent_to_weight_norm_and_loads_reference_keys():
    torch.manual_seed(2)
    ref = nn.utils.weight_norm(nn.Linear(4, 7, bias=False))
    ref.weight_g.data.fill_(1)
    head = DINOHead(5, 7, nlayers=1, bottleneck_dim=4)
    sd = {k: v for k, v in head.state_dict().items() if not k.startswith("last_layer")}
    sd["last_layer.weight_g"] = ref.weight_g.detach().clone()
    sd["last_layer.weight_v"] = ref.weight_v.detach().clone()
    head.load_state_dict(sd, strict=True)
    z = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    torch.testing.assert_close(head.last_layer(z), ref(z))
    # gradient w.r.t. the direction also matches weight_norm with a frozen magnitude
    head.last_layer(z).sum().backward()
    ref(z).sum().backward()
    torch.testing.assert_close(head.last_layer.weight.grad, ref.weight_v.grad)


def test_bad_input_dim_errors():
    head = DINOHead(8, 10, hidden_dim=8, bottleneck_dim=4)
    with pytest.raises(ValueError, match="embed_dim"):
        head(torch.randn(2, 9))


def _fsdp2_worker(rank, world, port, ckpt_dir):
    import os

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
    from torch.distributed.fsdp import fully_shard
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        head = DINOHead(8, 12, hidden_dim=16, bottleneck_dim=4)
        ref = DINOHead(8, 12, hidden_dim=16, bottleneck_dim=4)
        ref.load_state_dict(head.state_dict())
        fully_shard(head.last_layer)
        fully_shard(head)
        x = torch.randn(3, 8)
        y = head(x)
        torch.testing.assert_close(y, ref(x))
        y.sum().backward()
        assert head.last_layer.weight.grad is not None
        sd = get_model_state_dict(head)
        assert "last_layer.weight" in sd
        dcp.save(sd, checkpoint_id=ckpt_dir)
        with torch.no_grad():
            head.last_layer.weight.zero_()
        sd = get_model_state_dict(head)
        dcp.load(sd, checkpoint_id=ckpt_dir)
        set_model_state_dict(head, sd)
        torch.testing.assert_close(head(x), ref(x))
    finally:
        dist.destroy_process_group()


def test_fsdp2_fully_shard_and_dcp_roundtrip(tmp_path):
    import socket

    import torch.distributed.checkpoint  # noqa: F401  imported before fork so the children share it
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_fsdp2_worker, args=(2, port, str(tmp_path / "ckpt")), nprocs=2, join=True,
                       start_method="fork")


def test_prototype_layer_backward_matches_normalize_autograd():
    """The prototype layer scales the output instead of normalising the weight and has a hand-written backward:
    gradcheck it (float64) and compare with autograd through ``F.normalize`` (also for a zero row, whose norm is
    clamped, so only the direct term flows)."""
    from pretrain.dinov2.heads import _UnitRowLinear

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _UnitRowLinear.apply(a, b, 1e-12), (x, w))
    with torch.no_grad():
        w[3] = 0.0
    g = torch.randn(5, 7, dtype=torch.float64, generator=gen)
    ours = torch.autograd.grad((_UnitRowLinear.apply(x, w, 1e-12) * g).sum(), (x, w))
    ref = torch.autograd.grad((torch.nn.functional.linear(x, torch.nn.functional.normalize(w, dim=1, eps=1e-12))
                               * g).sum(), (x, w))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_prototype_layer_backward_chunking():
    """The backward runs over chunks of prototypes; several chunks (the last partial) give the one-chunk result."""
    from pretrain.dinov2 import heads

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(11, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(3, 11, dtype=torch.float64, generator=gen)
    one = torch.autograd.grad((heads._UnitRowLinear.apply(x, w, 1e-12) * g).sum(), (x, w))
    old = heads.PROTOTYPE_CHUNK, heads.CHUNK_ELEMENTS
    try:
        heads.PROTOTYPE_CHUNK, heads.CHUNK_ELEMENTS = 4, 1
        many = torch.autograd.grad((heads._UnitRowLinear.apply(x, w, 1e-12) * g).sum(), (x, w))
    finally:
        heads.PROTOTYPE_CHUNK, heads.CHUNK_ELEMENTS = old
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("rows", [1, 5, 9])
def test_prototype_layer_tiled_forward_matches_normalized_linear(rows):
    """The CPU forward walks the prototypes in tiles (the last one partial); it must equal ``x @ normalize(w).T``
    computed directly, for one tile, several tiles, and more rows than the tiled path takes (plain GEMM)."""
    from pretrain.dinov2 import heads

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(rows, 4, dtype=torch.float64, generator=gen)
    w = torch.randn(11, 4, dtype=torch.float64, generator=gen)
    ref = x @ torch.nn.functional.normalize(w, dim=1, eps=1e-12).t()
    old = heads.TILE_ELEMENTS, heads.MIN_TILE, heads.TILED_MAX_ROWS
    try:
        for tile_elems, max_rows in ((10 ** 6, 1024), (rows * 3, 1024), (1, 1024), (1, rows - 1)):
            heads.TILE_ELEMENTS, heads.MIN_TILE, heads.TILED_MAX_ROWS = tile_elems, 1, max_rows
            y = heads._UnitRowLinear.apply(x, w, 1e-12)
            assert y.shape == (rows, 11) and y.is_contiguous()
            torch.testing.assert_close(y, ref)
    finally:
        heads.TILE_ELEMENTS, heads.MIN_TILE, heads.TILED_MAX_ROWS = old


@pytest.mark.parametrize("tile_elements", [2 ** 18, 3000])
def test_dino_head_runs_under_cpu_autocast(monkeypatch, tile_elements):
    """CPU bf16 autocast (train.py's mixed precision on CPU): the prototype GEMM runs in bf16, the tiled forward
    (one tile, then several) must follow autocast's dtype, and forward/backward must stay close to fp32."""
    from pretrain.dinov2 import heads

    monkeypatch.setattr(heads, "TILE_ELEMENTS", tile_elements)  # 3000 / 10 rows -> 300 prototypes per tile
    torch.manual_seed(0)
    head = DINOHead(32, 1000, hidden_dim=64, bottleneck_dim=16)
    x = torch.randn(10, 32, requires_grad=True)
    ref = head(x)
    (gx_ref,) = torch.autograd.grad(ref.sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = head(x)
    assert y.dtype == torch.bfloat16 and y.shape == (10, 1000)
    (gx,) = torch.autograd.grad(y.float().sum(), x)
    torch.testing.assert_close(y.float(), ref, atol=0.03, rtol=0.05)
    torch.testing.assert_close(gx, gx_ref, atol=0.05, rtol=0.1)
