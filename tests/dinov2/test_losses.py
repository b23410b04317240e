"""Losses vs independent naive references (numpy / python loops) and a 2-process gloo check of global statistics."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pretrain.dinov2.losses import DINOLoss, KoLeoLoss, dino_crossview_loss, iBOTPatchLoss

torch.set_num_threads(1)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def naive_ce(t, s, temp=0.1):
    """mean over rows of -sum_k t_k log_softmax(s/temp)_k, with explicit loops."""
    lsm = np_log_softmax(s / temp)
    total = 0.0
    for b in range(t.shape[0]):
        total += -sum(t[b, k] * lsm[b, k] for k in range(t.shape[1]))
    return total / t.shape[0]


def naive_sk(t, temp, iters):
    Q = np.exp(t.astype(np.float64) / temp).T
    B, K = Q.shape[1], Q.shape[0]
    Q /= Q.sum()
    for _ in range(iters):
        for k in range(K):
            Q[k] /= Q[k].sum() * K
        for b in range(B):
            Q[:, b] /= Q[:, b].sum() * B
    return (Q * B).T


# ---------------------------------------------------------------------------------------------- DINO
def test_dino_crossview_matches_double_loop():
    rng = np.random.default_rng(0)
    B, K, n_g, n_l = 4, 7, 2, 3
    sg = rng.normal(size=(n_g * B, K)).astype(np.float32)
    sl = rng.normal(size=(n_l * B, K)).astype(np.float32)
    tp = np_softmax(rng.normal(size=(n_g * B, K))).astype(np.float32)
    student_views = [sg[i * B:(i + 1) * B] for i in range(n_g)] + [sl[i * B:(i + 1) * B] for i in range(n_l)]
    teacher_views = [tp[i * B:(i + 1) * B] for i in range(n_g)]
    g_sum, l_sum, pairs = 0.0, 0.0, 0
    for v, s in enumerate(student_views):
        for j, t in enumerate(teacher_views):
            if v == j:  # same view: excluded
                continue
            ce = naive_ce(t, s)
            pairs += 1
            if v < n_g:
                g_sum += ce
            else:
                l_sum += ce
    assert pairs == 2 + 6
    g, l = dino_crossview_loss(torch.from_numpy(sg), torch.from_numpy(sl), torch.from_numpy(tp), n_global=2)
    np.testing.assert_allclose(g.item(), g_sum / pairs, rtol=1e-5)
    np.testing.assert_allclose(l.item(), l_sum / pairs, rtol=1e-5)
    # list input for the teacher and the method wrapper agree
    loss = DINOLoss(K)
    g2, l2 = loss.crossview_loss(torch.from_numpy(sg), torch.from_numpy(sl), list(torch.from_numpy(tp).chunk(2)))
    np.testing.assert_allclose([g2.item(), l2.item()], [g.item(), l.item()], rtol=1e-6)


def test_dino_forward_is_sum_over_chunk_pairs():
    rng = np.random.default_rng(1)
    K = 5
    s = [rng.normal(size=(3, K)).astype(np.float32) for _ in range(2)]
    t = [np_softmax(rng.normal(size=(3, K))).astype(np.float32) for _ in range(3)]
    ref = sum(naive_ce(ti, si) for si in s for ti in t)
    out = DINOLoss(K)([torch.from_numpy(x) for x in s], [torch.from_numpy(x) for x in t])
    np.testing.assert_allclose(out.item(), ref, rtol=1e-5)


def test_softmax_center_and_update_center_formula():
    rng = np.random.default_rng(2)
    K, T, m = 6, 0.07, 0.9
    loss = DINOLoss(K, center_momentum=m)
    c = np.zeros((1, K))
    for step in range(3):
        t = rng.normal(size=(5, K)).astype(np.float32)
        probs = loss.softmax_center_teacher(torch.from_numpy(t), T).numpy()
        np.testing.assert_allclose(probs, np_softmax((t - c) / T), rtol=1e-5, atol=1e-7)
        loss.update_center(torch.from_numpy(t))
        c = m * c + (1 - m) * t.mean(0, keepdims=True)
        np.testing.assert_allclose(loss.center.numpy(), c, rtol=1e-5, atol=1e-7)


def test_sinkhorn_matches_naive_and_marginals():
    rng = np.random.default_rng(3)
    B, K, T = 6, 4, 0.1
    t = rng.normal(size=(B, K)).astype(np.float32)
    loss = DINOLoss(K)
    out = loss.sinkhorn_knopp_teacher(torch.from_numpy(t), T, n_iterations=3).numpy()
    np.testing.assert_allclose(out, naive_sk(t, T, 3), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)  # each sample's assignment sums to 1
    conv = loss.sinkhorn_knopp_teacher(torch.from_numpy(t), 1.0, n_iterations=200).numpy()
    np.testing.assert_allclose(conv.sum(0), B / K, rtol=1e-3)  # each prototype gets B/K
    np.testing.assert_allclose(conv.sum(1), 1.0, rtol=1e-5)
    # large logits do not overflow (max-subtraction is exact)
    big = loss.sinkhorn_knopp_teacher(torch.from_numpy(t * 50), T * 0.1, n_iterations=3).numpy()
    assert np.isfinite(big).all()


def test_sinkhorn_padding_rows_are_ignored():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(5, 4)).astype(np.float32)
    padded = np.concatenate([t, rng.normal(size=(3, 4)).astype(np.float32)])
    loss = iBOTPatchLoss(4)
    out = loss.sinkhorn_knopp_teacher(torch.from_numpy(padded), 0.1, n_masked_patches_tensor=torch.tensor(5))
    np.testing.assert_allclose(out[:5].numpy(), naive_sk(t, 0.1, 3), rtol=1e-4, atol=1e-6)
    assert (out[5:] == 0).all()


# ---------------------------------------------------------------------------------------------- iBOT
def test_ibot_forward_masked_matches_per_image_loop():
    rng = np.random.default_rng(5)
    n_img, N, K = 4, 6, 5
    masks = np.zeros((n_img, N), dtype=bool)
    masks[0, [1, 2, 4]] = True
    masks[2, [0]] = True
    masks[3, :] = True  # image 1 has no masked patch but still counts in the average
    M = masks.sum()
    s = rng.normal(size=(M, K)).astype(np.float32)
    t = np_softmax(rng.normal(size=(M, K))).astype(np.float32)
    ref, row = 0.0, 0
    for i in range(n_img):
        n_i = masks[i].sum()
        if n_i == 0:
            continue
        ref += naive_ce(t[row:row + n_i], s[row:row + n_i])  # mean over this image's masked patches
        row += n_i
    ref /= n_img
    loss = iBOTPatchLoss(K)
    out = loss.forward_masked(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(masks))
    np.testing.assert_allclose(out.item(), ref, rtol=1e-5)
    # padded buffers + explicit masks_weight (as produced by the collate) give the same value
    pad = 3
    s_pad = np.concatenate([s, rng.normal(size=(pad, K)).astype(np.float32)])
    t_pad = np.concatenate([t, np_softmax(rng.normal(size=(pad, K))).astype(np.float32)])
    w = np.concatenate([np.full(masks[i].sum(), 1.0 / max(masks[i].sum(), 1)) for i in range(n_img)])
    out2 = loss.forward_masked(torch.from_numpy(s_pad), torch.from_numpy(t_pad), torch.from_numpy(masks),
                               n_masked_patches=torch.tensor(M), masks_weight=torch.from_numpy(w).float())
    np.testing.assert_allclose(out2.item(), ref, rtol=1e-5)


def test_ibot_center_ignores_padding():
    rng = np.random.default_rng(6)
    t = rng.normal(size=(7, 3)).astype(np.float32)
    loss = iBOTPatchLoss(3, center_momentum=0.5)
    loss.update_center(torch.from_numpy(t), n_valid=4)
    np.testing.assert_allclose(loss.center.numpy(), 0.5 * t[:4].mean(0, keepdims=True), rtol=1e-5)
    loss.update_center(torch.from_numpy(t), n_valid=0)  # empty: centre unchanged
    np.testing.assert_allclose(loss.center.numpy(), 0.5 * t[:4].mean(0, keepdims=True), rtol=1e-5)


# ---------------------------------------------------------------------------------------------- KoLeo
def naive_koleo(x, eps=1e-8):
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    vals = []
    for i in range(len(x)):
        d = [np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i]
        vals.append(np.log(np.sqrt(min(d) ** 2 + eps ** 2) + eps))  # == log(d + eps) unless d ~ eps
    return -np.mean(vals)


def test_koleo_matches_bruteforce():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(9, 5)).astype(np.float32)
    out = KoLeoLoss()(torch.from_numpy(x))
    np.testing.assert_allclose(out.item(), naive_koleo(x), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_koleo_duplicates_are_finite(dtype):
    x = torch.randn(6, 8)
    x[3] = x[1]  # exact duplicate: distance 0
    x = x.to(dtype).requires_grad_(True)
    out = KoLeoLoss()(x)
    assert torch.isfinite(out)
    # the duplicate pair contributes -log(2 eps) each (eps=1e-8), the others their true NN distance
    np.testing.assert_allclose(out.item(), naive_koleo(x.detach().float().numpy()), rtol=1e-4)
    out.backward()
    assert torch.isfinite(x.grad).all()
    x2 = torch.randn(4, 8)
    x2[2] = x2[0] * 2.0  # same direction -> distance ~0 after normalisation
    assert torch.isfinite(KoLeoLoss()(x2.to(dtype)))


def test_koleo_needs_two_vectors():
    with pytest.raises(ValueError, match="koleo_loss_weight"):
        KoLeoLoss()(torch.randn(1, 4))


# ---------------------------------------------------------------------------------------------- 2 ranks
def _data(seed=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)


SPLIT = 3  # rank 0 gets 3 rows, rank 1 gets 5: unequal on purpose (the count must be all-reduced too)


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        a, b = _data()
        sl = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
        dino = DINOLoss(5)
        dino.update_center(a[sl])
        dino.update_center(b[sl])
        sk = dino.sinkhorn_knopp_teacher(a[sl], 0.1)
        # iBOT: padded local buffers with different numbers of valid rows per rank
        ibot = iBOTPatchLoss(5)
        local = a[sl]
        n_valid = local.shape[0] - 1
        padded = torch.cat([local[:n_valid], torch.full((2, 5), 9.0)])
        isk = ibot.sinkhorn_knopp_teacher(padded, 0.1, n_masked_patches_tensor=torch.tensor(n_valid))
        ibot.update_center(padded, n_valid=torch.tensor(n_valid))
        torch.save({"center": dino.center, "sk": sk, "isk": isk[:n_valid], "icenter": ibot.center},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_use_global_statistics(tmp_path):
    # fork: the children reuse the already-imported torch (spawn would re-import it: ~10 s on 2 busy cores)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    a, b = _data()
    one = DINOLoss(5)
    one.update_center(a)
    one.update_center(b)
    for r in (r0, r1):
        torch.testing.assert_close(r["center"], one.center)
    torch.testing.assert_close(torch.cat([r0["sk"], r1["sk"]]), one.sinkhorn_knopp_teacher(a, 0.1))
    # iBOT: rank r contributes its first (rows-1) tokens; single process sees exactly those tokens
    valid = torch.cat([a[:SPLIT - 1], a[SPLIT:-1]])
    ione = iBOTPatchLoss(5)
    torch.testing.assert_close(torch.cat([r0["isk"], r1["isk"]]), ione.sinkhorn_knopp_teacher(valid, 0.1))
    ione.update_center(valid)
    torch.testing.assert_close(r0["icenter"], ione.center)
    torch.testing.assert_close(r1["icenter"], ione.center)


def test_soft_cross_entropy_backward_matches_autograd():
    """The CE used by the DINO and iBOT losses has a hand-written backward: gradcheck it (float64) and compare with
    autograd through log_softmax, for targets that sum to 1, to more than 1 (DINO's summed teacher views) and 0."""
    from pretrain.dinov2.losses import _SoftCrossEntropy

    gen = torch.Generator().manual_seed(0)
    s = torch.randn(4, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.softmax(torch.randn(4, 9, dtype=torch.float64, generator=gen), -1)
    t[1] *= 3.0
    t[2] = 0.0
    assert torch.autograd.gradcheck(lambda x: _SoftCrossEntropy.apply(x, t, 0.1), (s,))
    g = torch.randn(4, dtype=torch.float64, generator=gen)
    ours = torch.autograd.grad((_SoftCrossEntropy.apply(s, t, 0.1) * g).sum(), s)[0]
    ref_loss = -(t * torch.log_softmax(s / 0.1, -1)).sum(-1)
    torch.testing.assert_close(_SoftCrossEntropy.apply(s, t, 0.1), ref_loss)
    torch.testing.assert_close(ours, torch.autograd.grad((ref_loss * g).sum(), s)[0])
