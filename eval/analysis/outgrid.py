"""Attention analysis for OutGridViT: grid-attention and dynamic-kernel locality (MAD) and entropy per stage.

Capture uses forward hooks only (the model code is untouched): every :class:`GridAttention` module's input is
stored and its attention ``[B*g*g, heads, N, N]`` is recomputed with ``module.attention_maps`` (the forward runs
SDPA and never forms it); every dynamic kernel's logit conv (``*.dyn.attn``) output ``[B, heads*k*k, H, W]`` is
stored.

Metrics (as the seed repository defines them):

* grid MAD: heads averaged, each query row renormalised; ``MAD = sum_j w_j * L1((y_q, x_q), (y_j, x_j))`` in FULL
  feature-map coordinates, where in-group token (i, j) of group (gy, gx) sits at (i*g+gy, j*g+gx). The
  normalised variant divides by (H-1)+(W-1). Queries: up to ``n_queries`` per group (seeded), excluding a 1-token
  border of the in-group grid when that grid is at least 3x3.
* kernel MAD: softmax over the k*k logits per head, heads averaged; ``MAD = sum_o p_o * (|dy|+|dx|)`` (max
  2*(k//2), the normalised variant divides by it); ``n_positions`` positions per image, border excluded.
* entropy: ``H = -sum p log p`` (nats), normalised ``Hn = H / log K`` with K = N tokens (grid) or k*k (kernel).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re

import torch

from pretrain.models.outgrid import DynamicKernel2d, GridAttention


# ------------------------------------------------------------------------------------------------ capture
class AttentionCapture:
    """Context manager registering the hooks; ``records`` fills during forward passes."""

    def __init__(self, model):
        self.model, self.records, self.handles = model, [], []

    @staticmethod
    def _stage_block(name: str):
        m = re.match(r"stages\.(\d+)\.(\d+)\.", name)
        if m:
            return int(m.group(1)), int(m.group(2))
        m = re.match(r"front\.(\d+)\.", name)
        return (0, -1 - int(m.group(1))) if m else (-1, -1)

    def __enter__(self):
        for name, mod in self.model.named_modules():
            if isinstance(mod, GridAttention):
                self.handles.append(mod.register_forward_hook(self._grid_hook(name)))
            elif isinstance(mod, DynamicKernel2d):
                self.handles.append(mod.attn.register_forward_hook(self._kernel_hook(name, mod)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _grid_hook(self, name):
        def hook(mod, inputs, output):
            x = inputs[0]
            stage, block = self._stage_block(name)
            self.records.append({"kind": "grid", "name": name, "stage": stage, "block": block,
                                 "attn": mod.attention_maps(x).detach().float().cpu(), "g": mod.grid_size,
                                 "H": x.shape[1], "W": x.shape[2], "B": x.shape[0]})
        return hook

    def _kernel_hook(self, name, dyn):
        def hook(mod, inputs, output):
            stage, block = self._stage_block(name)
            self.records.append({"kind": "kernel", "name": name, "stage": stage, "block": block,
                                 "logits": output.detach().float().cpu(), "heads": dyn.num_heads,
                                 "k": dyn.kernel_size})
        return hook


# ------------------------------------------------------------------------------------------------ metrics
def group_token_coords(g: int, H: int, W: int):
    """In-group (i, j) of each of the N = (H/g)(W/g) tokens of a group, row-major."""
    hg, wg = H // g, W // g
    n = torch.arange(hg * wg)
    return n // wg, n % wg


def grid_query_rows(attn: torch.Tensor, g: int, H: int, W: int, n_queries: int, generator: torch.Generator):
    """Head-averaged, renormalised attention rows of sampled queries + their L1 distance rows (full coords).

    Returns ``(rows [M, N], dist [M, N])`` over all groups and images."""
    a = attn.mean(1)  # [Bg, N, N]
    a = a / a.sum(-1, keepdim=True)
    i, j = group_token_coords(g, H, W)
    dist = g * ((i[:, None] - i[None]).abs() + (j[:, None] - j[None]).abs()).float()  # same for every group
    hg, wg = H // g, W // g
    inner = torch.ones(hg * wg, dtype=torch.bool)
    if hg >= 3 and wg >= 3:
        inner = (i > 0) & (i < hg - 1) & (j > 0) & (j < wg - 1)
    cand = inner.nonzero().flatten()
    rows, dists = [], []
    for b in range(a.shape[0]):
        q = cand if cand.numel() <= n_queries else cand[torch.randperm(cand.numel(), generator=generator)[:n_queries]]
        rows.append(a[b, q])
        dists.append(dist[q])
    return torch.cat(rows), torch.cat(dists)


def normalized_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of the rows of ``p`` (nats) divided by log K (K = row length); 0 when K = 1."""
    K = p.shape[-1]
    h = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return h / math.log(K) if K > 1 else torch.zeros_like(h)


def grid_metrics(rec: dict, n_queries: int = 32, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    rows, dist = grid_query_rows(rec["attn"], rec["g"], rec["H"], rec["W"], n_queries, gen)
    mad = (rows * dist).sum(-1)
    return {"grid_mad": float(mad.mean()), "grid_mad_norm": float(mad.mean() / max(rec["H"] + rec["W"] - 2, 1)),
            "grid_entropy_norm": float(normalized_entropy(rows).mean()),
            "tokens_per_group": int(rows.shape[-1])}


def kernel_probs(logits: torch.Tensor, heads: int, k: int) -> torch.Tensor:
    """Head-averaged dynamic kernels ``[B, k*k, H, W]`` from logits ``[B, heads*k*k, H, W]``."""
    B, _, H, W = logits.shape
    return logits.view(B, heads, k * k, H, W).softmax(2).mean(1)


def kernel_distance(k: int) -> torch.Tensor:
    """L1 distance of each kernel offset from the centre (k=3: [[2,1,2],[1,0,1],[2,1,2]])."""
    o = torch.arange(k * k)
    c = k // 2
    return ((o // k - c).abs() + (o % k - c).abs()).float()


def kernel_metrics(rec: dict, n_positions: int = 64, seed: int = 0) -> dict:
    k = rec["k"]
    p = kernel_probs(rec["logits"], rec["heads"], k)  # [B, kk, H, W]
    B, KK, H, W = p.shape
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    inner = ((ys > 0) & (ys < H - 1) & (xs > 0) & (xs < W - 1)) if H >= 3 and W >= 3 else torch.ones(H, W, dtype=torch.bool)
    cand = inner.flatten().nonzero().flatten()
    gen = torch.Generator().manual_seed(seed)
    flat = p.flatten(2).transpose(1, 2)  # [B, HW, kk]
    rows = []
    for b in range(B):
        pos = cand if cand.numel() <= n_positions else cand[torch.randperm(cand.numel(), generator=gen)[:n_positions]]
        rows.append(flat[b, pos])
    rows = torch.cat(rows)
    mad = rows @ kernel_distance(k)
    return {"kernel_mad": float(mad.mean()), "kernel_mad_norm": float(mad.mean() / max(2 * (k // 2), 1)),
            "kernel_entropy_norm": float(normalized_entropy(rows).mean())}


def per_stage_metrics(records: list, n_queries: int = 32, n_positions: int = 64, seed: int = 0) -> dict:
    """Average the per-block metrics over the blocks of each stage: ``{stage: {metric: value}}``."""
    acc: dict = {}
    for r in records:
        m = grid_metrics(r, n_queries, seed) if r["kind"] == "grid" else kernel_metrics(r, n_positions, seed)
        if r["kind"] == "grid":
            m["feature_hw"] = f"{r['H']}x{r['W']}"
            m["grid_size"] = r["g"]
        for key, v in m.items():
            acc.setdefault(r["stage"], {}).setdefault(key, []).append(v)
    return {s: {k: (sum(v) / len(v) if isinstance(v[0], float) else v[0]) for k, v in d.items()}
            for s, d in sorted(acc.items())}


# ------------------------------------------------------------------------------------------------ plots
def _image_for_display(img: torch.Tensor, mean=None, std=None):
    x = img.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    else:
        x = (x - x.min()) / (x.max() - x.min() + 1e-8)
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def grid_query_map(rec: dict, image_index: int, yq: int, xq: int) -> torch.Tensor:
    """Attention of the query at full-map position (yq, xq) scattered onto the ``H x W`` map (heads averaged)."""
    g, H, W = rec["g"], rec["H"], rec["W"]
    gy, gx, iq, jq = yq % g, xq % g, yq // g, xq // g
    grp = image_index * g * g + gy * g + gx
    row = rec["attn"][grp].mean(0)[iq * (W // g) + jq]
    i, j = group_token_coords(g, H, W)
    out = torch.zeros(H, W)
    out[i * g + gy, j * g + gx] = row / row.sum()
    return out


def _finish_figure(fig, axes, path):
    """Axes off, tight layout, save as PNG, free the figure; returns ``path``."""
    import matplotlib.pyplot as plt

    for a in axes:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_grid_heatmap(rec, image, path, image_index=0, query=None, mean=None, std=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    H, W = rec["H"], rec["W"]
    yq, xq = query if query is not None else (H // 2, W // 2)
    m = grid_query_map(rec, image_index, yq, xq)
    up = F.interpolate(m[None, None], size=image.shape[-2:], mode="nearest")[0, 0]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
    axes[0].imshow(_image_for_display(image, mean, std))
    axes[0].imshow(up.numpy(), cmap="jet", alpha=0.5)
    sy, sx = image.shape[-2] / H, image.shape[-1] / W
    axes[0].scatter([(xq + 0.5) * sx - 0.5], [(yq + 0.5) * sy - 0.5], marker="x", c="white", s=40)
    axes[0].set_title(f"{rec['name']}\nquery ({yq},{xq}) g={rec['g']}", fontsize=8)
    axes[1].imshow(m.numpy(), cmap="viridis")
    axes[1].set_title(f"attention on {H}x{W} map", fontsize=8)
    return _finish_figure(fig, axes, path)


def save_kernel_overlay(rec, image, path, image_index=0, mean=None, std=None):
    """Mean 3x3 (k x k) kernel, centre-weight map and spread (per-position MAD) map over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    k = rec["k"]
    p = kernel_probs(rec["logits"][image_index:image_index + 1], rec["heads"], k)[0]  # [kk, H, W]
    centre = p[(k * k) // 2]
    spread = torch.einsum("o,ohw->hw", kernel_distance(k), p)
    size = image.shape[-2:]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    im = axes[0].imshow(p.mean((1, 2)).view(k, k).numpy(), cmap="magma")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[0].set_title(f"{rec['name']}\nmean kernel", fontsize=8)
    for ax, m, t in ((axes[1], centre, "centre weight"), (axes[2], spread, "spread (MAD)")):
        ax.imshow(_image_for_display(image, mean, std))
        ax.imshow(F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy(),
                  cmap="jet", alpha=0.5)
        ax.set_title(t, fontsize=8)
    return _finish_figure(fig, axes, path)


# ------------------------------------------------------------------------------------------------ driver
@torch.no_grad()
def analyze(model, images: torch.Tensor, output_dir: str, seeds=(0,), n_queries: int = 32, n_positions: int = 64,
            n_plot_images: int = 2, mean=None, std=None, batch_size: int = 16) -> dict:
    """Run the capture over ``images`` [B,3,H,W]; write metrics (JSON/CSV) and PNGs; return the summary.

    The summary holds per-stage means over ``seeds`` (query sampling) and their standard deviation."""
    model.eval()
    model.token_grid(images)
    os.makedirs(output_dir, exist_ok=True)
    device = next(model.parameters()).device
    per_seed = []
    first_records = None
    with AttentionCapture(model) as cap:
        for start in range(0, images.shape[0], batch_size):
            model(images[start:start + batch_size].to(device))
            batch_records = cap.records
            cap.records = []
            if first_records is None:
                first_records = batch_records
            for seed in seeds:
                per_seed.append((seed, start, per_stage_metrics(batch_records, n_queries, n_positions, seed)))
    # mean over batches for each seed, then mean/std over seeds
    stages = sorted({s for _, _, m in per_seed for s in m})
    summary = {}
    for s in stages:
        keys = sorted({k for _, _, m in per_seed if s in m for k in m[s]})
        summary[s] = {}
        for key in keys:
            vals = [m[s][key] for _, _, m in per_seed if s in m and key in m[s]]
            if not isinstance(vals[0], float):
                summary[s][key] = vals[0]
                continue
            by_seed = [sum(v for (sd, _, m) in per_seed if sd == seed and s in m and key in m[s]
                           for v in [m[s][key]]) / max(1, sum(1 for (sd, _, m) in per_seed if sd == seed and s in m
                                                             and key in m[s])) for seed in seeds]
            mu = sum(by_seed) / len(by_seed)
            sd = (sum((v - mu) ** 2 for v in by_seed) / len(by_seed)) ** 0.5
            summary[s][key] = mu
            summary[s][key + "_std"] = sd
    _write_tables(summary, output_dir)
    pngs = []
    for i in range(min(n_plot_images, images.shape[0], batch_size)):
        for r in first_records:
            tag = r["name"].replace(".", "_")
            if r["kind"] == "grid":
                pngs.append(save_grid_heatmap(r, images[i], os.path.join(output_dir, "grid", f"img{i}_{tag}.png"), i,
                                              mean=mean, std=std) if _mk(output_dir, "grid") else None)
            else:
                pngs.append(save_kernel_overlay(r, images[i], os.path.join(output_dir, "kernel", f"img{i}_{tag}.png"),
                                                i, mean=mean, std=std) if _mk(output_dir, "kernel") else None)
    return {"stages": summary, "pngs": pngs, "n_images": int(images.shape[0]), "seeds": list(seeds)}


def _mk(root, sub):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    return True


def _write_tables(summary: dict, output_dir: str):
    with open(os.path.join(output_dir, "attention_metrics.json"), "w") as f:
        json.dump({str(k): v for k, v in summary.items()}, f, indent=2)
    cols = sorted({k for v in summary.values() for k in v})
    with open(os.path.join(output_dir, "attention_metrics.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage"] + cols)
        for s, v in summary.items():
            w.writerow([s] + [v.get(c, "") for c in cols])
