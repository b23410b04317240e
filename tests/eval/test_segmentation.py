"""Segmentation end to end on ADE20K / VOC layouts written to disk (linear, ms, knn protocols)."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_VIT, write_ade20k, write_voc
from eval.segmentation.datasets import ADE20K, VOC2012
from eval.segmentation.inference import slide_logits
from launchers.eval_segmentation import main as seg_launcher


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    d = tmp_path_factory.mktemp("seg")
    return write_ade20k(d / "ade"), write_voc(d / "voc")


def _args(dataset, root, protocol, out):
    return TINY_VIT + ["--random-init", "--dataset", dataset, "--root", root, "--protocol", protocol,
                       "--crop-size", "32", "--eval-size", "32", "--iterations", "8", "--batch-size", "4",
                       "--num-workers", "0", "--scales", "0.75", "1.0", "--slide-crop", "24", "--slide-stride", "16",
                       "--save-predictions", "2", "--output-dir", str(out), "--local"]


def test_dataset_label_conventions(roots):
    ade, voc = roots
    img, lab = ADE20K(ade, "training").load(0)
    raw = np.array(Image.open(ADE20K(ade, "training").samples[0][1]))
    assert (lab.numpy()[raw == 0] == 255).all() and np.array_equal(lab.numpy()[raw > 0], raw[raw > 0] - 1)
    _, lab = VOC2012(voc, "val").load(0)
    assert set(np.unique(lab.numpy())) <= {0, 7, 14, 255} and (lab[:, 0] == 255).all()
    with pytest.raises(FileNotFoundError, match="official layout"):
        ADE20K(voc)


def test_linear_ade20k(roots, tmp_path):
    r = seg_launcher(_args("ade20k", roots[0], "linear", tmp_path))
    assert 0 <= r["mIoU"] <= 100 and len(r["per_class_IoU"]) == 150
    pngs = sorted((tmp_path / "predictions").glob("*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).mode == "P"


@pytest.mark.parametrize("protocol,extra", [("ms", []), ("knn", ["--knn-mode", "knn"]), ("knn", [])])
def test_voc_protocols(roots, tmp_path, protocol, extra):
    r = seg_launcher(_args("voc", roots[1], protocol, tmp_path) + extra)
    assert len(r["per_class_IoU"]) == 21 and r["mIoU"] > 30.0  # colour-coded regions


def test_sliding_window_equals_whole_image_for_a_local_model():
    """A per-pixel logits function: windows (padded, overlapping, edge-aligned) must reassemble the image."""
    def fn(x):
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0  # inputs padded to the patch size
        return x * 2.0

    x = torch.randn(1, 3, 43, 61)
    assert torch.allclose(slide_logits(fn, x, 8, 0, 0), 2 * x)
    assert torch.allclose(slide_logits(fn, x, 8, 24, 16), 2 * x, atol=1e-6)
