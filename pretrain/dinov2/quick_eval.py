"""kNN of the final teacher right after training (the quick-start's proof), optionally vs random init."""
from __future__ import annotations

import argparse
import json
import os

from omegaconf import DictConfig


def _knn_args(cfg: DictConfig, weights: str | None) -> argparse.Namespace:
    from eval.knn import add_knn_args

    resize = cfg.evaluation.knn_resize or cfg.crops.global_crops_size
    argv = ["--train-dataset", cfg.evaluation.knn_train_dataset,
            "--test-dataset", cfg.evaluation.knn_test_dataset or cfg.evaluation.knn_train_dataset,
            "--resize", str(resize), "--crop", str(resize), "--num-workers", "0",
            "--ks", *[str(k) for k in cfg.evaluation.knn_ks]]
    argv += ["--weights", weights] if weights else ["--random-init"]
    args = add_knn_args(argparse.ArgumentParser()).parse_args(argv)
    # the launcher-level arguments of eval_knn: the encoder is built exactly as the run's config.yaml says
    args.config_file = os.path.join(cfg.train.output_dir, "config.yaml")
    args.output_dir = os.path.join(cfg.train.output_dir, "knn")
    args.opts = []
    return args


def knn_after_training(cfg: DictConfig, teacher_path: str) -> dict:
    from eval.knn import main as knn_main

    def top1(record):
        full = record["results"]["full"]
        return {k: v["top1"] for k, v in full.items()}

    result = {"knn_top1_pretrained": top1(knn_main(_knn_args(cfg, teacher_path)))}
    if cfg.evaluation.knn_compare_random_init:
        result["knn_top1_random_init"] = top1(knn_main(_knn_args(cfg, None)))
    from ..distributed import is_main_process

    if is_main_process():
        rows = [f"  k={k}: pretrained teacher {v:.2f}%" + (
            f"   random init {result['knn_top1_random_init'][k]:.2f}%" if "knn_top1_random_init" in result else "")
            for k, v in result["knn_top1_pretrained"].items()]
        print("kNN top-1 on " + (cfg.evaluation.knn_test_dataset or cfg.evaluation.knn_train_dataset) + ":\n"
              + "\n".join(rows), flush=True)
        with open(os.path.join(cfg.train.output_dir, "knn_quickstart.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result
