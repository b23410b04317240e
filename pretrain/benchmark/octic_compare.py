"""Octic vs standard ViTs: params and FLOPs at large widths, measured throughput at small widths, per-op profile.

* :func:`flop_table` -- for each family (standard / hybrid / invariant-early [/ fully octic]) at a given
  width and patch: params and fvcore GFLOPs per 224-px image, built with uninitialised storage
  (flops.build_empty), and the FLOP ratio octic / standard.
* :func:`throughput_pairs` -- interleaved fwd and fwd+bwd img/s of standard vs octic at one width, with the
  measured speed-up next to the FLOP ratio, ``efficiency = (1 - time ratio) / (1 - FLOP ratio)`` (share of the
  FLOP cut saved as time) and ``speed_gain_share = (speed-up - 1) / (1 / FLOP ratio - 1)`` (share of the ideal
  speed gain; stricter: x0.61 FLOPs needs x1.51 for 0.8)
  (1.0 = the whole FLOP reduction shows up as speed).
* :func:`block_profile` -- torch.profiler table (self CPU time per op) of one octic block vs one standard block
  (forward + backward), which shows where the octic block spends the time its FLOPs do not account for.
"""
from __future__ import annotations

import torch

from ..models.octic.group import D8Tokens, pack
from .encoders import Case, build_octo, compare
from .flops import count_flops, param_count

# (label, standard, octic variants); every name built with patch_size=patch at img 224
GROUPS = {
    "L/16": ("vit_large", 16, ["hybrid_vit_large", "vit_large_inv_early"]),
    "H/14": ("vit_huge", 14, ["hybrid_deit_huge_patch14", "d8_inv_early_deit_huge_patch14"]),
    "H/16": ("vit_huge", 16, ["hybrid_vit_huge", "vit_huge_inv_early"]),
}


def flop_table(groups=("L/16", "H/14", "H/16"), img_size: int = 224) -> list[dict]:
    rows = []
    for gname in groups:
        std, patch, octics = GROUPS[gname]
        base = None
        for name in [std] + octics:
            kw = {"patch_size": patch}
            model = build_octo(name, img_size, kw, empty=True)
            rep = count_flops(model, torch.randn(1, 3, img_size, img_size))
            n = param_count(model)
            del model
            if base is None:
                base = (rep.total, n)
            rows.append({"group": gname, "encoder": f"{name} (p{patch})", "params_M": n / 1e6, "gflops": rep.gflops,
                         "flop_ratio": rep.total / base[0], "param_ratio": n / base[1],
                         "attention_gflops": rep.by_operator.get("scaled_dot_product_attention", 0) / 1e9})
    return rows


def throughput_pairs(width: str = "small", img_size: int = 224, batch_size: int = 4, repeats: int = 5,
                     warmup: int = 1, inv_early: bool = True, compile_variants=(False,)) -> list[dict]:
    names = [f"vit_{width}", f"hybrid_vit_{width}"] + ([f"vit_{width}_inv_early"] if inv_early else [])
    kw = {"patch_size": 16}
    cases = [Case(n, (lambda n=n: build_octo(n, img_size, kw)), img_size) for n in names]
    models = [c.build() for c in cases]
    flops = [count_flops(m, torch.randn(1, 3, img_size, img_size)).total for m in models]
    rows = compare(cases, batch_size, repeats, warmup, compile_variants=compile_variants, models=models)
    per_case = len(compile_variants)
    for i, r in enumerate(rows):
        fr = flops[i // per_case] / flops[0]
        r["gflops"] = flops[i // per_case] / 1e9
        r["flop_ratio"] = fr
        ref = rows[i % per_case]  # the standard ViT in the same variant (eager vs eager, compiled vs compiled)
        for w in ("fwd", "fwd_bwd"):
            r[f"ratio_{w}"] = r[f"{w}_img_s"] / ref[f"{w}_img_s"]
            tr = 1.0 / r[f"ratio_{w}"]  # time ratio octic / standard
            r[f"efficiency_{w}"] = (1 - tr) / (1 - fr) if fr < 0.999 else None
            # the example reading: x0.61 FLOPs "should give x1.5", i.e. 80 % of the ideal speed gain 1/fr - 1
            r[f"speed_gain_share_{w}"] = (r[f"ratio_{w}"] - 1) / (1 / fr - 1) if fr < 0.999 else None
    return rows


def block_profile(width: str = "base", img_size: int = 224, batch_size: int = 2, row_limit: int = 15,
                  repeats: int = 2) -> dict:
    """Self-CPU-time tables (fwd+bwd) of block 0 (octic) and the last block (standard) of a hybrid ViT."""
    from torch.profiler import ProfilerActivity, profile

    model = build_octo(f"hybrid_vit_{width}", img_size, {"patch_size": 16}).train()
    x = torch.randn(batch_size, 3, img_size, img_size)
    with torch.no_grad():
        xs, _ = model.prepare_tokens(x)
    xs = D8Tokens(*(t.detach().requires_grad_(True) for t in pack(xs)))
    t = torch.randn(batch_size, xs.ones.shape[2], model.embed_dim, requires_grad=True)
    octic_blk, std_blk = model.blocks[0], model.blocks[-1]

    def run(blk, inp):
        out = blk(inp)
        out = out if isinstance(out, tuple) else (out,)
        sum(o.float().mean() for o in out).backward()

    out = {}
    for label, blk, inp in (("octic block", octic_blk, xs), ("standard block", std_blk, t)):
        run(blk, inp)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                run(blk, inp)
        ka = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in ka) / repeats
        top = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)[:row_limit]
        out[label] = {"total_ms": total / 1e3,
                      "ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / repeats / 1e3,
                               "share": e.self_cpu_time_total / repeats / total, "calls": e.count // repeats}
                              for e in top],
                      "table": ka.table(sort_by="self_cpu_time_total", row_limit=row_limit)}
    out["flops"] = {"octic block": count_flops(octic_blk, (xs,), per_sample=False).total / batch_size / 1e9,
                    "standard block": count_flops(std_blk, (t,), per_sample=False).total / batch_size / 1e9}
    return out
