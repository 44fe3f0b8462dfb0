"""Several samples' clean passes in ONE padded forward, cut back into one CleanPass each.

:func:`capture_batch` stacks the samples' (teacher-forced) inputs into one batch, **right-padded**
to the longest: every row keeps its tokens at the positions it has alone — its image tokens,
question tokens and scored positions are its own ``Prepared``'s, unchanged — and the padding
comes after them, where causal attention keeps every real token from seeing it (the padding
rows are masked out as keys by the batch's attention mask too, and never read). The model's
own forward builds that mask and the positions (rotary tables, Qwen2-VL's M-RoPE indices)
from the batch's ``attention_mask``, so each row computes what it computes alone.

Inside the one nnsight trace each hook site is read once and every row's recorders (bound
to that row's own ``Prepared``) see that row's value cut to its own length
(:func:`interp.interventions.runtime.row_value`). After it, the batch is cut into one
:class:`~interp.engine.prefix.CleanPass` per sample with the padding removed — its logits at
its scored positions, its records, and (restartable) every decoder layer's inputs and
keys/values — so restarts (:func:`~interp.engine.prefix.restart`, row-level included), the
fast sweep and decoding continue from it exactly as from a pass captured alone: downstream
code does not know it was batched. One difference in form, not in value: alone, an SDPA
model passes no attention mask (the kernel's causal flag); a row of a padded batch carries
the batch's mask cut to its rows (the causal mask, explicit), which the restart code reads
like any other mask.

Equal to batch 1 within float tolerance, not bit for bit: the padded batch runs the same
arithmetic on differently shaped tensors (SDPA with an explicit mask instead of its causal
path, batched matmuls whose blocking depends on the batch), which changes the order of
float reductions. The tests bound the difference per tensor at 1e-5 times its largest
magnitude (absolute below 1; float32) on logits, records, layer inputs and keys/values; the
organism's residual stream (scale ~500) differs by ~1e-6 of its scale, a dozen ulps.

Which families can: the adapter's ``batched_forward`` (one place for that fact). Elsewhere,
and for remote runs (the trace would have to ship the row cutting), for a single sample, or
when the inputs do not stack (different pixel shapes), :func:`capture_batch` runs the samples
one at a time — the same results, no error.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import nnsight
import torch
from transformers.cache_utils import Cache, DynamicCache

from ..errors import InterpError
from ..hooks import site_order
from ..interventions.base import Intervention, StepContext
from ..interventions.runtime import row_value
from .plan import Plan, build_schedule
from .clean_pass import CleanPass, _recorder_specs, capture, supports_prefix_reuse
from .kv_cache import cache_keyword, cache_layer_kv


def batch_reason(vlm, remote: bool | str | None = None) -> str | None:
    """None if several samples' clean passes can run as one padded forward on ``vlm``, else why not."""
    if not vlm.adapter.batched_forward:
        return f"{vlm.adapter.name} inputs do not batch (its adapter's batched_forward)"
    if remote not in (None, False) or vlm.remote:
        return "remote execution"
    return None


def pad_token_id(vlm) -> int:
    """The id the padding positions get: the tokenizer's pad token (else its end of sequence),
    never the image token (the model counts those in ``input_ids``, padding or not)."""
    tokenizer = getattr(vlm.processor, "tokenizer", vlm.processor)
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None), 0):
        if candidate is not None and int(candidate) != vlm.image_token_id:
            return int(candidate)
    return 1 if vlm.image_token_id == 0 else 0  # pragma: no cover - only if both tokens are the image token


def stack_inputs(vlm, prepared: Sequence) -> dict | None:
    """One right-padded batch of the ``prepared`` samples' inputs (each a batch of one), or
    None when they do not stack. Token-axis fields (``[1, seq_len]``: ids, attention mask, token
    types) are padded to the longest — ids with :func:`pad_token_id`, the rest with 0 (so the
    attention mask excludes the padding); every other tensor (pixel values, image grids and
    sizes) is concatenated along its first axis in row order, as the processor lays out a batch;
    anything else must be the same in every sample."""
    length = max(p.seq_len for p in prepared)
    pad = pad_token_id(vlm)
    out: dict = {}
    for key in prepared[0].inputs:
        values = [p.inputs.get(key) for p in prepared]
        if not all(isinstance(v, torch.Tensor) for v in values):
            if any(v is not values[0] and v != values[0] for v in values):
                return None
            out[key] = values[0]
            continue
        if all(v.ndim == 2 and v.shape == (1, p.seq_len) for v, p in zip(values, prepared)):
            fill = pad if key == "input_ids" else 0
            out[key] = torch.cat([torch.nn.functional.pad(v, (0, length - v.shape[1]), value=fill) for v in values])
            continue
        if any(v.ndim == 0 or v.shape[1:] != values[0].shape[1:] for v in values):
            return None
        out[key] = torch.cat(values)
    if set().union(*(p.inputs for p in prepared)) != set(out):
        return None
    return out


def _row_schedule(bound: list[list[Intervention]]) -> list[tuple[Any, str, list[tuple[int, list]]]]:
    """``[(layer, site, [(row, interventions), ...]), ...]`` in forward order: each site read once
    for every row that acts there."""
    by_site: dict[tuple, list] = {}
    for row, items in enumerate(bound):
        for layer, site, group in build_schedule(items):
            by_site.setdefault((layer, site), []).append((row, group))
    return [(layer, site, rows) for (layer, site), rows in sorted(by_site.items(), key=lambda kv: site_order(*kv[0]))]


def _execute_rows(model, access, schedule, contexts, lengths) -> None:
    """One forward's worth of the rows' recorders (inside the trace): each row's recorders see
    that row's value, cut to its length."""
    for layer, site, rows in schedule:
        active = [(row, [item for item in group if item.active(contexts[row])]) for row, group in rows]
        active = [(row, group) for row, group in active if group]
        if not active:
            continue
        value = access.read(model, layer, site)
        for row, group in active:
            view = row_value(site, value, row, lengths[row])
            for item in group:
                item.at_site(layer, site, view, contexts[row])


class _RowCutter:
    """Cuts captured layer inputs (and keys/values) to one batch row and its length, each
    tensor once (a tensor the layers share stays shared in the row's copy)."""

    def __init__(self, batch: int, padded: int, row: int, length: int):
        self.batch, self.padded, self.row, self.length = batch, padded, row, length
        self.memo: dict[int, torch.Tensor] = {}

    def cut(self, tensor: torch.Tensor, batch_axis: int | None, seq_axes: tuple[int, ...], what: str) -> torch.Tensor:
        key = id(tensor)
        if key in self.memo:
            return self.memo[key]
        out = tensor
        if batch_axis is not None:
            size = out.shape[batch_axis]
            if size == self.batch:
                out = out.narrow(batch_axis, self.row, 1)
            elif size != 1:
                raise InterpError(f"cannot cut {what} {tuple(tensor.shape)} into {self.batch} batch rows")
        for axis in seq_axes:
            if out.shape[axis] != self.padded:
                raise InterpError(f"cannot cut {what} {tuple(tensor.shape)} to a row of {self.padded} tokens")
            out = out.narrow(axis, 0, self.length)
        out = out.clone()  # the row's own memory: releasing one sample's prefix frees it
        self.memo[key] = out
        return out

    def layer_inputs(self, args, kwargs) -> tuple[tuple, dict]:
        """One decoder layer's ``(args, kwargs)`` for the row: the keywords the restart code
        knows (``interp.engine.prefix._ROW_KEYWORDS``) cut along their batch and token axes,
        the batch's cache dropped (the row's keys and values are cut separately)."""
        hidden_axis = (0, (1,))
        args = tuple(self.cut(a, *hidden_axis, "the hidden states") if i == 0 else a for i, a in enumerate(args))
        out: dict[str, Any] = {}
        for key, value in kwargs.items():
            if isinstance(value, Cache):
                out[key] = None
            elif not _is_tensorish(value):
                out[key] = value
            elif key == "hidden_states":
                out[key] = self.cut(value, *hidden_axis, key)
            elif key == "attention_mask" and isinstance(value, torch.Tensor):
                out[key] = self.cut(value, -4, (-2, -1), key)  # (batch, heads or 1, query, key)
            elif key == "position_embeddings":
                out[key] = type(value)(self.cut(t, -3, (-2,), key) for t in value)  # (..., batch, seq, dim)
            elif key == "position_ids" and isinstance(value, torch.Tensor):
                out[key] = self.cut(value, -2, (-1,), key)  # (batch, seq) or (sections, batch, seq)
            elif key == "cache_position" and isinstance(value, torch.Tensor):
                out[key] = self.cut(value, None, (-1,), key)
            else:
                raise InterpError(
                    f"a batched clean pass cannot cut the decoder layers' keyword {key!r} into rows; "
                    "this family should not say batched_forward"
                )
        return args, out

    def kv(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, kv_heads, seq, head_dim)`` -> the row's."""
        return self.cut(keys, 0, (2,), "the keys"), self.cut(values, 0, (2,), "the values")


def _is_tensorish(value) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, (tuple, list)) and any(isinstance(item, torch.Tensor) for item in value)
    )


def capture_batch(
    vlm,
    prepared: Sequence,
    positions: Sequence,
    recorders: Sequence[Sequence[Intervention]],
    *,
    restartable: bool = True,
    remote: bool | str | None = None,
    keep_kv: bool = False,
) -> list[CleanPass]:
    """:func:`~interp.engine.prefix.capture` for several samples in one padded forward (see the
    module docstring): ``prepared[i]`` (a batch of one), its ``positions[i]`` and its
    ``recorders[i]``; one :class:`CleanPass` per sample, padding removed, equal (within float
    tolerance) to what :func:`capture` gives for that sample alone. One sample, a family
    whose adapter does not say ``batched_forward``, a remote run, or inputs that do not stack
    run one :func:`capture` per sample instead."""
    n = len(prepared)
    if not (len(positions) == len(recorders) == n):
        raise InterpError("capture_batch takes one positions tensor and one recorder list per sample")
    inputs = stack_inputs(vlm, prepared) if n > 1 and batch_reason(vlm, remote) is None else None
    lengths = [p.seq_len for p in prepared]
    if inputs is None:
        return [
            capture(vlm, p, pos, list(rec), restartable=restartable, remote=remote, keep_kv=keep_kv)
            for p, pos, rec in zip(prepared, positions, recorders)
        ]
    if restartable:
        reason = supports_prefix_reuse(vlm)
        if reason:
            raise InterpError(f"prefix reuse does not apply to {vlm.name}: {reason}")
    positions = [torch.as_tensor(pos, dtype=torch.long) for pos in positions]
    bound = [Plan(list(rec)).bind(vlm, p) for rec, p in zip(recorders, prepared)]
    specs = [_recorder_specs(items) for items in bound]
    schedule = _row_schedule(bound)
    by_layer: dict[Any, list] = {}
    for entry in schedule:
        by_layer.setdefault(entry[0], []).append(entry)
    layers, model, access, device = vlm.layers, vlm.nnsight, vlm.access, vlm.device
    vlm.counts["clean_forward"] += 1
    cache = DynamicCache() if restartable and keep_kv else None
    trace_kwargs = {"use_cache": True, cache_keyword(vlm): cache} if cache is not None else {"use_cache": False}
    with torch.no_grad(), model.trace(inputs, **trace_kwargs):
        saved = nnsight.save([])
        records = nnsight.save([{} for _ in range(n)])
        contexts = [StepContext.of(p, records[row], device) for row, p in enumerate(prepared)]
        for index in range(vlm.n_layers):
            if restartable:
                saved.append(layers[index].inputs)
            if index in by_layer:
                _execute_rows(model, access, by_layer[index], contexts, lengths)
        if None in by_layer:
            _execute_rows(model, access, by_layer[None], contexts, lengths)
        logits = nnsight.save([model.output.logits[row, pos.to(device)] for row, pos in enumerate(positions)])
    if cache is not None and len(cache.layers) != vlm.n_layers:
        raise InterpError(f"the clean pass filled {len(cache.layers)} cache layers for {vlm.n_layers} decoder layers")
    out = []
    for row, p in enumerate(prepared):
        if not restartable:  # as a plain Plan run keeps them: on the CPU
            out.append(
                CleanPass(
                    p,
                    positions[row].clone(),
                    logits[row].detach().cpu().float(),
                    {key: value.detach().cpu() for key, value in records[row].items()},
                    specs[row],
                )
            )
            continue
        cutter = _RowCutter(n, max(lengths), row, lengths[row])
        layer_inputs = [cutter.layer_inputs(args, kwargs) for args, kwargs in saved]
        kv = [cutter.kv(*cache_layer_kv(layer)) for layer in cache.layers] if cache is not None else None
        out.append(
            CleanPass(
                p,
                positions[row].clone(),
                logits[row].detach().float(),
                {key: value.detach() for key, value in records[row].items()},
                specs[row],
                layer_inputs,
                kv,
            )
        )
    return out


__all__ = ["batch_reason", "capture_batch", "pad_token_id", "stack_inputs"]
