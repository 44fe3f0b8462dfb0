"""Attention-edge attribution: every layer's text -> image knockout estimated from one backward.

:class:`~interp.interventions.AttentionKnockout` cuts the attention from some text queries (the
last token, the question, every text token after the image) to the image tokens at one layer.
:func:`edge_attribution` estimates the effect of that cut at every layer from one forward and one
backward per question: the cut heads' outputs are recomputed exactly from the layer's own
attention (the softmax renormalised over the keys left: AtP*'s fix for saturated attention) and
only the rest of the forward is linearised, through the gradient at ``blocks.{l}.attn.hook_z``.
:func:`knockout_effects` runs the exact knockouts, scored the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nnsight
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import InterpError
from ..interventions.runtime import split_heads
from .attribution import _raw, gradient_pass
from .items import as_items
from .patching import _first_token

#: the query groups whose attention to the image :func:`edge_attribution` knocks out
EDGE_QUERIES = ("last", "question", "text")
EDGE_METRIC = "log-probability of the answer's first token at the last prompt position"


def _query_positions(prepared, queries: str) -> torch.Tensor:
    """The base positions of a query group that can attend to image keys (after the first image token)."""
    if queries == "last":
        positions = torch.tensor([prepared.seq_len - 1])
    elif queries == "question":
        positions = prepared.question_positions.cpu()
    elif queries == "text":
        keep = torch.ones(prepared.seq_len, dtype=torch.bool)
        keep[prepared.image_positions.cpu()] = False
        positions = keep.nonzero().flatten()
    else:
        raise InterpError(f"unknown query group {queries!r}; use one of {', '.join(EDGE_QUERIES)}")
    first_image = int(prepared.image_positions.min()) if prepared.image_positions.numel() else prepared.seq_len
    return positions[positions > first_image]


def _knocked_out_change(call_inputs, rows: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The exact change of each head's output at query ``rows`` when their edges to the ``image``
    keys are cut and the softmax renormalises over the rest: ``(m z - s) / (1 - m)``, with ``m``
    the cut mass, ``s`` the cut part of the output and ``z`` the output (batch, rows, heads, d)."""
    from ..interventions.runtime import attention_probs, expand_kv

    args, _ = call_inputs
    probs = attention_probs(call_inputs, rows=rows).float().detach()  # (batch, heads, rows, keys)
    value = expand_kv(args[3].detach().float(), probs.shape[1])  # (batch, heads, keys, d)
    image = image.to(probs.device)
    cut = probs[..., image]
    mass = cut.sum(-1, keepdim=True)
    output = probs @ value
    removed = cut @ value[:, :, image]
    change = (mass * output - removed) / (1 - mass).clamp_min(1e-6)
    return change.transpose(1, 2)  # (batch, rows, heads, d)


def edge_attribution(
    vlm,
    samples: Any,
    *,
    queries: Sequence[str] = EDGE_QUERIES,
    layers: Any = "all",
    remote: bool | str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Estimate, for every layer, the effect of cutting the attention from text queries to the image.

    The knockout of :class:`~interp.interventions.AttentionKnockout` (``queries -> image`` at one
    layer) changes each head's output at the query rows exactly by what
    :func:`_knocked_out_change` computes from the layer's own attention (the softmax recomputed,
    not linearised: AtP*'s fix for saturated attention); the rest of the forward is
    linearised through the gradient at ``blocks.{l}.attn.hook_z``. One forward and one
    backward per sample give every (layer, query group).

    Args:
        vlm: the model.
        samples: a dataset, Items, samples or ``(image, question, answer)`` tuples
            (:func:`interp.analysis.items.as_items`); the first reference answer is scored.
        queries: query groups: ``last``, ``question``, ``text`` (every text token after the image).
        layers: the layers (``"all"`` or a list).
        remote: as in :meth:`interp.VLM.run`.
        progress: show a progress bar.

    Returns:
        One row per (sample, layer, queries): ``estimate``, the estimated change of the answer's
        first-token log-probability; ``logprob``, its value in the plain run.

    Raises:
        InterpError: an unknown query group or layer.
    """
    from ..interventions.base import resolve_layers

    layer_list = resolve_layers(layers, vlm.n_layers)
    query_list = list(dict.fromkeys([queries] if isinstance(queries, str) else queries))
    model, access = vlm.nnsight, vlm.access
    rows = []
    for item in tqdm(as_items(samples), desc="edge attribution", unit="sample", disable=not progress):
        prepared = vlm.prepare(item.image, item.question)
        answer = _first_token(vlm, prepared, item.answers[0])
        groups = {q: _query_positions(prepared, q) for q in query_list}
        image = prepared.image_positions.cpu()
        with gradient_pass(vlm.model), model.trace(dict(prepared.inputs), **vlm.trace_kwargs(remote)):
            start = _raw(access, model, 0, "resid_pre")
            leaf = start.detach().requires_grad_(True)
            access.write(model, 0, "resid_pre", leaf)
            changes, z_values = {}, {}
            for layer in layer_list:
                call = access.read(model, layer, "attn_pattern")
                for q, positions in groups.items():
                    if positions.numel():
                        changes[(layer, q)] = _knocked_out_change(call, positions, image)
                z_values[layer] = _raw(access, model, layer, "z")
            logprob = torch.log_softmax(model.output.logits[:, -1].float(), -1)[:, answer].sum()
            value = nnsight.save(logprob.detach())
            estimates = nnsight.save({})
            with logprob.backward():
                for layer in reversed(layer_list):
                    grad = split_heads(z_values[layer].grad, access.head_dim).float()
                    for q, positions in groups.items():
                        if positions.numel():
                            part = grad[:, positions.to(grad.device)] * changes[(layer, q)].to(grad.device)
                            estimates[(layer, q)] = part.sum().detach()
        for layer in layer_list:
            for q in query_list:
                rows.append(
                    {
                        "sample": item.id,
                        "layer": layer,
                        "queries": q,
                        "estimate": float(estimates[(layer, q)]) if (layer, q) in estimates else 0.0,
                        "logprob": float(value),
                    }
                )
    frame = pd.DataFrame(rows)
    frame.attrs.update({"model": vlm.name, "metric": EDGE_METRIC, "method": "atp (attention recomputed)"})
    return frame


def _answer_logprob(vlm, prepared, answer: int, interventions: list, remote) -> float:
    """The log-probability of token ``answer`` at the last prompt position of one run."""
    logits = vlm.run(prepared, *interventions, remote=remote).logits[0].float()
    return float(torch.log_softmax(logits, -1)[answer])


def knockout_effects(
    vlm,
    samples: Any,
    *,
    queries: Sequence[str] = EDGE_QUERIES,
    layers: Any = "all",
    remote: bool | str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The exact effects :func:`edge_attribution` estimates: one knocked-out forward per
    (sample, layer, query group), scored by the same metric.

    Returns:
        One row per (sample, layer, queries) with ``exact``, the change of the answer's
        first-token log-probability, and ``logprob``, its value in the plain run.
    """
    from ..interventions.base import resolve_layers
    from ..interventions.knockout import AttentionKnockout

    layer_list = resolve_layers(layers, vlm.n_layers)
    query_list = list(dict.fromkeys([queries] if isinstance(queries, str) else queries))
    rows = []
    for item in tqdm(as_items(samples), desc="knockouts (exact)", unit="sample", disable=not progress):
        prepared = vlm.prepare(item.image, item.question)
        answer = _first_token(vlm, prepared, item.answers[0])

        plain = _answer_logprob(vlm, prepared, answer, [], remote)
        for layer in layer_list:
            for q in query_list:
                positions = _query_positions(prepared, q)
                knockout = [AttentionKnockout(positions, "image", [layer])]
                exact = _answer_logprob(vlm, prepared, answer, knockout, remote) - plain if positions.numel() else 0.0
                rows.append(
                    {
                        "sample": item.id,
                        "layer": layer,
                        "queries": q,
                        "exact": exact,
                        "logprob": plain,
                    }
                )
    frame = pd.DataFrame(rows)
    frame.attrs.update({"model": vlm.name, "metric": EDGE_METRIC})
    return frame
