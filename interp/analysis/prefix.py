"""Prefix reuse: run the clean pass once, restart edited passes at the first edited layer.

An edit at the input of layer ``l`` (scaling image tokens, knocking out attention
edges) leaves layers ``< l`` exactly as in the clean run. :func:`capture` runs the
clean forward once in an nnsight trace and saves each decoder layer's inputs (the
hidden states and every keyword the model passes: position embeddings, masks, ...).
:func:`continue_from` then runs only layers ``l .. L-1`` for a batch of edited
variants at once (the variants share the captured prefix), applies the final norm
and the unembedding at the scored positions only, and returns their logits.

Supported edits are the ones a sweep needs: interventions on ``resid_pre`` (every
:class:`~interp.interventions.ablate.ImageTokenEdit`) and
:class:`~interp.interventions.knockout.AttentionKnockout` (applied through the
layer's attention mask). Families whose forward adds to the residual stream between
layers outside the layer modules (Qwen3-VL's DeepStack) cannot restart mid-stack:
:func:`supports_prefix_reuse` says so and the sweep falls back to full passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import nnsight
import torch

from ..errors import InterpError
from ..interventions.base import StepContext
from ..interventions.knockout import AttentionKnockout
from ..interventions.runtime import first

#: model types whose text model edits the residual stream between decoder layers
_BETWEEN_LAYER_EDITS = {"qwen3_vl": "DeepStack adds visual features after the first layers"}


def supports_prefix_reuse(vlm) -> str | None:
    """None if the fast path applies to ``vlm``, else the reason it does not."""
    model_type = getattr(vlm.config, "model_type", "")
    if model_type in _BETWEEN_LAYER_EDITS:
        return _BETWEEN_LAYER_EDITS[model_type]
    if vlm.attn_implementation not in ("sdpa", "eager"):
        return f"attention implementation {vlm.attn_implementation!r} (needs sdpa or eager masks)"
    return None


@dataclass
class Prefix:
    """The clean pass: every layer's ``(args, kwargs)`` and the clean logits at ``positions``."""

    layer_inputs: list
    positions: torch.Tensor
    logits: torch.Tensor  # [n_positions, vocab]


def capture(vlm, prepared, positions: torch.Tensor) -> Prefix:
    """Run ``prepared`` once (no cache) and keep what restarting at any layer needs."""
    reason = supports_prefix_reuse(vlm)
    if reason:
        raise InterpError(f"prefix reuse does not apply to {vlm.name}: {reason}")
    layers = vlm.layers
    with torch.no_grad(), vlm.nnsight.trace(prepared.inputs, use_cache=False):
        saved = nnsight.save([])
        for index in range(vlm.n_layers):
            saved.append(layers[index].inputs)
        logits = vlm.nnsight.output.logits[0, positions].save()
    return Prefix(list(saved), positions.clone(), logits.detach().float())


def unembed(vlm, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, unembedding and (Gemma) logit soft-capping, as the model's forward applies them."""
    model = vlm.model
    logits = vlm.adapter.resolve(model, "lm_head")(vlm.adapter.resolve(model, "final_norm")(hidden))
    cap = getattr(vlm.adapter.text_config(vlm.config), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def _keep_mask(mask, hidden: torch.Tensor, n_variants: int):
    """The captured mask as a per-variant tensor we can edit: bool keep-mask for SDPA
    (``None`` means plain causal), the additive float mask as given for eager."""
    seq = hidden.shape[1]
    if mask is None:
        causal = torch.ones(seq, seq, dtype=torch.bool, device=hidden.device).tril()
        return causal[None, None].expand(n_variants, 1, seq, seq).clone()
    if not isinstance(mask, torch.Tensor):
        raise InterpError(f"cannot edit an attention mask of type {type(mask).__name__} on the fast path")
    return mask.expand(n_variants, *mask.shape[1:]).clone()


def continue_from(vlm, prefix: Prefix, prepared, start: int, variants: list[list]) -> torch.Tensor:
    """Logits ``[n_variants, n_positions, vocab]`` of the edited variants.

    ``variants`` holds, per variant, interventions already bound to ``prepared``
    (``Plan(...).bind(vlm, prepared)``); none may act before layer ``start``.
    """
    layers = vlm.adapter.resolve(vlm.model, "layers")
    n = len(variants)
    ctx = StepContext(0, 0, prepared.image_positions, prepared.question_positions, prepared.seq_len, {})
    for items in variants:
        for item in items:
            for layer, site in item.sites():
                if layer is not None and layer < start:
                    raise InterpError(f"{item!r} acts at layer {layer}, before the restart layer {start}")
                if site not in ("resid_pre", "attn_pattern") or (
                    site == "attn_pattern" and not isinstance(item, AttentionKnockout)
                ):
                    raise InterpError(f"{type(item).__name__} at {site} is not supported on the fast path")
    args, kwargs = prefix.layer_inputs[start]
    hidden = first(args) if args else kwargs["hidden_states"]
    hidden = hidden.expand(n, *hidden.shape[1:]).clone()
    with torch.no_grad():
        for index in range(start, len(layers)):
            args, kwargs = prefix.layer_inputs[index]
            kwargs = dict(kwargs)
            knockouts = [[item for item in items if isinstance(item, AttentionKnockout) and index in item.layers]
                         for items in variants]
            for v, items in enumerate(variants):
                for item in items:
                    if not isinstance(item, AttentionKnockout) and index in item.layers:
                        hidden[v : v + 1] = item.at_site(index, "resid_pre", hidden[v : v + 1], ctx)
            if any(knockouts):
                kwargs["attention_mask"] = _knockout_mask(kwargs.get("attention_mask"), hidden, knockouts)
            kwargs.pop("hidden_states", None)
            out = layers[index](hidden, *args[1:], **kwargs)
            hidden = first(out)
        picked = hidden[:, prefix.positions.to(hidden.device)]
        return unembed(vlm, picked)


def _knockout_mask(mask, hidden, knockouts):
    new = _keep_mask(mask, hidden, len(knockouts))
    blocked = False if new.dtype == torch.bool else torch.finfo(new.dtype).min
    for v, items in enumerate(knockouts):
        for item in items:
            rows = item._src if not isinstance(item._src, str) else torch.tensor([hidden.shape[1] - 1])
            block = new[v, :, rows.to(new.device)]
            block[..., item._dst.to(new.device)] = blocked
            new[v, :, rows.to(new.device)] = block
    return new

