"""The authors' two image-token masks, as their code (season1blue/WCD, commit da37c80) runs them.

Both scale the ``bottom`` image tokens of an attention-derived score by a small factor;
how the score is made and where the mask acts differ:

:class:`ReviewLayerMask` (``llava/model/language_model/base_llama.py``: ``find_max_jsd_and_diff``
and the mask in ``LlamaModel.forward``; the mask their LLaVA runs switch on with
``attn_mask=True``)
    In the prefill, the last prompt token's head-mean attention over the image tokens is
    kept for every layer. At the input of the review layer ``R`` (their
    ``target_layer_idx``), the reference is layer ``R - 1``; ``i*`` is the layer among
    ``0 .. R - 2`` whose map is farthest from it by squared Jensen-Shannon distance (base
    2, both maps rescaled to sum 1; the first maximum wins); the difference
    ``A_{R-1} - A_{i*}`` of the *raw* maps has its negative entries set to ``1e-9`` (exact
    zeros stay 0). With ``k = int(ratio * n_image)`` (0: nothing is masked), every image
    token whose difference is not above the k-th smallest value is scaled by ``scale``
    (``1e-9``) — so ties at that value mask more than ``k`` tokens, which happens whenever
    more than ``k`` differences were negative. Decoding steps are not masked (their
    ``image_start_pos`` is reset after the prefill), but they read the masked prefill's
    keys and values from the cache.

:class:`SoftImageMask` (``apply_soft_mask_to_image_embeds`` in ``generate.py``)
    On the input embeddings (the input of layer 0): the tokens not above the k-th smallest
    value of a given attention map (``ratio`` 0.2) are scaled by ``scale`` (0.1). Their
    map is the last-layer (``attn_layer_idx=-1``), last-token, head-mean image attention
    of a first pass with the question "Write a general description of the image."
    (:func:`general_attention`, :func:`authors_soft_mask`). In their code this branch is
    switched off (``... and False``), so their reported LLaVA runs do not use it.

Both record what they did under ``(name, layer, step)`` keys: ``wcd_pre_layer``,
``wcd_difference`` and ``wcd_keep`` (review-layer mask), ``wcd_soft_keep`` (soft mask).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InterpError
from .base import Intervention, StepContext, resolve_layers
from .runtime import attention_probs, query_window

AUTHORS_GENERAL_QUESTION = "Write a general description of the image."


def bottom_k_keep(values: torch.Tensor, ratio: float) -> torch.Tensor:
    """The authors' keep-mask: ``values > (k-th smallest value)``, ``k = int(ratio * n)``;
    all ``True`` when ``k == 0``. Ties at the threshold are masked (so more than k may be)."""
    n = values.numel()
    k = int(ratio * n)
    if k == 0:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    threshold = torch.topk(values.flatten(), k, largest=False).values[-1]
    return values.flatten() > threshold


def authors_difference(maps: list[torch.Tensor]) -> tuple[int, torch.Tensor]:
    """``(i*, difference)`` from the per-layer image-attention maps ``0 .. r`` (the last is
    the reference): ``i*`` maximises the squared JSD to the reference among ``0 .. r - 1``,
    ``difference = A_r - A_i*`` with negatives set to 1e-9."""
    from ..decoding.dola import squared_jsd

    if len(maps) < 2:
        raise InterpError("the review-layer mask needs a reference layer and at least one layer before it")
    reference = maps[-1].float()
    candidates = torch.stack([m.float().to(reference.device) for m in maps[:-1]])
    scores = squared_jsd(reference.expand_as(candidates), candidates)
    pre = int(torch.argmax(scores))
    difference = reference - candidates[pre]
    difference = torch.where(difference < 0, torch.full_like(difference, 1e-9), difference)
    return pre, difference


def _scale_rows(hidden: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, scale: float, ctx) -> torch.Tensor:
    local = ctx.local_rows(positions, hidden.shape[1])
    if local.numel() == 0:
        return hidden
    factors = torch.where(keep.to(hidden.device), 1.0, scale).to(hidden.dtype)
    out = hidden.clone()
    rows = local.to(hidden.device)
    out[:, rows] = out[:, rows] * factors[: rows.numel(), None]
    return out


class ReviewLayerMask(Intervention):
    """The authors' mask at the review layer (see the module docstring).

    ``review_layer``: where the mask acts (its input; their ``target_layer_idx``);
    ``ratio``: their ``mask_ratio`` (0.2); ``scale``: 1e-9.
    """

    # set by bind(): what the run resolved for one prompt
    _query: torch.Tensor

    def __init__(self, review_layer: int, *, ratio: float = 0.2, scale: float = 1e-9):
        if not 0.0 <= ratio <= 1.0:
            raise InterpError(f"ratio must be in [0, 1], got {ratio}")
        self.review_layer = review_layer
        self.ratio = ratio
        self.scale = scale
        self.layers = [review_layer]

    def bind(self, n_layers: int, prepared) -> ReviewLayerMask:
        bound = super().bind(n_layers, prepared)
        if bound.layers[0] < 2:
            raise InterpError(
                f"the review layer must be >= 2 (a reference layer and one before it), got {bound.layers[0]}"
            )
        if prepared.n_image_tokens == 0:
            raise InterpError("the review-layer mask needs image tokens in the prompt")
        bound._query = prepared.seq_len - 1
        return bound

    def sites(self):
        review = self.layers[0]
        return [(layer, "attn_pattern") for layer in range(review)] + [(review, "resid_pre")]

    def at_site(self, layer, site, value, ctx: StepContext):
        if site == "attn_pattern":
            rows = ctx.local_rows(torch.tensor([self._query]), len(query_window(value)))
            device = value[0][1].device
            probs = attention_probs(value, rows.to(device))[..., ctx.image_positions.to(device)]
            ctx.records[("wcd_attention", layer, ctx.step)] = probs.mean(dim=1)[0, 0].float().detach()
            return value
        return self.edit_hidden(layer, site, value, ctx)

    def edit_hidden(self, layer, site, hidden, ctx: StepContext):
        maps = [ctx.records.pop(("wcd_attention", i, ctx.step)) for i in range(layer)]
        pre, difference = authors_difference(maps)
        keep = bottom_k_keep(difference, self.ratio)
        ctx.records[("wcd_pre_layer", layer, ctx.step)] = torch.tensor(pre)
        ctx.records[("wcd_difference", layer, ctx.step)] = difference
        ctx.records[("wcd_keep", layer, ctx.step)] = keep
        return _scale_rows(hidden, ctx.image_positions, keep, self.scale, ctx)


class SoftImageMask(Intervention):
    """The authors' soft mask on the input image embeddings (see the module docstring).

    ``attention``: one value per image token (e.g. :func:`general_attention`); the tokens
    not above its k-th smallest value (``k = int(ratio * n)``) are scaled by ``scale``.
    """

    # set by bind(): what the run resolved for one prompt
    _keep: torch.Tensor

    def __init__(self, attention: Any, *, ratio: float = 0.2, scale: float = 0.1):
        if not 0.0 <= ratio <= 1.0:
            raise InterpError(f"ratio must be in [0, 1], got {ratio}")
        self.attention = torch.as_tensor(attention).float().flatten()
        self.ratio = ratio
        self.scale = scale
        self.layers = [0]

    def bind(self, n_layers: int, prepared) -> SoftImageMask:
        bound = super().bind(n_layers, prepared)
        if self.attention.numel() != prepared.n_image_tokens:
            raise InterpError(
                f"the soft mask's attention map has {self.attention.numel()} values but the prompt has "
                f"{prepared.n_image_tokens} image tokens"
            )
        bound._keep = bottom_k_keep(self.attention, self.ratio)
        return bound

    def sites(self):
        return [(0, "resid_pre")]

    def edit_hidden(self, layer, site, hidden, ctx: StepContext):
        ctx.records[("wcd_soft_keep", layer, ctx.step)] = self._keep
        return _scale_rows(hidden, ctx.image_positions, self._keep, self.scale, ctx)

    def __repr__(self) -> str:
        return f"SoftImageMask(ratio={self.ratio}, scale={self.scale}, n={self.attention.numel()})"


def general_attention(
    vlm, image, *, layer: int = -1, question: str = AUTHORS_GENERAL_QUESTION, remote: bool | str | None = None
) -> torch.Tensor:
    """The last prompt token's head-mean attention over the image tokens at ``layer``
    (default the last) in a prefill of ``question`` about ``image`` — the map the authors'
    soft mask is built from."""
    from .record import RecordAttention

    layer = resolve_layers(layer if layer >= 0 else vlm.n_layers + layer, vlm.n_layers)[0]
    prepared = vlm.prepare(image, question)
    result = vlm.run(prepared, RecordAttention([layer], query="last", name="general"), remote=remote)
    return result.record("general", layer)[0, 0]


def authors_soft_mask(
    vlm, image, *, ratio: float = 0.2, scale: float = 0.1, layer: int = -1, remote: bool | str | None = None
) -> SoftImageMask:
    """:class:`SoftImageMask` from the authors' general-description pre-pass on ``image``."""
    return SoftImageMask(general_attention(vlm, image, layer=layer, remote=remote), ratio=ratio, scale=scale)


__all__ = [
    "AUTHORS_GENERAL_QUESTION",
    "ReviewLayerMask",
    "SoftImageMask",
    "authors_difference",
    "authors_soft_mask",
    "bottom_k_keep",
    "general_attention",
]
