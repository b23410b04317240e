"""Octic (D8-equivariant) ViTs of "Stronger ViTs With Octic Equivariance" (arXiv 2505.15441).

Importing this package registers the encoders (hybrid / invariant-early / fully octic; DINOv2 and DeiT III names).
"""
from . import group, invariants, layers  # noqa: F401
from .model import OcticVisionTransformer  # noqa: F401  (registers the encoders)

__all__ = ["OcticVisionTransformer", "group", "invariants", "layers"]
