"""Backbone export: plain safetensors that load strictly and give identical outputs; the export launcher;
clear errors for truncated weight files."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from _infra_workers import MetaArch
from pretrain.checkpoint import Checkpointer, CheckpointError, clean_key, export_backbone, read_safetensors
from pretrain.models import StrictLoadError, build_encoder, load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KW = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)


def _enc(seed):
    torch.manual_seed(seed)
    return build_encoder("vit_small", **KW).eval()


def test_export_roundtrip_identical_outputs(tmp_path):
    src, dst = _enc(0), _enc(1)
    wrapped = torch.nn.Module()
    wrapped.module = src  # DDP-style "module." prefix must not reach the file
    path = export_backbone(wrapped, str(tmp_path / "bb.safetensors"))
    keys = list(load_file(path))
    assert "blocks.0.attn.qkv.weight" in keys and not any("_orig_mod" in k or "module." in k for k in keys)
    assert set(keys) == set(src.state_dict())
    report = load_pretrained(dst, path, strict=True)
    assert report.ok
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
        assert torch.equal(src.forward_features(x)["x_norm_patchtokens"], dst.forward_features(x)["x_norm_patchtokens"])
    assert [f for f in os.listdir(tmp_path)] == ["bb.safetensors"]  # no tmp file left


def test_clean_key():
    assert clean_key("_orig_mod.module.blocks.0._fsdp_wrapped_module.attn.qkv.weight") == "blocks.0.attn.qkv.weight"


def test_export_launcher_from_training_dir(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "launchers"))
    try:
        import export as export_launcher
    finally:
        sys.path.pop(0)
    meta = MetaArch()
    with torch.no_grad():  # make teacher and student differ
        for p in meta.student.parameters():
            p.add_(0.5)
    Checkpointer(str(tmp_path / "run" / "checkpoints")).save(4, {"model": meta}, extra={"iteration": 4})
    kwargs = [f"{k}={v}" for k, v in KW.items()]
    for which in ("teacher", "student"):
        out = str(tmp_path / f"{which}.safetensors")
        export_launcher.main(["--checkpoint", str(tmp_path / "run"), "--output", out, "--which", which,
                              "--arch", "vit_small", "--arch-kwargs", *kwargs, "--check"])
        assert "all keys matched" in capsys.readouterr().out
        expect = meta.teacher["backbone"] if which == "teacher" else meta.student["backbone"]
        got = load_file(out)
        assert set(got) == set(expect.state_dict())
        for k, v in expect.state_dict().items():
            assert torch.equal(got[k], v), k
    with pytest.raises(SystemExit, match="--check needs"):
        export_launcher.main(["--checkpoint", str(tmp_path / "run"), "--output", out, "--check"])
    # a wrong architecture is reported, not silently loaded
    with pytest.raises(StrictLoadError, match="blocks"):
        export_launcher.main(["--checkpoint", str(tmp_path / "run"), "--output", out, "--arch", "vit_small",
                              "--arch-kwargs", *kwargs[:1], "depth=3", *kwargs[2:]])


def test_truncated_files_give_clear_errors(tmp_path):
    enc = _enc(0)
    st = export_backbone(enc, str(tmp_path / "w.safetensors"))
    pth = str(tmp_path / "w.pth")
    torch.save(enc.state_dict(), pth)
    for path in (st, pth):
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    with pytest.raises(StrictLoadError, match="w.pth.*truncated"):
        load_pretrained(_enc(1), pth)
    with pytest.raises(CheckpointError, match="w.safetensors.*truncated"):
        read_safetensors(st)
