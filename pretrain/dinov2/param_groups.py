"""Optimizer parameter groups with layer-wise lr decay, weight-decay exclusions and the last-layer flag.

Each trainable parameter gets ``{params, lr_multiplier, wd_multiplier, is_last_layer, name}``:

* lr multiplier ``rate ** (num_lr_layers - 1 - layer_id)`` (= ``rate ** (n_blocks + 1 - layer_id)`` for a ViT) for parameters of a backbone, i.e. any sub-module exposing
  ``layer_id(name)`` and ``n_blocks`` (the Encoder contract); ``layer_id`` receives the name relative to that
  module (``blocks.3.attn.qkv.weight``). Parameters outside a backbone (the heads) get 1.
* ``patch_embed`` in the name: lr multiplier additionally x ``patch_embed_lr_mult``.
* wd multiplier 0 for names ending ``.bias`` or containing ``norm`` or ``gamma`` (LayerScale), as DINOv2; with
  ``no_wd_on_embeddings=True`` also for the backbone's ``no_weight_decay_names()`` (pos_embed, cls/register/mask
  tokens), which DINOv2 does decay.
* ``last_layer`` in the name: ``is_last_layer=True`` (the caller applies the last-layer lr schedule).

Wrapper prefixes (``_fsdp_wrapped_module.``, ``_orig_mod.``, ``_checkpoint_wrapped_module.``, ``module.``) are
stripped from the reported names.
"""
from __future__ import annotations

import re
from collections import OrderedDict

from torch import nn

_WRAPPER_RE = re.compile(r"(^|\.)(_fsdp_wrapped_module|_orig_mod|_checkpoint_wrapped_module)(?=\.|$)")


def clean_param_name(name: str) -> str:
    name = _WRAPPER_RE.sub(r"\1", name).replace("..", ".").strip(".")
    return name[len("module."):] if name.startswith("module.") else name


def _is_backbone(m: nn.Module) -> bool:
    return callable(getattr(m, "layer_id", None)) and isinstance(getattr(m, "n_blocks", None), int)


def _find_backbones(model: nn.Module) -> dict[str, nn.Module]:
    """Cleaned module prefix -> backbone module (the innermost module for a wrapped one)."""
    found: dict[str, nn.Module] = {}
    for prefix, m in model.named_modules():
        if _is_backbone(m):
            found[clean_param_name(prefix)] = m  # later (inner) entries overwrite wrappers
    # keep the outermost backbone only (a backbone nested in another one belongs to it)
    return {p: m for p, m in found.items()
            if not any(q != p and (q == "" or p.startswith(q + ".")) for q in found)}


def _within(name: str, prefix: str) -> str | None:
    if prefix == "":
        return name
    return name[len(prefix) + 1:] if name.startswith(prefix + ".") else None


def get_params_groups(model: nn.Module, lr_decay_rate: float = 1.0, patch_embed_lr_mult: float = 1.0,
                      no_wd_on_embeddings: bool = False) -> list[dict]:
    """One dict per trainable parameter (see the module docstring)."""
    backbones = _find_backbones(model)
    groups = []
    for raw_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = clean_param_name(raw_name)
        lr_mult, wd_mult = 1.0, 1.0
        for prefix, bb in backbones.items():
            sub = _within(name, prefix)
            if sub is None:
                continue
            top = getattr(bb, "num_lr_layers", bb.n_blocks + 2) - 1  # n_blocks + 1 for single-stage encoders
            layer_id = int(bb.layer_id(sub))
            if not 0 <= layer_id <= top:
                raise ValueError(f"{type(bb).__name__}.layer_id({sub!r}) = {layer_id} outside [0, num_lr_layers-1="
                                 f"{top}]")
            lr_mult = lr_decay_rate ** (top - layer_id)
            if no_wd_on_embeddings:
                nowd = getattr(bb, "no_weight_decay_names", lambda: set())()
                if any(sub == n or sub.startswith(n + ".") for n in nowd):
                    wd_mult = 0.0
            break
        # no decay on biases, norms and LayerScale (``gamma``; the octic LayerScaleD8 stores ``ls1.alpha_*``)
        if name.endswith(".bias") or "norm" in name or "gamma" in name or ".ls1." in name or ".ls2." in name:
            wd_mult = 0.0
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        groups.append({"params": param, "lr_multiplier": lr_mult, "wd_multiplier": wd_mult,
                       "is_last_layer": "last_layer" in name, "name": name})
    return groups


def fuse_params_groups(groups: list[dict], keys=("lr_multiplier", "wd_multiplier", "is_last_layer")) -> list[dict]:
    """Merge per-parameter dicts sharing ``keys`` into optimizer-ready groups (multipliers kept as extra keys)."""
    fused: "OrderedDict[tuple, dict]" = OrderedDict()
    for g in groups:
        ident = tuple(g[k] for k in keys)
        if ident not in fused:
            fused[ident] = {"params": [], **{k: g[k] for k in keys}}
        fused[ident]["params"].append(g["params"])
    return list(fused.values())
