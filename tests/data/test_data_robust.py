import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from pretrain.data import (SafeImageDataset, TooManySkippedImagesError, build_dataset, make_data_loader)
from pretrain.data.robust import ImageDecodeError


@pytest.fixture
def folder_with_bad_files(tmp_path):
    """8 images in one flat folder; #2 is random bytes, #5 is zero bytes, #6 is a truncated JPEG."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for k in range(8):
        p = root / f"{k:02d}.jpg"
        arr = np.full((12, 12, 3), k * 20, dtype=np.uint8)  # value encodes the index
        Image.fromarray(arr).save(p, quality=100)
    (root / "02.jpg").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (root / "05.jpg").write_bytes(b"")
    full = (root / "00.jpg").read_bytes()
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(root / "06.jpg", quality=95)
    data = (root / "06.jpg").read_bytes()
    (root / "06.jpg").write_bytes(data[: len(data) // 2])
    assert len(full) > 0
    return root


def _value(img):
    return int(round(np.asarray(img).mean() / 20))


def test_plain_dataset_raises_decode_error_naming_the_file(folder_with_bad_files):
    ds = build_dataset(f"imagefolder:root={folder_with_bad_files}")
    with pytest.raises(ImageDecodeError, match="02.jpg"):
        ds[2]
    for decode in ("pil", "tensor"):
        ds = build_dataset(f"imagefolder:root={folder_with_bad_files}:decode={decode}")
        for bad in (2, 5, 6):
            with pytest.raises(ImageDecodeError):
                ds[bad]


def test_safe_dataset_substitutes_next_index(folder_with_bad_files):
    ds = SafeImageDataset(build_dataset(f"imagefolder:root={folder_with_bad_files}"))
    img, target, skipped = ds[2]
    assert _value(img) == 3 and target == -1
    assert [s.index for s in skipped] == [2] and skipped[0].path.endswith("02.jpg")
    img, _, skipped = ds[5]  # 5 and 6 are both bad -> 7
    assert _value(img) == 7 and [s.index for s in skipped] == [5, 6]
    img, _, skipped = ds[4]
    assert _value(img) == 4 and skipped == ()


def test_transform_errors_are_not_swallowed(folder_with_bad_files):
    def bad_transform(img):
        raise ZeroDivisionError("bug in transform")
    ds = SafeImageDataset(build_dataset(f"imagefolder:root={folder_with_bad_files}", transform=bad_transform))
    with pytest.raises(ZeroDivisionError):
        ds[0]


def _to_tensor(img):
    return torch.from_numpy(np.asarray(img).copy())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_counts_skips_across_workers(folder_with_bad_files, caplog, num_workers):
    ds = build_dataset(f"imagefolder:root={folder_with_bad_files}", transform=_to_tensor)
    loader = make_data_loader(ds, batch_size=4, num_workers=num_workers, sampler=SequentialSampler(ds),
                              drop_last=False, max_skipped=None)
    with caplog.at_level(logging.WARNING, logger="octo.data"):
        batches = list(loader)
    assert len(batches) == 2
    images, targets = batches[0]
    assert images.shape == (4, 12, 12, 3) and targets.tolist() == [-1] * 4
    values = [int(round(float(im.float().mean()) / 20)) for b in batches for im in b[0]]
    assert values == [0, 1, 3, 3, 4, 7, 7, 7]
    assert loader.skipped_events == 4  # index 2 once, index 5 -> (5, 6), index 6 once
    assert loader.skipped_unique == 3
    text = caplog.text
    assert "02.jpg" in text and "05.jpg" in text and "06.jpg" in text


def test_ceiling_aborts_with_clear_error(folder_with_bad_files):
    ds = build_dataset(f"imagefolder:root={folder_with_bad_files}", transform=_to_tensor)
    loader = make_data_loader(ds, batch_size=2, num_workers=0, sampler=SequentialSampler(ds), max_skipped=2)
    with pytest.raises(TooManySkippedImagesError, match=r"(?s)3 unreadable images exceed max_skipped=2.*02.jpg"):
        list(loader)
    frac = make_data_loader(ds, batch_size=2, num_workers=0, sampler=SequentialSampler(ds), max_skipped=0.2)
    with pytest.raises(TooManySkippedImagesError, match="max_skipped=0.2"):  # 3/8 > 20%
        list(frac)
    ok = make_data_loader(ds, batch_size=2, num_workers=0, sampler=SequentialSampler(ds), max_skipped=0.4)
    assert len(list(ok)) == 4 and ok.skipped_unique == 3


def test_all_unreadable_gives_up(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for k in range(3):
        (root / f"{k}.png").write_bytes(b"")
    ds = SafeImageDataset(build_dataset(f"imagefolder:root={root}"))
    with pytest.raises(TooManySkippedImagesError, match="consecutive unreadable"):
        ds[0]
