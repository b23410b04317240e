"""Benchmark results as markdown tables (for the README) and JSON (for machines).

A :class:`Table` is a title, ordered columns, rows of dicts and free-text notes. ``write_report`` writes
``<output_dir>/<name>.md`` and ``<output_dir>/<name>.json`` with the exact command line and the environment.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field

import torch


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, **row) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"row keys {sorted(unknown)} are not columns of table {self.title!r}: {self.columns}")
        self.rows.append(row)

    def to_dict(self) -> dict:
        return {"title": self.title, "columns": self.columns, "rows": [_jsonable(r) for r in self.rows],
                "notes": self.notes}


def fmt(v) -> str:
    """Compact human formatting: 3 significant digits for floats, thousands separators for ints."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v).replace("|", "\\|")


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    for r in table.rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in table.columns) + " |")
    for n in table.notes:
        lines += ["", f"*{n}*"] if not lines[-1].startswith("*") else [f"*{n}*"]
    return "\n".join(lines) + "\n"


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return str(v)


def environment() -> dict:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
           "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    from ..cpu_allocator import tune_cpu_allocator

    env["malloc_tuning"] = tune_cpu_allocator()  # see pretrain/cpu_allocator.py
    try:  # version only: importing timm costs seconds
        from importlib.metadata import version

        env["timm"] = version("timm")
    except Exception:  # noqa: BLE001 - optional
        pass
    return env


def render(tables: list[Table], command: str | None = None) -> str:
    from ..cpu_allocator import tune_cpu_allocator

    alloc = "on" if tune_cpu_allocator() else "off (OCTO_MALLOC_TUNING=0 or no glibc)"
    head = (f"Command: `{command}` (CPU malloc tuning: {alloc})\n\n") if command else ""
    return head + "\n".join(to_markdown(t) for t in tables)


def write_report(tables: list[Table], output_dir: str | None, name: str = "benchmark",
                 command: str | None = None, extra: dict | None = None) -> str:
    """Return the markdown; also write ``<name>.md`` / ``<name>.json`` under ``output_dir`` when given."""
    md = render(tables, command)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, f"{name}.md"), "w") as f:
            f.write(md)
        record = {"command": command, "environment": environment(), "tables": [t.to_dict() for t in tables],
                  **_jsonable(extra or {})}
        with open(os.path.join(output_dir, f"{name}.json"), "w") as f:
            json.dump(record, f, indent=2, allow_nan=False)
    return md
