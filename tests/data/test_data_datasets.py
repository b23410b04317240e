import os

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data import build_dataset, list_datasets, parse_dataset_spec, split_dataset


def test_list_datasets():
    assert {"imagefolder", "imagenet", "cifar10", "cifar100", "svhn", "tinyimagenet", "digits",
            "synthetic"} <= set(list_datasets())


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10_official_batches(cifar10_root, use_parent):
    parent, truth = cifar10_root
    root = parent if use_parent else parent / "cifar-10-batches-py"
    train = build_dataset(f"cifar10:root={root}:split=train")
    test = build_dataset(f"cifar10:root={root}:split=test")
    assert len(train) == 15 and len(test) == 4
    assert train.classes[3] == "c3"
    # naive reference: sample k of batch j is row k; channel-major 1024 R, 1024 G, 1024 B values, row-major pixels
    data, labels = truth["data_batch_2"]
    for k in range(3):
        img, target = train[3 + k]
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
        assert target == labels[k]
        px = np.asarray(img)
        for (y, x) in [(0, 0), (5, 17), (31, 30)]:
            assert tuple(px[y, x]) == (data[k, y * 32 + x], data[k, 1024 + y * 32 + x], data[k, 2048 + y * 32 + x])
    t_img, t_target = test[3]
    assert t_target == truth["test_batch"][1][3]


def test_cifar100_fine_coarse_and_tensor_decode(cifar100_root):
    root, truth = cifar100_root
    ds = build_dataset(f"cifar100:root={root}:split=train")
    assert len(ds) == 5 and list(ds.targets) == truth["train"][1] and ds.num_classes == 100
    coarse = build_dataset(f"cifar100:root={root}:split=test:label=coarse")
    assert list(coarse.targets) == truth["test"][2] and coarse.classes[0] == "k0"
    t = build_dataset(f"cifar100:root={root}:split=train:decode=tensor")
    img, _ = t[4]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert torch.equal(img.reshape(-1), torch.from_numpy(truth["train"][0][4]).to(torch.uint8))


def test_svhn_mat(svhn_root):
    root, truth = svhn_root
    ds = build_dataset(f"svhn:root={root}:split=train")
    x, y = truth["train"]
    assert len(ds) == 5
    assert ds.targets == [0, 1, 2, 0, 9]  # label 10 means digit 0
    img, _ = ds[2]
    assert np.array_equal(np.asarray(img), x[:, :, :, 2])
    assert len(build_dataset(f"svhn:root={root}:split=test")) == 3
    with pytest.raises(FileNotFoundError, match="extra_32x32.mat"):
        build_dataset(f"svhn:root={root}:split=extra")


def test_tinyimagenet_layout(tiny_imagenet_root):
    for root in (tiny_imagenet_root, tiny_imagenet_root / "tiny-imagenet-200"):
        train = build_dataset(f"tinyimagenet:root={root}:split=train")
        assert train.classes == ["n01", "n02", "n03"]
        assert len(train) == 6 and sorted(train.targets) == [0, 0, 1, 1, 2, 2]
        for i in range(len(train)):  # label matches the wnid folder of the file
            assert train.classes[train.targets[i]] == os.path.basename(train.paths[i]).split("_")[0]
        val = build_dataset(f"tinyimagenet:root={root}:split=val")
        assert len(val) == 4
        got = {os.path.basename(p): val.classes[t] for p, t in zip(val.paths, val.targets)}
        assert got == {"val_0.JPEG": "n03", "val_1.JPEG": "n01", "val_2.JPEG": "n03", "val_3.JPEG": "n02"}
        img, _ = val[0]
        assert img.size == (16, 16) and img.mode == "RGB"
        test = build_dataset(f"tinyimagenet:root={root}:split=test")
        assert len(test) == 3 and set(test.targets) == {-1}


def test_imagefolder_labelled_unlabelled_and_tensor(class_folder_root, tmp_path, rng):
    root, arrays = class_folder_root
    ds = build_dataset(f"imagefolder:root={root}")
    assert ds.classes == ["a", "b"] and len(ds) == 5
    assert sorted(ds.targets) == [0, 0, 0, 1, 1]
    tds = build_dataset(f"imagefolder:root={root}:decode=tensor")
    for i in range(len(ds)):
        assert ds.classes[ds.targets[i]] == os.path.relpath(ds.paths[i], root).split(os.sep)[0]
        img, _ = ds[i]
        assert np.array_equal(np.asarray(img), arrays[ds.paths[i]])
        timg, _ = tds[i]
        assert timg.dtype == torch.uint8 and np.array_equal(timg.permute(1, 2, 0).numpy(), arrays[ds.paths[i]])
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(flat / f"{k}.jpg")
    un = build_dataset(f"imagefolder:root={flat}")
    assert len(un) == 3 and set(un.targets) == {-1}
    forced = build_dataset(f"imagefolder:root={root}:labels=none")
    assert len(forced) == 5 and set(forced.targets) == {-1}


def test_imagenet_layout_and_dinov2_string(tmp_path, rng):
    root = tmp_path / "ilsvrc"
    for split, per in (("train", 2), ("val", 1)):
        for w in ("n0002", "n0001"):
            for k in range(per):
                p = root / split / w / f"{w}_{k}.JPEG"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(p, format="JPEG")
    tr = build_dataset(f"imagenet:root={root}:split=train")
    assert len(tr) == 4 and tr.classes == ["n0001", "n0002"]
    d2 = build_dataset(f"ImageNet:split=TRAIN:root={root}:extra={tmp_path / 'nowhere'}")
    assert len(d2) == 4 and d2.targets == tr.targets
    va = build_dataset(f"ImageNet:split=VAL:root={root}")
    assert len(va) == 2
    for p, t in zip(va.paths, va.targets):
        assert va.classes[t] == os.path.basename(os.path.dirname(p))
    img, _ = va[0]
    assert img.size == (12, 10)


def test_digits_split():
    from sklearn.datasets import load_digits
    tr = build_dataset("digits")
    te = build_dataset("digits:split=test:size=64")
    full = load_digits()
    assert len(tr) == 1437 and len(te) == 360 and len(tr) + len(te) == len(full.target)
    assert np.array_equal(np.bincount(tr.targets + te.targets, minlength=10), np.bincount(full.target, minlength=10))
    img, y = tr[0]
    assert img.size == (32, 32) and img.mode == "RGB" and 0 <= y <= 9
    assert te[0][0].size == (64, 64)
    # deterministic split and content; the train and test images are disjoint (compare at 8x8 via sklearn data)
    tr2 = build_dataset("digits")
    assert np.array_equal(np.asarray(tr[5][0]), np.asarray(tr2[5][0]))
    tr8, te8 = build_dataset("digits:size=8"), build_dataset("digits:split=test:size=8")
    keys = {np.asarray(tr8[i][0])[..., 0].tobytes() for i in range(len(tr8))}
    expected = {np.clip(np.round(im * 255 / 16), 0, 255).astype(np.uint8).tobytes() for im in full.images}
    assert keys <= expected


def test_synthetic_deterministic():
    a = build_dataset("synthetic:n=7:size=12:classes=3")
    b = build_dataset("synthetic:n=7:size=12:classes=3")
    assert len(a) == 7 and a.targets == [0, 1, 2, 0, 1, 2, 0]
    assert np.array_equal(np.asarray(a[4][0]), np.asarray(b[4][0]))
    assert not np.array_equal(np.asarray(a[4][0]), np.asarray(a[5][0]))
    c = build_dataset("synthetic:n=7:size=12:classes=3:seed=1")
    assert not np.array_equal(np.asarray(a[4][0]), np.asarray(c[4][0]))
    t = build_dataset("synthetic:n=2:size=12:decode=tensor")
    assert t[0][0].shape == (3, 12, 12) and t[0][0].dtype == torch.uint8


def test_errors_are_clear(tmp_path):
    with pytest.raises(KeyError, match=r"(?s)cifar1O.*Did you mean 'cifar10'.*Valid names:.*imagefolder"):
        build_dataset("cifar1O:root=/x")
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match=r"(?s)does_not_exist.*Expected layout.*data_batch_1"):
        build_dataset(f"cifar10:root={missing}")
    with pytest.raises(ValueError, match=r"(?s)unknown option.*'splt'.*valid options.*split"):
        build_dataset(f"cifar10:root={tmp_path}:splt=train")
    with pytest.raises(ValueError, match="needs option"):
        build_dataset("imagefolder")
    with pytest.raises(ValueError, match="split='dev'"):
        build_dataset("digits:split=dev")
    with pytest.raises(FileNotFoundError, match=r"(?s)data_batch_1.*Expected layout"):
        build_dataset(f"cifar10:root={tmp_path}")
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        build_dataset(f"tinyimagenet:root={tmp_path}")
    with pytest.raises(ValueError, match="decode"):
        build_dataset("synthetic:decode=jpeg")


def test_spec_parsing_keeps_colons_in_values():
    assert parse_dataset_spec("imagefolder:root=C:/data/x:labels=none") == (
        "imagefolder", {"root": "C:/data/x", "labels": "none"})
    assert parse_dataset_spec("ImageNet:split=TRAIN") == ("imagenet", {"split": "TRAIN"})
    with pytest.raises(ValueError, match="twice"):
        parse_dataset_spec("digits:split=train:split=test")


def test_split_dataset_with_transforms():
    ds = build_dataset("synthetic:n=50:size=8:classes=5")
    tr, va = split_dataset(ds, 0.2, seed=3)
    assert len(tr) == 40 and len(va) == 10
    assert set(tr.indices).isdisjoint(va.indices) and set(tr.indices) | set(va.indices) == set(range(50))
    tr2, va2 = split_dataset(ds, 0.2, seed=3)
    assert va2.indices == va.indices
    assert split_dataset(ds, 0.2, seed=4)[1].indices != va.indices
    va_t = va.with_transform(lambda im: "eval", lambda y: y + 100)
    tr_t = tr.with_transform(lambda im: "train")
    assert va_t[0] == ("eval", ds.targets[va.indices[0]] + 100)
    assert tr_t[0][0] == "train"
    assert va_t.targets == [ds.targets[i] for i in va.indices]
    with pytest.raises(ValueError):
        split_dataset(ds, 1.0)


def test_register_custom_dataset_and_stray_files_warning(class_folder_root, caplog):
    from pretrain.data import register_dataset
    from pretrain.data.datasets import ArrayImageDataset

    @register_dataset("test_custom_zeros", options=("n",), layout="in memory")
    def _zeros(transform, target_transform, decode, n="2"):
        return ArrayImageDataset(np.zeros((int(n), 4, 4, 3), np.uint8), [0] * int(n), ["z"], transform,
                                 target_transform, decode)

    ds = build_dataset("test_custom_zeros:n=3")
    assert len(ds) == 3 and "test_custom_zeros" in list_datasets()
    with pytest.raises(KeyError, match="already registered"):
        register_dataset("test_custom_zeros")(_zeros)
    root, _ = class_folder_root
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "stray.png")
    import logging
    with caplog.at_level(logging.WARNING, logger="octo.data"):
        assert len(build_dataset(f"imagefolder:root={root}")) == 5
    assert "ignored" in caplog.text
