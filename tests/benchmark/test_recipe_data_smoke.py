"""Recipe-step breakdown and augmentation throughput on tiny configs: every phase present and consistent."""
import math

import pytest

from pretrain.benchmark.data_pipeline import augmentation_throughput
from pretrain.benchmark.recipe_step import dinov2_step_breakdown, ssl_config, supervised_step_breakdown

TINY = ["distributed.strategy=none", "train.batch_size_per_gpu=2", "student.extra.embed_dim=16",
        "student.extra.depth=1", "student.extra.num_heads=2", "crops.local_crops_number=2",
        "dino.head_n_prototypes=32", "dino.head_hidden_dim=16", "dino.head_bottleneck_dim=8",
        "ibot.head_n_prototypes=32", "ibot.head_hidden_dim=16", "ibot.head_bottleneck_dim=8"]


def test_dinov2_step_breakdown_tiny():
    r = dinov2_step_breakdown(ssl_config("configs/quickstart.yaml", TINY), repeats=2, warmup=1)
    ph = r["phases_s"]
    parts = ["data (collate + masks)", "other (zero_grad, batch split)", "teacher backbone fwd",
             "teacher heads + centering", "student backbone fwd", "student heads + losses (fwd+bwd)",
             "student backbone bwd", "optimizer (clip + AdamW)", "EMA update"]
    assert set(ph) == set(parts) | {"full step"}
    assert all(ph[k] > 0 for k in parts)
    # the phases tile the step (medians of sums ~ sums of medians with 2 steps: compare per step via bounds)
    assert sum(ph[k] for k in parts) == pytest.approx(ph["full step"], rel=0.5)
    assert math.isfinite(r["overhead_fraction"]) and r["img_per_s"] == pytest.approx(2 / ph["full step"])
    assert len(r["overhead_fraction_per_step"]) == 2
    assert r["batch"] == 2 and r["n_local"] == 2


def test_supervised_step_tiny():
    r = supervised_step_breakdown("vit_small", 16, 2, num_classes=5, repeats=1, warmup=0,
                                  kwargs=dict(embed_dim=16, depth=1, num_heads=2, patch_size=8))
    assert r["phases_s"]["full step"] > 0 and math.isfinite(r["overhead_fraction"])


def test_augmentation_throughput_tiny():
    r = augmentation_throughput(n=2, size=(64, 48), local_crops=1, global_size=32, local_size=16, repeats=1,
                                warmup=0)
    names = [row["pipeline"] for row in r["rows"]]
    assert names == ["reference PIL (torchvision)", "fast, PIL decode", "fast, tensor decode"]
    assert r["rows"][0]["speedup"] == pytest.approx(1.0)
    assert all(row["img_s_per_worker"] > 0 for row in r["rows"])
