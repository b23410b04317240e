"""k-NN: voting against an independent numpy brute force (ties included), end to end, 1 vs 2 processes."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_VIT, write_imagefolder
from eval.knn import knn_accuracy
from launchers.eval_knn import main as knn_launcher


def numpy_knn(train, train_y, test, test_y, ks, T, C):
    """Brute force: sort by (-sim, train index), softmax over max_k, class ranking by (-score, class index)."""
    max_k = max(ks)
    out = {k: [0, 0] for k in ks}
    for q, y in zip(test, test_y):
        sims = train @ q
        order = sorted(range(len(train)), key=lambda j: (-sims[j], j))[:max_k]
        s = np.array([sims[j] for j in order], dtype=np.float64)
        w = np.exp((s - s.max()) / T)
        w /= w.sum()
        for k in ks:
            scores = np.zeros(C)
            for j in range(k):
                scores[train_y[order[j]]] += w[j]
            ranked = sorted(range(C), key=lambda c: (-round(scores[c], 9), c))
            out[k][0] += ranked[0] == y
            out[k][1] += y in ranked[:5]
    return {k: (100.0 * a / len(test), 100.0 * b / len(test)) for k, (a, b) in out.items()}


def test_voting_matches_numpy_bruteforce_with_ties_and_chunks():
    g = torch.Generator().manual_seed(0)
    C = 7
    train = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    train = torch.cat([train, train[:10]])  # exact duplicates -> tied similarities across classes
    train_y = torch.randint(0, C, (50,), generator=g)
    test = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    test = torch.cat([test, train[:5]])  # queries equal to duplicated train points
    test_y = torch.randint(0, C, (35,), generator=g)
    ks = [1, 2, 5, 20]
    got = knn_accuracy(test, test_y, train, torch.arange(50), train_y, ks, 0.07, C, batch_size=8, chunk_size=7)
    ref = numpy_knn(train.double().numpy(), train_y.numpy(), test.double().numpy(), test_y.numpy(), ks, 0.07, C)
    for k in ks:
        assert got[k]["top1"] == pytest.approx(ref[k][0]) and got[k]["top5"] == pytest.approx(ref[k][1]), k
    # k larger than the train set is clipped
    assert set(knn_accuracy(test, test_y, train, torch.arange(50), train_y, [100], 0.07, C)) == {50}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("knn")
    return write_imagefolder(d / "train", 7), write_imagefolder(d / "val", 3, seed=1)


def _args(train, val, out):
    return TINY_VIT + ["--random-init", "--train-dataset", f"imagefolder:root={train}", "--test-dataset",
                       f"imagefolder:root={val}", "--resize", "32", "--crop", "32", "--num-workers", "0",
                       "--batch-size", "4", "--ks", "1", "5", "20", "--chunk-size", "5", "--n-per-class", "2",
                       "--output-dir", str(out), "--local"]


def test_knn_end_to_end_one_vs_two_processes(folders, tmp_path):
    train, val = folders
    one = knn_launcher(_args(train, val, tmp_path / "one"))
    two = knn_launcher(_args(train, val, tmp_path / "two") + ["--ngpus", "2"])
    assert one["results"] == two["results"]
    assert one["results"]["full"]["1"]["top1"] > 60.0  # colour classes: far above chance (33%)
    lines = (tmp_path / "one" / "results_eval_knn.json").read_text().splitlines()
    assert json.loads(lines[-1])["results"]["full"].keys() == {"1", "5", "20"}
    assert os.path.isfile(tmp_path / "two" / "results_eval_knn.json")
