"""End-to-end DINOv2 engine tests on CPU: resume equality, resharding, corrupt data, NaN guard, launcher."""
import json
import os

import pytest
import torch

from pretrain.dinov2.config import load_ssl_config
from pretrain.models import build_encoder, load_pretrained

from .conftest import TINY, run_launcher


def _losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["iteration"]: r["total_loss"] for r in recs if "total_loss" in r}


def _cfg(out, *extra):
    return load_ssl_config(TINY, [f"train.output_dir={out}", *extra], world_size=1)


def _teacher(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_resume_equals_uninterrupted(tmp_path, fresh_dist):
    from pretrain.dinov2.train import run

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run(_cfg(a))
    from pretrain import distributed as D

    D.shutdown()
    assert run(_cfg(b, "train.stop_at_iteration=3")) == {"stopped_at": 3}
    D.shutdown()
    run(_cfg(b))  # the same command again resumes from iteration 3
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == list(range(1, 9)) and sorted(lb) == list(range(1, 9))
    for it in la:
        assert la[it] == pytest.approx(lb[it], rel=1e-6, abs=1e-7), f"iteration {it}: {la[it]} vs {lb[it]}"
    ta, tb = _teacher(os.path.join(a, "teacher_backbone.safetensors")), _teacher(
        os.path.join(b, "teacher_backbone.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-6)


def test_two_process_fsdp_then_reshard_to_one(tmp_path):
    out = str(tmp_path / "r")
    r = run_launcher("--config-file", TINY, "--output-dir", out, "--local", "--ngpus", "2",
                     "train.stop_at_iteration=4")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert os.path.isdir(os.path.join(out, "checkpoints", "iter_00000004"))
    # the 2-rank checkpoint resumes as 1 rank and finishes
    r = run_launcher("--config-file", TINY, "--output-dir", out, "--local", "--ngpus", "1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at iteration 4" in r.stdout
    with open(os.path.join(out, "log.txt")) as f:  # the console progress is mirrored into the output dir
        log = f.read()
    assert "at iteration 4" in log and "[8/8]" in log and "img/s" in log
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 9))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    # the exported teacher loads strictly into the architecture of the config
    cfg = load_ssl_config(TINY, [], world_size=1)
    from pretrain.dinov2.meta_arch import backbone_kwargs

    model = build_encoder(cfg.student.arch, **backbone_kwargs(cfg, teacher=True))
    assert load_pretrained(model, os.path.join(out, "teacher_backbone.safetensors")).ok
    # ... and so does the training checkpoint directory itself
    assert load_pretrained(build_encoder(cfg.student.arch, **backbone_kwargs(cfg, teacher=True)), out).ok


def test_one_process_checkpoint_resumes_on_two(tmp_path):
    out = str(tmp_path / "s")
    r = run_launcher("--config-file", TINY, "--output-dir", out, "--local", "train.stop_at_iteration=2")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_launcher("--config-file", TINY, "--output-dir", out, "--local", "--ngpus", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "at iteration 2" in r.stdout
    assert sorted(_losses(out)) == list(range(1, 9))


def _write_images(root, n_good, corrupt_names):
    from PIL import Image
    import numpy as np

    os.makedirs(os.path.join(root, "c0"), exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(os.path.join(root, "c0", f"{i}.jpg"))
    for name, data in corrupt_names.items():
        with open(os.path.join(root, "c0", name), "wb") as f:
            f.write(data)


def test_corrupt_and_empty_images_are_skipped_and_counted(tmp_path, fresh_dist):
    from pretrain.dinov2.train import run

    root = str(tmp_path / "imgs")
    _write_images(root, 14, {"bad.jpg": b"not a jpeg at all", "empty.jpg": b""})
    out = str(tmp_path / "o")
    summary = run(_cfg(out, f"train.dataset_path=imagefolder:root={root}", "train.max_skipped_images=5",
                       "optim.epochs=1"))
    assert summary["skipped_images"] == 2
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert json.loads(f.readlines()[-1])["skipped_images"] == 2


def test_too_many_corrupt_images_abort_cleanly(tmp_path, fresh_dist):
    from pretrain.data.robust import TooManySkippedImagesError
    from pretrain.dinov2.train import run

    root = str(tmp_path / "imgs")
    _write_images(root, 6, {f"bad{i}.jpg": b"junk" for i in range(6)})
    with pytest.raises(TooManySkippedImagesError, match="max_skipped"):
        run(_cfg(str(tmp_path / "o"), f"train.dataset_path=imagefolder:root={root}", "train.max_skipped_images=2"))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, fresh_dist, monkeypatch):
    from pretrain.dinov2 import meta_arch
    from pretrain.dinov2.train import NonFiniteLossError, run

    out = str(tmp_path / "n")
    real = meta_arch.SSLMetaArch.forward_backward
    calls = {"n": 0}

    def poisoned(self, batch, teacher_temp, loss_scaler=None):
        calls["n"] += 1
        losses = real(self, batch, teacher_temp, loss_scaler)
        if calls["n"] == 3:
            losses["total_loss"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(meta_arch.SSLMetaArch, "forward_backward", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at iteration 2.*iter_00000002"):
        run(_cfg(out))
    ckpts = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert "iter_00000002" in ckpts and "iter_00000004" not in ckpts
    from pretrain.checkpoint import Checkpointer

    assert Checkpointer(os.path.join(out, "checkpoints")).latest().endswith("iter_00000002")


def test_launcher_rejects_bad_config_before_running(tmp_path):
    r = run_launcher("--config-file", TINY, "--output-dir", str(tmp_path / "x"), "--local", "optim.base_lrr=1")
    assert r.returncode == 2
    assert "optim.base_lrr" in r.stderr and "optim.base_lr" in r.stderr
    assert not os.path.exists(tmp_path / "x" / "checkpoints")


def test_any_encoder_trains_in_the_recipe(tmp_path, fresh_dist):
    """A non-ViT encoder is a valid student/teacher (iBOT masking included)."""
    from pretrain.dinov2.train import run
    from pretrain.models import list_encoders

    if "convmixer_256_8" not in list_encoders():
        pytest.fail("convmixer_256_8 should be registered")
    from omegaconf import OmegaConf

    raw = OmegaConf.load(TINY)
    raw.student = {"arch": "convmixer_256_8", "patch_size": 2, "drop_path_rate": 0.0, "extra": {"dim": 32, "depth": 2}}
    raw.crops.global_crops_size, raw.crops.local_crops_size = 16, 8
    raw.optim.epochs = 1
    f = tmp_path / "cm.yaml"
    OmegaConf.save(raw, f)
    out = str(tmp_path / "cm")
    s = run(load_ssl_config(str(f), [f"train.output_dir={out}"], world_size=1))
    assert s["iterations"] == 4
    assert _losses(out) and all(v == v for v in _losses(out).values())


def test_hybrid_octic_student_on_two_fsdp_ranks_stays_equivariant(tmp_path):
    """The octic blocks (packed D8Tokens, hand-written backwards) train under FSDP2 on 2 ranks and resume on 1; the
    exported teacher's octic trunk is still exactly D8-equivariant (frozen zero token entries stayed zero)."""
    out = str(tmp_path / "octic")
    arch = ["student.arch=hybrid_vit_small", "student.drop_path_rate=0.1"]
    r = run_launcher("--config-file", TINY, "--output-dir", out, "--local", "--ngpus", "2",
                     "train.stop_at_iteration=4", *arch)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = run_launcher("--config-file", TINY, "--output-dir", out, "--local", "--ngpus", "1", *arch)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "at iteration 4" in r.stdout
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 9)) and all(v == v for v in losses.values())

    from pretrain.dinov2.meta_arch import backbone_kwargs
    from pretrain.models.octic import group as G

    cfg = load_ssl_config(TINY, arch, world_size=1)
    model = build_encoder(cfg.student.arch, **backbone_kwargs(cfg, teacher=True)).eval()
    assert load_pretrained(model, os.path.join(out, "teacher_backbone.safetensors")).ok
    assert model.octic_equi_break_layer == 1
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.octic_trunk_features(img)
        for g in G.ELEMENTS:
            moved = G.token_action(g, ref, (4, 4), n_prefix=1)
            got = model.octic_trunk_features(G.image_action(g, img))
            assert max((a - b).abs().max().item() for a, b in zip(got, moved)) < 1e-4, g


def test_bf16_autocast_on_cpu_trains(tmp_path, fresh_dist):
    """``param_dtype: bf16`` on one CPU process runs the step under CPU autocast: the hand-written head and loss
    backwards must handle bf16 activations against fp32 weights (they did not: dtype mismatch in the prototype
    backward) and the losses stay finite."""
    from pretrain.dinov2.train import run

    out = str(tmp_path / "bf16")
    s = run(_cfg(out, "compute_precision.student.backbone.mixed_precision.param_dtype=bf16",
                 "train.stop_at_iteration=3"))
    assert s == {"stopped_at": 3}
    losses = _losses(out)
    assert sorted(losses) == [1, 2, 3] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
