"""Calibration / uncertainty metrics against an independent numpy reference on fixed inputs."""
import numpy as np
import pytest
import torch

from eval import uncertainty as U


def np_ece(probs, labels, n_bins=15):
    conf = probs.max(1)
    acc = (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            ece += inb.mean() * abs(acc[inb].mean() - conf[inb].mean())
    return ece


def fixed_inputs(n=200, c=5, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, 0.3), size=n)
    labels = np.where(rng.random(n) < 0.6, probs.argmax(1), rng.integers(0, c, n))
    return probs, labels


def test_metrics_match_numpy_reference():
    probs, labels = fixed_inputs()
    tp, tl = torch.tensor(probs, dtype=torch.float64), torch.tensor(labels)
    assert U.expected_calibration_error(tp, tl, 15) == pytest.approx(np_ece(probs, labels, 15), abs=1e-6)
    assert U.negative_log_likelihood(tp, tl) == pytest.approx(-np.log(probs[np.arange(len(labels)), labels]).mean(),
                                                              rel=1e-6)
    onehot = np.eye(probs.shape[1])[labels]
    assert U.brier_score(tp, tl) == pytest.approx(((probs - onehot) ** 2).sum(1).mean(), rel=1e-6)


def test_ece_by_hand():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.55 (wrong): bins (0.8667, 0.9333] and (0.5333, 0.6]
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55]])
    labels = torch.tensor([0, 0, 0, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(0.5 - 0.575)
    assert U.expected_calibration_error(probs, labels, 15) == pytest.approx(expected)
    # a perfectly confident, always correct classifier is calibrated
    assert U.expected_calibration_error(torch.eye(3), torch.arange(3)) == pytest.approx(0.0)


def test_entropy_and_mutual_information_match_numpy():
    rng = np.random.default_rng(1)
    samples = rng.dirichlet(np.ones(4), size=(6, 10))  # [S, B, C]
    t = torch.tensor(samples)
    mean = samples.mean(0)
    H = lambda p: -(p * np.log(p)).sum(-1)
    np.testing.assert_allclose(U.predictive_entropy(t).numpy(), H(mean), rtol=1e-6)
    np.testing.assert_allclose(U.expected_entropy(t).numpy(), H(samples).mean(0), rtol=1e-6)
    np.testing.assert_allclose(U.mutual_information(t).numpy(), H(mean) - H(samples).mean(0), rtol=1e-5, atol=1e-8)
    # identical samples carry no epistemic uncertainty
    same = torch.tensor(np.repeat(samples[:1], 4, axis=0))
    assert torch.allclose(U.mutual_information(same), torch.zeros(10, dtype=same.dtype), atol=1e-6)


def test_evaluate_and_reliability_png(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from pretrain.models import build_encoder

    torch.manual_seed(0)
    model = build_encoder("snodevit_tiny", embed_dim=16, depth=2, num_heads=2, rank=2, rank_multi=2,
                          num_weight_basis=2, patch_size=8, img_size=16, time_dim=8, sigma_max=1.0,
                          sigma_init=0.5, num_classes=3)
    ds = TensorDataset(torch.randn(10, 3, 16, 16), torch.randint(0, 3, (10,)))  # a random tensor "dataset"
    res = U.evaluate_uncertainty(model, DataLoader(ds, batch_size=4), num_samples=3, seed=0)
    again = U.evaluate_uncertainty(model, DataLoader(ds, batch_size=4), num_samples=3, seed=0)
    assert res["metrics"] == again["metrics"]  # seeded
    p, y = res["probs"].double().numpy(), res["labels"].numpy()
    assert res["metrics"]["ece"] == pytest.approx(np_ece(p, y), abs=1e-6)
    assert res["sample_probs"].shape == (3, 10, 3) and res["metrics"]["mutual_information"] > 0
    paths = U.save_report(res, str(tmp_path))
    assert (tmp_path / "uncertainty_reliability.png").stat().st_size > 1000 and paths["json"].endswith(".json")
    with pytest.raises(ValueError, match=r"probs must be \[N, C\]"):
        U.brier_score(torch.rand(3), torch.tensor([0, 1, 2]))
