"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter) as an octo encoder.

Architecture (exactly the original, ConvMixer-h/d with kernel k and patch p)::

    stem:   Conv2d(3, h, p, stride=p) -> act -> BN(h)                      # patch embedding, h x H/p x W/p
    d x:    x = x + BN(act(DWConv2d(h, h, k, groups=h, padding='same')(x)))  # spatial mixing, residual
            x = BN(act(Conv2d(h, h, 1)(x)))                                 # channel mixing, no residual
    head:   mean over (H, W) -> Linear(h, num_classes)

Parameter names follow timm's ``convmixer_*`` layout (``stem.0/stem.2``, ``blocks.i.0.fn.0/fn.2``,
``blocks.i.1/blocks.i.3``, ``head``), so timm state dicts load strictly through ``load_pretrained``.

Encoder contract mapping (isotropic): ``patch_size`` = p, patch tokens = the h x H/p x W/p map (row-major), cls
feature = the spatially averaged map, no register tokens. Masks replace the patch-embedding output (after the
stem BN) by a learned ``mask_token``; patches do not overlap so masked pixels cannot leak. ConvMixer has no final
norm (every layer ends with a BN), so ``norm=True`` in ``get_intermediate_layers`` is the identity.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .base import Encoder
from .registry import register_encoder

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class Residual(nn.Module):
    """``x + fn(x)``; the attribute name ``fn`` matches timm's checkpoints."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def convmixer_layer(dim: int, kernel_size: int, act) -> nn.Sequential:
    return nn.Sequential(
        Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"), act(),
                               nn.BatchNorm2d(dim))),
        nn.Conv2d(dim, dim, kernel_size=1), act(), nn.BatchNorm2d(dim),
    )


class ConvMixer(Encoder):
    def __init__(self, dim: int = 768, depth: int = 32, kernel_size: int = 9, patch_size: int = 7,
                 act: str = "gelu", num_classes: int = 0, in_chans: int = 3):
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"ConvMixer kernel_size={kernel_size} must be odd and positive ('same' padding)")
        if act not in ACTIVATIONS:
            raise ValueError(f"ConvMixer act={act!r} is not one of {sorted(ACTIVATIONS)}")
        act_layer = ACTIVATIONS[act]
        self.embed_dim = self.num_features = dim
        self.patch_size = patch_size
        self.kernel_size = kernel_size
        self.num_register_tokens = 0
        self.num_classes = num_classes
        self.n_blocks = depth
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), act_layer(),
                                  nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[convmixer_layer(dim, kernel_size, act_layer) for _ in range(depth)])
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else None

    # ---------------------------------------------------------------------------------------------
    def embed(self, x, mask):
        h, w = self.token_grid(x)
        y = self.stem(x)
        if mask is not None:
            m = mask.reshape(x.shape[0], 1, h, w)
            y = torch.where(m, self.mask_token.to(y.dtype).view(1, -1, 1, 1), y)
        return y

    @staticmethod
    def _tokens(y):
        return y.flatten(2).transpose(1, 2)

    def _features(self, x, mask):
        y = self.blocks(self.embed(x, mask))
        tokens = self._tokens(y)
        cls = tokens.mean(dim=1)
        return {
            "x_norm_clstoken": cls,
            "x_norm_regtokens": tokens.new_zeros(tokens.shape[0], 0, tokens.shape[-1]),
            "x_norm_patchtokens": tokens,
            "x_prenorm": torch.cat([cls.unsqueeze(1), tokens], dim=1),
            "masks": mask,
        }

    def _intermediate(self, x, indices, norm):
        hw = self.token_grid(x)
        y = self.embed(x, None)
        wanted, outs = set(indices), {}
        for i, blk in enumerate(self.blocks[: max(indices) + 1]):
            y = blk(y)
            if i in wanted:
                t = self._tokens(y)
                outs[i] = (t, t.mean(dim=1), hw)
        return [outs[i] for i in indices]

    def layer_id(self, param_name: str) -> int:
        if param_name.startswith(("stem.", "mask_token")):
            return 0
        return super().layer_id(param_name)

    def no_weight_decay_names(self):
        return {"mask_token"}

    def convert_state_dict(self, sd: dict, report) -> dict:
        """timm/locuslab layouts -> octo: identical names; a classifier head the encoder lacks is dropped."""
        sd = dict(sd)
        if "0.weight" in sd and "stem.0.weight" not in sd:  # locuslab's bare nn.Sequential
            sd = _locuslab_to_timm(sd, self.n_blocks)
            report.notes.append("converted locuslab nn.Sequential keys to timm names")
        if "mask_token" not in sd and "stem.0.weight" in sd:  # published classifier weights have no mask token
            sd["mask_token"] = torch.zeros_like(self.mask_token, device="cpu")
            report.notes.append("mask_token absent (published weights): set to zeros, its initial value")
        if self.head is None:
            dropped = [k for k in sd if k.startswith("head.")]
            for k in dropped:
                sd.pop(k)
            if dropped:
                report.ignored.extend(dropped)
                report.notes.append("classifier head dropped (encoder built with num_classes=0)")
        return sd


def _locuslab_to_timm(sd: dict, depth: int) -> dict:
    """locuslab/convmixer ``nn.Sequential`` keys: 0=stem conv, 2=stem BN, 3..3+d-1 layers, 3+d+2 = Linear."""
    out = {}
    for k, v in sd.items():
        idx, rest = k.split(".", 1)
        idx = int(idx)
        if idx in (0, 2):
            out[f"stem.{idx}.{rest}"] = v
        elif 3 <= idx < 3 + depth:
            out[f"blocks.{idx - 3}.{rest}"] = v
        elif idx == 3 + depth + 2:
            out[f"head.{rest}"] = v
        else:
            out[k] = v
    return out


CONVMIXER_CONFIGS = {
    # name: (h, d, k, p, act)            reported params (with its classes)
    "convmixer_1536_20": dict(dim=1536, depth=20, kernel_size=9, patch_size=7, act="gelu"),   # 51.6M, 1000 cls
    "convmixer_768_32": dict(dim=768, depth=32, kernel_size=7, patch_size=7, act="relu"),     # 21.1M, 1000 cls
    "convmixer_1024_20_ks9_p14": dict(dim=1024, depth=20, kernel_size=9, patch_size=14, act="gelu"),  # 24.4M
    "convmixer_256_8": dict(dim=256, depth=8, kernel_size=5, patch_size=2, act="gelu"),       # 0.594M, 10 cls
}

_CONVMIXER_TEST = dict(dim=16, depth=2, kernel_size=3, patch_size=4)


def _make_convmixer(cfg, **overrides):
    kwargs = dict(cfg)
    kwargs.update(overrides)
    return ConvMixer(**kwargs)


for _name, _cfg in CONVMIXER_CONFIGS.items():
    register_encoder(_name, family="convmixer", test_overrides=_CONVMIXER_TEST, test_img_size=16,
                     description=f"ConvMixer-{_cfg['dim']}/{_cfg['depth']} k{_cfg['kernel_size']} "
                                 f"p{_cfg['patch_size']} {_cfg['act']}")(partial(_make_convmixer, _cfg))
