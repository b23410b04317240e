"""Bad input and security, end to end through the real launchers (``--local``, CPU, tiny configs).

Every case checks that the error names the problem and the fix (key, file, expected size/layout) and that nothing
was lost or written. To stay fast on 2 cores, one module-scoped fixture trains a tiny run once and starts all the
launcher subprocesses of this module in a small pool (most of them fail within seconds); each test then inspects
its own result. Disk-full is simulated in-process (a monkeypatched writer).
"""
from __future__ import annotations

import errno
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from tests.badinput_helpers import (KNN_DATA, TINY, TINY_ARCH, Runner, describe, launcher, snapshot, truncate_half,
                                    write_images, write_malicious_pth)

TRAIN = ("train_dinov2", "--config-file", TINY, "--local")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train the tiny run once, build every bad input from it, run all launcher cases; return their results."""
    tmp = tmp_path_factory.mktemp("badinput")
    p = SimpleNamespace(tmp=tmp, run=str(tmp / "run"))
    pool = Runner(max_parallel=4)
    base = pool.submit("base", launcher(*TRAIN, "--output-dir", p.run, "optim.epochs=1"))

    # --- cases that need no trained run: start them while the tiny run trains
    for name, override in (("unknown_key", "optim.base_lrr=1"), ("wrong_type", "train.batch_size_per_gpu=abc"),
                           ("crop_not_multiple", "crops.local_crops_size=20"),
                           ("missing_root", "train.dataset_path=imagefolder:root=/nonexistent/octo-data")):
        setattr(p, name, str(tmp / name))
        pool.submit(name, launcher(*TRAIN, "--output-dir", getattr(p, name), override))
    p.outgrid = str(tmp / "outgrid")
    pool.submit("outgrid", launcher("eval_knn", "--local", "--arch", "outgrid_cifar100_7m", "--random-init",
                                    "--train-dataset", "synthetic:n=8:size=24:classes=2", "--test-dataset",
                                    "synthetic:n=4:size=24:classes=2", "--resize", "24", "--crop", "24",
                                    "--batch-size", "4", "--num-workers", "0", "--output-dir", p.outgrid))
    blocker = tmp / "a_regular_file"
    blocker.write_text("not a directory")
    p.unwritable = str(blocker / "out")
    pool.submit("unwritable", launcher(*TRAIN, "--output-dir", p.unwritable))
    # corrupt + zero-byte images, 2 ranks with 1 loader worker each
    p.images, p.bad_files = str(tmp / "images"), ["c0/corrupt.jpg", "c1/empty.jpg"]
    write_images(p.images, 14, {p.bad_files[0]: b"\xff\xd8\xff\xe0 truncated jpeg header", p.bad_files[1]: b""})
    p.corrupt = str(tmp / "corrupt")
    pool.submit("corrupt", launcher(*TRAIN, "--ngpus", "2", "--output-dir", p.corrupt, "optim.epochs=1",
                                    "train.num_workers=1", f"train.dataset_path=imagefolder:root={p.images}",
                                    "train.max_skipped_images=5"))
    # a crafted pickle: a real-looking state dict plus an object whose unpickling creates a marker file
    from pretrain.models import build_encoder

    sd = build_encoder("vit_small", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32).state_dict()
    p.marker_eval, p.marker_train = str(tmp / "PWNED_eval"), str(tmp / "PWNED_train")
    p.evil_eval = write_malicious_pth(str(tmp / "evil_eval.pth"), p.marker_eval, sd)
    p.evil_train = write_malicious_pth(str(tmp / "evil_train.pth"), p.marker_train, sd)
    pool.submit("evil_eval", launcher("eval_knn", "--local", *TINY_ARCH, "--weights", p.evil_eval, *KNN_DATA,
                                      "--output-dir", str(tmp / "evil_eval_out")))
    p.evil_train_out = str(tmp / "evil_train_out")
    pool.submit("evil_train", launcher(*TRAIN, "--output-dir", p.evil_train_out,
                                       f"student.pretrained_weights={p.evil_train}"))

    # --- cases built from the trained run
    r = base.result()
    assert r.returncode == 0, describe(r)
    p.teacher = os.path.join(p.run, "teacher_backbone.safetensors")
    pool.submit("deeper_eval", launcher("eval_knn", "--local", "--arch", "vit_small", "--arch-kwargs",
                                        "embed_dim=32", "depth=4", "num_heads=2", "patch_size=8", "img_size=32",
                                        "--weights", p.teacher, *KNN_DATA, "--output-dir", str(tmp / "deeper")))
    p.deeper_run = str(tmp / "deeper_run")
    shutil.copytree(p.run, p.deeper_run)
    p.deeper_before = snapshot(p.deeper_run)
    pool.submit("deeper_resume", launcher(*TRAIN, "--output-dir", p.deeper_run, "optim.epochs=2",
                                          "student.extra.depth=3"))
    p.trunc_st = str(tmp / "trunc_teacher.safetensors")
    shutil.copy(p.teacher, p.trunc_st)
    truncate_half(p.trunc_st)
    from safetensors.torch import load_file

    p.trunc_pth = str(tmp / "trunc_teacher.pth")
    torch.save(load_file(p.teacher), p.trunc_pth)
    truncate_half(p.trunc_pth)
    for name, path in (("trunc_safetensors", p.trunc_st), ("trunc_pth", p.trunc_pth)):
        pool.submit(name, launcher("eval_knn", "--local", *TINY_ARCH, "--weights", path, *KNN_DATA,
                                   "--output-dir", str(tmp / f"{name}_out")))
    p.trunc_run = str(tmp / "trunc_run")
    shutil.copytree(p.run, p.trunc_run)
    p.shard = os.path.join(p.trunc_run, "checkpoints", "iter_00000004", "__0_0.distcp")
    truncate_half(p.shard)
    p.trunc_before = snapshot(p.trunc_run)
    p.export_out = str(tmp / "exported.safetensors")
    pool.submit("trunc_export", launcher("export", "--checkpoint", p.trunc_run, "--output", p.export_out))
    results = pool.results()  # the export must run before the resume: both read the truncated shard
    pool = Runner(max_parallel=1)
    pool.submit("trunc_resume", launcher(*TRAIN, "--output-dir", p.trunc_run, "optim.epochs=2"))
    results.update(pool.results())
    p.r = results
    return p


def _failed(r, *needles):
    """The run failed and its stderr contains every needle (case-sensitive)."""
    assert r.returncode != 0, describe(r)
    for n in needles:
        assert n in r.stderr, f"{n!r} not in the error output:\n{describe(r)}"


# ---------------------------------------------------------------------------------------------------- config
def test_unknown_config_key(runs):
    r = runs.r["unknown_key"]
    assert r.returncode == 2, describe(r)
    _failed(r, "unknown config key 'optim.base_lrr'", "did you mean 'optim.base_lr'")
    assert not os.path.exists(runs.unknown_key)  # rejected before the launcher created anything


def test_wrong_type(runs):
    r = runs.r["wrong_type"]
    assert r.returncode == 2, describe(r)
    _failed(r, "'train.batch_size_per_gpu'", "'abc'", "expected type int")
    assert not os.path.exists(runs.wrong_type)


def test_crop_size_not_multiple_of_patch_size(runs):
    r = runs.r["crop_not_multiple"]
    assert r.returncode == 2, describe(r)
    _failed(r, "crops.local_crops_size=20", "student.patch_size=8", "16 or 24")
    assert not os.path.exists(runs.crop_not_multiple)


def test_grid_constrained_encoder_names_stage_and_grid_size(runs):
    # outgrid_cifar100_7m: patch (total stride) 8, grid_sizes (8, 8, 4, 2): 24 px passes the patch check but stage 1
    # runs at 12x12, not a multiple of its 8x8 grid; valid sizes are multiples of 16
    _failed(runs.r["outgrid"], "stage 1 runs at 12x12", "grid_size=8", "multiples of 16")
    assert not os.path.exists(os.path.join(runs.outgrid, "results_eval_knn.json"))


# ---------------------------------------------------------------------------------------------------- data
def test_missing_dataset_root_fails_before_training(runs):
    _failed(runs.r["missing_root"], "'/nonexistent/octo-data' does not exist", "Expected layout: root/<class>/")
    assert "[1/" not in runs.r["missing_root"].stdout  # no iteration ran
    left = os.listdir(runs.missing_root) if os.path.isdir(runs.missing_root) else []
    assert "checkpoints" not in left and "config.yaml" not in left and "metrics.jsonl" not in left, left


def test_corrupt_and_empty_images_counted_across_ranks_and_workers(runs):
    import json

    r = runs.r["corrupt"]
    assert r.returncode == 0, describe(r)
    with open(os.path.join(runs.corrupt, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    assert [x["iteration"] for x in recs] == [1, 2, 3, 4]
    # the stream of 2 ranks x 4 images x 4 iterations covers all 16 files, so both bad ones are met (on some rank)
    assert recs[-1]["skipped_images"] == len(runs.bad_files) == 2
    assert all(torch.isfinite(torch.tensor(x["total_loss"])) for x in recs)
    logged = r.stdout + r.stderr
    for bad in runs.bad_files:
        assert os.path.basename(bad) in logged, f"{bad} not reported:\n{describe(r)}"


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_eval_with_other_architecture_reports_strict_mismatch(runs):
    _failed(runs.r["deeper_eval"], "strict loading failed", "missing in checkpoint", "blocks.2.attn.qkv.weight",
            "blocks.3.", "the checkpoint has 2 blocks", "has 4")


def test_resume_with_other_architecture_fails_without_touching_the_run(runs):
    from pretrain.checkpoint import Checkpointer

    _failed(runs.r["deeper_resume"], "does not match the model (strict)", "iter_00000004", "missing in checkpoint",
            "blocks.2.", "student.arch")
    assert snapshot(runs.deeper_run) == runs.deeper_before  # checkpoints, config.yaml, metrics: all untouched
    ck = Checkpointer(os.path.join(runs.deeper_run, "checkpoints"), create=False)
    assert ck.latest().endswith("iter_00000004") and len(ck.list()) == 2


@pytest.mark.parametrize("case,attr", [("trunc_safetensors", "trunc_st"), ("trunc_pth", "trunc_pth")])
def test_truncated_weights_file_is_named(runs, case, attr):
    _failed(runs.r[case], getattr(runs, attr), "truncated")


def test_truncated_dcp_shard_export_and_resume(runs):
    from pretrain.checkpoint import Checkpointer

    ckpts = os.path.join(runs.trunc_run, "checkpoints")
    for case in ("trunc_export", "trunc_resume"):
        _failed(runs.r[case], os.path.join(ckpts, "iter_00000004"), "truncated", "__0_0.distcp",
                os.path.join(ckpts, "iter_00000002"))
    assert not os.path.exists(runs.export_out)
    # no fallback behind the user's back, nothing deleted or rewritten (the truncated shard is still there)
    assert snapshot(runs.trunc_run) == runs.trunc_before
    assert [os.path.basename(c) for c in Checkpointer(ckpts, create=False).list()] == ["iter_00000002",
                                                                                      "iter_00000004"]


# ---------------------------------------------------------------------------------------------------- output dir
def test_unwritable_output_dir_fails_before_any_work(runs):
    # a path below a regular file: not creatable even for root (permission bits would not stop root)
    r = runs.r["unwritable"]
    _failed(r, f"--output-dir {runs.unwritable} is not writable", "pass a writable --output-dir")
    assert "[1/" not in r.stdout and not os.path.exists(runs.unwritable)


@pytest.fixture
def fresh_dist():
    from pretrain import distributed as D

    D.shutdown()
    yield
    D.shutdown()


def test_disk_full_during_second_save_keeps_previous_checkpoint(tmp_path, monkeypatch, fresh_dist):
    from torch.distributed.checkpoint import FileSystemWriter

    from pretrain.checkpoint import Checkpointer, CheckpointError
    from pretrain.dinov2.config import load_ssl_config
    from pretrain.dinov2.meta_arch import SSLMetaArch
    from pretrain.dinov2.train import run

    out = str(tmp_path / "full")
    cfg = load_ssl_config(TINY, [f"train.output_dir={out}", "optim.epochs=1"], world_size=1)
    saved = []
    real_save, real_write = Checkpointer.save, FileSystemWriter.write_data

    def recording_save(self, iteration, models, optimizers=None, extra=None):
        saved.append({k: v.detach().clone() for k, v in models["model"].state_dict().items()})
        return real_save(self, iteration, models, optimizers, extra)

    def write_data(self, *args, **kwargs):
        if len(saved) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", recording_save)
    monkeypatch.setattr(FileSystemWriter, "write_data", write_data)
    ckpts = os.path.join(out, "checkpoints")
    with pytest.raises(CheckpointError) as ei:
        run(cfg)
    msg = str(ei.value)
    previous = os.path.join(ckpts, "iter_00000002")
    assert "ENOSPC" in msg and "iteration 4" in msg and f"previous checkpoint {previous} is intact" in msg, msg
    monkeypatch.undo()
    assert len(saved) == 2 and sorted(os.listdir(ckpts)) == ["iter_00000002", "latest"]  # no partial tmp dir left
    ck = Checkpointer(ckpts, create=False)
    assert ck.latest() == previous
    torch.manual_seed(123)  # a different initialisation: every tensor must come from the checkpoint
    fresh = SSLMetaArch(cfg)
    assert ck.load(ck.latest(), {"model": fresh})["iteration"] == 2
    got = fresh.state_dict()
    assert got.keys() == saved[0].keys()
    for k, v in saved[0].items():
        assert torch.equal(got[k], v), k
    assert any(not torch.equal(saved[0][k], saved[1][k]) for k in saved[0])  # the lost save held other weights


# ---------------------------------------------------------------------------------------------------- security
def test_payload_would_run_if_unpickled(tmp_path):
    """Control: the crafted file really executes its payload under a plain (unsafe) ``torch.load``."""
    marker = str(tmp_path / "PWNED_control")
    path = write_malicious_pth(str(tmp_path / "control.pth"), marker, {"w": torch.zeros(1)})
    torch.load(path, weights_only=False)
    assert os.path.exists(marker)


def test_malicious_pickle_refused_by_eval_and_training(runs):
    _failed(runs.r["evil_eval"], runs.evil_eval, "refuses to unpickle")
    _failed(runs.r["evil_train"], runs.evil_train, "refuses to unpickle")
    assert not os.path.exists(runs.marker_eval) and not os.path.exists(runs.marker_train)
    assert not os.path.exists(os.path.join(runs.evil_train_out, "checkpoints", "iter_00000002"))
