"""One registry of encoders: ``register_encoder`` (decorator), ``build_encoder``, ``list_encoders``."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    factory: Callable[..., Any]
    family: str
    # small overrides used by the shared contract test (CPU, seconds) and the test image side
    test_overrides: dict = field(default_factory=dict)
    test_img_size: int = 32
    description: str = ""


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(name: str, *, family: str, test_overrides: dict | None = None, test_img_size: int = 32,
                     description: str = ""):
    """Register ``factory(**overrides) -> nn.Module`` under ``name``."""

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is registered twice")
        _REGISTRY[name] = EncoderSpec(name, factory, family, dict(test_overrides or {}), test_img_size, description)
        return factory

    return deco


def _ensure_loaded():
    # importing the model modules registers their encoders; module-level constant tensors (e.g. the octic group
    # tables) must land on the CPU even when the first lookup happens inside ``with torch.device("meta")``
    import torch

    with torch.device("cpu"):
        from . import _all  # noqa: F401


def list_encoders(family: str | None = None) -> list[str]:
    _ensure_loaded()
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def get_encoder_spec(name: str) -> EncoderSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown encoder {name!r}{hint} (all encoders: pretrain.models.list_encoders())")
    return _REGISTRY[name]


def build_encoder(name: str, **overrides):
    """Build the registered encoder ``name``; keyword overrides go to its constructor."""
    spec = get_encoder_spec(name)
    try:
        model = spec.factory(**overrides)
    except TypeError as e:
        raise TypeError(f"build_encoder({name!r}): {e}") from e
    model.encoder_name = name
    return model
