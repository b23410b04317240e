"""Report files are valid JSON / markdown; the launcher's encoder and knn modes run end to end on tiny inputs."""
import importlib.util
import json
import math
import os
import re

import pytest
import torch

from pretrain.benchmark.report import Table, fmt, to_markdown, write_report
from pretrain.models import build_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _launcher():
    spec = importlib.util.spec_from_file_location("bench_launcher", os.path.join(ROOT, "launchers", "benchmark.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_writes_valid_json_and_markdown(tmp_path):
    t = Table("T | one", ["name", "x", "n"], notes=["a note"])
    t.add(name="a|b", x=1.23456, n=12345)
    t.add(name="c", x=float("nan"), n=None)
    with pytest.raises(KeyError, match="not columns"):
        t.add(bogus=1)
    md = write_report([t], str(tmp_path), "r", command="cmd --x", extra={"k": torch.tensor(2.0)})
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["command"] == "cmd --x" and rec["k"] == 2.0
    assert rec["tables"][0]["rows"][1]["x"] is None  # NaN -> null (strict JSON)
    assert (tmp_path / "r.md").read_text() == md
    lines = [ln for ln in to_markdown(t).splitlines() if ln.startswith("|")]
    assert len(lines) == 4  # header, separator, 2 rows
    assert all(len(re.split(r"(?<!\\)\|", ln)) - 2 == len(t.columns) for ln in lines)  # 3 cells per line
    assert "a\\|b" in lines[2] and "12,345" in lines[2] and "1.23" in lines[2]
    assert fmt(None) == "-" and fmt(True) == "yes" and fmt(0.000123) == "0.000123"


def test_launcher_encoders_smoke(tmp_path):
    kw = ["vit_small:embed_dim=16", "vit_small:depth=1", "vit_small:num_heads=2", "vit_small:patch_size=8"]
    _launcher().main(["encoders", "--names", "vit_small", "--kwargs", *kw, "--img-size", "16", "--batch-size", "2",
                      "--repeats", "2", "--warmup", "0", "--output-dir", str(tmp_path)])
    rec = json.loads((tmp_path / "benchmark_encoders.json").read_text())
    row = rec["tables"][0]["rows"][0]
    ref = build_encoder("vit_small", embed_dim=16, depth=1, num_heads=2, patch_size=8, img_size=16)
    assert row["params_M"] * 1e6 == pytest.approx(sum(p.numel() for p in ref.parameters()))
    # 4 patches + cls, D=16: conv 4*16*192 + block (5*16*48 + 2*25*16 + 5*16*16 + 2*5*16*64) + 2 layer norms
    matmul = 4 * 16 * 192 + 5 * 16 * 48 + 2 * 25 * 16 + 5 * 16 * 16 + 2 * 5 * 16 * 64
    assert matmul / 1e9 <= row["gflops"] <= 1.2 * matmul / 1e9
    assert row["fwd_img_s"] > 0 and row["fwd_bwd_img_s"] > 0 and math.isfinite(row["peak_mem_fwd_bwd_mb"])
    assert "| vit_small |" in (tmp_path / "benchmark_encoders.md").read_text()


def test_launcher_knn_smoke(tmp_path):
    _launcher().main(["knn", "--ns", "64", "256", "--dim", "8", "--queries", "16", "--chunk-size", "32",
                      "--repeats", "1", "--warmup", "0", "--output-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "benchmark_knn.json").read_text())["tables"][0]["rows"]
    assert [(r["N"], r["search"]) for r in rows] == [(64, "chunked"), (64, "unchunked"), (256, "chunked"),
                                                     (256, "unchunked")]
    assert all(r["time_s"] > 0 for r in rows)


@pytest.mark.parametrize("pair, message", [
    ("vit_small", "is not OURS:TIMM"),
    ("vit_smal:vit_small_patch16_224", "octo has no encoder 'vit_smal'"),
    ("convmixer_256_8:convmixer_256_8", "timm has no model 'convmixer_256_8'"),
])
def test_launcher_compare_rejects_bad_pairs_before_timing(tmp_path, pair, message):
    """Every pair is checked before any model is built or timed; the error names the option and the bad name."""
    with pytest.raises(SystemExit, match=re.escape(message)):
        _launcher().main(["compare", "--pairs", "vit_small:vit_small_patch16_224", pair,
                          "--output-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_launcher_compare_smoke(tmp_path):
    """Our ViT-S/16 vs timm's at 32 px: one table with both rows, the first as the ratio reference, same params."""
    _launcher().main(["compare", "--pairs", "vit_small:vit_small_patch16_224", "--img-size", "32", "--batch-size",
                      "1", "--repeats", "1", "--warmup", "0", "--output-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "benchmark_compare.json").read_text())["tables"][0]["rows"]
    assert [r["source"] for r in rows] == ["octo", "timm"]
    assert rows[0]["ratio_fwd"] == pytest.approx(1.0) and rows[1]["ratio_fwd"] > 0
    assert rows[0]["params_M"] == pytest.approx(rows[1]["params_M"], rel=1e-3)


def test_launcher_prototypes_smoke(tmp_path):
    """Both forward paths of the prototype layer are timed side by side; the row count picks the layer's path."""
    from pretrain.dinov2 import heads

    _launcher().main(["prototypes", "--rows", "8", str(heads.TILED_MAX_ROWS + 1), "--prototypes", "512", "--dim",
                      "16", "--repeats", "1", "--warmup", "0", "--output-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "benchmark_prototypes.json").read_text())["tables"][0]["rows"]
    assert [r["layer_uses"] for r in rows] == ["tiled", "one GEMM"]
    assert all(r["one_gemm_ms"] > 0 and r["tiled_ms"] > 0 and r["backward_ms"] > 0 for r in rows)
    assert rows[0]["speedup"] == pytest.approx(rows[0]["one_gemm_ms"] / rows[0]["tiled_ms"])
