"""Logistic regression on cached frozen features (DINOv2 ``log_regression`` protocol, CPU, scikit-learn).

The cls features of train / (held-out) val / test are extracted once (sharded over ranks, gathered in dataset
order, float64). ``C`` is swept over ``10^linspace(-6, 5, n_c)`` (45 values by default, as DINOv2) with an L2
multinomial ``LogisticRegression`` (L-BFGS, ``max_iter``). The C values are split round-robin across ranks and the
scores shared. The best ``C`` on the validation split (``--val-dataset`` or ``--val-fraction`` of train) is refit
on train + val and reported on ``--test-dataset`` (or on val when no test set is given).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.distributed as dist

from pretrain import distributed as du

from . import common


def c_grid(values, n_c: int) -> list[float]:
    if values:
        return [float(c) for c in values]
    return [float(c) for c in np.logspace(-6, 5, n_c)]


def fit(train_x, train_y, c: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=max_iter, tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(train_x, train_y)
    return clf


def sweep(train_x, train_y, val_x, val_y, cs, max_iter: int) -> dict:
    """Validation accuracy (%) per C; each rank fits ``cs[rank::world]``, results are shared."""
    rank, world = du.get_rank(), du.get_world_size()
    mine = {c: 100.0 * float((fit(train_x, train_y, c, max_iter).predict(val_x) == val_y).mean())
            for c in cs[rank::world]}
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
        mine = {c: a for p in parts for c, a in p.items()}
    return {c: mine[c] for c in cs}


def _features(model, ds, args, device):
    fn = common.cls_feature_fn(model, "cls", normalize=False)
    idx, f, y = common.extract_local_features(fn, ds, args.batch_size, args.num_workers, device, args.precision)
    return (common.gather_in_order(idx, f, len(ds)).double().numpy(),
            common.gather_in_order(idx, y, len(ds)).numpy())


def main(args) -> dict:
    info = du.init_distributed()
    out_dir = common.output_dir_of(args)
    model = common.build_model_from_args(args, info.device)
    tf = common.eval_transform(args.resize, args.crop, args.mean, args.std)
    if args.val_dataset:
        train_ds, val_ds = common.build_dataset(args.train_dataset, tf), common.build_dataset(args.val_dataset, tf)
    else:
        from pretrain.data.datasets import split_dataset

        tr, va = split_dataset(common.build_dataset(args.train_dataset, None), args.val_fraction, seed=args.seed)
        train_ds, val_ds = tr.with_transform(tf), va.with_transform(tf)
    test_ds = common.build_dataset(args.test_dataset, tf) if args.test_dataset else None
    tx, ty = _features(model, train_ds, args, info.device)
    vx, vy = _features(model, val_ds, args, info.device)
    cs = c_grid(args.c_values, args.n_c)
    scores = sweep(tx, ty, vx, vy, cs, args.max_iter)
    best_c = max(cs, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    record = {"eval": "logreg", "arch": getattr(model, "encoder_name", None), "weights": args.weights,
              "train_dataset": args.train_dataset, "test_dataset": args.test_dataset, "best_C": best_c,
              "val_top1": scores[best_c], "val_top1_per_C": {f"{c:.3g}": a for c, a in scores.items()}}
    rows = [("val", f"{best_c:.3g}", scores[best_c])]
    if test_ds is not None:
        ex, ey = _features(model, test_ds, args, info.device)
        if du.is_main_process():
            clf = fit(np.concatenate([tx, vx]), np.concatenate([ty, vy]), best_c, args.max_iter)
            acc = 100.0 * float((clf.predict(ex) == ey).mean())
        else:
            acc = None
        record["test_top1"] = du.broadcast_object(acc)
        rows.append(("test", f"{best_c:.3g}", record["test_top1"]))
    common.print_table(f"logistic regression ({len(cs)} C values)", ["split", "C", "top-1"], rows)
    common.write_results(out_dir, "results_eval_logreg.json", record)
    du.barrier()
    return record
