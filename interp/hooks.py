"""TransformerLens-style hook names, resolved onto any supported family.

Language model (decoder layer ``l``; values (batch, seq, d_model) unless noted):

===================================  ==============================================
name                                 value
===================================  ==============================================
``hook_embed``                       token embeddings (``embed_tokens`` output; image
                                     placeholders embedded as their token)
``blocks.{l}.hook_resid_pre``        input of decoder layer ``l`` (the residual stream;
                                     layer 0: text embeddings with the image features in)
``blocks.{l}.attn.hook_q/k/v``       query / key / value projections, (batch, seq, heads, d_head),
                                     before rotary embedding (k/v: the key-value heads)
``blocks.{l}.attn.hook_pattern``     attention probabilities (batch, heads, query, key),
                                     after masking and softmax, as HF eager returns them
``blocks.{l}.attn.hook_z``           per-head attention output before ``o_proj``
                                     (batch, seq, heads, d_head)
``blocks.{l}.attn.hook_result``      per-head contribution after ``o_proj`` (batch, seq,
                                     heads, d_model; read-only; no bias)
``blocks.{l}.hook_attn_out``         output of the attention module (after ``o_proj``,
                                     before any post-attention norm the family has)
``blocks.{l}.hook_resid_mid``        residual stream between attention and MLP (read-only)
``blocks.{l}.hook_mlp_out``          output of the MLP module
``blocks.{l}.hook_resid_post``       output of decoder layer ``l``
``ln_final.hook_normalized``         output of the language model's final norm
===================================  ==============================================

Vision side: ``vision.blocks.{l}.hook_resid_post`` (output of vision-tower block ``l``,
in the tower's own layout) and ``vision.hook_projected`` (the projector / merger output:
the image features that replace the image tokens).

Hook points are ordered by when the forward reaches them (nnsight requires values to
be read in forward order): the embeddings, the vision tower, the projector, the decoder
layers, the final norm. :attr:`HookPoint.order` is that sort key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from . import sites as registry
from .errors import HookNameError, LayerIndexError

FINAL_NORM = "ln_final.hook_normalized"
EMBED = "hook_embed"
PROJECTED = "vision.hook_projected"


def layer_sites() -> dict[str, float]:
    """Decoder-layer site -> its place inside the layer's forward (from :mod:`interp.sites`)."""
    return {key: registry.site(key).order for key in registry.keys(stage="decoder")}


def read_only(site: str) -> bool:
    """Whether a site's value may only be read (:attr:`interp.sites.Site.writable`)."""
    return not registry.site(site).writable


@lru_cache(maxsize=8)
def _patterns(rows: tuple) -> tuple[re.Pattern, dict[str, str], dict[str, str]]:
    """``(layered-name pattern, {layered suffix: site}, {global name: site})`` of a registry."""
    layered = {row.name.split("{l}.", 1)[1]: row.key for row in rows if row.layered and row.stage == "decoder"}
    pattern = re.compile(r"^blocks\.(-?\d+)\.(" + "|".join(re.escape(k) for k in layered) + r")$")
    return pattern, layered, {row.name: row.key for row in rows if not row.layered}


@dataclass(frozen=True)
class HookPoint:
    """A resolved hook name: a layer (``None`` for the final norm) and a site."""

    name: str
    layer: int | None
    site: str

    @property
    def order(self) -> tuple[int, int, float]:
        return site_order(self.layer, self.site)


def site_order(layer: int | None, site: str) -> tuple[int, int, float]:
    """When the forward reaches ``site`` of ``layer``: embeddings, vision tower, projector,
    decoder layers, final norm."""
    row = registry.site(site)
    stage, order = registry.forward_key(row)
    return (stage, layer or 0, order)


_VISION_HOOK = re.compile(r"^vision\.blocks\.(-?\d+)\.hook_resid_post$")


def check_layer(layer: int, n_layers: int, what: str = "decoder layers") -> int:
    """A layer index in range (negative counts from the end), or one clear error
    (``1.5``, ``"3"``, ``True`` are refused, never truncated to a layer)."""
    from .validate import layer_index

    layer = layer_index(layer)
    resolved = layer + n_layers if layer < 0 else layer
    if not 0 <= resolved < n_layers:
        raise LayerIndexError(f"layer {layer} is out of range: this model has {n_layers} {what} (0..{n_layers - 1})")
    return resolved


def parse_hook_name(name: str, n_layers: int, n_vision_layers: int | None = None) -> HookPoint:
    """Resolve a TransformerLens-style hook name; unknown names get one clear error.

    Args:
        name: a hook name (``blocks.3.hook_resid_post``; a negative layer counts from the end).
        n_layers: the model's decoder layer count.
        n_vision_layers: range-checks vision-block names; when None they are checked when
            the model runs them (see :meth:`interp.VLM.check_sites`).

    Returns:
        The resolved :class:`HookPoint`: the name with its layer resolved, the layer (None
            for a global name such as ``hook_embed``) and the site.

    Raises:
        HookNameError: ``name`` is not a string or not a hook name.
        LayerIndexError: its layer is out of range.

    Example:
        ```python
        interp.parse_hook_name("blocks.-1.attn.hook_pattern", n_layers=32)
        # HookPoint(name='blocks.31.attn.hook_pattern', layer=31, site='attn_pattern')
        ```
    """
    if not isinstance(name, str):
        raise HookNameError(f"a hook name is a string, got {type(name).__name__}")
    pattern, layered, global_names = _patterns(registry.REGISTRY)
    if name in global_names:
        return HookPoint(name, None, global_names[name])
    vision = _VISION_HOOK.match(name)
    if vision:
        layer = int(vision.group(1))
        if n_vision_layers is not None:
            layer = check_layer(layer, n_vision_layers, "vision-tower blocks")
        elif layer < 0:
            raise LayerIndexError(f"vision block index must be >= 0 here, got {layer}")
        return HookPoint(f"vision.blocks.{layer}.hook_resid_post", layer, "vision_resid_post")
    match = pattern.match(name)
    if not match:
        raise HookNameError(
            f"unknown hook name {name!r}; supported: "
            + ", ".join(row.name for row in registry.REGISTRY)
            + " with {l} a layer (interp.all_hook_names)"
        )
    layer = check_layer(int(match.group(1)), n_layers)
    return HookPoint(f"blocks.{layer}.{match.group(2)}", layer, layered[match.group(2)])


def hook_name(layer: int | None, site: str) -> str:
    """The TransformerLens-style name of a ``(layer, site)``."""
    return registry.site(site).hook_name(layer)


def all_hook_names(n_layers: int, n_vision_layers: int = 0) -> list[str]:
    """Every hook name of a model, in forward order.

    Args:
        n_layers: the model's decoder layer count.
        n_vision_layers: the vision tower's block count (0: no vision-side names).

    Returns:
        The names: the embeddings, the vision blocks and the projector, each decoder
            layer's sites, the final norm.
    """
    names = [EMBED] + [hook_name(layer, "vision_resid_post") for layer in range(n_vision_layers)]
    names += [PROJECTED] if n_vision_layers else []
    names += [hook_name(layer, site) for layer in range(n_layers) for site in layer_sites()]
    return names + [FINAL_NORM]


def natural_key(name: str):
    """Sort key that orders ``blocks.2`` before ``blocks.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
