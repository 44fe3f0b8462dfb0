"""Recording interventions: attention to the image tokens, and any hook point.

Recordings go into the step context's ``records`` dict under
``(name, layer, step)`` keys, where later interventions in the same pass may read
them; :class:`interp.interventions.plan.RunResult` organises them afterwards.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Iterable

import torch

from ..errors import InterpError
from ..hooks import parse_hook_name
from .base import Intervention, StepContext, resolve_positions
from .runtime import attention_probs, query_window


class RecordAttention(Intervention):
    """Attention from query position(s) to the image tokens, per layer.

    Stores ``(batch, n_query, n_image_tokens)`` (``heads="mean"``, the head mean) or
    ``(batch, heads, n_query, n_image_tokens)`` (``heads="all"``) under
    ``(name, layer, step)``. Only the requested query rows are computed, from the
    attention function's own queries and keys, so SDPA models stay on SDPA.
    :meth:`RunResult.attention_grid` puts the values on the image's patch grid.

    Args:
        layers: the decoder layers: an int, an iterable of ints or ``"all"``.
        query: the query positions: ``"last"``, ``"image"``, ``"text"``, ``"question"``,
            ``"all"`` or explicit positions (while decoding, the new token's row).
        heads: ``"mean"`` (the head mean) or ``"all"`` (every head).
        keys: ``"image"`` (the image-token columns) or ``"all"`` (the whole key axis).
        name: the name the recordings are stored under.
        every_step: also record at every generation step (default: the prefill only).

    Raises:
        InterpError: ``heads`` or ``keys`` is none of those.

    Example:
        ```python
        result = vlm.run(sample, interp.RecordAttention(layers="all", query="last"))
        result.stack("attention")  # [n_layers, batch, 1, n_image_tokens]
        result.attention_grid(layer=2)  # [rows, cols] on the image's patch grid
        ```
    """

    def __init__(
        self,
        layers: Any = "all",
        query: Any = "last",
        heads: str = "mean",
        keys: str = "image",
        name: str = "attention",
        every_step: bool = False,
    ):
        if heads not in ("mean", "all"):
            raise InterpError(f"heads must be 'mean' or 'all', got {heads!r}")
        if keys not in ("image", "all"):
            raise InterpError(f"keys must be 'image' or 'all', got {keys!r}")
        self.layers = layers
        self.query = query
        self.heads = heads
        self.keys = keys
        self.name = name
        self.every_step = every_step

    def _bind(self, prepared) -> None:
        self._query = resolve_positions(
            self.query,
            image_positions=prepared.image_positions,
            question_positions=prepared.question_positions,
            seq_len=prepared.seq_len,
            what="query",
        )
        self._seq_len = prepared.seq_len

    def sites(self):
        return [(layer, "attn_pattern") for layer in self.layers]

    def recorded_as(self, layer, site):
        query = (self._seq_len - 1,) if isinstance(self._query, str) else tuple(self._query.tolist())
        return ("attention", layer, query, self.heads, self.keys), (self.name, layer)

    def at_site(self, layer, site, call, ctx: StepContext):
        window = query_window(call)
        if isinstance(self._query, str) or ctx.step > 0:
            rows = torch.tensor([len(window) - 1])
        else:
            rows = ctx.local_rows(self._query, len(window))
        device = call[0][1].device
        probs = attention_probs(call, rows.to(device))
        if self.keys == "image":
            probs = probs[..., ctx.image_positions.to(device)]
        if self.heads == "mean":
            probs = probs.mean(dim=1)
        ctx.records[(self.name, layer, ctx.step)] = probs.detach()
        return call


class RecordResidual(Intervention):
    """Record the values at TransformerLens-style hook names (any of :mod:`interp.hooks`).

    Each value is stored under ``(hook name, layer, step)``.

    Args:
        hook_names: one hook name or several (``blocks.{l}.hook_resid_post`` ...).
        positions: keep only those sequence positions of residual-shaped values (and
            those query rows of ``attn.hook_pattern``) to save memory: a selector as for
            :class:`RecordAttention`'s ``query``, or None (every position).
        every_step: also record at every generation step (default: the prefill only).

    Raises:
        InterpError: ``hook_names`` is empty.

    Example:
        ```python
        result = vlm.run(sample, interp.RecordResidual(["blocks.3.hook_resid_post"], positions="image"))
        result.record("blocks.3.hook_resid_post", layer=3)  # [batch, n_image_tokens, d_model]
        ```
    """

    # set by bind(): what the run resolved for one prompt
    _points: list[Any]
    _positions: torch.Tensor | None

    def __init__(self, hook_names: str | Iterable[str], positions: Any = None, every_step: bool = False):
        self.hook_names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
        if not self.hook_names:
            raise InterpError("RecordResidual needs at least one hook name")
        self.positions = positions
        self.every_step = every_step
        self.layers = "all"

    def bind(self, n_layers: int, prepared):
        bound = super().bind(n_layers, prepared)
        bound._points = [parse_hook_name(name, n_layers) for name in self.hook_names]
        bound._positions = None
        if self.positions is not None:
            bound._positions = resolve_positions(
                self.positions,
                image_positions=prepared.image_positions,
                question_positions=prepared.question_positions,
                seq_len=prepared.seq_len,
                what="record",
            )
            if isinstance(bound._positions, str):
                bound._positions = torch.tensor([prepared.seq_len - 1])
        return bound

    def sites(self):
        return [(point.layer, point.site) for point in self._points]

    def recorded_as(self, layer, site):
        positions = None if self._positions is None else tuple(self._positions.tolist())
        return ("residual", layer, site, positions), (_hook_label(layer, site), layer)

    def at_site(self, layer, site, value, ctx: StepContext):
        if site != "attn_pattern":
            return self.edit_hidden(layer, site, value, ctx)
        rows = None
        if self._positions is not None and ctx.step == 0:
            rows = ctx.local_rows(self._positions, len(query_window(value)))
        ctx.records[(_hook_label(layer, site), layer, ctx.step)] = attention_probs(value, rows).detach().clone()
        return value

    def edit_hidden(self, layer, site, hidden, ctx: StepContext):
        record = hidden
        if self._positions is not None and ctx.step == 0:
            record = record[:, ctx.local_rows(self._positions, record.shape[1]).to(record.device)]
        ctx.records[(_hook_label(layer, site), layer, ctx.step)] = record.detach().clone()
        return hidden


def _hook_label(layer, site) -> str:
    from ..hooks import FINAL_NORM, hook_name

    return FINAL_NORM if site == "final_norm" else hook_name(layer, site)
