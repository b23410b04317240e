"""Checkpointer: resharding save/load (world 2 <-> world 1), pruning, crash safety, clear errors, no pickle."""
from __future__ import annotations

import errno
import os
import random

import numpy as np
import pytest
import torch

from _infra_workers import MetaArch, data, full_optim_state, full_state, meta_steps, world2_results
from pretrain.checkpoint import (Checkpointer, CheckpointError, check_writable, load_model_state_from_checkpoint)


def _assert_same(a: dict, b: dict, what: str):
    assert set(a) == set(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def _trained(seed=0, steps=2):
    torch.manual_seed(seed)
    meta = MetaArch()
    opt = torch.optim.AdamW(meta.student.parameters(), lr=1e-2)
    meta_steps(meta, opt, data(8, seed=3)[0], steps)
    return meta, opt


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    """World-2 run (see _infra_workers.ckpt_worker) after a world-1 checkpoint was written in this process."""
    r = world2_results(str(tmp_path_factory.mktemp("world2")))
    return r["out"], r["ckpt"], r["ref_w1"]


def test_world2_save_load_world2(world2):
    out, res, _ = world2
    _assert_same(res["ref"]["model"], res["got"]["model"], "model after world-2 reload")
    _assert_same(res["ref"]["optim"], res["got"]["optim"], "optimizer after world-2 reload")
    # resuming continues exactly like the uninterrupted run
    assert torch.equal(res["next_loss"], res["resumed_loss"])
    assert float(res["extra_scale"]) == 1024.0
    for r in range(2):  # every rank restored its own RNG stream
        rng = torch.load(os.path.join(out, f"rng_{r}.pt"), weights_only=True)
        assert torch.equal(rng["after_save"], rng["after_load"])


def test_world2_checkpoint_loads_in_one_process_without_process_group(world2):
    out, res, _ = world2
    assert not torch.distributed.is_initialized()
    torch.manual_seed(5)
    meta = MetaArch()
    opt = torch.optim.AdamW(meta.student.parameters(), lr=1e-4)
    extra = Checkpointer(os.path.join(out, "w2")).load(os.path.join(out, "w2"), {"model": meta}, {"optimizer": opt})
    assert extra == {"iteration": 2, "scaler": {"scale": 1024.0}}
    _assert_same(res["ref"]["model"], full_state(meta), "model world 2 -> 1")
    _assert_same(res["ref"]["optim"], full_optim_state(meta, opt), "optimizer world 2 -> 1")
    # the same next step as the sharded run (full batch = both ranks' halves)
    loss = meta_steps(meta, opt, data(8, seed=3)[0], steps=1)[0]
    assert abs(loss - float(res["next_loss"][0])) < 1e-5


def test_world1_checkpoint_loads_in_world2(world2):
    _, res, ref_w1 = world2
    _assert_same(ref_w1["model"], res["got_w1"]["model"], "model world 1 -> 2")
    _assert_same(ref_w1["optim"], res["got_w1"]["optim"], "optimizer world 1 -> 2")


def test_sharded_export_matches_full_teacher(world2):
    from safetensors.torch import load_file

    out, res, _ = world2
    _assert_same(res["teacher_full"], load_file(os.path.join(out, "teacher_w2.safetensors")), "exported teacher")
    sd = load_model_state_from_checkpoint(out + "/w2", prefer="teacher")
    assert set(sd) == set(res["teacher_full"]) and "blocks.0.attn.qkv.weight" in sd


def test_keep_last_n_and_latest(tmp_path):
    meta, opt = _trained(steps=1)
    ck = Checkpointer(str(tmp_path), max_to_keep=2)
    paths = [ck.save(it, {"model": meta}, {"optimizer": opt}, extra={"iteration": it}) for it in (10, 20, 30)]
    assert ck.list() == paths[1:] and ck.latest() == paths[2]
    assert sorted(os.listdir(tmp_path)) == ["iter_00000020", "iter_00000030", "latest"]
    assert open(tmp_path / "latest").read().strip() == "iter_00000030"
    # re-saving an existing iteration replaces it
    assert ck.save(30, {"model": meta}, {"optimizer": opt}, extra={"iteration": 31}) == paths[2]
    assert ck.load(ck.latest(), {"model": meta})["iteration"] == 31


def test_latest_ignores_tmp_and_incomplete_dirs(tmp_path):
    meta, opt = _trained(steps=1)
    ck = Checkpointer(str(tmp_path))
    good = ck.save(5, {"model": meta}, {"optimizer": opt}, extra={"iteration": 5})
    (tmp_path / "tmp-iter_00000009-abcd").mkdir()  # a save killed mid-way
    (tmp_path / "tmp-iter_00000009-abcd" / ".metadata").write_bytes(b"\0\1")
    half = tmp_path / "iter_00000008"  # renamed by hand / no COMPLETE marker
    half.mkdir()
    (half / ".metadata").write_bytes(b"x")
    assert ck.latest() == good and ck.list() == [good]
    with pytest.raises(CheckpointError, match="incomplete"):
        ck.load(str(half), {"model": meta})


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["dcp_write", "rename", "extra"])
def test_disk_full_during_save_keeps_previous(tmp_path, monkeypatch, where):
    from torch.distributed.checkpoint import FileSystemWriter

    meta, opt = _trained(steps=1)
    ck = Checkpointer(str(tmp_path))
    prev = ck.save(1, {"model": meta}, {"optimizer": opt}, extra={"iteration": 1})
    before = full_state(meta)
    meta_steps(meta, opt, data(8, seed=3)[0], 1)
    if where == "dcp_write":
        monkeypatch.setattr(FileSystemWriter, "write_data", _disk_full)
    elif where == "rename":
        real = os.rename
        monkeypatch.setattr(os, "rename", lambda a, b: _disk_full() if "tmp-iter" in str(a) else real(a, b))
    else:
        import pretrain.checkpoint as C

        real_w = C._write_bytes
        monkeypatch.setattr(C, "_write_bytes", lambda p, d: _disk_full() if p.endswith("extra.json") else real_w(p, d))
    with pytest.raises(CheckpointError) as ei:
        ck.save(2, {"model": meta}, {"optimizer": opt}, extra={"iteration": 2})
    msg = str(ei.value)
    assert "Errno 28" in msg and "ENOSPC" in msg and f"previous checkpoint {prev} is intact" in msg, msg
    monkeypatch.undo()
    assert ck.latest() == prev
    assert sorted(os.listdir(tmp_path)) == ["iter_00000001", "latest"]  # tmp dir cleaned up
    fresh = MetaArch()
    assert ck.load(ck.latest(), {"model": fresh})["iteration"] == 1
    _assert_same(before, full_state(fresh), "previous checkpoint after a failed save")


def test_rng_restored_and_fallback(tmp_path):
    meta, _ = _trained(steps=0)
    ck = Checkpointer(str(tmp_path))
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = ck.save(7, {"model": meta})
    expect = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    ck.load(path, {"model": meta})
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])
    # a rank without a saved RNG file (more ranks than saved): deterministic, and not rank 0's stream
    os.remove(os.path.join(path, "rng_rank_00000.pt"))
    ck.load(path, {"model": meta})
    a = torch.rand(2)
    ck.load(path, {"model": meta})
    assert torch.equal(a, torch.rand(2)) and not torch.equal(a, expect[2])


def test_clear_errors(tmp_path):
    meta, _ = _trained(steps=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="not writable"):
        check_writable(str(blocker / "out"))
    with pytest.raises(CheckpointError, match="plain data"):
        Checkpointer(str(tmp_path / "c")).save(1, {"model": meta}, extra={"bad": object()})
    assert not os.listdir(tmp_path / "c")
    path = Checkpointer(str(tmp_path / "c")).save(1, {"model": meta})
    # strict: a model with another depth does not load silently
    from pretrain.models import build_encoder

    deeper = torch.nn.Module()
    deeper.teacher = torch.nn.ModuleDict({"backbone": build_encoder("vit_small", embed_dim=32, depth=3, num_heads=2,
                                                                    patch_size=8, img_size=32)})
    with pytest.raises(CheckpointError, match="missing in checkpoint.*blocks.2"):
        Checkpointer(str(tmp_path / "c")).load(path, {"model": deeper})
    # a truncated DCP data file
    data_file = next(f for f in os.listdir(path) if f.endswith(".distcp"))
    with open(os.path.join(path, data_file), "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match=path):
        Checkpointer(str(tmp_path / "c")).load(path, {"model": meta})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_state_from_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_model_state_from_checkpoint(str(tmp_path))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


def test_malicious_pickle_refused(tmp_path):
    from pretrain.models import StrictLoadError, build_encoder, load_pretrained

    marker = str(tmp_path / "PWNED")
    evil = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Evil(marker)}, evil)
    enc = build_encoder("vit_small", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
    with pytest.raises(StrictLoadError, match="refuses to unpickle"):
        load_pretrained(enc, evil)
    # inside a checkpoint: RNG file and extra tensors are read weights-only too
    meta, _ = _trained(steps=0)
    ck = Checkpointer(str(tmp_path / "c"))
    path = ck.save(1, {"model": meta}, extra={"t": torch.ones(1)})
    for name in ("rng_rank_00000.pt", "extra_tensors.pt"):
        good = open(os.path.join(path, name), "rb").read()
        os.replace(evil, os.path.join(path, name)) if os.path.exists(evil) else None
        torch.save({"x": _Evil(marker)}, os.path.join(path, name))
        with pytest.raises(CheckpointError, match="refuses to unpickle"):
            ck.load(path, {"model": meta})
        open(os.path.join(path, name), "wb").write(good)
    assert not os.path.exists(marker)
