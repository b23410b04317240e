"""k-NN classification on frozen features (DINOv2 protocol), sharded across ranks and memory bounded.

Protocol: the feature is the L2-normalised cls token (``--feature cls``) or cls concatenated with the mean of
the patch tokens (``cls+avgpool``, normalised after concatenation). For a test feature ``q`` the ``max_k = max(ks)``
most similar train features (cosine similarity ``s_j``) are found; their weights are ``w = softmax(s / T)``
over those ``max_k`` neighbours (T = 0.07) and, for each ``k``, class ``c`` scores ``sum_{j<=k} w_j [y_j = c]``.
The softmax over ``max_k`` rescales all scores of one query equally, so it does not change any ranking.

Deterministic tie rules (also used by the numpy reference in the tests): neighbours with equal similarity
are ordered by ascending train index; classes with equal scores are ranked by ascending class index.

Distribution and memory: each rank extracts features for its own shard (samples ``rank::world``) and keeps
**only its shard** of the train features (optionally on CPU). Test features are gathered on every rank in
dataset order. For each test batch every rank searches its shard in chunks of ``chunk_size`` train features
with a running top-k, then the ``world x max_k`` candidates are all-gathered and reduced by a second top-k
with the same tie rule, so the result is exactly the single-process result for any world size.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from pretrain import distributed as du

from . import common

DEFAULT_KS = (10, 20, 100, 200)


# ------------------------------------------------------------------------------------------------ search
def topk_lex(sims: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``k`` entries of largest ``sims``; ties by ascending ``idx`` (``[B, M]`` -> ``[B, k]``)."""
    order = idx.argsort(dim=1, stable=True)
    sims, idx = sims.gather(1, order), idx.gather(1, order)
    order = sims.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return sims.gather(1, order), idx.gather(1, order)


def local_topk(queries: torch.Tensor, bank: torch.Tensor, bank_idx: torch.Tensor, k: int, chunk_size: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``queries @ bank.T`` over a bank searched ``chunk_size`` rows at a time.

    Rows missing because the bank is smaller than ``k`` are padded with similarity ``-inf`` and index -1.
    """
    B = queries.shape[0]
    best_s = torch.full((B, k), float("-inf"), device=device)
    best_i = torch.full((B, k), -1, dtype=torch.long, device=device)
    q = queries.to(device)
    for start in range(0, bank.shape[0], chunk_size):
        chunk = bank[start:start + chunk_size].to(device, non_blocking=True)
        sims = q @ chunk.T
        cidx = bank_idx[start:start + chunk_size].to(device).expand(B, -1)
        best_s, best_i = topk_lex(torch.cat([best_s, sims], 1), torch.cat([best_i, cidx], 1), k)
    return best_s, best_i


def distributed_topk(queries, bank, bank_idx, k, chunk_size, device):
    """Exact global top-``k`` when each rank holds one shard of the bank (every rank gets the result)."""
    s, i = local_topk(queries, bank, bank_idx, k, chunk_size, device)
    if du.get_world_size() > 1:
        comm = device if du.init_distributed().backend == "nccl" else torch.device("cpu")
        s, i = du.all_gather_cat(s.to(comm), dim=1), du.all_gather_cat(i.to(comm), dim=1)
        s, i = topk_lex(s, i, k)
    return s.to(device), i.to(device)


# ------------------------------------------------------------------------------------------------ voting
def vote(sims: torch.Tensor, labels: torch.Tensor, ks, temperature: float, num_classes: int) -> dict:
    """Class scores ``[B, C]`` for each ``k``: ``sum_{j<=k} softmax(sims/T)_j onehot(labels_j)``."""
    w = torch.softmax(sims / temperature, dim=1)
    out = {}
    for k in ks:
        scores = torch.zeros(sims.shape[0], num_classes, dtype=w.dtype, device=w.device)
        out[k] = scores.scatter_add_(1, labels[:, :k], w[:, :k])
    return out


def rank_classes(scores: torch.Tensor) -> torch.Tensor:
    """Classes by descending score, ties by ascending class index."""
    return scores.sort(dim=1, descending=True, stable=True).indices


def knn_accuracy(test_feats, test_labels, bank, bank_idx, train_labels, ks, temperature, num_classes,
                 batch_size=256, chunk_size=65536, device=torch.device("cpu"), allowed: torch.Tensor | None = None):
    """Top-1/top-5 accuracy (%) per ``k``.

    ``bank``/``bank_idx``: this rank's train features and their global indices; ``train_labels``: labels of the
    whole train set (global index -> label); ``allowed``: optional bool mask over global train indices
    (few-shot subsets). ``ks`` are clipped to the number of usable train samples.
    """
    if allowed is not None:
        keep = allowed[bank_idx]
        bank, bank_idx = bank[keep.to(bank.device)], bank_idx[keep]
        n_train = int(allowed.sum())
    else:
        n_train = len(train_labels)
    ks = sorted({min(int(k), n_train) for k in ks})
    max_k = ks[-1]
    train_labels = train_labels.to(device)
    correct = {k: torch.zeros(2, dtype=torch.long) for k in ks}
    n_top = min(5, num_classes)
    for start in range(0, test_feats.shape[0], batch_size):
        q = test_feats[start:start + batch_size]
        y = test_labels[start:start + batch_size].to(device)
        s, i = distributed_topk(q, bank, bank_idx, max_k, chunk_size, device)
        for k, scores in vote(s, train_labels[i], ks, temperature, num_classes).items():
            ranked = rank_classes(scores)[:, :n_top]
            hit = ranked == y[:, None]
            correct[k] += torch.stack([hit[:, 0].sum(), hit.any(1).sum()]).cpu()
    n = max(1, test_feats.shape[0])
    return {k: {"top1": 100.0 * float(c[0]) / n, "top5": 100.0 * float(c[1]) / n} for k, c in correct.items()}


def few_shot_mask(train_labels: torch.Tensor, n_per_class: int, seed: int) -> torch.Tensor:
    """Bool mask selecting ``n_per_class`` random train samples of every class (all of a smaller class)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(train_labels), dtype=torch.bool)
    for c in torch.unique(train_labels).tolist():
        members = torch.nonzero(train_labels == c).flatten()
        pick = members[torch.randperm(len(members), generator=g)[:n_per_class]]
        mask[pick] = True
    return mask


# ------------------------------------------------------------------------------------------------ entry point
def add_knn_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    common.add_model_args(parser, default_batch=64)
    g = parser.add_argument_group("k-NN")
    g.add_argument("--train-dataset", required=True, help="e.g. imagefolder:root=/data/train")
    g.add_argument("--test-dataset", default=None, help="e.g. imagefolder:root=/data/val")
    g.add_argument("--val-dataset", default=None, help="alias of --test-dataset")
    g.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS))
    g.add_argument("--temperature", type=float, default=0.07)
    g.add_argument("--feature", default="cls", choices=["cls", "cls+avgpool"])
    g.add_argument("--n-per-class", type=int, nargs="*", default=[], help="few-shot: samples per class")
    g.add_argument("--n-tries", type=int, default=1, help="few-shot: seeded subsets averaged")
    g.add_argument("--chunk-size", type=int, default=65536, help="train features per similarity chunk")
    g.add_argument("--features-on-cpu", action="store_true", help="keep train features in CPU memory")
    return parser


def main(args) -> dict:
    info = du.init_distributed()
    out_dir = common.output_dir_of(args)
    test_spec = args.test_dataset or args.val_dataset
    if not test_spec:
        raise common.EvalArgsError("k-NN needs --test-dataset (or --val-dataset)")
    if args.temperature <= 0:
        raise common.EvalArgsError(f"--temperature must be > 0, got {args.temperature}")
    model = common.build_model_from_args(args, info.device)
    tf = common.eval_transform(args.resize, args.crop, args.mean, args.std)
    train_ds, test_ds = common.build_dataset(args.train_dataset, tf), common.build_dataset(test_spec, tf)
    num_classes = common.num_classes_of(train_ds, test_ds)
    fn = common.cls_feature_fn(model, args.feature)
    store = torch.device("cpu") if args.features_on_cpu else info.device
    tr_idx, tr_feat, tr_lab = common.extract_local_features(fn, train_ds, args.batch_size, args.num_workers,
                                                            info.device, args.precision, store)
    te_idx, te_feat, te_lab = common.extract_local_features(fn, test_ds, args.batch_size, args.num_workers,
                                                            info.device, args.precision, store)
    train_labels = common.gather_in_order(tr_idx, tr_lab, len(train_ds))
    test_feats = common.gather_in_order(te_idx, te_feat, len(test_ds), device=store)
    test_labels = common.gather_in_order(te_idx, te_lab, len(test_ds))
    if tr_feat.numel() == 0:
        tr_feat = torch.empty(0, test_feats.shape[1], device=store)
    kw = dict(temperature=args.temperature, num_classes=num_classes, batch_size=max(1, args.batch_size * 4),
              chunk_size=args.chunk_size, device=info.device)
    results = {"full": knn_accuracy(test_feats, test_labels, tr_feat, tr_idx, train_labels, args.ks, **kw)}
    for n in args.n_per_class:
        tries = [knn_accuracy(test_feats, test_labels, tr_feat, tr_idx, train_labels,
                              args.ks,
                              allowed=few_shot_mask(train_labels, n, seed=t), **kw) for t in range(args.n_tries)]
        results[f"{n}-shot"] = {k: {m: sum(t[k][m] for t in tries) / len(tries) for m in ("top1", "top5")}
                                for k in tries[0]}
    rows = [(name, k, r["top1"], r["top5"]) for name, per_k in results.items() for k, r in per_k.items()]
    common.print_table(f"k-NN ({args.feature}, T={args.temperature}) on {test_spec}", ["subset", "k", "top-1",
                                                                                      "top-5"], rows)
    record = {"eval": "knn", "arch": getattr(model, "encoder_name", None), "weights": args.weights,
              "train_dataset": args.train_dataset, "test_dataset": test_spec, "feature": args.feature,
              "temperature": args.temperature, "n_train": len(train_ds), "n_test": len(test_ds),
              "results": {name: {str(k): r for k, r in per_k.items()} for name, per_k in results.items()}}
    common.write_results(out_dir, "results_eval_knn.json", record)
    du.barrier()
    return record
