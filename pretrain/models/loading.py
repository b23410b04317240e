"""``load_pretrained``: strict, code-free loading of octo checkpoints and published backbone weights.

Accepted sources: a state dict; a ``.safetensors`` file; a ``.pth``/``.pt`` file (read with
``torch.load(weights_only=True)``, so a crafted pickle cannot run code); an octo training checkpoint
directory (``torch.distributed.checkpoint``). Wrappers are unwrapped (``teacher`` / ``model`` /
``state_dict`` / ``module.`` / ``backbone.`` / ``_orig_mod.``), DINOv2 chunked block names are flattened,
and a family-specific key mapping (``encoder.convert_state_dict``) translates published layouts (octic-vits,
timm ConvMixer). Keys are then matched strictly; any mismatch raises :class:`StrictLoadError` with a
readable report.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

WRAPPER_KEYS = ("teacher", "model", "state_dict", "model_ema", "module")
PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.")
HEAD_PREFIXES = ("dino_head.", "ibot_head.")


class StrictLoadError(RuntimeError):
    pass


@dataclass
class LoadReport:
    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def block(title, keys, limit=15):
            if not keys:
                return []
            shown = "\n".join(f"    {k}" for k in keys[:limit])
            more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
            return [f"  {title} ({len(keys)}):\n{shown}{more}"]

        lines = [f"weights from {self.source}:"]
        lines += block("missing in checkpoint", self.missing)
        lines += block("unexpected in checkpoint", self.unexpected)
        lines += block("shape mismatch", self.mismatched)
        lines += block("ignored (training heads)", self.ignored, limit=3)
        lines += [f"  note: {n}" for n in self.notes]
        if self.ok:
            lines.append("  all keys matched")
        return "\n".join(lines)


def read_state_dict(path: str) -> dict:
    """Read a weights file without executing code."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if os.path.isdir(path):
        from ..checkpoint import load_model_state_from_checkpoint  # DCP directory written by training

        return load_model_state_from_checkpoint(path)
    if path.endswith(".safetensors"):
        from ..checkpoint import read_safetensors  # names the file on truncation

        return read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle payload, ...
        raise StrictLoadError(
            f"could not read {path!r} as a weights-only checkpoint ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "The file is truncated/corrupt or contains arbitrary Python objects, which octo refuses to unpickle."
        ) from e


def unwrap_state_dict(sd: dict, prefer: str = "teacher") -> tuple[dict, list[str]]:
    """Peel wrapper dicts and prefixes; returns (backbone state dict, ignored head keys)."""
    for _ in range(4):
        if prefer in sd and isinstance(sd[prefer], dict):
            sd = sd[prefer]
            continue
        inner = next((k for k in WRAPPER_KEYS if k in sd and isinstance(sd[k], dict)), None)
        if inner is None:
            break
        sd = sd[inner]
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    ignored = []
    if any(k.startswith(("backbone.", "module.backbone.")) for k in sd):
        ignored = [k for k in sd if not k.startswith(("backbone.", "module.backbone."))]
        sd = {k: v for k, v in sd.items() if k not in set(ignored)}
    else:
        ignored = [k for k in sd if k.startswith(HEAD_PREFIXES)]
        sd = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out, ignored


def _flatten_block_chunks(sd: dict, model_keys: set) -> dict:
    if any(re.match(r"blocks\.\d+\.\d+\.", k) for k in model_keys):
        return sd
    out = {}
    for k, v in sd.items():
        m = re.match(r"blocks\.\d+\.(\d+)\.(.*)", k)
        out[f"blocks.{m.group(1)}.{m.group(2)}" if m else k] = v
    return out


def load_pretrained(encoder: nn.Module, path_or_state_dict, strict: bool = True, prefer: str = "teacher",
                    verbose: bool = False) -> LoadReport:
    """Load weights into ``encoder``; strict by default. Returns the :class:`LoadReport`."""
    source = path_or_state_dict if isinstance(path_or_state_dict, str) else "<state dict>"
    raw = read_state_dict(path_or_state_dict) if isinstance(path_or_state_dict, str) else path_or_state_dict
    sd, ignored = unwrap_state_dict(dict(raw), prefer)
    report = LoadReport(source, ignored=ignored)
    if hasattr(encoder, "convert_state_dict"):
        sd = encoder.convert_state_dict(sd, report)
    model_sd = encoder.state_dict()
    sd = _flatten_block_chunks(sd, set(model_sd))
    if hasattr(encoder, "adapt_to_state_dict"):  # e.g. a ViT adopting a checkpoint's stored pos-embed grid
        encoder.adapt_to_state_dict(sd, report)
        model_sd = encoder.state_dict()
    report.missing = sorted(k for k in model_sd if k not in sd)
    report.unexpected = sorted(k for k in sd if k not in model_sd)
    report.mismatched = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in sd if k in model_sd and sd[k].shape != model_sd[k].shape)
    if strict and not report.ok:
        hint = ""
        n_ckpt = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
        if n_ckpt and hasattr(encoder, "n_blocks") and len(n_ckpt) != encoder.n_blocks:
            hint = (f"\n  hint: the checkpoint has {len(n_ckpt)} blocks, the model "
                    f"{getattr(encoder, 'encoder_name', type(encoder).__name__)} has {encoder.n_blocks}: "
                    "check student.arch / the --arch you evaluate with")
        raise StrictLoadError(f"strict loading failed.\n{report}{hint}")
    to_load = {k: v for k, v in sd.items() if k in model_sd and v.shape == model_sd[k].shape}
    encoder.load_state_dict(to_load, strict=False)
    if verbose:
        print(report)
    return report
