"""Throughput of DataAugmentationDINO (fast path) vs the plain PIL reference pipeline, per CPU thread.

    python -m pretrain.data.bench_augment [--n 40] [--size 500x375] [--local 8] [--threads 1] [--rounds 3]

Generates JPEGs (smooth random images at ImageNet-typical size) in a temporary folder, then times
decode + augmentation per image for both pipelines with ``torch.set_num_threads(1)`` (as in a DataLoader worker),
in images per CPU-second (process time), best of interleaved rounds.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from .augmentations import DataAugmentationDINO, reference_pil_pipeline
from .datasets import build_dataset


def make_jpegs(folder: str, n: int, w: int, h: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-20, 21, size=(h, w, 3))
        arr = np.clip(np.asarray(img).astype(np.int32) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(folder, f"img_{i:04d}.jpg"), quality=90)


def time_once(ds, fn, n: int) -> float:
    """Images per CPU-second of this process (robust to other load on the machine; one thread)."""
    t0 = time.process_time()
    for i in range(n):
        img, _ = ds[i]
        fn(img)
    return n / (time.process_time() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", default="500x375")
    ap.add_argument("--local", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        make_jpegs(d, args.n, w, h)
        torch.manual_seed(0)
        fast = DataAugmentationDINO(local_crops_number=args.local)
        ref = reference_pil_pipeline(local_crops_number=args.local)
        pil_ds = build_dataset(f"imagefolder:root={d}:labels=none")
        ten_ds = build_dataset(f"imagefolder:root={d}:labels=none:decode=tensor")
        runs = {"ref": (pil_ds, ref), "fast_pil": (pil_ds, fast), "fast_tensor": (ten_ds, fast)}
        best = {k: 0.0 for k in runs}
        for _ in range(args.rounds):  # interleaved rounds, best of each: robust to a busy machine
            for k, (ds, fn) in runs.items():
                best[k] = max(best[k], time_once(ds, fn, args.n))
        r_ref, r_fast, r_fast_t = best["ref"], best["fast_pil"], best["fast_tensor"]
    print(f"{args.n} JPEGs {w}x{h}, 2x224 + {args.local}x96 crops, {args.threads} thread(s):")
    print(f"  reference PIL pipeline        : {r_ref:7.1f} img/s per core")
    print(f"  fast (PIL decode)             : {r_fast:7.1f} img/s per core  ({r_fast / r_ref:.2f}x)")
    print(f"  fast (tensor decode)          : {r_fast_t:7.1f} img/s per core  ({r_fast_t / r_ref:.2f}x)")


if __name__ == "__main__":
    main()
