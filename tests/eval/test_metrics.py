"""Segmentation metrics against a hand-built numpy confusion matrix (ignore labels, absent classes)."""
import numpy as np
import pytest
import torch

from eval.segmentation.metrics import confusion_matrix, segmentation_metrics
from eval.segmentation.protocols import patch_labels


def test_miou_matches_numpy_with_ignore_and_absent_class():
    rng = np.random.default_rng(0)
    C = 5
    gt = rng.integers(0, 4, size=(2, 13, 11))  # class 4 never in the ground truth
    pred = rng.integers(0, 4, size=gt.shape)   # ... nor predicted -> excluded from the mean
    pred[0, 0, :3] = 2
    gt[gt == 3] = np.where(rng.random((gt == 3).sum()) < 0.5, 255, 3)  # some ignored pixels
    conf = np.zeros((C, C), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            conf[g, p] += 1
    got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), C)
    assert np.array_equal(got.numpy(), conf)
    ious = []
    for c in range(C):
        tp, fp, fn = conf[c, c], conf[:, c].sum() - conf[c, c], conf[c, :].sum() - conf[c, c]
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    m = segmentation_metrics(got)
    assert m["mIoU"] == pytest.approx(100 * np.mean(ious))
    assert m["aAcc"] == pytest.approx(100 * np.trace(conf) / conf.sum())
    assert m["per_class_IoU"][4] is None and len(m["per_class_IoU"]) == C


def test_patch_majority_labels_vs_loop():
    rng = np.random.default_rng(1)
    lab = torch.from_numpy(rng.choice([0, 1, 2, 255], size=(8, 12), p=[0.3, 0.3, 0.1, 0.3]))
    got = patch_labels(lab, (2, 3), 4, 3)
    for i in range(2):
        for j in range(3):
            cell = lab[4 * i:4 * i + 4, 4 * j:4 * j + 4].flatten().tolist()
            valid = [v for v in cell if v != 255]
            if len(valid) < 8:
                expect = 255
            else:
                counts = [valid.count(c) for c in range(3)]
                expect = counts.index(max(counts))
            assert int(got[i * 3 + j]) == expect
