"""Contrastive attention masking (the paper's training-free method), in one pass.

At the last prompt token, the head-mean attention over the image tokens is taken at a
*reference* layer ``r`` (default: the review layer - 1) and at candidate *pre* layers.
The pre layer ``i*`` is the candidate whose distribution is farthest from the
reference (Jensen-Shannon or Hellinger); the contrast is ``C = max(A_r - A_i*, 0)``:
what the late layer looks at that the early one did not. At the input of the review
layer, the ``rho`` fraction of image tokens with the lowest ``C`` are scaled by
``scale`` (~0), so the review layer re-reads only the contrasted region.

Everything happens inside the trace with torch operations, so the same object runs
locally, under ``remote="local"`` and on NDIF. The chosen layer, ``C`` and the kept
mask are stored in the run's records (``contrastive_pre_layer``, ``contrastive_C``,
``contrastive_keep``, at the review layer).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InterpError
from ..options import PAPER_MASK_SCALE
from .ablate import ScaleImageTokens
from .base import Intervention, StepContext, resolve_layers, resolve_positions
from .distance import DISTANCES as FUNCTIONS, normalise
from .record import RecordAttention

DISTANCES = tuple(FUNCTIONS)


def contrast(reference: torch.Tensor, candidates: dict[int, torch.Tensor], distance: str = "jsd"):
    """``(pre_layer, C)`` for one query: the candidate farthest from ``reference`` and
    ``max(A_r - A_pre, 0)`` over the image tokens (1-D tensors, renormalised)."""
    ref = normalise(reference)
    layers = sorted(candidates)
    stacked = normalise(torch.stack([candidates[layer] for layer in layers]).to(ref.device))
    scores = FUNCTIONS[distance](stacked, ref.expand_as(stacked))
    pre = layers[int(torch.argmax(scores))]
    return pre, (ref - stacked[layers.index(pre)]).clamp_min(0.0)


def bottom_fraction(values: torch.Tensor, rho: float) -> torch.Tensor:
    """Boolean mask of the ``round(rho * n)`` smallest entries (ties broken by index)."""
    n = values.numel()
    k = int(round(rho * n))
    mask = torch.zeros(n, dtype=torch.bool, device=values.device)
    if k > 0:
        order = torch.argsort(values, stable=True)
        mask[order[:k]] = True
    return mask


class ContrastiveMask(Intervention):
    """Mask the image tokens the late layer does not single out, at the review layer.

    The paper's training-free method, in one pass: the contrast ``C = max(A_r - A_pre, 0)``
    of the query's head-mean attention over the image tokens at the reference layer and
    at the pre layer farthest from it; the ``rho`` fraction of image tokens with the
    lowest ``C`` are scaled by ``scale`` at the input of the review layer. The chosen
    layer, ``C`` and the kept mask are recorded (``contrastive_pre_layer``,
    ``contrastive_C``, ``contrastive_keep``, at the review layer).

    Args:
        review_layer: where the mask acts (its input).
        reference_layer: the late layer; None: ``review_layer - 1``.
        candidates: the pre-layer candidates (layers before the reference); ``"all"``:
            all of them.
        rho: the fraction of image tokens masked, in ``[0, 1]``.
        distance: ``"jsd"`` (v1) or ``"hellinger"``.
        scale: the factor applied to the masked tokens (~0).
        query: whose attention (default the last prompt token).

    Raises:
        InterpError: ``distance`` is unknown or ``rho`` is outside ``[0, 1]``.
    """

    # set by bind(): what the run resolved for one prompt
    _reference: int
    _candidates: list[int]
    _query: int
    _recorder: Intervention

    def __init__(
        self,
        review_layer: int,
        *,
        reference_layer: int | None = None,
        candidates: Any = "all",
        rho: float = 0.2,
        distance: str = "jsd",
        scale: float = PAPER_MASK_SCALE,
        query: Any = "last",
    ):
        if distance not in DISTANCES:
            raise InterpError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if not 0.0 <= rho <= 1.0:
            raise InterpError(f"rho must be in [0, 1], got {rho}")
        self.review_layer = review_layer
        self.reference_layer = reference_layer
        self.candidates = candidates
        self.rho = rho
        self.distance = distance
        self.scale = scale
        self.query = query
        self.layers = [review_layer]

    def bind(self, n_layers: int, prepared) -> ContrastiveMask:
        bound = super().bind(n_layers, prepared)
        review = bound.layers[0]
        reference = review - 1 if self.reference_layer is None else resolve_layers(self.reference_layer, n_layers)[0]
        if reference >= review:
            raise InterpError(f"the reference layer ({reference}) must come before the review layer ({review})")
        candidates = resolve_layers(self.candidates, n_layers) if self.candidates != "all" else list(range(reference))
        candidates = [layer for layer in candidates if layer < reference]
        if not candidates:
            raise InterpError(f"no candidate pre-layer lies before the reference layer {reference}")
        bound._reference = reference
        bound._candidates = candidates
        query = resolve_positions(
            self.query,
            image_positions=prepared.image_positions,
            question_positions=prepared.question_positions,
            seq_len=prepared.seq_len,
            what="query",
        )
        bound._query = prepared.seq_len - 1 if isinstance(query, str) else int(query.reshape(-1)[-1])
        watched = sorted(set(candidates) | {reference})
        bound._recorder = RecordAttention(watched, query=[bound._query], name="contrastive_attention").bind(
            n_layers, prepared
        )
        return bound

    def sites(self):
        watched = sorted(set(self._candidates) | {self._reference})
        return [(layer, "attn_pattern") for layer in watched] + [(self.layers[0], "resid_pre")]

    def recorded_as(self, layer, site):
        return self._recorder.recorded_as(layer, site) if site == "attn_pattern" else None

    def at_site(self, layer, site, value, ctx: StepContext):
        if site == "attn_pattern":
            return self._recorder.at_site(layer, site, value, ctx)
        return self.edit_hidden(layer, site, value, ctx)

    def edit_hidden(self, layer, site, value, ctx: StepContext):
        def attention(i):  # the query row's head-mean attention over the image tokens
            return ctx.records[("contrastive_attention", i, ctx.step)][0, 0]

        pre, c = contrast(attention(self._reference), {i: attention(i) for i in self._candidates}, self.distance)
        drop = bottom_fraction(c, self.rho)
        ctx.records[("contrastive_pre_layer", layer, ctx.step)] = torch.tensor(pre)
        ctx.records[("contrastive_C", layer, ctx.step)] = c
        ctx.records[("contrastive_keep", layer, ctx.step)] = ~drop
        return ScaleImageTokens(layer, self.scale, tokens=drop).edit_hidden(layer, site, value, ctx)
