"""Family adapters, registered by HF ``model_type``.

One module per family; each defines ``ADAPTER``. The registry below is the single
list of supported families (a test keeps it in sync with the modules and with the
tiny-config builders in :mod:`interp.models.tiny`).
"""

from __future__ import annotations

import importlib
from typing import Any

from ...errors import UnsupportedModelError
from .base import FamilyAdapter, GridView, ImageLayout

FAMILY_MODULES = (
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava_onevision",
    "idefics3",
    "mistral3",
    "smolvlm",
    "gemma3",
    "internvl",
    "paligemma",
)


def _adapters() -> dict[str, FamilyAdapter]:
    registry: dict[str, FamilyAdapter] = {}
    for module_name in FAMILY_MODULES:
        adapter = importlib.import_module(f"{__name__}.{module_name}").ADAPTER
        for model_type in adapter.model_types:
            registry[model_type] = adapter
    return registry


def supported_model_types() -> list[str]:
    return sorted(_adapters())


def all_adapters() -> list[FamilyAdapter]:
    seen, out = set(), []
    for adapter in _adapters().values():
        if adapter.name not in seen:
            seen.add(adapter.name)
            out.append(adapter)
    return out


def adapter_for(config_or_model_type: Any) -> FamilyAdapter:
    model_type = (
        config_or_model_type
        if isinstance(config_or_model_type, str)
        else getattr(config_or_model_type, "model_type", None)
    )
    registry = _adapters()
    if model_type not in registry:
        raise UnsupportedModelError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(registry))}")
    return registry[model_type]


__all__ = [
    "FamilyAdapter",
    "GridView",
    "ImageLayout",
    "FAMILY_MODULES",
    "adapter_for",
    "all_adapters",
    "supported_model_types",
]
