"""Corruptions: deterministic, in range, and monotonically stronger with severity (MSE to the clean image)."""
import pytest
import torch
import torch.nn.functional as F

from eval.robustness import CORRUPTIONS, corrupt, evaluate_robustness


def _images(seed, size):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(3, 3, 8, 8, generator=g), size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_monotone_in_severity(name):
    for seed, size in ((0, 32), (1, 24)):
        x = _images(seed, size)
        mse = [float(((corrupt(x, name, s, seed=5) - x) ** 2).mean()) for s in range(1, 6)]
        assert mse[0] > 0
        assert all(a < b for a, b in zip(mse, mse[1:])), (name, mse)
        y = corrupt(x, name, 3, seed=5)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, corrupt(x, name, 3, seed=5))  # deterministic


def test_corrupt_rejects_bad_input():
    with pytest.raises(ValueError, match="severity"):
        corrupt(torch.rand(1, 3, 8, 8), "fog", 6)
    with pytest.raises(KeyError, match="available"):
        corrupt(torch.rand(1, 3, 8, 8), "snow", 1)


def test_evaluate_robustness_counts():
    class Oracle(torch.nn.Module):  # predicts the label stored in the red channel mean (robust to nothing)
        def forward(self, x):
            return torch.stack([-(x[:, 0].mean((1, 2)) - v) ** 2 for v in (-1.0, 1.0)], 1)

    xs = torch.stack([torch.full((3, 8, 8), 0.0), torch.full((3, 8, 8), 1.0)] * 2)
    ys = torch.tensor([0, 1, 0, 1])
    ds = list(zip(xs, ys))
    res = evaluate_robustness(Oracle(), ds, [0.5] * 3, [0.5] * 3, corruptions=["contrast", "pixelate"],
                              severities=[1, 5], batch_size=3)
    assert res["clean"] == 100.0 and res["n"] == 4
    assert set(res["table"]) == {"contrast", "pixelate"} and set(res["table"]["contrast"]) == {1, 5}
