"""Tiny randomly initialised models of every supported family, built offline.

They exercise the real HF classes and processors (no vendored modeling code) at a
size where a forward takes milliseconds: the structure tests and the quick start
run on them. Each family module defines ``MODEL_TYPE`` and ``build(spec)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ...errors import UnsupportedModelError
from ..adapters import FAMILY_MODULES
from .common import TinySpec

# one tiny builder module per family module, under the same name
TINY_MODULES = FAMILY_MODULES


def _builders() -> dict:
    from ..processors import quiet_torchvision_fallback

    out = {}
    with quiet_torchvision_fallback():  # the family modules import their processor classes
        for name in TINY_MODULES:
            module = importlib.import_module(f"{__name__}.{name}")
            out[module.MODEL_TYPE] = module.build
    return out


def tiny_model_types() -> list[str]:
    return sorted(_builders())


def build_tiny(model_type: str, spec: TinySpec | None = None, **overrides):
    """``(model, processor)`` of a tiny random model of ``model_type``."""
    builders = _builders()
    if model_type not in builders:
        raise UnsupportedModelError(
            f"no tiny builder for model_type {model_type!r}; available: {', '.join(sorted(builders))}"
        )
    spec = (spec or TinySpec()).with_(**overrides)
    from ..processors import quiet_torchvision_fallback

    with quiet_torchvision_fallback():
        return builders[model_type](spec)


def save_tiny(model_type: str, directory: str | Path, spec: TinySpec | None = None, **overrides) -> Path:
    """Write a tiny model and its processor as an ordinary HF model directory."""
    model, processor = build_tiny(model_type, spec, **overrides)
    directory = Path(directory)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


__all__ = ["TinySpec", "build_tiny", "save_tiny", "tiny_model_types", "TINY_MODULES"]
