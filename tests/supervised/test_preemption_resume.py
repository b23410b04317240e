"""A stop request mid-epoch saves a checkpoint at that step and exits; the rerun resumes from that step."""
import json
import os

import pytest

from pretrain import preemption
from pretrain.supervised.cifar import load_cifar_config
from pretrain.supervised.engine import train


def test_stop_mid_epoch_checkpoints_and_resumes(tmp_path):
    out = str(tmp_path / "run")
    opts = ["data.train_dataset=digits:split=train:size=16", "data.test_dataset=''", "optim.epochs=1",
            "train.max_iters_per_epoch=4", "train.print_freq=1", "model.kwargs.dim=16", "model.kwargs.depth=1"]
    cfg = load_cifar_config("configs/cifar/digits_small.yaml", opts, out)
    lines = []

    def log_fn(line):  # ask for a stop right after the second training step was logged
        lines.append(line)
        if line.startswith("Epoch [0] [1/4]"):
            preemption.request_stop("test")

    preemption.reset()
    try:
        with pytest.raises(preemption.Preempted):
            train(cfg, None, log_fn=log_fn)
    finally:
        preemption.reset()
    ckpts = os.listdir(os.path.join(out, "checkpoints"))
    # the flag is raised while step 1 is logged; step 2 completes and the loop stops at the next boundary
    assert "iter_00000003" in ckpts and "iter_00000004" not in ckpts
    assert not os.path.exists(os.path.join(out, "results.json"))
    lines.clear()
    cfg = load_cifar_config("configs/cifar/digits_small.yaml", opts, out)
    res = train(cfg, None, log_fn=lines.append)
    steps = [ln.split("]")[1].strip() for ln in lines if ln.startswith("Epoch [0] [")]
    assert steps == ["[3/4"]  # only the remaining step ran
    assert json.load(open(os.path.join(out, "results.json")))["epoch"] == 0 and "val_top1" in res
