"""Transformers KV-cache plumbing shared by the fast path.

The forward's and a decoder layer's keyword for a cache (it changed name across transformers
versions), one cache layer's keys and values, and captured layer keywords with their cache dropped.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.cache_utils import Cache


def cache_layer_kv(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys, values)`` of one layer of a transformers cache (attention layers hold both)."""
    return layer.keys, layer.values


def cache_keyword(vlm) -> str:
    """The forward's keyword for a KV cache (``cache`` in transformers 5.2x, ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(vlm.model.forward).parameters else "past_key_values"


def _layer_cache_keyword(layer) -> str:
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


def _without_cache(kwargs: dict) -> dict:
    return {key: (None if isinstance(value, Cache) else value) for key, value in kwargs.items()}
