"""Greedy generation continued from prefills the fast path computed.

A restarted variant's prefill (:func:`interp.engine.prefix.restart` with ``kv_rows``) leaves
every layer's keys and values of the prompt rows and the logits at the prompt's last
position. :func:`greedy_continue` decodes a batch of such variants together, as
``model.generate(do_sample=False)`` would from the same prefill:

* the first token is the argmax of the prefill's last logits after the logits processors
  ``generate`` builds from the model's generation config (e.g. ``suppress_tokens``);
* the keys and values go into a ``DynamicCache`` built from the model's config, through
  the cache's own ``update`` (sliding-window layers keep their window, as in ``generate``);
* every later token comes from ``model.generate`` itself, continuing from that cache (its
  prefill is the first token only): the model's own forward, masks and positions — M-RoPE
  included: the rope deltas are those ``generate`` computes for the prompt;
* each row stops at its first end-of-sequence token (or at ``max_new_tokens``), as a
  generation of that row alone would.

Interventions act on the prefill only (they are in the keys and values); decoding runs
the clean model.
"""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import DynamicCache
from transformers.generation import LogitsProcessorList

from ..errors import InterpError
from .kv_cache import cache_keyword


def _generation_config(model, max_new_tokens: int):
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, max_new_tokens=max_new_tokens)
    return config


def first_tokens(vlm, prepared, logits: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The greedy first token of each row from its prefill's last logits ``[n, vocab]``, after the
    logits processors ``generate`` would apply (uses transformers' own builders)."""
    model = vlm.model
    device = logits.device
    config = _generation_config(model, max_new_tokens)
    ids = prepared.inputs["input_ids"].to(device).expand(logits.shape[0], -1)
    model._prepare_special_tokens(config, True, device=device)
    processors = model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=ids.shape[1],
        encoder_input_ids=ids,
        prefix_allowed_tokens_fn=None,
        logits_processor=LogitsProcessorList(),
        device=device,
        model_kwargs={},
    )
    return processors(ids, logits.float()).argmax(dim=-1)


def end_ids(vlm) -> set[int]:
    eos = vlm.model.generation_config.eos_token_id
    if eos is None:
        raise InterpError("the model's generation config has no end-of-sequence token")
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def cut_at_end(tokens: torch.Tensor, ends: set[int]) -> list[list[int]]:
    """Each row up to and including its first end-of-sequence token."""
    out = []
    for row in tokens.tolist():
        for i, token in enumerate(row):
            if token in ends:
                row = row[: i + 1]
                break
        out.append(row)
    return out


def greedy_continue(vlm, prepared, last_logits: torch.Tensor, kv: list, max_new_tokens: int) -> list[list[int]]:
    """Greedy new tokens (each row cut after its end-of-sequence token) of ``n`` variants of the
    prompt ``prepared`` whose prefill gave ``last_logits`` ``[n, vocab]`` (the prompt's last
    position) and, per decoder layer, ``kv[i] = (keys, values)`` ``[n, kv_heads, prompt_len, head_dim]``."""
    if max_new_tokens < 1:
        raise InterpError("max_new_tokens must be at least 1")
    model = vlm.model
    n, prompt_len = last_logits.shape[0], prepared.seq_len
    if len(kv) != vlm.n_layers or any(k.shape[0] != n or k.shape[2] != prompt_len for k, _ in kv):
        raise InterpError("the prefill keys/values must cover every layer, every row and the whole prompt")
    ends = end_ids(vlm)
    first = first_tokens(vlm, prepared, last_logits, max_new_tokens)
    if max_new_tokens == 1 or all(int(t) in ends for t in first):
        return cut_at_end(first[:, None].cpu(), ends)
    device = first.device
    cache = DynamicCache(config=model.config)
    for index, (keys, values) in enumerate(kv):
        cache.update(keys.contiguous(), values.contiguous(), index)
    inputs = prepared.inputs
    prompt = inputs["input_ids"].to(device)
    # what `generate` computes for the prompt before its prefill: the position ids, and for
    # M-RoPE families (Qwen2-VL) the prompt's rope deltas, which its decoding steps read
    prepare_positions = getattr(model, "_prepare_position_ids_for_generation", None)
    if prepare_positions is not None:
        prepare_positions(prompt, {key: value for key, value in inputs.items() if key != "input_ids"})
    extra = {}
    for key, fill in vlm.adapter.appended_token_fields:  # what a generated token gets on each token-axis field
        value = inputs.get(key)
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == prompt_len:
            pad = torch.full((1, 1), fill, dtype=value.dtype, device=value.device)
            extra[key] = torch.cat([value, pad], dim=1).to(device).expand(n, -1)
    ids = torch.cat([prompt.expand(n, -1), first[:, None]], dim=1)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens - 1,
            do_sample=False,
            **{cache_keyword(vlm): cache},
            **extra,
        )
    steps = out.shape[1] - ids.shape[1]
    vlm.counts["decode_forward"] += steps
    vlm.counts["decode_token_rows"] += steps * n
    return cut_at_end(out[:, prompt_len:].cpu(), ends)
