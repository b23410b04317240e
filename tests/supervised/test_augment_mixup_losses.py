"""3-Augment picks exactly one op; mixup/cutmix targets vs hand-computed ones; BCE binarises before smoothing."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.supervised.augment import ThreeAugmentChoice, build_train_transform
from pretrain.supervised.losses import ClassificationLoss
from pretrain.supervised.mixup import MixedLabels, MixupCutmix, binary_targets, soft_targets


def _img(seed=0, size=24):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _which_ops_changed(img, out):
    """Identify the op from its effect: grayscale -> equal channels; solarize -> pixels >= 128 inverted."""
    a, b = np.asarray(img).astype(int), np.asarray(out).astype(int)
    gray = bool((b[..., 0] == b[..., 1]).all() and (b[..., 1] == b[..., 2]).all())
    sol_ref = np.where(a >= 128, 255 - a, a)
    solar = bool((b == sol_ref).all())
    return gray, solar


def test_three_augment_applies_exactly_one_op():
    random.seed(0)
    aug = ThreeAugmentChoice()
    seen = []
    aug.on_choice = seen.append
    counts = {op: 0 for op in aug.OPS}
    for i in range(60):
        img = _img(i)
        out = aug(img)
        assert len(seen) == i + 1 and seen[-1] == aug.last_op  # one choice per call
        gray, solar = _which_ops_changed(img, out)
        if aug.last_op == "grayscale":
            assert gray and not solar
        elif aug.last_op == "solarize":
            assert solar and not gray
        else:  # blur: neither signature, but smoother than the input
            assert not gray and not solar
            assert np.abs(np.diff(np.asarray(out).astype(int), axis=0)).mean() < \
                np.abs(np.diff(np.asarray(img).astype(int), axis=0)).mean()
        counts[aug.last_op] += 1
    assert all(c >= 8 for c in counts.values()), counts  # uniform choice over 60 draws


def test_three_augment_in_pipeline_once_per_image():
    t = build_train_transform(16, crop="rrc", three_augment=True, color_jitter=0.3)
    ops = [o for o in t.transforms if isinstance(o, ThreeAugmentChoice)]
    assert len(ops) == 1
    calls = []
    ops[0].on_choice = calls.append
    x = t(_img(1, 20))
    assert x.shape == (3, 16, 16) and len(calls) == 1


def test_soft_targets_hand_computed_with_smoothing():
    y_a, y_b, lam, C, eps = torch.tensor([0, 2]), torch.tensor([2, 1]), 0.7, 4, 0.1
    t = soft_targets(MixedLabels(y_a, y_b, lam), C, eps)
    off = eps / C  # 0.025
    on = 1 - eps + off  # 0.925
    expected = np.array([
        [0.7 * on + 0.3 * off, off, 0.7 * off + 0.3 * on, off],
        [off, 0.7 * off + 0.3 * on, 0.7 * on + 0.3 * off, off],
    ])
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(t.sum(1).numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixup_cutmix_targets_sum_to_one_and_match_pixels(mode):
    mix = MixupCutmix(mixup_alpha=0.8 if mode == "mixup" else 0.0, cutmix_alpha=1.0 if mode == "cutmix" else 0.0,
                      prob=1.0, seed=3)
    B, C = 6, 5
    # constant images: image i is filled with the value i, so the pixel mix reveals lam
    x = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, 8, 8).clone()
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for _ in range(5):
        xm, lab = mix(x, y)
        assert mix.last_mode == mode
        assert torch.equal(lab.y_b, y.flip(0))
        # pixel mean of image i = lam * i + (1 - lam) * (B-1-i): recover lam from image 0 (value 0) vs partner 5
        lam_pix = 1.0 - xm[0].mean().item() / (B - 1)
        assert abs(lam_pix - lab.lam) < 1e-5
        t = soft_targets(lab, C, 0.1)
        np.testing.assert_allclose(t.sum(1).numpy(), 1.0, atol=1e-6)
        oh = lambda v: np.eye(C)[v.numpy()] * 0.9 + 0.1 / C  # noqa: E731
        np.testing.assert_allclose(t.numpy(), lab.lam * oh(y) + (1 - lab.lam) * oh(y.flip(0)), atol=1e-6)


def test_mixup_prob_zero_and_odd_batch():
    mix = MixupCutmix(0.8, 1.0, prob=0.0)
    x = torch.rand(4, 3, 8, 8)
    xm, lab = mix(x, torch.arange(4))
    assert torch.equal(xm, x) and lab.lam == 1.0
    with pytest.raises(ValueError, match="even batch"):
        MixupCutmix(0.8, 1.0)(torch.rand(3, 3, 8, 8), torch.arange(3))


def test_bce_binarises_before_smoothing():
    lab = MixedLabels(torch.tensor([0, 1]), torch.tensor([2, 1]), 0.9)
    t = binary_targets(lab, 4, smoothing=0.0)
    np.testing.assert_array_equal(t.numpy(), [[1, 0, 1, 0], [0, 1, 0, 0]])
    ts = binary_targets(lab, 4, smoothing=0.2)
    np.testing.assert_allclose(ts.numpy(), [[0.85, 0.05, 0.85, 0.05], [0.05, 0.85, 0.05, 0.05]], atol=1e-6)
    # lam == 1 (cutmix box of zero area): the partner is not a positive
    np.testing.assert_array_equal(binary_targets(MixedLabels(torch.tensor([0]), torch.tensor([3]), 1.0), 4).numpy(),
                                  [[1, 0, 0, 0]])


def test_losses_against_naive_formulas():
    torch.manual_seed(0)
    logits = torch.randn(2, 4)
    lab = MixedLabels(torch.tensor([0, 1]), torch.tensor([2, 1]), 0.6)
    ce = ClassificationLoss("ce", 4, label_smoothing=0.1)(logits, lab).item()
    lg = logits.numpy().astype(np.float64)
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
    tgt = np.zeros((2, 4))
    for i, (a, b) in enumerate([(0, 2), (1, 1)]):
        tgt[i] += 0.6 * (np.eye(4)[a] * 0.9 + 0.025) + 0.4 * (np.eye(4)[b] * 0.9 + 0.025)
    assert abs(ce - (-(tgt * logp).sum(1).mean())) < 1e-5
    bce = ClassificationLoss("bce", 4)(logits, lab).item()
    tb = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=np.float64)
    sig = 1 / (1 + np.exp(-lg))
    ref = -(tb * np.log(sig) + (1 - tb) * np.log(1 - sig)).mean()
    assert abs(bce - ref) < 1e-5
    with pytest.raises(ValueError, match="classes"):
        ClassificationLoss("ce", 5)(logits, lab)
