"""Encoders behind one contract: ``build_encoder``, ``list_encoders``, ``load_pretrained``."""
from .base import Encoder
from .loading import LoadReport, StrictLoadError, load_pretrained, read_state_dict
from .registry import build_encoder, get_encoder_spec, list_encoders, register_encoder

__all__ = ["Encoder", "build_encoder", "list_encoders", "get_encoder_spec", "register_encoder", "load_pretrained",
           "LoadReport", "StrictLoadError", "read_state_dict"]
