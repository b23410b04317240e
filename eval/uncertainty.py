"""Calibration and uncertainty metrics for classifiers with a predictive distribution.

* :func:`expected_calibration_error` - ECE with ``n_bins`` equal-width confidence bins on (0, 1]:
  ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` (confidence = max prob, a sample with confidence c falls in
  bin ``ceil(c * n_bins) - 1``, i.e. bins are left-open, right-closed).
* :func:`negative_log_likelihood` - mean ``-log p[y]``; :func:`brier_score` - mean over samples of
  ``sum_c (p_c - onehot_c)^2`` (the multi-class Brier score, range [0, 2]).
* :func:`predictive_entropy` (total uncertainty of the mean prediction), :func:`expected_entropy` (aleatoric)
  and :func:`mutual_information` (epistemic / BALD = total - aleatoric) from Monte-Carlo samples ``[S, B, C]``.
* :func:`reliability_diagram` saves a PNG (per-bin accuracy vs confidence, gap shaded, ECE in the title).
* :func:`evaluate_uncertainty` runs a model over a loader: models with ``forward_with_uncertainty`` (SNodeViT)
  are sampled ``num_samples`` times with a seeded generator; any other classifier is evaluated deterministically.
"""
from __future__ import annotations

import json
import os

import torch

EPS = 1e-12


def _f(x: torch.Tensor) -> torch.Tensor:
    """float32 unless already float64 (keeps double-precision inputs exact)."""
    return x if x.dtype == torch.float64 else x.float()


def _check(probs: torch.Tensor, labels: torch.Tensor | None = None):
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C] class probabilities, got shape {tuple(probs.shape)}")
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != probs.shape[0]):
        raise ValueError(f"labels must be [N] = [{probs.shape[0]}] class indices, got shape {tuple(labels.shape)}")


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Per-bin counts, mean confidence and accuracy for equal-width bins (see module docstring)."""
    _check(probs, labels)
    conf, pred = probs.float().max(dim=1)
    correct = (pred == labels).float()
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).float()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    nz = count.clamp_min(1)
    return {"count": count, "confidence": conf_sum / nz, "accuracy": acc_sum / nz,
            "edges": torch.linspace(0, 1, n_bins + 1)}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    b = calibration_bins(probs, labels, n_bins)
    n = b["count"].sum()
    return float((b["count"] / n * (b["accuracy"] - b["confidence"]).abs()).sum())


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    _check(probs, labels)
    return float(-probs.float().gather(1, labels[:, None]).clamp_min(EPS).log().mean())


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).float()
    return float((probs.float() - onehot).pow(2).sum(1).mean())


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats along the last axis."""
    p = _f(probs)
    return -(p * p.clamp_min(EPS).log()).sum(-1)


def predictive_entropy(sample_probs: torch.Tensor) -> torch.Tensor:
    """``H[mean_s p_s]`` for samples ``[S, B, C]`` -> ``[B]``."""
    return entropy(_f(sample_probs).mean(0))


def expected_entropy(sample_probs: torch.Tensor) -> torch.Tensor:
    return entropy(sample_probs).mean(0)


def mutual_information(sample_probs: torch.Tensor) -> torch.Tensor:
    """BALD ``H[mean p] - mean H[p]`` (>= 0 by concavity of the entropy)."""
    return (predictive_entropy(sample_probs) - expected_entropy(sample_probs)).clamp_min(0.0)


def summarize(probs: torch.Tensor, labels: torch.Tensor, sample_probs: torch.Tensor | None = None,
              n_bins: int = 15) -> dict:
    out = {
        "n": int(labels.numel()),
        "accuracy": float((probs.argmax(1) == labels).float().mean()),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
        "predictive_entropy": float(entropy(probs).mean()),
    }
    if sample_probs is not None:
        out["expected_entropy"] = float(expected_entropy(sample_probs).mean())
        out["mutual_information"] = float(mutual_information(sample_probs).mean())
        out["num_samples"] = int(sample_probs.shape[0])
    return out


def reliability_diagram(probs: torch.Tensor, labels: torch.Tensor, path: str, n_bins: int = 15,
                        title: str = "") -> str:
    """Save a reliability diagram (accuracy per confidence bin against the diagonal) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = calibration_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    edges = b["edges"].numpy()
    width = edges[1] - edges[0]
    filled = b["count"].numpy() > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(edges[:-1][filled], b["accuracy"].numpy()[filled], width=width, align="edge", edgecolor="k",
           color="tab:blue", label="accuracy")
    gap_lo = b["confidence"].numpy()[filled]
    ax.bar(edges[:-1][filled], b["accuracy"].numpy()[filled] - gap_lo, bottom=gap_lo, width=width, align="edge",
           color="tab:red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_xlabel("confidence"), ax.set_ylabel("accuracy")
    ax.set_title(f"{title} ECE={ece * 100:.2f}%".strip())
    ax.legend(loc="upper left")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def evaluate_uncertainty(model, data_loader, num_samples: int = 16, seed: int = 0, device=None,
                         n_bins: int = 15) -> dict:
    """Collect predictive probabilities over ``data_loader``; returns ``probs``, ``labels``, ``sample_probs``
    (None for deterministic models), ``per_sample`` uncertainties and the :func:`summarize` metrics."""
    device = device or next(model.parameters()).device
    model.eval()
    stochastic = hasattr(model, "forward_with_uncertainty") and num_samples > 1
    gen = torch.Generator(device=device).manual_seed(seed) if stochastic else None
    all_p, all_s, all_y = [], [], []
    for images, labels in data_loader:
        images = images.to(device)
        if stochastic:
            out = model.forward_with_uncertainty(images, num_samples=num_samples, generator=gen)
            all_p.append(out["probs"].cpu())
            all_s.append(out["sample_probs"].cpu())
        else:
            all_p.append(model(images).float().softmax(-1).cpu())
        all_y.append(torch.as_tensor(labels).long().cpu())
    probs, labels = torch.cat(all_p), torch.cat(all_y)
    samples = torch.cat(all_s, dim=1) if stochastic else None
    if int(labels.max()) >= probs.shape[1] or int(labels.min()) < 0:
        raise ValueError(f"labels range [{int(labels.min())}, {int(labels.max())}] does not fit the model's "
                         f"{probs.shape[1]} classes (build it with --arch-kwargs num_classes=...)")
    per_sample = {"predictive_entropy": entropy(probs)}
    if samples is not None:
        per_sample["mutual_information"] = mutual_information(samples)
    return {"probs": probs, "labels": labels, "sample_probs": samples, "per_sample": per_sample,
            "metrics": summarize(probs, labels, samples, n_bins)}


def save_report(result: dict, output_dir: str, name: str = "uncertainty", n_bins: int = 15) -> dict:
    """Write ``<name>.json`` (metrics) and ``<name>_reliability.png``; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, f"{name}.json")
    with open(json_path, "w") as f:
        json.dump(result["metrics"], f, indent=2)
    png = reliability_diagram(result["probs"], result["labels"], os.path.join(output_dir, f"{name}_reliability.png"),
                              n_bins, title=name)
    return {"json": json_path, "png": png}
