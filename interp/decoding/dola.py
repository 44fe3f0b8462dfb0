"""DoLa decoding (contrasting layers), as transformers 4.46 ran it, in one nnsight generation.

At every generated token the next-token scores are the final layer's log-probabilities
minus those of a *premature* layer, after an adaptive plausibility filter::

    final    = log_softmax(logits_L)                 # the model's own next-token logits
    early_l  = log_softmax(lm_head(h_l[-1]))         # h_l = hidden_states[l], NO final norm
    keep     = final >= max(final) + log(relative_top)
    scores   = where(keep, final - early_l*, -inf)   # early_l* set to -1e-3 where not keep

then the repetition penalty (1.2) and greedy choice or sampling (temperature, top-k 50 as
transformers' defaults apply them). The candidate premature layers are hidden-state
indices (0 = the embedding output; ``hidden_states[l]`` is the input of decoder layer
``l``): ``"low"`` = ``range(start, L // 2, 2)``, ``"high"`` = ``range(L // 2, L, 2)`` for
``L <= 40`` decoder layers, ``range(start, 20, 2)`` / ``range(L - 20, L, 2)`` above, where
``start`` is 2 when the output embedding *is* the input embedding (an early exit from the
embeddings would be the identity), 1 for a 2-layer model and 0 otherwise (transformers
reads ``config.tie_word_embeddings``; here the weights themselves are compared, which
agrees on the organism (tied) and on LLaVA-1.5's Llama (untied)). With one candidate it
is used as is (a *static* premature layer).

Choosing the premature layer at each step (``select``):

* ``"logits"`` (DoLa): the candidate maximising ``0.5 * (KL(M||P) + KL(M||Q))`` between
  the final (P) and candidate (Q) next-token distributions, M = (P + Q) / 2, where each KL
  is *averaged* (not summed) over the vocabulary, as transformers' code computes it
  (:func:`logit_jsd_scores`).
* ``"attention"`` (the authors' WCD, ``_dola_select_contrast_att`` in their
  ``llava/model/language_model/generate.py``): the candidate maximising the squared
  Jensen-Shannon distance, base 2 (scipy's ``jensenshannon(p, q, base=2) ** 2``), between
  the current token's head-mean attention over the image tokens in the final decoder layer
  and in the candidate's, each rescaled to sum 1 (:func:`attention_jsd_scores`). Their
  ``outputs.attentions[-1]`` is the last decoder layer (``L - 1``) and
  ``outputs.attentions[l]`` is decoder layer ``l``, the layer whose *input* is
  ``hidden_states[l]`` — so candidate ``l`` contrasts the logits read at layer ``l``'s input
  with the attention of that same layer. The attention rows are computed from the
  attention call's queries and keys (:func:`interp.interventions.runtime.attention_probs`),
  equal to eager ``output_attentions``, so SDPA models stay on SDPA. Their code takes a
  hard-coded 576-token image span; here the prompt's own image tokens are used.

Differences from the authors' run worth knowing: their LLaVA pipeline calls ``generate``
with ``inputs_embeds`` only, so transformers' ``input_ids`` start empty and the repetition
penalty sees only the generated tokens (``penalize_prompt=False`` here); transformers on
an HF model penalises the prompt's tokens too (``penalize_prompt=True``, the default).
Their single-candidate attention path returns a bare tensor where a tuple is unpacked (it
would raise); here one candidate is simply used.

Mechanics: one ``vlm.nnsight.generate`` call keeps the KV cache. At each step a probe
(an :class:`~interp.interventions.base.Intervention`, scheduled in forward order together
with the caller's interventions) records ``hidden_states[l][:, -1]`` at the candidates and,
for ``select="attention"``, the last row's image attention; the step's token is chosen
here and written back as the LM head's output (every other token at ``-inf``), so
transformers' greedy loop emits exactly that token and stops at EOS as usual. The caller's
interventions apply in the prefill (and at every step if they say ``every_step``) of the
same run; ``remote="local"`` / NDIF work because everything happens in the trace body.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Sequence

import nnsight
import torch
import torch.nn.functional as F

from ..errors import InterpError, LayerIndexError
from ..interventions.base import Intervention, StepContext
from ..interventions.runtime import attention_probs, envoy_at, query_window

SELECT_RULES = ("logits", "attention")
#: transformers' default ``top_k`` when sampling (its GenerationConfig), applied after the temperature
DEFAULT_TOP_K = 50


# -- the pieces, on plain tensors ---------------------------------------------------------------------


def candidate_layers(n_layers: int, layers: str | Sequence[int], *, tied: bool) -> list[int]:
    """The candidate premature layers (hidden-state indices) for ``"low"``, ``"high"`` or a list."""
    if isinstance(layers, str):
        if layers not in ("low", "high"):
            raise InterpError(f"DoLa layers must be 'low', 'high' or a list of hidden-state indices, got {layers!r}")
        if not tied:
            start = 0
        elif n_layers > 2:
            start = 2
        elif n_layers == 2:
            start = 1
        else:
            start = 0
        if layers == "low":
            if start == n_layers // 2:
                return [start]
            return list(range(start, n_layers // 2, 2)) if n_layers <= 40 else list(range(start, 20, 2))
        return list(range(n_layers // 2, n_layers, 2)) if n_layers <= 40 else list(range(n_layers - 20, n_layers, 2))
    if isinstance(layers, (int, bool)):
        layers = [layers]
    try:
        out = [int(layer) for layer in layers]
    except (TypeError, ValueError):
        raise InterpError(f"DoLa layers must be 'low', 'high' or a list of ints, got {layers!r}") from None
    if not out:
        raise InterpError("DoLa needs at least one candidate layer")
    bad = [layer for layer in out if not 0 <= layer < n_layers]
    if bad:
        raise LayerIndexError(
            f"DoLa candidate layers {bad} out of range: hidden-state indices 0..{n_layers - 1} "
            f"(0 = the embedding output) for a model with {n_layers} layers"
        )
    return out


def relative_top_filter(
    final_logits: torch.Tensor,
    premature_logits: torch.Tensor,
    relative_top: float = 0.1,
    *,
    min_tokens_to_keep: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(final, premature)`` log-probabilities with the implausible tokens filtered.

    A token is implausible when its final log-probability is below
    ``max + log(relative_top)`` (but at least ``min_tokens_to_keep`` tokens stay); there the
    final log-probability becomes ``-inf`` and the premature one ``-1e-3``.
    """
    final = final_logits.log_softmax(dim=-1)
    premature = premature_logits.log_softmax(dim=-1)
    kth_best = final.topk(min_tokens_to_keep, dim=-1).values[..., -1]
    threshold = torch.minimum(kth_best, final.max(dim=-1).values + math.log(relative_top)).unsqueeze(-1)
    drop = final < threshold
    return final.masked_fill(drop, float("-inf")), premature.masked_fill(drop, -1e-3)


def dola_contrast(
    final_logits: torch.Tensor, premature_logits: torch.Tensor, relative_top: float = 0.1
) -> torch.Tensor:
    """DoLa's next-token scores: filtered final minus filtered premature log-probabilities."""
    final, premature = relative_top_filter(final_logits, premature_logits, relative_top)
    return final - premature


def logit_jsd_scores(final_logits: torch.Tensor, premature_logits: torch.Tensor) -> torch.Tensor:
    """DoLa's layer score per candidate, ``(n_candidates,)``.

    ``final_logits`` ``(batch, vocab)``, ``premature_logits`` ``(n_candidates, batch, vocab)``.
    ``0.5 * (KL(M||P) + KL(M||Q))`` with each KL averaged over the vocabulary, then over
    the batch (transformers' "batchmean").
    """
    log_p = final_logits.log_softmax(dim=-1)[None]
    log_q = premature_logits.log_softmax(dim=-1)
    m = 0.5 * (log_p.exp() + log_q.exp())
    kl_mp = (torch.xlogy(m, m) - m * log_p).mean(dim=-1)
    kl_mq = (torch.xlogy(m, m) - m * log_q).mean(dim=-1)
    return (0.5 * (kl_mp + kl_mq)).mean(dim=-1)


def squared_jsd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2`` along the last axis.

    Both are rescaled to sum 1 first; ``0 * log 0 = 0``. Computed in float64.
    """
    p = p.double()
    q = q.double()
    p = p / p.sum(dim=-1, keepdim=True)
    q = q / q.sum(dim=-1, keepdim=True)
    m = 0.5 * (p + q)
    divergence = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(-1) + (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(-1)
    return divergence / (2 * math.log(2.0))


def attention_jsd_scores(final_attention: torch.Tensor, candidate_attention: torch.Tensor) -> torch.Tensor:
    """The authors' layer score per candidate: :func:`squared_jsd` of each candidate's
    image-attention row ``(n_candidates, n_image)`` to the final layer's ``(n_image,)``."""
    return squared_jsd(final_attention.float().expand_as(candidate_attention), candidate_attention.float())


def apply_repetition_penalty(scores: torch.Tensor, previous_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty: every token in ``previous_ids`` ``(batch, n)`` has its
    score divided by ``penalty`` if positive, multiplied by it if negative."""
    if penalty == 1.0 or previous_ids.numel() == 0:
        return scores
    ids = previous_ids.to(scores.device).long()
    seen = torch.gather(scores, 1, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, ids, seen)


def sample_next(
    scores: torch.Tensor,
    *,
    do_sample: bool,
    temperature: float | None = None,
    top_k: int | None = DEFAULT_TOP_K,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token ``(batch,)``: argmax, or a draw after temperature and top-k (transformers' order)."""
    if not do_sample:
        return scores.argmax(dim=-1)
    if temperature is not None and temperature != 1.0:
        scores = scores / temperature
    if top_k:
        k = min(int(top_k), scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


# -- the run ----------------------------------------------------------------------------------------------


@dataclass
class PrefillCache:
    """The key/value cache of a prompt's first ``seq_len - 1`` tokens (see :func:`prefill_cache`)."""

    cache: Any
    seq_len: int


def prefill_cache(vlm, prepared, interventions: Any = ()) -> PrefillCache:
    """Run the whole prompt once (``interventions`` applied, as in a generation's prefill)
    and keep the key/value cache of every token but the last, for :func:`dola_generate`'s
    ``prefill``. Exact for interventions that only change earlier positions' states (the
    masks on image tokens); the last token is recomputed from the cache by each decoding."""
    from ..engine.plan import Plan, build_schedule, execute_step

    if isinstance(interventions, Intervention):
        interventions = [interventions]
    schedule = build_schedule(Plan(*interventions).bind(vlm, prepared))
    model = vlm.nnsight
    with torch.no_grad(), model.trace(dict(prepared.inputs), use_cache=True):
        execute_step(model, vlm.access, schedule, StepContext.of(prepared, {}, vlm.device))
        cache = model.output.past_key_values.save()
    cache.crop(-1)  # drop the last prompt token: each decoding recomputes it
    return PrefillCache(cache=cache, seq_len=prepared.seq_len)


@dataclass
class DolaResult:
    """One DoLa generation.

    ``token_ids`` the new tokens (1-D), ``text`` their decoding; per step:
    ``premature_layers`` (``None`` without DoLa) and ``layer_scores`` (the selection rule's
    score for every candidate, in ``candidate_layers`` order; empty with one candidate).
    ``records`` are the interventions' recordings, as in :class:`~interp.RunResult`.
    """

    text: str
    token_ids: torch.Tensor
    premature_layers: list
    candidate_layers: list[int]
    select: str | None
    layer_scores: list = field(default_factory=list)
    records: dict = field(default_factory=dict)


class _DolaProbe(Intervention):
    """Records what DoLa needs at each step: the last row of ``hidden_states[l]`` and, for the
    attention rule, the last row's head-mean attention over the image tokens."""

    every_step = True
    name = "dola"

    def __init__(self, hidden_layers: list[int], attention_layers: list[int]):
        self.hidden_layers = list(hidden_layers)
        self.attention_layers = list(attention_layers)
        self.layers = sorted(set(hidden_layers) | set(attention_layers))

    def bind(self, n_layers: int, prepared) -> _DolaProbe:
        return self  # the layers were checked by candidate_layers

    def sites(self):
        return [(layer, "resid_pre") for layer in self.hidden_layers] + [
            (layer, "attn_pattern") for layer in self.attention_layers
        ]

    def edit_hidden(self, layer, site, hidden, ctx: StepContext):
        ctx.records[("dola_hidden", layer, ctx.step)] = hidden[:, -1]
        return hidden

    def at_site(self, layer, site, value, ctx: StepContext):
        if site == "attn_pattern":
            rows = torch.tensor([len(query_window(value)) - 1])
            device = value[0][1].device
            probs = attention_probs(value, rows.to(device))[..., ctx.image_positions.to(device)]
            ctx.records[("dola_attention", layer, ctx.step)] = probs.mean(dim=1)[0, 0].float()
            return value
        return self.edit_hidden(layer, site, value, ctx)


def _output_embedding_is_tied(vlm) -> bool:
    model = vlm.model
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None:
        return False
    return out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr()


def _check_arguments(select, relative_top, penalty, max_new_tokens, do_sample, temperature, top_k):
    if select not in SELECT_RULES:
        raise InterpError(f"unknown DoLa select rule {select!r}; use 'logits' (DoLa) or 'attention' (the authors' WCD)")
    if not 0.0 < relative_top <= 1.0:
        raise InterpError(f"relative_top must be in (0, 1], got {relative_top}")
    if not penalty > 0:
        raise InterpError(f"repetition_penalty must be > 0, got {penalty}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InterpError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if do_sample and temperature is not None and not temperature > 0:
        raise InterpError(f"sampling needs a temperature > 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise InterpError(f"top_k must be a non-negative integer or None, got {top_k!r}")


def dola_generate(
    vlm,
    prepared,
    *,
    layers: str | Sequence[int] | None = "low",
    select: str = "logits",
    relative_top: float = 0.1,
    repetition_penalty: float = 1.2,
    max_new_tokens: int = 16,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = DEFAULT_TOP_K,
    seed: int | None = None,
    penalize_prompt: bool = True,
    interventions: Any = (),
    remote: bool | str | None = None,
    prefill: Any = None,
) -> DolaResult:
    """Generate with DoLa (see the module docstring); ``layers=None`` decodes without DoLa
    (the final layer's logits through the same penalty and sampler).

    ``layers``: ``"low"``, ``"high"`` or hidden-state indices (one index = a static
    premature layer). ``select``: ``"logits"`` (DoLa) or ``"attention"`` (the authors').
    Sampling (``do_sample=True``) applies ``temperature`` then transformers' default
    ``top_k=50`` and draws from a generator seeded with ``seed`` (the same seed gives the
    same tokens). ``interventions`` (one, a list or a :class:`~interp.Plan`) apply in the
    prefill of the same run. ``remote`` as in :meth:`interp.VLM.run`. Batch size 1.

    ``prefill`` (from :func:`prefill_cache`, local runs, LLaVA-style families whose
    positions do not depend on the image layout) reuses the key/value cache of
    all prompt tokens but the last, computed once with its interventions: the run then
    starts at the last prompt token. Many decodings of one prompt (the method ablation)
    skip re-encoding the image and prompt; ``interventions`` must then be empty.
    """
    from ..engine.plan import Plan, build_schedule, execute_step

    _check_arguments(select, relative_top, repetition_penalty, max_new_tokens, do_sample, temperature, top_k)
    if prepared.inputs["input_ids"].shape[0] != 1:
        raise InterpError("dola_generate decodes one prompt at a time (batch size 1, as the authors ran it)")
    n_layers = vlm.n_layers
    candidates = None if layers is None else candidate_layers(n_layers, layers, tied=_output_embedding_is_tied(vlm))
    use_attention = candidates is not None and select == "attention" and len(candidates) > 1
    if use_attention and prepared.n_image_tokens == 0:
        raise InterpError("select='attention' needs image tokens in the prompt")
    attention_layers = sorted(set(candidates) | {n_layers - 1}) if use_attention else []
    probe = _DolaProbe(sorted(set(candidates or [])), attention_layers)

    if isinstance(interventions, Intervention):
        interventions = [interventions]
    bound = Plan(*interventions).bind(vlm, prepared) + ([probe] if candidates is not None else [])
    schedule = build_schedule(bound)

    if prefill is not None:
        if len(bound) > (1 if candidates is not None else 0):
            raise InterpError("with a prefill cache the interventions were applied when it was built; pass none here")
        if prefill.seq_len != prepared.seq_len:
            raise InterpError("the prefill cache was built for another prompt")
    model = vlm.nnsight
    access = vlm.access
    lm_head = envoy_at(model, vlm.adapter.lm_head_path)
    inputs = dict(prepared.inputs)
    seq_len = prepared.seq_len
    prompt_ids = prepared.inputs["input_ids"] if penalize_prompt else prepared.inputs["input_ids"][:, :0]
    temperature = None if not do_sample else temperature
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    if prefill is not None:
        import copy

        kwargs["past_key_values"] = copy.deepcopy(prefill.cache)
        # the image is in the cache already: the first forward sees only the last (text) token
        inputs = {k: v for k, v in inputs.items() if not k.startswith("pixel_")}
    first_offset = 0 if prefill is None else seq_len - 1

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was never reached.*")  # the open loop ends with generation
        with torch.no_grad(), model.generate(inputs, **kwargs, **vlm.trace_kwargs(remote)) as tracer:
            records = nnsight.save({})
            chosen = nnsight.save([])
            premature = nnsight.save([])
            scores_per_step = nnsight.save([])
            state = {}
            start = StepContext.of(prepared, records, vlm.device)
            for step in tracer.iter[:]:
                offset = first_offset if step == 0 else seq_len + step - 1
                ctx = start.at(step, offset)
                execute_step(model, access, schedule, ctx)
                head_out = lm_head.output
                final = head_out[:, -1].float()
                if step == 0:
                    state["history"] = prompt_ids.to(final.device)
                    if do_sample:
                        state["generator"] = torch.Generator(device=final.device)
                        state["generator"].manual_seed(0 if seed is None else int(seed))
                layer_scores = []
                if candidates is None:
                    scores, layer = final, None
                else:
                    weight = lm_head.weight
                    bias = getattr(lm_head, "bias", None)
                    early = {
                        l: F.linear(records[("dola_hidden", l, step)].to(weight.device), weight, bias).to(final.device)
                        for l in candidates
                    }
                    if len(candidates) == 1:
                        layer = candidates[0]
                    else:
                        if use_attention:
                            last = records[("dola_attention", n_layers - 1, step)]
                            stacked = torch.stack(
                                [records[("dola_attention", l, step)].to(last.device) for l in candidates]
                            )
                            per_layer = attention_jsd_scores(last, stacked)
                        else:
                            per_layer = logit_jsd_scores(final, torch.stack([early[l] for l in candidates]))
                        layer_scores = [float(v) for v in per_layer]
                        layer = candidates[int(torch.argmax(per_layer))]
                    scores = dola_contrast(final, early[layer], relative_top)
                scores = apply_repetition_penalty(scores, state["history"], repetition_penalty)
                token = sample_next(
                    scores, do_sample=do_sample, temperature=temperature, top_k=top_k, generator=state.get("generator")
                )
                state["history"] = torch.cat([state["history"], token[:, None].to(state["history"].device)], dim=1)
                forced = torch.full(head_out.shape, float("-inf"), dtype=torch.float32, device=head_out.device)
                forced[:, -1].scatter_(1, token[:, None].to(forced.device), 0.0)
                lm_head.output = forced
                chosen.append(int(token[0]))
                premature.append(layer)
                scores_per_step.append(layer_scores)
    ids = torch.tensor(list(chosen), dtype=torch.long)
    kept = {
        key: value.detach().cpu() for key, value in records.items() if key[0] not in ("dola_hidden", "dola_attention")
    }
    return DolaResult(
        text=vlm.decode(ids[None])[0],
        token_ids=ids,
        premature_layers=list(premature),
        candidate_layers=list(candidates or []),
        select=select if candidates else None,
        layer_scores=list(scores_per_step),
        records=kept,
    )


__all__ = [
    "DEFAULT_TOP_K",
    "DolaResult",
    "PrefillCache",
    "SELECT_RULES",
    "attention_jsd_scores",
    "candidate_layers",
    "dola_contrast",
    "dola_generate",
    "logit_jsd_scores",
    "prefill_cache",
    "relative_top_filter",
    "apply_repetition_penalty",
    "sample_next",
    "squared_jsd",
]
