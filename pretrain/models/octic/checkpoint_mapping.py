"""Reading published octic-vits checkpoints (DeiT III models and DINOv2 teacher backbones).

octo keeps the reference parameter names (``patch_embed.lift8.conv_A1.weight``, ``pos_embed.0..5``,
``cls_token.i``, ``mask_token.0..7``, ``blocks.i.attn.qkv.lin_A1.weight``, ``blocks.i.ls1.alpha_E``,
``blocks.i.gamma_1.alpha_A1`` (DeiT octic), ``blocks.i.gamma_1`` / ``blocks.i.ls1.gamma`` (standard),
``invariant_proj.*``, ``norm.*``, ``head.*``), so the mapping is the identity except for:

* layout differences between the two styles (cls token as 5 or 8 entries; ``gamma_1/gamma_2`` <-> ``ls1/ls2``),
  so a DeiT checkpoint also loads into a DINOv2-style model and back;
* DeiT checkpoints have no iBOT ``mask_token``: it is filled with its init (zeros) and noted in the report;
* a classifier ``head.*`` in the checkpoint is ignored (noted) when the model was built with ``num_classes=0``.

``adapt_model_to_state_dict`` then adopts the checkpoint's stored positional-embedding grid and its invariant
type (read from the width of ``invariant_proj.weight``; e.g. the paper's DeiT parameter counts imply the
polynomial invariant while the released code builds the power spectrum).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .group import to_5tuple, to_8tuple
from .invariants import build_invariant, invariant_type_for_width

_LS_PAIRS = (("gamma_1", "ls1"), ("gamma_2", "ls2"))


def _convert_token_list(sd: dict, name: str, n_model: int) -> None:
    """Convert a token ParameterList between the 5-entry (DeiT cls) and the 8-entry layout in place."""
    keys = sorted((k for k in sd if re.fullmatch(rf"{name}\.\d+", k)), key=lambda k: int(k.rsplit(".", 1)[1]))
    if not keys or len(keys) == n_model:
        return
    vals = tuple(sd.pop(k) for k in keys)
    if len(vals) == 5 and n_model == 8:
        new = to_8tuple(vals)
    elif len(vals) == 8 and n_model == 5:
        new = to_5tuple(vals)
    else:
        raise ValueError(f"checkpoint has {len(vals)} {name} entries, the model expects {n_model}")
    for i, v in enumerate(new):
        sd[f"{name}.{i}"] = v.contiguous().clone()


def _rename_layer_scales(sd: dict, model_keys: set) -> dict:
    out = {}
    for k, v in sd.items():
        new = k
        if k not in model_keys:
            m = re.match(r"(blocks\.\d+\.)([a-z_0-9]+)(.*)", k)
            if m:
                for deit_name, dino_name in _LS_PAIRS:
                    for src, dst in ((deit_name, dino_name), (dino_name, deit_name)):
                        if m.group(2) != src:
                            continue
                        rest = m.group(3)
                        cands = [m.group(1) + dst + rest]
                        if rest == "":  # standard DeiT gamma_1 -> DINOv2 ls1.gamma
                            cands.append(m.group(1) + dst + ".gamma")
                        if rest == ".gamma":  # DINOv2 ls1.gamma -> DeiT gamma_1
                            cands.append(m.group(1) + dst)
                        new = next((c for c in cands if c in model_keys), new)
        out[new] = v
    return out


def convert_state_dict(model, sd: dict, report) -> dict:
    sd = dict(sd)
    model_sd = model.state_dict()
    model_keys = set(model_sd)
    for name in ("cls_token", "mask_token", "register_tokens"):
        n_model = sum(1 for k in model_keys if re.fullmatch(rf"{name}\.\d+", k))
        if n_model:
            _convert_token_list(sd, name, n_model)
    sd = _rename_layer_scales(sd, model_keys)
    if not any(k.startswith("mask_token.") for k in sd) and any(k.startswith("blocks.") for k in sd):
        for k in model_keys:
            if k.startswith("mask_token."):
                sd[k] = torch.zeros_like(model_sd[k])
        report.notes.append("checkpoint has no mask_token (DeiT III): iBOT mask tokens set to their init (zeros)")
    if getattr(model, "head", None) is None:
        heads = [k for k in sd if k.startswith("head.")]
        if heads:
            report.ignored.extend(heads)
            report.notes.append("classifier head.* ignored: the encoder was built with num_classes=0 "
                                "(pass num_classes to keep it)")
            sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return sd


def adapt_model_to_state_dict(model, sd: dict, report) -> None:
    pos0 = sd.get("pos_embed.0")
    cur = model.pos_embed[0]
    if pos0 is not None and pos0.ndim == 3 and pos0.shape != cur.shape and pos0.shape[-1] == cur.shape[-1]:
        side = 2 * pos0.shape[0]
        report.notes.append(f"octic pos_embed grid {model.pos_grid[0]}x{model.pos_grid[1]} -> {side}x{side} "
                            "(the checkpoint's stored grid; it is interpolated to any input size at run time)")
        model.pos_grid = (side, side)
        model.pos_embed = nn.ParameterList(
            [nn.Parameter(torch.zeros(pos0.shape, device=cur.device, dtype=cur.dtype)) for _ in range(6)])
    w = sd.get("invariant_proj.weight")
    if w is not None and getattr(model, "invariant", False) and w.shape != model.invariant_proj.weight.shape:
        name = invariant_type_for_width(w.shape[1], model.embed_dim)
        if name is not None and w.shape[0] == model.embed_dim:
            report.notes.append(f"invariant_type {model.invariant_type!r} -> {name!r} (read from the width "
                                f"{w.shape[1]} of the checkpoint's invariant_proj.weight)")
            old = model.invariant_proj
            model.invariant_type = name
            model.invariantization = build_invariant(name, model.embed_dim)
            model.invariant_proj = nn.Linear(w.shape[1], model.embed_dim).to(device=old.weight.device,
                                                                            dtype=old.weight.dtype)
