import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from pretrain.data import AS_TRAINED_BLUR, IMAGENET_MEAN, IMAGENET_STD, DataAugmentationDINO, reference_pil_pipeline
from pretrain.data import augmentations as A


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # one intra-op thread, as in a DataLoader worker (much faster for these tiny ops on a busy 2-core box)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def pil_image(h=60, w=80, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("n_local", [0, 3])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_multicrop_shapes(n_local, as_tensor):
    aug = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), n_local, global_crops_size=32, local_crops_size=16)
    img = pil_image()
    if as_tensor:
        img = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    out = aug(img)
    assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == n_local
    for t in out["global_crops"]:
        assert t.shape == (3, 32, 32) and t.dtype == torch.float32 and torch.isfinite(t).all()
    for t in out["local_crops"]:
        assert t.shape == (3, 16, 16)
    # normalised range: (x - mean) / std with x in [0, 1]
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    allc = torch.stack(out["global_crops"])
    assert allc.min() >= lo - 1e-4 and allc.max() <= hi + 1e-4
    ref = reference_pil_pipeline(local_crops_number=n_local, global_crops_size=32, local_crops_size=16)(pil_image())
    assert [t.shape for t in ref["global_crops"] + ref["local_crops"]] == \
        [t.shape for t in out["global_crops"] + out["local_crops"]]


def test_bad_input_and_probabilities():
    with pytest.raises(TypeError, match="uint8"):
        DataAugmentationDINO()(torch.rand(3, 10, 10))
    with pytest.raises(ValueError, match="global2_blur_prob"):
        DataAugmentationDINO(global2_blur_prob=1.5)
    assert AS_TRAINED_BLUR == dict(global1_blur_prob=0.0, global2_blur_prob=0.9, local_blur_prob=0.5)


def checkerboard(size=64, period=2):
    yy, xx = np.mgrid[:size, :size]
    board = (((yy // period) + (xx // period)) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([board] * 3, -1))


def hf_energy(t):
    return float((t[..., 1:] - t[..., :-1]).abs().mean() + (t[..., 1:, :] - t[..., :-1, :]).abs().mean())


def test_blur_probability_is_observable():
    img = checkerboard()
    kw = dict(global_crops_scale=(0.95, 1.0), local_crops_scale=(0.9, 1.0), local_crops_number=2,
              global_crops_size=64, local_crops_size=64, global2_solarize_prob=0.0)
    sharp = DataAugmentationDINO(global1_blur_prob=0.0, global2_blur_prob=0.0, local_blur_prob=0.0, **kw)
    blurry = DataAugmentationDINO(global1_blur_prob=1.0, global2_blur_prob=1.0, local_blur_prob=1.0, **kw)
    e = {"sharp": [], "blurry": []}
    for name, aug in (("sharp", sharp), ("blurry", blurry)):
        for _ in range(12):
            out = aug(img)
            e[name].append([hf_energy(t) for t in out["global_crops"] + out["local_crops"]])
    s, b = np.array(e["sharp"]), np.array(e["blurry"])
    # every crop position (global1, global2, locals) is affected by its own probability
    assert (b.mean(0) < 0.6 * s.mean(0)).all(), (s.mean(0), b.mean(0))
    only_g1 = DataAugmentationDINO(global1_blur_prob=1.0, global2_blur_prob=0.0, local_blur_prob=0.0, **kw)
    m = np.array([[hf_energy(t) for t in (o["global_crops"] + o["local_crops"])] for o in
                  (only_g1(img) for _ in range(12))]).mean(0)
    assert m[0] < 0.6 * s.mean(0)[0] and (m[1:] > 0.8 * s.mean(0)[1:]).all()


# ---- the batched colour ops against torchvision's per-image functional ops (independent reference)
def test_hsv_roundtrip_and_hue_matches_torchvision():
    x = torch.rand(4, 3, 9, 11)
    x[0, :, 0, 0] = 0.5  # grey pixel
    x[1, :, 0, 0] = 0.0
    assert torch.allclose(A.hsv_to_rgb(A.rgb_to_hsv(x)), x, atol=1e-5)
    shifts = torch.tensor([-0.1, 0.03, 0.0, 0.099])
    ours = A._hue(x.clone(), shifts)
    for i in range(4):
        assert torch.allclose(ours[i], TF.adjust_hue(x[i], float(shifts[i])), atol=1e-4)


def test_blur_contrast_saturation_match_torchvision():
    x = torch.rand(3, 3, 20, 17)
    sig = torch.tensor([0.1, 0.7, 2.0])
    ours = A._blur(x, sig)
    for i in range(3):
        ref = TF.gaussian_blur(x[i], [9, 9], [float(sig[i])] * 2)
        assert torch.allclose(ours[i], ref, atol=1e-5)
        c = 0.6 + 0.3 * i
        cref = TF.adjust_contrast(x[i], c)
        cours = (c * x[i:i + 1] + (1 - c) * A._gray(x[i:i + 1]).mean((1, 2, 3), keepdim=True)).clamp(0, 1)
        assert torch.allclose(cours[0], cref, atol=1e-5)
        sref = TF.adjust_saturation(x[i], c)
        sours = (c * x[i:i + 1] + (1 - c) * A._gray(x[i:i + 1])).clamp(0, 1)
        assert torch.allclose(sours[0], sref, atol=1e-5)
        assert torch.allclose(A._gray(x[i:i + 1])[0], TF.rgb_to_grayscale(x[i]), atol=1e-6)


def test_rrc_params_follow_scale_and_ratio():
    for _ in range(200):
        top, left, h, w = A._rrc_params(60, 80, (0.1, 0.5))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.1 * 4800 * 0.85 <= h * w <= 0.5 * 4800 * 1.15
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25


def test_solarize_only_on_second_global_crop():
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for p, expect_dark in ((1.0, True), (0.0, False)):
        aug = DataAugmentationDINO(local_crops_number=1, global_crops_size=16, local_crops_size=8,
                                   global2_solarize_prob=p)
        for _ in range(5):
            out = aug(white)
            g1, g2, loc = (t * std + mean for t in (*out["global_crops"], out["local_crops"][0]))
            # jitter keeps a grey image grey and >= 0.6 (brightness factor >= 0.6); solarize maps it to <= 0.4
            assert g1.min() > 0.55 and loc.min() > 0.55
            assert (g2.max() < 0.45) if expect_dark else (g2.min() > 0.55)
