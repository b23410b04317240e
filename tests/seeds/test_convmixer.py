"""ConvMixer: timm's ConvMixer state dicts load strictly and give identical outputs; locuslab layout converts."""
import pytest
import torch
from torch import nn

from pretrain.models import build_encoder, load_pretrained


@pytest.mark.parametrize("name", ["convmixer_768_32", "convmixer_1024_20_ks9_p14", "convmixer_1536_20"])
def test_timm_convmixer_loads_strictly_and_matches(name):
    timm = pytest.importorskip("timm")  # dev extra; installed in the project venv
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval()
    ours = build_encoder(name, num_classes=1000).eval()
    report = load_pretrained(ours, ref.state_dict(), strict=True)
    assert report.ok
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        expected = ref(x)
        assert expected.std() > 0
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


def test_timm_weights_into_headless_encoder():
    timm = pytest.importorskip("timm")
    from timm.models.convmixer import ConvMixer as TimmConvMixer

    torch.manual_seed(0)
    ref = TimmConvMixer(dim=16, depth=2, kernel_size=3, patch_size=2, num_classes=5, act_layer=nn.ReLU).eval()
    enc = build_encoder("convmixer_768_32", dim=16, depth=2, kernel_size=3, patch_size=2).eval()
    rep = load_pretrained(enc, ref.state_dict(), strict=True)
    assert sorted(rep.ignored) == ["head.bias", "head.weight"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref.forward_head(ref.forward_features(x), pre_logits=True),
                                   rtol=1e-5, atol=1e-5)
        # patch tokens are the h x H/p x W/p map, row-major
        feats = enc.forward_features(x)["x_norm_patchtokens"]
        torch.testing.assert_close(feats, ref.forward_features(x).flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_locuslab_sequential_layout_converts():
    # the original repository's model: a bare nn.Sequential (written here from the paper's listing)
    h, d, k, p, n = 16, 2, 5, 2, 7

    class Res(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x) + x

    torch.manual_seed(1)
    ref = nn.Sequential(
        nn.Conv2d(3, h, p, stride=p), nn.GELU(), nn.BatchNorm2d(h),
        *[nn.Sequential(Res(nn.Sequential(nn.Conv2d(h, h, k, groups=h, padding="same"), nn.GELU(),
                                          nn.BatchNorm2d(h))),
                        nn.Conv2d(h, h, 1), nn.GELU(), nn.BatchNorm2d(h)) for _ in range(d)],
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(h, n)).eval()
    ours = build_encoder("convmixer_256_8", dim=h, depth=d, kernel_size=k, patch_size=p, num_classes=n).eval()
    assert load_pretrained(ours, ref.state_dict()).ok
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_even_kernel_rejected():
    with pytest.raises(ValueError, match="odd"):
        build_encoder("convmixer_256_8", kernel_size=4)
