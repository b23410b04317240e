"""Typed configs: recipe default <- ``--config-file`` YAML <- CLI ``key=value`` overrides, validated.

Each recipe declares a dataclass schema (OmegaConf structured config) and a default YAML. ``load_config``
merges the three layers and rewrites OmegaConf's errors into messages that name the full dotted key, the
closest valid keys ("did you mean ...") or the value and the expected type. Derived values (the learning rate
from ``base_lr`` and the global batch via a named scaling rule, ...) are computed by the recipe's
``derive`` function in one visible place, and the fully resolved config is written to
``<output_dir>/config.yaml`` by :func:`save_config`.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A config problem, phrased for the user (key, value, expected type, fix)."""


def _valid_keys(schema_node) -> list[str]:
    if isinstance(schema_node, DictConfig):
        return [str(k) for k in schema_node.keys()]
    return []


def _node_at(cfg: DictConfig, dotted: str):
    node = cfg
    for part in [p for p in dotted.split(".") if p]:
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return node


def _all_leaf_paths(cfg, prefix="") -> list[str]:
    out = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            path = f"{prefix}.{k}" if prefix else str(k)
            child = cfg._get_node(k)
            if isinstance(child, DictConfig):
                out += _all_leaf_paths(child, path)
            else:
                out.append(path)
    return out


def _unknown_key_error(schema: DictConfig, full_key: str, source: str) -> ConfigError:
    parent, _, leaf = full_key.rpartition(".")
    node = _node_at(schema, parent)
    siblings = _valid_keys(node)
    leaves = _all_leaf_paths(schema)
    # the same key under another section first (a misplaced key), then close spellings
    close = [p for p in leaves if p.rpartition(".")[2] == leaf][:3]
    close += [f"{parent}.{c}" if parent else c for c in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)]
    if not close:
        close = difflib.get_close_matches(full_key, leaves, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    where = f"section '{parent}'" if parent else "the top level"
    valid = ", ".join(siblings) if siblings else "(none)"
    return ConfigError(f"unknown config key '{full_key}' (from {source}){hint}\n"
                       f"  valid keys in {where}: {valid}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _merge(base: DictConfig, layer, source: str, schema: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise _unknown_key_error(schema, e.full_key or str(e.key), source) from None
    except ValidationError as e:
        key = e.full_key
        node = _node_at(schema, key)
        expected = None
        if node is not None and hasattr(base, "_get_node"):
            parent, _, leaf = key.rpartition(".")
            pnode = _node_at(base, parent) if parent else base
            try:
                expected = _type_name(pnode._get_node(leaf)._metadata.ref_type)
            except Exception:
                expected = None
        exp = f"; expected type {expected}" if expected else ""
        raise ConfigError(f"config key '{key}' (from {source}) got value {e.value!r} of type "
                          f"{type(e.value).__name__}{exp}\n  ({e.msg.splitlines()[0]})") from None


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"command-line overrides must look like key=value (dotted keys), got {bad}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {e}") from None


def load_config(schema_cls: type, default_yaml: str | None, config_file: str | None = None,
                overrides: Sequence[str] = (), derive: Callable[[DictConfig], None] | None = None) -> DictConfig:
    """Merge schema defaults <- recipe default YAML <- ``config_file`` <- ``overrides``; validate; derive."""
    schema = OmegaConf.structured(schema_cls)
    cfg = schema
    for path, label in ((default_yaml, "recipe default"), (config_file, "--config-file")):
        if not path:
            continue
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} ({label}) does not exist")
        cfg = _merge(cfg, OmegaConf.load(path), f"{label} {path}", schema)
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), "command line", schema)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"config keys without a value: {missing}; set them in the YAML or as key=value")
    if derive is not None:
        derive(cfg)
    return cfg


def save_config(cfg: DictConfig, output_dir: str, name: str = "config.yaml") -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)
    return path


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# learning-rate scaling rules (named, so that configs say which one they use)
SCALING_RULES = {
    "sqrt_wrt_1024": lambda base_lr, batch: base_lr * (batch / 1024.0) ** 0.5,
    "linear_wrt_256": lambda base_lr, batch: base_lr * batch / 256.0,
    "linear_wrt_512": lambda base_lr, batch: base_lr * batch / 512.0,
    "none": lambda base_lr, batch: base_lr,
}


def scaled_lr(rule: str, base_lr: float, global_batch: int) -> float:
    if rule not in SCALING_RULES:
        raise ConfigError(f"optim.scaling_rule={rule!r} is not one of {sorted(SCALING_RULES)}")
    return float(SCALING_RULES[rule](base_lr, global_batch))


def world_size_hint() -> int:
    """World size before the process group exists (launcher/env), for derived values."""
    for key in ("WORLD_SIZE", "SLURM_NTASKS", "OCTO_WORLD_SIZE"):
        if key in os.environ:
            return int(os.environ[key])
    return 1
