"""The clean pass's keys and values at every layer, for row-suffix restarts and generation.

:func:`fill_kv` returns what the capture kept (``capture(..., keep_kv=True)``) or computes it
once by running each decoder layer again on its captured input into a ``DynamicCache``.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from ..errors import InterpError
from .clean_pass import CleanPass
from .kv_cache import _layer_cache_keyword, _without_cache, cache_layer_kv


def fill_kv(vlm, clean: CleanPass) -> list:
    """The clean pass's keys and values at every layer (``clean.kv``), computed once if the
    capture did not keep them: each decoder layer run again on its captured input, filling a
    ``DynamicCache`` through the layer's own attention (counted as ``kv_forward``)."""
    if clean.kv is not None:
        return clean.kv
    if not clean.restartable:
        raise InterpError("this clean pass kept no layer inputs; capture it restartable")
    layers = vlm.adapter.resolve(vlm.model, "layers")
    cache = DynamicCache()
    vlm.counts["kv_forward"] += 1
    with torch.no_grad():
        for index, layer in enumerate(layers):
            args, kwargs = clean.layer_call(index)
            kwargs = _without_cache(kwargs)
            kwargs[_layer_cache_keyword(layer)] = cache
            kwargs.pop("hidden_states", None)
            hidden = clean.layer_input(index)
            layer(hidden, *args[1:], **kwargs)
            vlm.counts["layer_forwards"] += 1
            vlm.counts["layer_token_rows"] += hidden.shape[1]
    clean.kv = [cache_layer_kv(layer) for layer in cache.layers]
    return clean.kv
