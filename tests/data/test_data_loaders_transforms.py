import random
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from pretrain.data import (DataAugmentationDINO, MaskingGenerator, ShardedInfiniteSampler, build_dataset,
                           collate_data_and_cast, drop_target, make_classification_train_transform,
                           make_data_loader, make_eval_transform)


def test_eval_transform_matches_plain_pil_pipeline():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    ours = make_eval_transform(256, 224)(img)
    ref = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(img)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert torch.allclose(ours, ref, atol=1e-5)
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    assert make_eval_transform(64, 56)(t).shape == (3, 56, 56)  # uint8 tensors are accepted too
    with pytest.raises(ValueError, match="crop"):
        make_eval_transform(32, 64)


def test_classification_train_transform():
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    tf = make_classification_train_transform(crop=32)
    a, b = tf(img), tf(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and not torch.equal(a, b)


class RandomValues(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(()))]), i


def test_worker_seeding_distinct_and_reproducible():
    def run(seed):
        loader = make_data_loader(RandomValues(), batch_size=2, num_workers=2, seed=seed, persistent_workers=False)
        return torch.cat([b[0] for b in loader])
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # batch k comes from worker k % 2: the two workers' streams differ for all three RNGs
    assert (a[0:2] != a[2:4]).all()


def test_dino_pipeline_end_to_end_with_workers():
    aug = DataAugmentationDINO(local_crops_number=2, global_crops_size=32, local_crops_size=16)
    ds = build_dataset("synthetic:n=20:size=40:decode=tensor", transform=aug, target_transform=drop_target)
    mg = MaskingGenerator((8, 8))  # e.g. 32-px crops with 4-px patches
    collate = partial(collate_data_and_cast, mask_ratio_tuple=(0.2, 0.5), mask_probability=0.5,
                      dtype=torch.float32, n_tokens=64, mask_generator=mg)
    sampler = ShardedInfiniteSampler(len(ds), seed=0)
    loader = make_data_loader(ds, batch_size=4, num_workers=2, sampler=sampler, collate_fn=collate, seed=0)
    it = iter(loader)
    batches = [next(it) for _ in range(3)]
    for b in batches:
        assert b["collated_global_crops"].shape == (8, 3, 32, 32)
        assert b["collated_local_crops"].shape == (8, 3, 16, 16)
        assert b["collated_masks"].shape == (8, 64) and b["n_skipped_images"] == 0
        assert int(b["collated_masks"].any(1).sum()) == 4
    # masks differ between batches produced by different workers (per-worker seeding of `random`)
    assert not torch.equal(batches[0]["collated_masks"], batches[1]["collated_masks"])
    assert loader.skipped_events == 0
