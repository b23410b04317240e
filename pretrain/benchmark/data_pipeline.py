"""Multi-crop augmentation throughput per DataLoader worker (one thread), fast path vs the plain PIL pipeline.

Generates JPEGs (``pretrain.data.bench_augment.make_jpegs``: smooth random images at ImageNet-typical size),
then times decode + ``DataAugmentationDINO`` per image against ``reference_pil_pipeline`` (torchvision v1 PIL
transforms doing the same ops, one crop at a time). Rounds alternate between the pipelines (timing.alternate),
each round running every pipeline over the same ``n`` files.
"""
from __future__ import annotations

import tempfile

import torch

from .timing import alternate


def augmentation_throughput(n: int = 16, size: tuple[int, int] = (500, 375), local_crops: int = 8,
                            global_size: int = 224, local_size: int = 96, repeats: int = 3, warmup: int = 1,
                            threads: int = 1) -> dict:
    from ..data.augmentations import DataAugmentationDINO, reference_pil_pipeline
    from ..data.bench_augment import make_jpegs
    from ..data.datasets import build_dataset

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as d:
            make_jpegs(d, n, *size)
            torch.manual_seed(0)
            kw = dict(local_crops_number=local_crops, global_crops_size=global_size, local_crops_size=local_size)
            fast, ref = DataAugmentationDINO(**kw), reference_pil_pipeline(**kw)
            pil_ds = build_dataset(f"imagefolder:root={d}:labels=none")
            ten_ds = build_dataset(f"imagefolder:root={d}:labels=none:decode=tensor")

            def run(ds, fn):
                def go():
                    for i in range(n):
                        fn(ds[i][0])
                return go

            st = alternate({"reference PIL (torchvision)": run(pil_ds, ref), "fast, PIL decode": run(pil_ds, fast),
                            "fast, tensor decode": run(ten_ds, fast)}, warmup, repeats)
    finally:
        torch.set_num_threads(old)
    ref_t = st["reference PIL (torchvision)"].median
    return {"n_images": n, "size": f"{size[0]}x{size[1]}", "crops": f"2x{global_size} + {local_crops}x{local_size}",
            "threads": threads,
            "rows": [{"pipeline": k, "img_s_per_worker": v.rate(n), "spread": v.spread, "speedup": ref_t / v.median}
                     for k, v in st.items()]}
