from .attention import ATTN_BACKENDS, Attention, attention, math_attention, resolve_backend, xformers_available
from .block import Block
from .mlp import Mlp, SwiGLUFFN, get_ffn_layer
from .patch_embed import PatchEmbed, check_divisible
from .regularization import DropPath, LayerScale, drop_path, drop_path_rates

__all__ = [
    "ATTN_BACKENDS", "Attention", "attention", "math_attention", "resolve_backend", "xformers_available",
    "Block", "Mlp", "SwiGLUFFN", "get_ffn_layer", "PatchEmbed", "check_divisible", "DropPath", "LayerScale",
    "drop_path", "drop_path_rates",
]
