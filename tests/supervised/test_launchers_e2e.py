"""End to end: the DeiT III launcher with 2 local gloo processes, and train_cifar on digits on CPU (+ resume)."""
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def _records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_deit3_launcher_two_local_processes(tmp_path):
    out = str(tmp_path / "deit3")
    log = _run(["launchers/train_deit3.py", "--config-file", "configs/deit3/tiny_cpu.yaml", "--local", "--ngpus", "2",
                "--output-dir", out, "optim.epochs=2", "train.max_iters_per_epoch=2"])
    assert "2 process(es)" in log
    ckpts = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert "iter_00000002" in ckpts and "iter_00000004" in ckpts
    for f in ("best_model.safetensors", "best_model_ema.safetensors", "last_model.safetensors", "config.yaml",
              "results.json", "best.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    evals = [r for r in _records(out) if r.get("event") == "eval"]
    assert [r["epoch"] for r in evals] == [0, 1]
    assert all("val_top1_ema" in r and "val_top5" in r for r in evals)
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["test_n"] == 360 and 0 <= res["test_top1"] <= 100  # test split counted once (no duplicates)
    train_lines = [r for r in _records(out) if "loss" in r]
    assert train_lines and all(r["loss"] == r["loss"] for r in train_lines)


def test_train_cifar_digits_one_short_epoch_and_resume(tmp_path):
    from pretrain.models import build_encoder, load_pretrained
    from pretrain.supervised.cifar import load_cifar_config
    from pretrain.supervised.config import model_kwargs
    from pretrain.supervised.engine import build_datasets, evaluate

    out = str(tmp_path / "cifar")
    opts = ["data.train_dataset=digits:split=train:size=16", "data.test_dataset=digits:split=test:size=16",
            "optim.epochs=1", "train.max_iters_per_epoch=6", "ema.decay=0.5", "ema.warmup=false",
            "train.eval_robustness=true", "train.robustness_corruptions=[gaussian_noise,pixelate]",
            "train.robustness_severities=[1,5]"]
    log = _run(["launchers/train_cifar.py", "--config-file", "configs/cifar/digits_small.yaml", "--output-dir", out]
               + opts)
    assert "1 process(es) on cpu" in log and "amp fp32" in log
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["test_n"] == 360 and "robustness_mean_top1" in res
    assert set(res["robustness_per_corruption"]) == {"gaussian_noise", "pixelate"}
    last_eval = [r for r in _records(out) if r.get("event") == "eval"][-1]
    # the reported EMA accuracy is the accuracy of the EMA weights (re-evaluated here independently) ...
    cfg = load_cifar_config("configs/cifar/digits_small.yaml", opts, out)
    data = build_datasets(cfg)
    loader = torch.utils.data.DataLoader(data.val, batch_size=50)
    accs = {}
    for name in ("last_model", "last_model_ema"):
        m = build_encoder(cfg.model.arch, **model_kwargs(cfg, 10))
        load_pretrained(m, os.path.join(out, f"{name}.safetensors"), strict=True)
        accs[name] = evaluate(m, loader, torch.device("cpu"))["top1"]
    assert abs(accs["last_model_ema"] - last_eval["val_top1_ema"]) < 1e-6
    assert abs(accs["last_model"] - last_eval["val_top1"]) < 1e-6
    # ... and the EMA weights differ from the raw ones
    from safetensors.torch import load_file
    raw = load_file(os.path.join(out, "last_model.safetensors"))
    ema = load_file(os.path.join(out, "last_model_ema.safetensors"))
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    # resume: a longer schedule continues from the saved epoch instead of starting over
    log2 = _run(["launchers/train_cifar.py", "--config-file", "configs/cifar/digits_small.yaml", "--output-dir", out]
                + opts[:2] + ["optim.epochs=2"] + opts[3:6])
    assert "[resume]" in log2 and "epoch 1" in log2
    assert [r["epoch"] for r in _records(out) if r.get("event") == "eval"] == [0, 1]
    assert [r.get("event") for r in _records(out) if "event" in r][-1] == "final"
