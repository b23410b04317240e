#!/usr/bin/env python
"""octo benchmarks: encoders, side-by-side vs timm, octic vs standard, seed backbones, train steps, data, kNN.

Examples (each prints markdown tables; --output-dir also writes benchmark_<mode>.md / .json):

  python launchers/benchmark.py encoders --names vit_small hybrid_vit_small --img-size 224 --batch-size 16 \\
      --repeats 5 [--compile] [--amp] [--kwargs vit_small:init_values=None]
  python launchers/benchmark.py compare [--compile]            # ours vs timm, interleaved, ratios
  python launchers/benchmark.py octic [--widths small base] [--profile]
  python launchers/benchmark.py seeds                          # outgrid_* / snodevit_* / convmixer_*
  python launchers/benchmark.py recipe --scale quickstart vit_s
  python launchers/benchmark.py data --n 16
  python launchers/benchmark.py knn --ns 4096 16384 65536

Names may carry their own image size: ``convmixer_256_8@32``. Times are medians over --repeats after
--warmup calls; "spread" is (max-min)/median. Compare ratios measured in one run, not absolute numbers
across runs, on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from pretrain.benchmark import encoders as E  # noqa: E402
from pretrain.benchmark.report import Table, write_report  # noqa: E402
from pretrain.cpu_allocator import tune_cpu_allocator  # noqa: E402

ENC_COLS = ["encoder", "img_size", "batch", "params_M", "gflops", "fwd_img_s", "fwd_spread", "fwd_bwd_img_s",
            "fwd_bwd_spread", "peak_mem_fwd_mb", "peak_mem_fwd_bwd_mb", "compile", "amp"]
SEED_NAMES = ["convmixer_256_8@32", "convmixer_1024_20_ks9_p14@224", "outgrid_cifar100_7m@32",
              "outgrid_cifar100_14m@32", "outgrid_tinyimagenet_22m@64", "snodevit_tiny@224", "snodevit_small@224"]
COMPARE_PAIRS = ["vit_small:vit_small_patch16_224", "convmixer_1024_20_ks9_p14:convmixer_1024_20_ks9_p14"]
# build ours with timm's architecture: no LayerScale, 224-px pos-embed grid, patch 16
MATCH_TIMM = {"vit_small": {"init_values": None, "patch_size": 16}, "vit_base": {"init_values": None, "patch_size": 16}}


def _common(p: argparse.ArgumentParser, batch: int = 8, repeats: int = 5, warmup: int = 1):
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--output-dir", default=None)


def _enc_args(p):
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--compile", action="store_true", help="torch.compile the measured call")
    p.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    p.add_argument("--kwargs", nargs="*", default=[], help="NAME:KEY=VALUE constructor overrides ('*' = all)")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--fwd-only", action="store_true")


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("encoders", help="params / GFLOPs / img/s / memory per encoder")
    p.add_argument("--names", nargs="+", required=True)
    _enc_args(p)
    _common(p)
    p = sub.add_parser("seeds", help="the seed backbones (outgrid_*, snodevit_*, convmixer_*)")
    p.add_argument("--names", nargs="+", default=SEED_NAMES)
    _enc_args(p)
    _common(p, batch=4, repeats=3)
    p = sub.add_parser("compare", help="ours vs timm, interleaved, with ratios")
    p.add_argument("--pairs", nargs="+", default=COMPARE_PAIRS, help="OURS:TIMM (ours built to match timm)")
    p.add_argument("--compile-ours-only", action="store_true", help="with --compile: compile only octo's model")
    _enc_args(p)
    _common(p)
    p = sub.add_parser("octic", help="octic vs standard: FLOPs at L/H, throughput at S/B, per-op profile")
    p.add_argument("--flop-groups", nargs="*", default=["L/16", "H/14", "H/16"])
    p.add_argument("--widths", nargs="*", default=["small", "base"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--no-inv-early", action="store_true", help="throughput: standard vs hybrid only")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the whole model")
    p.add_argument("--compile-blocks", action="store_true",
                   help="also time every block compiled (as train.compile=true); compiled rows are compared with "
                        "the compiled ViT")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of an octic vs standard block")
    _common(p, batch=4)
    p = sub.add_parser("recipe", help="DINOv2 / supervised train-step img/s and breakdown")
    p.add_argument("--scale", nargs="+", default=["quickstart", "vit_s"], choices=["quickstart", "vit_s"])
    p.add_argument("--vit-s-batch", type=int, default=8,
                   help="batch_size_per_gpu at ViT-S scale (DINOv2's configs use 32-64 per GPU; 8 keeps a step "
                        "near 7 s on a 2-core CPU)")
    p.add_argument("--override", nargs="*", default=[], help="extra key=value for the SSL config")
    # 3 warm-up steps: glibc grows the heap for the first steps' large [rows, 65536] buffers (page faults)
    _common(p, batch=0, repeats=3, warmup=3)
    p = sub.add_parser("prototypes", help="DINOv2 prototype layer: one GEMM vs tiled forward, and its backward")
    p.add_argument("--rows", type=int, nargs="+", default=[140, 280, 560, 1100],
                   help="rows through the layer (a DINOv2 step: cls tokens of every crop + masked patches)")
    p.add_argument("--prototypes", type=int, default=65536)
    p.add_argument("--dim", type=int, default=256, help="bottleneck dim")
    _common(p, repeats=7, warmup=2)
    p = sub.add_parser("data", help="multi-crop augmentation img/s per worker vs plain torchvision PIL")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--size", default="500x375")
    p.add_argument("--local", type=int, default=8)
    _common(p, repeats=3)
    p = sub.add_parser("knn", help="eval.knn chunked search: time and memory vs train-set size")
    p.add_argument("--ns", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--no-unchunked", action="store_true")
    _common(p, repeats=3)
    return ap


def _split_name(item: str, default_size: int) -> tuple[str, int]:
    if "@" in item:
        n, s = item.split("@", 1)
        return n, int(s)
    return item, default_size


def _kwargs_for(kw: dict, name: str) -> dict:
    return {**kw.get("*", {}), **kw.get(name, {})}


def run_encoders(args) -> list[Table]:
    kw = E.parse_kwargs(args.kwargs)
    t = Table(f"Encoders ({args.device}, batch {args.batch_size}, median of {args.repeats})", ENC_COLS)
    skipped = {}
    for item in args.names:
        name, size = _split_name(item, args.img_size)
        case = E.Case(name, (lambda n=name, s=size: E.build_octo(n, s, _kwargs_for(kw, n))), size)
        row = E.measure_case(case, args.batch_size, args.repeats, args.warmup, args.compile, args.amp, args.device,
                             flops=not args.no_flops, memory=not args.no_memory, do_bwd=not args.fwd_only)
        skipped.update(row.get("flops_skipped_ops", {}))
        t.add(**{c: row.get(c) for c in ENC_COLS})
        print(f"  {name}@{size}: fwd {row['fwd_img_s']:.2f} img/s", file=sys.stderr, flush=True)
    mem = "CUDA allocator peak" if str(args.device).startswith("cuda") else "process RSS delta (sampled)"
    t.notes.append(f"GFLOPs: fvcore, 1 multiply-add = 1 FLOP, per image, attention matmuls and einsum counted; "
                   f"not counted: {', '.join(sorted(k.replace('aten::', '') for k in skipped)) or 'none'}. "
                   f"Memory: {mem}. spread = (max-min)/median.")
    return [t]


def _check_pair(pair: str) -> tuple[str, str]:
    """``OURS:TIMM`` -> (ours, theirs), with a clear error for a malformed pair or an unknown name."""
    from pretrain.models import list_encoders

    ours, sep, theirs = pair.partition(":")
    if not sep or not ours or not theirs:
        raise SystemExit(f"--pairs: {pair!r} is not OURS:TIMM (e.g. vit_small:vit_small_patch16_224)")
    if ours not in list_encoders():
        raise SystemExit(f"--pairs: octo has no encoder {ours!r}; see `python launchers/benchmark.py encoders "
                         f"--help` or pretrain.models.list_encoders()")
    try:
        import timm
    except ImportError:
        raise SystemExit("--pairs needs timm: pip install -e '.[dev]'") from None
    if not timm.is_model(theirs):
        family = theirs.split("_")[0]
        raise SystemExit(f"--pairs: timm has no model {theirs!r}; timm's {family}* models: "
                         f"{', '.join(timm.list_models(family + '*')[:12]) or 'none'}")
    return ours, theirs


def run_compare(args) -> list[Table]:
    kw = E.parse_kwargs(args.kwargs)
    cols = ["encoder", "source", "img_size", "batch", "params_M", "compile", "fwd_img_s", "ratio_fwd",
            "fwd_bwd_img_s", "ratio_fwd_bwd", "fwd_spread", "fwd_bwd_spread"]
    pairs = [_check_pair(pair) for pair in args.pairs]  # every name checked before any timing starts
    tables = []
    for ours, theirs in pairs:
        okw = {**MATCH_TIMM.get(ours, {}), **_kwargs_for(kw, ours)}
        cases = [E.Case(ours, lambda: E.build_octo(ours, args.img_size, okw), args.img_size, "octo"),
                 E.Case(f"timm {theirs}", lambda: E.build_timm(theirs, args.img_size), args.img_size, "timm")]
        rows = E.compare(cases, args.batch_size, args.repeats, args.warmup,
                         compile_variants=(False, True) if args.compile else (False,), amp=args.amp,
                         device=args.device, do_bwd=not args.fwd_only, compile_first_only=args.compile_ours_only)
        t = Table(f"{ours} (octo) vs {theirs} (timm), interleaved, {args.device}", cols, notes=[
            f"octo built with {okw}; ratio = img/s relative to the first row (octo eager); "
            f"{args.repeats} alternating rounds after {args.warmup} warm-up."])
        for r in rows:
            t.add(**{c: r.get(c) for c in cols})
        tables.append(t)
        print(f"  done {ours}:{theirs}", file=sys.stderr, flush=True)
    return tables


def run_octic(args) -> tuple[list[Table], dict]:
    from pretrain.benchmark import octic_compare as O

    tables, extra = [], {}
    if args.flop_groups:
        cols = ["group", "encoder", "params_M", "gflops", "flop_ratio", "param_ratio", "attention_gflops"]
        t = Table(f"Octic vs standard at {args.img_size} px: params and GFLOPs (fvcore)", cols, notes=[
            "flop_ratio / param_ratio relative to the standard ViT of the group; hybrid = first half of the "
            "blocks octic; inv_early = same, invariantised at the break. Built with uninitialised weights."])
        for r in O.flop_table(args.flop_groups, args.img_size):
            t.add(**r)
        tables.append(t)
        print("  flops done", file=sys.stderr, flush=True)
    cols = ["encoder", "batch", "gflops", "flop_ratio", "compile", "fwd_img_s", "ratio_fwd", "efficiency_fwd",
            "speed_gain_share_fwd", "fwd_bwd_img_s", "ratio_fwd_bwd", "efficiency_fwd_bwd",
            "speed_gain_share_fwd_bwd", "fwd_spread", "fwd_bwd_spread"]
    for w in args.widths:
        rows = O.throughput_pairs(w, args.img_size, args.batch_size, args.repeats, args.warmup,
                                  inv_early=not args.no_inv_early,
                                  compile_variants=(False,) + ((True,) if args.compile else ())
                                  + (("blocks",) if args.compile_blocks else ()))
        t = Table(f"Octic vs standard throughput, ViT-{w[0].upper()}/16 at {args.img_size} px ({args.device}, "
                  f"interleaved)", cols, notes=[
                      "ratio = speed relative to the standard ViT (>1 faster); efficiency = (1 - time ratio) / "
                      "(1 - FLOP ratio): the share of the FLOP cut saved as time; speed_gain_share = (ratio - 1) / "
                      "(1 / FLOP ratio - 1): the share of the ideal speed gain (x0.61 FLOPs -> x1.51 needed for "
                      "0.8). Target >= 0.8."])
        for r in rows:
            t.add(**{c: r.get(c) for c in cols})
        tables.append(t)
        print(f"  throughput {w} done", file=sys.stderr, flush=True)
    if args.profile:
        prof = O.block_profile("base", args.img_size, max(1, args.batch_size // 2))
        extra["block_profile"] = {k: {kk: vv for kk, vv in v.items() if kk != "table"} if isinstance(v, dict)
                                  and "table" in v else v for k, v in prof.items()}
        for label in ("octic block", "standard block"):
            t = Table(f"torch.profiler, one {label} of hybrid_vit_base (fwd+bwd, self CPU time; "
                      f"{prof[label]['total_ms']:.1f} ms total, {prof['flops'][label]:.3f} GFLOPs/img)",
                      ["op", "self_ms", "share", "calls"])
            for r in prof[label]["ops"]:
                t.add(**r)
            tables.append(t)
    return tables, extra


def run_recipe(args) -> tuple[list[Table], dict]:
    from pretrain.benchmark import recipe_step as R

    tables, extra = [], {}
    phase_cols = ["scale", "phase", "seconds", "share_of_step", "spread"]
    sum_cols = ["scale", "arch", "batch", "crops", "img_per_s", "overhead_fraction", "head_flop_floor",
                "data_fraction"]
    summary = Table("DINOv2 train step (synthetic collated batch, one process)", sum_cols, notes=[
        "overhead_fraction = (teacher heads/centering + student heads+losses fwd/bwd + clip+AdamW + EMA) / "
        "(teacher backbone fwd + student backbone fwd + bwd), phases stamped inside each step by module hooks; "
        "median over steps; target <= 0.15. head_flop_floor = head MACs (teacher fwd + student fwd/bwd, cls rows of "
        "every crop + masked patches) / backbone MACs (fvcore): what the heads cost at the backbone's own efficiency, "
        "before any element-wise work, optimizer or EMA."])
    phases = Table("DINOv2 step breakdown (medians over steps)", phase_cols)
    sup = Table("Supervised step (encoder + linear head + CE + AdamW)",
                ["scale", "arch", "img_size", "batch", "img_per_s", "full_step_s", "backbone_fwd_bwd_s",
                 "overhead_fraction"])
    for scale in args.scale:
        if scale == "quickstart":
            cfg = R.ssl_config("configs/quickstart.yaml", ["distributed.strategy=none"] + args.override)
            if args.batch_size:
                cfg.train.batch_size_per_gpu = args.batch_size
            sup_kw = dict(arch=cfg.student.arch, img_size=cfg.crops.global_crops_size,
                          kwargs={"patch_size": cfg.student.patch_size, **dict(cfg.student.extra)})
        else:
            cfg = R.ssl_config(None, list(R.VIT_S_OVERRIDES) + [f"train.batch_size_per_gpu={args.vit_s_batch}"]
                               + args.override)
            sup_kw = dict(arch="vit_small", img_size=224, kwargs={"patch_size": 16})
        r = R.dinov2_step_breakdown(cfg, args.repeats, args.warmup, args.device)
        extra[f"dinov2_{scale}"] = r
        summary.add(scale=scale, arch=r["arch"], batch=r["batch"],
                    crops=f"2x{r['global_size']} + {r['n_local']}x{r['local_size']}", img_per_s=r["img_per_s"],
                    overhead_fraction=r["overhead_fraction"], head_flop_floor=r["head_flop_floor"],
                    data_fraction=r["data_fraction"])
        step = r["phases_s"]["full step"]
        for k, v in list(r["phases_s"].items()) + list(r["derived_s"].items()):
            phases.add(scale=scale, phase=k, seconds=v, share_of_step=v / step, spread=r["spread"].get(k))
        sb = max(1, r["batch"] * 2) if scale == "vit_s" else r["batch"]
        s = R.supervised_step_breakdown(sup_kw["arch"], sup_kw["img_size"], sb, kwargs=sup_kw["kwargs"],
                                        repeats=args.repeats, warmup=args.warmup, device=args.device)
        extra[f"supervised_{scale}"] = s
        sup.add(scale=scale, arch=s["arch"], img_size=s["img_size"], batch=s["batch"], img_per_s=s["img_per_s"],
                full_step_s=s["phases_s"]["full step"], backbone_fwd_bwd_s=s["phases_s"]["backbone fwd+bwd"],
                overhead_fraction=s["overhead_fraction"])
        print(f"  recipe {scale} done", file=sys.stderr, flush=True)
    tables += [summary, phases, sup]
    return tables, extra


def run_prototypes(args) -> list[Table]:
    from pretrain.benchmark.recipe_step import prototype_forward_timing

    cols = ["rows", "prototypes", "dim", "tile", "one_gemm_ms", "tiled_ms", "speedup", "one_gemm_gmac_s",
            "tiled_gmac_s", "backward_ms", "backward_gmac_s", "layer_uses", "spread"]
    t = Table(f"Prototype layer forward, one GEMM vs tiled ({args.device}, interleaved)", cols, notes=[
        "one GEMM: x @ w.T into a new [rows, prototypes] tensor, then the 1/||w_k|| column scaling in place; "
        "tiled: w[tile] @ x.T into a cache-sized [tile, rows] buffer, stored transposed and scaled; speedup = one "
        "GEMM time / tiled time. backward: dx and dw of the layer (2 GEMMs + the projection). layer_uses: the "
        "path pretrain.dinov2.heads takes for this many rows."])
    for rows in args.rows:
        t.add(**prototype_forward_timing(rows, args.prototypes, args.dim, args.repeats, args.warmup, args.device))
    return [t]


def run_data(args) -> list[Table]:
    from pretrain.benchmark.data_pipeline import augmentation_throughput

    w, h = (int(v) for v in args.size.split("x"))
    r = augmentation_throughput(args.n, (w, h), args.local, repeats=args.repeats, warmup=args.warmup,
                                threads=args.threads or 1)
    t = Table(f"Multi-crop augmentation per worker ({r['threads']} thread, {r['n_images']} JPEGs {r['size']}, "
              f"{r['crops']})", ["pipeline", "img_s_per_worker", "speedup", "spread"],
              notes=["speedup vs the plain torchvision PIL pipeline of the same transforms; target >= 1.5x."])
    for row in r["rows"]:
        t.add(**row)
    return [t]


def run_knn(args) -> list[Table]:
    from pretrain.benchmark.knn_scaling import knn_scaling

    cols = ["N", "search", "chunk", "time_s", "us_per_train_per_query", "peak_mem_mb", "bank_mb", "spread"]
    t = Table(f"k-NN search scaling (eval.knn.local_topk, {args.queries} queries, dim {args.dim}, k=20)", cols,
              notes=["peak_mem_mb: working memory of one search (peak live tensor bytes; the bank is allocated "
                     "before); chunked should stay flat, time per train sample constant."])
    for r in knn_scaling(args.ns, args.dim, args.queries, 20, args.chunk_size, args.repeats, args.warmup,
                         unchunked=not args.no_unchunked):
        t.add(**{c: r[c] for c in cols})
    return [t]


def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    tune_cpu_allocator()
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    extra = {}
    if args.mode in ("encoders", "seeds"):
        tables = run_encoders(args)
    elif args.mode == "compare":
        tables = run_compare(args)
    elif args.mode == "octic":
        tables, extra = run_octic(args)
    elif args.mode == "recipe":
        tables, extra = run_recipe(args)
    elif args.mode == "data":
        tables = run_data(args)
    elif args.mode == "prototypes":
        tables = run_prototypes(args)
    else:
        tables = run_knn(args)
    cmd = "python launchers/benchmark.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                else sys.argv[1:]))
    md = write_report(tables, args.output_dir, f"benchmark_{args.mode}", cmd, extra)
    print(md)
    return md


if __name__ == "__main__":
    main()
