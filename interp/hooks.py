"""TransformerLens-style hook names, resolved onto the decoder of any supported family.

===============================  ==============================================
name                             value (batch, seq, d_model) unless noted
===============================  ==============================================
``blocks.{l}.hook_resid_pre``    input of decoder layer ``l`` (the residual stream)
``blocks.{l}.attn.hook_pattern`` attention probabilities (batch, heads, query, key),
                                 after masking and softmax, as HF eager returns them
``blocks.{l}.hook_attn_out``     output of the attention module (after ``o_proj``,
                                 before any post-attention norm the family has)
``blocks.{l}.hook_mlp_out``      output of the MLP module
``blocks.{l}.hook_resid_post``   output of decoder layer ``l``
``ln_final.hook_normalized``     output of the language model's final norm
===============================  ==============================================

Hook points are ordered by when the forward reaches them (nnsight requires values to
be read in forward order); :attr:`HookPoint.order` is that sort key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import HookNameError, LayerIndexError

# site -> its position inside a decoder layer's forward
SITES = {
    "resid_pre": 0,
    "attn_pattern": 1,
    "attn_out": 2,
    "mlp_out": 3,
    "resid_post": 4,
}

_LAYER_HOOK = re.compile(r"^blocks\.(-?\d+)\.(hook_resid_pre|attn\.hook_pattern|hook_attn_out|hook_mlp_out|hook_resid_post)$")
_SUFFIX_TO_SITE = {
    "hook_resid_pre": "resid_pre",
    "attn.hook_pattern": "attn_pattern",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "hook_resid_post": "resid_post",
}
_SITE_TO_SUFFIX = {v: k for k, v in _SUFFIX_TO_SITE.items()}
FINAL_NORM = "ln_final.hook_normalized"


@dataclass(frozen=True)
class HookPoint:
    """A resolved hook name: a layer (``None`` for the final norm) and a site."""

    name: str
    layer: int | None
    site: str

    @property
    def order(self) -> tuple[int, int]:
        return site_order(self.layer, self.site)


def site_order(layer: int | None, site: str) -> tuple[int, int]:
    """When the forward reaches ``site`` of ``layer``: the final norm comes after every layer."""
    if site == "final_norm":
        return (1 << 30, 0)
    return (layer, SITES[site])


def check_layer(layer: int, n_layers: int) -> int:
    """A layer index in range (negative counts from the end), or one clear error."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        try:
            layer = int(layer)
        except (TypeError, ValueError):
            raise LayerIndexError(f"layer index must be an integer, got {layer!r}") from None
    resolved = layer + n_layers if layer < 0 else layer
    if not 0 <= resolved < n_layers:
        raise LayerIndexError(
            f"layer {layer} is out of range: this model has {n_layers} decoder layers (0..{n_layers - 1})"
        )
    return resolved


def parse_hook_name(name: str, n_layers: int) -> HookPoint:
    """Resolve a TransformerLens-style hook name; unknown names get one clear error."""
    if name == FINAL_NORM:
        return HookPoint(name, None, "final_norm")
    match = _LAYER_HOOK.match(name)
    if not match:
        raise HookNameError(
            f"unknown hook name {name!r}; supported: blocks.{{l}}.hook_resid_pre, "
            "blocks.{l}.attn.hook_pattern, blocks.{l}.hook_attn_out, blocks.{l}.hook_mlp_out, "
            f"blocks.{{l}}.hook_resid_post, {FINAL_NORM}"
        )
    layer = check_layer(int(match.group(1)), n_layers)
    site = _SUFFIX_TO_SITE[match.group(2)]
    return HookPoint(f"blocks.{layer}.{match.group(2)}", layer, site)


def hook_name(layer: int, site: str) -> str:
    return f"blocks.{layer}.{_SITE_TO_SUFFIX[site]}"


def all_hook_names(n_layers: int) -> list[str]:
    """Every hook name of a model with ``n_layers`` decoder layers, in forward order."""
    names = [hook_name(layer, site) for layer in range(n_layers) for site in SITES]
    return names + [FINAL_NORM]
