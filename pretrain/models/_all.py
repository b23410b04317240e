"""Imports every model module so that its encoders register. New families add one line here."""
from . import vit  # noqa: F401

import importlib

for _mod in ("octic", "convmixer", "outgrid", "snodevit"):
    try:
        importlib.import_module(f"{__package__}.{_mod}")
    except ModuleNotFoundError as e:  # family not written yet
        if e.name != f"{__package__}.{_mod}":
            raise
