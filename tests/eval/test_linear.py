"""Linear probe and logistic regression end to end through the launcher; resume is bit-identical."""
import pytest
import torch

from conftest import TINY_VIT, write_imagefolder
from launchers.eval_linear import main as linear_launcher


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("lin")
    return write_imagefolder(d / "train", 10), write_imagefolder(d / "val", 3, seed=1)


def _args(train, val, out):
    return TINY_VIT + ["--random-init", "--train-dataset", f"imagefolder:root={train}", "--test-dataset",
                       f"imagefolder:root={val}", "--resize", "32", "--crop", "32", "--num-workers", "0",
                       "--batch-size", "8", "--epochs", "3", "--lrs", "0.1", "1.0", "--train-augment", "none",
                       "--output-dir", str(out), "--local"]


def test_linear_probe_separable_and_resume(folders, tmp_path):
    train, val = folders
    full = linear_launcher(_args(train, val, tmp_path / "full"))
    assert full["n_heads"] == 8  # 2 lrs x {1, 2 (= depth)} blocks x {cls, avgpool}
    assert full["val_top1"] == 100.0 and full["test_top1"] == 100.0
    assert linear_launcher(_args(train, val, tmp_path / "res") + ["--stop-at", "5"])["stopped_at"] == 5
    resumed = linear_launcher(_args(train, val, tmp_path / "res"))
    a = torch.load(tmp_path / "full" / "linear_checkpoint.pth", weights_only=True)["heads"]
    b = torch.load(tmp_path / "res" / "linear_checkpoint.pth", weights_only=True)["heads"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_top1_all"] == full["val_top1_all"]


def test_logreg(folders, tmp_path):
    train, val = folders
    r = linear_launcher(_args(train, val, tmp_path) + ["--method", "logreg", "--n-c", "4"])
    assert r["test_top1"] == 100.0 and len(r["val_top1_per_C"]) == 4
