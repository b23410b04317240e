"""SNodeViT: primal KSVD attention equals the explicit N x N form; SDE solvers converge to the ODE solution;
seeded sampling; KSVD loss; Monte-Carlo uncertainty outputs."""
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from pretrain.models.snodevit import PrimalKSVDAttention, SNodeViT

SMALL = dict(img_size=16, patch_size=8, embed_dim=16, depth=4, num_heads=2, rank=2, rank_multi=2,
             num_weight_basis=2, time_dim=8, time_max_freq=2.0)


def explicit_ksvd_attention(attn, x, alpha, lam):
    """Reference written from the maths with an explicit N x N matrix A = psi diag(lam) phi^T (numpy, loops)."""
    x = x.detach().numpy()
    alpha, lam = alpha.detach().numpy(), lam.detach().numpy()
    mix = lambda lin: (np.einsum("m,moi->oi", alpha, lin.weight.detach().numpy()), alpha @ lin.bias.detach().numpy())
    Wqkv, bqkv = mix(attn.qkv)
    Wp, bp = mix(attn.proj)
    B, N, C = x.shape
    H = attn.num_heads
    d = C // H
    n_s = attn.n_sampled
    idx = np.round(np.linspace(0, N - 1, n_s)).astype(int)
    We, Wr = attn.W_e.detach().numpy(), attn.W_r.detach().numpy()
    out = np.zeros((B, N, 2 * C))
    for b in range(B):
        t = x[b] @ Wqkv.T + bqkv  # [N, 3C]
        for h in range(H):
            q, k, v = (t[:, s * C + h * d: s * C + (h + 1) * d] for s in range(3))
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            k = k / np.linalg.norm(k, axis=1, keepdims=True)
            xs = x[b][idx][:, h * d:(h + 1) * d]  # sampled tokens, this head's channels [n_s, d]
            psi = q @ (xs.T @ We[h])  # [N, r]
            phi = k @ (xs.T @ Wr[h])
            A = np.zeros((N, N))
            for i in range(attn.rank):
                A += lam[h, i] * np.outer(psi[:, i], phi[:, i])
            out[b, :, h * 2 * d: h * 2 * d + d] = A @ v / N
            out[b, :, h * 2 * d + d: (h + 1) * 2 * d] = A.T @ v / N
    return out @ Wp.T + bp


@pytest.mark.parametrize("n_tokens", [17, 5])  # 5 < rank*rank_multi: sampled tokens repeat
def test_primal_attention_equals_explicit_form(n_tokens):
    torch.manual_seed(0)
    attn = PrimalKSVDAttention(dim=8, num_heads=2, rank=3, rank_multi=2, num_basis=3).double()
    x = torch.randn(2, n_tokens, 8, dtype=torch.double)
    alpha = torch.softmax(torch.randn(3, dtype=torch.double), 0)
    lam = torch.randn(2, 3, dtype=torch.double)
    out, loss = attn(x, alpha, lam)
    np.testing.assert_allclose(out.detach().numpy(), explicit_ksvd_attention(attn, x, alpha, lam),
                               rtol=1e-9, atol=1e-11)
    assert loss.ndim == 0 and loss >= 0


def _ode_setup():
    torch.manual_seed(0)
    m = SNodeViT(**SMALL).double().eval()
    x0 = m.prepare_tokens(torch.randn(1, 3, 16, 16, dtype=torch.double), None).detach()
    shape = x0.shape

    def f(t, y):
        with torch.no_grad():
            return m.drift_at(torch.from_numpy(y).view(shape), t).flatten().numpy()

    ref = solve_ivp(f, [0, m.t_end], x0.flatten().numpy(), method="DOP853", rtol=1e-11, atol=1e-13).y[:, -1]
    return m, x0, ref


def _final(m, x0, **kw):
    with torch.no_grad():
        return list(m.integrate(x0, **kw))[-1].flatten().numpy()


def test_sde_solvers_converge_to_ode_solution():
    m, x0, ref = _ode_setup()
    errs = {s: [np.abs(_final(m, x0, noise=False, solver=s, num_steps=K) - ref).max() for K in (2, 4, 8, 16)]
            for s in ("euler", "heun")}
    for s, order in (("euler", 1.0), ("heun", 2.0)):
        e = errs[s]
        assert all(a > b for a, b in zip(e, e[1:])), (s, e)
        rates = np.log2(np.array(e[:-1]) / np.array(e[1:]))
        assert np.all(np.abs(rates - order) < 0.3), (s, rates)  # observed order of convergence
    assert all(h < eu for h, eu in zip(errs["heun"], errs["euler"]))
    # noise -> 0: the stochastic solution approaches the ODE solution (linearly in sigma), both solvers
    for solver in ("euler", "heun"):
        dists = []
        for sigma_max in (1e-1, 1e-2, 1e-3):
            m.sigma_max = sigma_max
            with m.sampling(torch.Generator().manual_seed(0)):
                dists.append(np.abs(_final(m, x0, solver=solver, num_steps=16) - ref).max())
        assert dists[0] > dists[1] > dists[2], dists
        assert dists[2] < 2 * np.abs(_final(m, x0, noise=False, solver=solver, num_steps=16) - ref).max() + 1e-3


def test_noise_is_seeded_and_off_in_eval():
    torch.manual_seed(0)
    m = SNodeViT(**dict(SMALL, sigma_max=0.5, sigma_init=0.3), num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a, b = m(x), m(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # eval: deterministic
        with m.sampling(torch.Generator().manual_seed(1)):
            s1 = m(x)
        with m.sampling(torch.Generator().manual_seed(1)):
            s2 = m(x)
        with m.sampling(torch.Generator().manual_seed(2)):
            s3 = m(x)
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    assert not torch.allclose(s1, s3) and not torch.allclose(s1, a)
    m.train()
    assert m.noise_on
    torch.manual_seed(5)
    t1 = m.forward_features(x)["x_norm_clstoken"]
    torch.manual_seed(5)
    t2 = m.forward_features(x)["x_norm_clstoken"]
    torch.testing.assert_close(t1, t2)  # training noise follows the global seed


def test_ksvd_loss_and_errors():
    torch.manual_seed(0)
    m = SNodeViT(**dict(SMALL, solver="heun")).train()
    with pytest.raises(RuntimeError, match="forward pass first"):
        m.ksvd_loss()
    out = m.forward_features([torch.randn(2, 3, 16, 16), torch.randn(2, 3, 24, 24)])
    assert len(m._ksvd_terms) == 2 * 2 * SMALL["depth"]  # two crops, two drift evaluations per Heun step
    loss = m.ksvd_loss()
    (loss + out[0]["x_norm_clstoken"].sum()).backward()
    assert m.drift.attn.W_e.grad is not None and torch.isfinite(loss)
    with pytest.raises(ValueError, match="solver"):
        SNodeViT(**dict(SMALL, solver="rk4"))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SNodeViT(**dict(SMALL, num_heads=3))


def test_forward_with_uncertainty_matches_reference():
    torch.manual_seed(0)
    m = SNodeViT(**dict(SMALL, sigma_max=1.0, sigma_init=0.5), num_classes=4).eval()
    x = torch.randn(3, 3, 16, 16)
    out = m.forward_with_uncertainty(x, num_samples=5, seed=3)
    again = m.forward_with_uncertainty(x, num_samples=5, seed=3)
    torch.testing.assert_close(out["probs"], again["probs"], rtol=0, atol=0)
    p = out["sample_probs"].double().numpy()
    assert p.shape == (5, 3, 4)
    mean = p.mean(0)
    H = lambda q: -(q * np.log(q)).sum(-1)
    np.testing.assert_allclose(out["probs"].numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(out["predictive_entropy"].numpy(), H(mean), rtol=1e-5)
    np.testing.assert_allclose(out["mutual_information"].numpy(), H(mean) - H(p).mean(0), rtol=1e-4, atol=1e-7)
    assert (out["mutual_information"] > 0).all()  # noise on: the samples disagree
    with pytest.raises(ValueError, match="num_classes"):
        SNodeViT(**SMALL).forward_with_uncertainty(x)
