"""Tiny on-disk copies of the official dataset formats, written from scratch in tmp_path."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image


def write_image(path, arr, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path, format=fmt)


def rand_img(rng, h=20, w=24):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def cifar10_root(tmp_path, rng):
    """Parent folder holding cifar-10-batches-py/ with 5 train batches of 3 images and a test batch of 4."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    truth = {}
    for name, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 4)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * n}, f)
        truth[name] = (data, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, f)
    return tmp_path, truth


@pytest.fixture
def cifar100_root(tmp_path, rng):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    truth = {}
    for name, n in (("train", 5), ("test", 2)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        coarse = [int(v) for v in rng.integers(0, 20, size=n)]
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": coarse}, f)
        truth[name] = (data, fine, coarse)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}, f)
    return d, truth


@pytest.fixture
def svhn_root(tmp_path, rng):
    import scipy.io
    truth = {}
    for split, n in (("train", 5), ("test", 3)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [10], [9]][:n], dtype=np.uint8)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        truth[split] = (x, y)
    return tmp_path, truth


@pytest.fixture
def tiny_imagenet_root(tmp_path, rng):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]  # deliberately unsorted: labels follow sorted order
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for k in range(2):
            write_image(str(root / "train" / w / "images" / f"{w}_{k}.JPEG"), rand_img(rng, 16, 16), "JPEG")
        (root / "train" / w / f"{w}_boxes.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    ann = []
    for k, w in enumerate(["n03", "n01", "n03", "n02"]):
        write_image(str(root / "val" / "images" / f"val_{k}.JPEG"), rand_img(rng, 16, 16), "JPEG")
        ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    for k in range(3):
        write_image(str(root / "test" / "images" / f"test_{k}.JPEG"), rand_img(rng, 16, 16), "JPEG")
    return tmp_path


@pytest.fixture
def class_folder_root(tmp_path, rng):
    """root/<cls>/*.png (lossless, for exact pixel checks): b has 2 images, a has 3 (one in a sub-folder)."""
    root = tmp_path / "folders"
    arrays = {}
    for cls, names in (("b", ["1.png", "2.png"]), ("a", ["1.png", "2.png", "sub/3.png"])):
        for nm in names:
            arr = rand_img(rng)
            p = str(root / cls / nm)
            write_image(p, arr)
            arrays[p] = arr
    (root / "a" / "notes.txt").write_text("not an image")
    return root, arrays
