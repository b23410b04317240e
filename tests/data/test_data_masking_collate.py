import random
from collections import deque

import numpy as np
import pytest
import torch

from pretrain.data import MaskingGenerator, collate_data_and_cast
from pretrain.data.robust import SkippedImage


def components(mask):
    """Sizes of the 4-connected True components (naive BFS)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    sizes = []
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                q, n = deque([(i, j)]), 0
                seen[i, j] = True
                while q:
                    a, b = q.popleft()
                    n += 1
                    for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        x, y = a + da, b + db
                        if 0 <= x < h and 0 <= y < w and mask[x, y] and not seen[x, y]:
                            seen[x, y] = True
                            q.append((x, y))
                sizes.append(n)
    return sizes


def test_mask_counts_and_block_sizes():
    mg = MaskingGenerator((14, 14), rng=random.Random(0))
    assert mg.max_num_patches == 98
    py = random.Random(1)
    for _ in range(300):
        k = py.randint(0, 98)
        m = mg(k)
        assert m.shape == (14, 14) and m.dtype == bool
        assert k - 2 * mg.min_num_patches < m.sum() <= k
        assert all(s >= 4 for s in components(m))
    assert mg(0).sum() == 0


def test_mask_aspect_ratio_range():
    # a single block on an empty grid: its bounding box is the block; aspect within [0.3, 1/0.3] up to rounding
    mg = MaskingGenerator((16, 16), rng=random.Random(3))
    checked, ratios = 0, []
    for _ in range(200):
        m = mg(12)
        ys, xs = np.nonzero(m)
        h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
        if len(components(m)) != 1 or m.sum() != h * w:
            continue
        checked += 1
        ratios.append(h / w)
        assert 0.3 / 2.5 <= h / w <= 2.5 / 0.3
    assert checked > 50
    assert min(ratios) < 0.6 and max(ratios) > 1.6  # both orientations occur


def fake_samples(B, n_local, g=8, l=4, skipped=False):
    out = []
    for b in range(B):
        crops = {"global_crops": [torch.full((3, g, g), 10.0 * b + c) for c in range(2)],
                 "local_crops": [torch.full((3, l, l), 100.0 + 10.0 * b + c) for c in range(n_local)]}
        s = (crops, ())
        if skipped:
            s = (crops, (), (SkippedImage(b, f"f{b}.jpg", "bad"),) if b == 1 else ())
        out.append(s)
    return out


def test_collate_crop_major_and_dtype():
    B, n = 3, 2
    mg = MaskingGenerator((4, 4), min_num_patches=2)
    out = collate_data_and_cast(fake_samples(B, n), (0.1, 0.5), 0.5, torch.float16, 16, mg,
                                generator=random.Random(0))
    g, l = out["collated_global_crops"], out["collated_local_crops"]
    assert g.shape == (2 * B, 3, 8, 8) and g.dtype == torch.float16
    assert l.shape == (n * B, 3, 4, 4) and l.dtype == torch.float16
    for c in range(2):
        for b in range(B):
            assert float(g[c * B + b, 0, 0, 0]) == 10.0 * b + c
    for c in range(n):
        for b in range(B):
            assert float(l[c * B + b, 0, 0, 0]) == 100.0 + 10.0 * b + c
    assert out["collated_masks"].shape == (2 * B, 16) and out["collated_masks"].dtype == torch.bool


def test_collate_without_local_crops_and_skips():
    mg = MaskingGenerator((4, 4), min_num_patches=2)
    out = collate_data_and_cast(fake_samples(2, 0, skipped=True), (0.1, 0.5), 0.5, torch.float32, None, mg)
    assert out["collated_local_crops"].shape[0] == 0 and len(out["collated_local_crops"]) == 0
    assert out["collated_global_crops"].shape == (4, 3, 8, 8)
    assert [s.path for s in out["skipped_images"]] == ["f1.jpg"]
    with pytest.raises(ValueError, match="n_tokens"):
        collate_data_and_cast(fake_samples(2, 0), (0.1, 0.5), 0.5, torch.float32, 15, mg)


@pytest.mark.parametrize("B,p", [(8, 0.5), (5, 0.3), (4, 1.0), (3, 0.0)])
def test_collate_mask_statistics(B, p):
    grid = (14, 14)
    N = 196
    lo, hi = 0.1, 0.5
    mg = MaskingGenerator(grid, max_num_patches=0.5 * N, rng=random.Random(7))
    out = collate_data_and_cast(fake_samples(B, 1), (lo, hi), p, torch.float32, N, mg, generator=random.Random(1))
    masks = out["collated_masks"]
    n_masked_imgs = int(2 * B * p)
    counts = masks.sum(1).tolist()
    assert sum(c > 0 for c in counts) == n_masked_imgs  # lo * N >= 19 patches, never rounded to 0
    bins = np.linspace(lo, hi, n_masked_imgs + 1)
    masked_counts = sorted(c for c in counts if c > 0)
    tol = 2 * mg.min_num_patches  # block granularity
    for i, c in enumerate(masked_counts):
        assert int(N * bins[i]) - tol <= c <= int(N * bins[i + 1]), (i, c, bins)
    # naive references for the derived fields
    upper = sum(int(N * bins[i + 1]) for i in range(n_masked_imgs))
    assert out["upperbound"] == upper >= int(masks.sum())
    flat = masks.flatten()
    assert out["mask_indices_list"].tolist() == [k for k in range(flat.numel()) if flat[k]]
    assert out["n_masked_patches"].tolist() == [int(masks.sum())]
    expected_w = [1.0 / counts[k // N] for k in range(flat.numel()) if flat[k]]
    assert torch.allclose(out["masks_weight"], torch.tensor(expected_w, dtype=torch.float32))


def test_mask_fraction_and_shuffle_over_many_batches():
    mg = MaskingGenerator((6, 6), min_num_patches=2, rng=random.Random(0))
    gen = random.Random(5)
    positions = np.zeros(8)
    masked_imgs = 0
    for _ in range(100):
        out = collate_data_and_cast(fake_samples(4, 0, g=2), (0.2, 0.5), 0.5, torch.float32, 36, mg, generator=gen)
        has = out["collated_masks"].any(1).numpy()
        masked_imgs += has.sum()
        positions += has
    assert masked_imgs == 100 * 4  # exactly int(8 * 0.5) per batch
    assert positions.min() > 25  # shuffled: every slot gets masks sometimes (expected 50)
    a = collate_data_and_cast(fake_samples(4, 0, g=2), (0.2, 0.5), 0.5, torch.float32, 36,
                              MaskingGenerator((6, 6), rng=random.Random(0)), generator=random.Random(9))
    b = collate_data_and_cast(fake_samples(4, 0, g=2), (0.2, 0.5), 0.5, torch.float32, 36,
                              MaskingGenerator((6, 6), rng=random.Random(0)), generator=random.Random(9))
    assert torch.equal(a["collated_masks"], b["collated_masks"])
