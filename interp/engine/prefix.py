"""The fast path: run the clean pass once, restart edited variants at their first edited layer.

An edit at layer ``l`` leaves layers ``< l`` exactly as in the clean run. :func:`capture`
runs the clean forward once in an nnsight trace and keeps

* each decoder layer's inputs (the hidden states and every keyword the model passes:
  position embeddings, masks, ...), so a variant can restart at any layer;
* the logits at the scored positions;
* what the clean pass's recorders recorded (e.g. the last token's attention at every
  layer, or the residual stream at the scored positions) — shared by every analysis
  of the sample, and copied into a variant's records for its sites below the restart
  layer (:meth:`Intervention.before_restart`).

:func:`continue_from` runs only layers ``start .. L-1`` for a batch of variants at once
(each variant one batch row, sharing the captured prefix) and returns their final
hidden states at the scored positions; :func:`unembed` applies the final norm and the
unembedding (call it once per sample for everything collected, not once per chunk).

:func:`restart` is the general form. Row-level restart: rows before the first row any
variant can change (:func:`first_changed_row`, from each intervention's ``first_row``)
are clean in every layer (causal attention), so only the rows from there on are
recomputed; each layer reads the earlier rows' clean keys and values from a
``DynamicCache`` (:func:`fill_kv`: the clean layers' own attention filled it), through
the unchanged HF layer forward. Variants whose input to a layer is bit-for-bit the same
and that edit nothing inside it share that layer's forward. With ``kv_rows`` a restart
also returns every layer's keys and values of the prompt rows, from which
:mod:`interp.engine.decode` continues a generation.

Every intervention runs here through its own interface — ``edit_hidden`` at
``resid_pre`` / ``z`` (per head, before the attention's output projection) /
``attn_out`` / ``mlp_out`` / ``resid_post``, ``edit_mask`` at
``attn_pattern`` (through the layer's attention mask), ``before_restart`` below the
restart layer — so the executor never looks at classes. Families whose forward adds
to the residual stream between layers outside the layer modules (the adapter's
``between_layer_edits``, e.g. Qwen3-VL's DeepStack) cannot restart mid-stack:
:func:`supports_prefix_reuse` says so and analyses fall back to full passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import inspect

import nnsight
import torch
from transformers.cache_utils import Cache, DynamicCache

from ..errors import InterpError
from ..interventions.base import Intervention, StepContext
from ..interventions.runtime import EditableMask, editable_tensor, first, merge_heads, replace_first, split_heads
from .plan import Plan, build_schedule, execute_step

#: sites the fast path recomputes (and so can edit) in the layers it runs
_HIDDEN_SITES = ("resid_pre", "z", "attn_out", "mlp_out", "resid_post")


def supports_prefix_reuse(vlm) -> str | None:
    """None if the fast path applies to ``vlm``, else the reason it does not."""
    if vlm.adapter.between_layer_edits:
        return vlm.adapter.between_layer_edits
    if vlm.attn_implementation not in ("sdpa", "eager"):
        return f"attention implementation {vlm.attn_implementation!r} (needs sdpa or eager masks)"
    return None


@dataclass
class CleanPass:
    """One sample's clean forward, shared by every analysis of it.

    ``logits``: ``[n_positions, vocab]`` at ``positions``; ``records``: what the clean
    recorders stored (``(name, layer, 0)`` keys); ``layer_inputs``: every decoder
    layer's ``(args, kwargs)`` — None when the pass ran as a plain (naive or remote) run,
    which cannot be restarted from.
    """

    prepared: Any
    positions: torch.Tensor
    logits: torch.Tensor
    records: dict
    specs: dict = field(default_factory=dict)
    layer_inputs: list | None = None
    #: every decoder layer's clean keys and values ``[(keys, values)]``, each ``[1, kv_heads, seq, head_dim]``
    #: (kept with ``capture(..., keep_kv=True)``): what a restart on a row suffix (rows before the
    #: first changed one attend to them) and a generation continuing from the prefix read
    kv: list | None = None

    def recorded(self, spec) -> torch.Tensor | None:
        """What the clean pass recorded at ``spec`` (see ``Intervention.recorded_as``), or None."""
        key = self.specs.get(spec)
        return None if key is None else self.records.get((key[0], key[1], 0))

    @property
    def restartable(self) -> bool:
        return self.layer_inputs is not None

    def prefix_bytes(self) -> int:
        """Memory held by the captured layer inputs (hidden states; shared keywords once) and keys/values."""
        if self.layer_inputs is None:
            return 0
        seen, total = set(), 0
        values = [value for args, kwargs in self.layer_inputs for value in list(args) + list(kwargs.values())]
        values += [tensor for pair in self.kv or () for tensor in pair]
        for value in values:
            for tensor in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
        return total

    def release_prefix(self) -> None:
        self.layer_inputs = None
        self.kv = None


def _recorder_specs(bound: list[Intervention]) -> dict:
    specs = {}
    for item in bound:
        for layer, site in item.sites():
            found = item.recorded_as(layer, site)
            if found is None:
                raise InterpError(f"the clean pass takes recorders only; {item!r} edits {site}")
            spec, key = found
            specs[spec] = key
    return specs


def capture(vlm, prepared, positions: torch.Tensor, recorders: Iterable[Intervention] = (), *,
            restartable: bool = True, remote: bool | str | None = None, keep_kv: bool = False) -> CleanPass:
    """Run ``prepared`` once, clean, with ``recorders``; keep what restarting needs.

    ``restartable=False`` (the naive and remote paths) runs the same pass as a plain
    :class:`~interp.engine.plan.Plan` run and keeps no layer inputs. ``keep_kv=True`` also
    keeps every layer's keys and values (the forward runs with a ``DynamicCache`` of full
    layers, which the model fills itself), for row-suffix restarts and generation."""
    positions = torch.as_tensor(positions, dtype=torch.long)
    plan = Plan(list(recorders))
    if not restartable:
        run = plan.run(vlm, prepared, logit_positions=positions.tolist(), remote=remote, count_as="clean_forward")
        return CleanPass(prepared, positions.clone(), run.logits[0].float(), run.records,
                         _recorder_specs(plan.bind(vlm, prepared)))
    reason = supports_prefix_reuse(vlm)
    if reason:
        raise InterpError(f"prefix reuse does not apply to {vlm.name}: {reason}")
    bound = plan.bind(vlm, prepared)
    specs = _recorder_specs(bound)
    schedule = build_schedule(bound)
    by_layer: dict[Any, list] = {}
    for entry in schedule:
        by_layer.setdefault(entry[0], []).append(entry)
    layers = vlm.layers
    model, access = vlm.nnsight, vlm.access
    vlm.counts["clean_forward"] += 1
    cache = DynamicCache() if keep_kv else None  # no config: full (not sliding-window) layers keep every row
    trace_kwargs = {"use_cache": True, cache_keyword(vlm): cache} if keep_kv else {"use_cache": False}
    with torch.no_grad(), model.trace(dict(prepared.inputs), **trace_kwargs):
        saved = nnsight.save([])
        records = nnsight.save({})
        ctx = StepContext(0, 0, prepared.image_positions.to(vlm.device), prepared.question_positions.to(vlm.device),
                          prepared.seq_len, records)
        for index in range(vlm.n_layers):
            saved.append(layers[index].inputs)
            if index in by_layer:
                execute_step(model, access, by_layer[index], ctx)
        if None in by_layer:
            execute_step(model, access, by_layer[None], ctx)
        logits = model.output.logits[0, positions].save()
    records = {key: value.detach() for key, value in records.items()}
    kv = None
    if keep_kv:
        if len(cache.layers) != vlm.n_layers:
            raise InterpError(f"the clean pass filled {len(cache.layers)} cache layers for "
                              f"{vlm.n_layers} decoder layers")
        kv = [(layer.keys, layer.values) for layer in cache.layers]
    return CleanPass(prepared, positions.clone(), logits.detach().float(), records, specs, list(saved), kv)


def cache_keyword(vlm) -> str:
    """The forward's keyword for a KV cache (``cache`` in transformers 5.2x, ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(vlm.model.forward).parameters else "past_key_values"


@torch.no_grad()
def unembed(vlm, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, unembedding and (Gemma) logit soft-capping, as the model's forward applies them."""
    model = vlm.model
    logits = vlm.adapter.resolve(model, "lm_head")(vlm.adapter.resolve(model, "final_norm")(hidden))
    cap = getattr(vlm.adapter.text_config(vlm.config), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


#: layer keywords a row-suffix restart knows how to cut to the recomputed rows (anything else
#: that is a tensor makes it fall back to every row)
_ROW_KEYWORDS = {"attention_mask", "position_embeddings", "position_ids", "cache_position", "cache",
                 "past_key_values", "use_cache"}


def _layer_cache_keyword(layer) -> str:
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


def _is_tensorish(value) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, (tuple, list)) and any(isinstance(item, torch.Tensor) for item in value))


def _sees_forward(mask, row: int) -> int | None:
    """The first query row before ``row`` that may attend to a key at or after ``row``
    (bidirectional image attention), or None when none does (causal masks)."""
    if mask is None or row <= 0:
        return None
    block = mask[..., :row, row:]
    keep = block if block.dtype == torch.bool else block > torch.finfo(block.dtype).min / 2
    seeing = keep.reshape(-1, *keep.shape[-2:]).any(dim=0).any(dim=-1).nonzero()
    return int(seeing[0]) if seeing.numel() else None


def first_changed_row(vlm, clean: "CleanPass", start: int, variants: list[list[Intervention]]) -> int:
    """The first sequence row the ``variants`` (bound) can change when restarted at ``start``.

    Each intervention says it through its interface: ``first_row(layer, site)`` is the first
    prefill position it can change (or read) at that site, None if it changes none (the base
    class says 0: every row). Rows before the returned one are clean in every layer
    from ``start`` on (causal attention), so a restart recomputes only the rows from it on.
    Lowered until no earlier row attends to it (bidirectional image blocks) and to the first
    scored position; 0 where a layer keyword cannot be cut to a row suffix."""
    row = None
    for items in variants:
        for item in items:
            for layer, site in item.sites():
                if layer is not None and layer < start:
                    continue
                found = item.first_row(layer, site)
                if found is not None:
                    row = int(found) if row is None else min(row, int(found))
    row = int(clean.positions.min()) if row is None else min(row, int(clean.positions.min()))
    if row <= 0:
        return 0
    for index in range(start, vlm.n_layers):
        args, kwargs = clean.layer_inputs[index]
        if len(args) > 1 or any(key not in _ROW_KEYWORDS and key != "hidden_states" and _is_tensorish(value)
                                for key, value in kwargs.items()):
            return 0
        mask = kwargs.get("attention_mask")
        full = (clean.prepared.seq_len,) * 2
        if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape[-2:]) != full):
            return 0  # only a full (query x key) mask can be cut to the query rows
        while (earlier := _sees_forward(mask, row)) is not None:
            row = earlier
    return row


def fill_kv(vlm, clean: "CleanPass") -> list:
    """The clean pass's keys and values at every layer (``clean.kv``), computed once if the
    capture did not keep them: each decoder layer run again on its captured input, filling a
    ``DynamicCache`` through the layer's own attention (counted as ``kv_forward``)."""
    if clean.kv is not None:
        return clean.kv
    if not clean.restartable:
        raise InterpError("this clean pass kept no layer inputs; capture it restartable")
    layers = vlm.adapter.resolve(vlm.model, "layers")
    cache = DynamicCache()
    vlm.counts["kv_forward"] += 1
    with torch.no_grad():
        for index, layer in enumerate(layers):
            args, kwargs = clean.layer_inputs[index]
            kwargs = _without_cache(kwargs)
            kwargs[_layer_cache_keyword(layer)] = cache
            hidden = first(args) if args else kwargs.pop("hidden_states")
            layer(hidden, *args[1:], **kwargs)
            vlm.counts["layer_forwards"] += 1
            vlm.counts["layer_token_rows"] += hidden.shape[1]
    clean.kv = [(layer.keys, layer.values) for layer in cache.layers]
    return clean.kv


def _without_cache(kwargs: dict) -> dict:
    return {key: (None if isinstance(value, Cache) else value) for key, value in kwargs.items()}


def _suffix_kwargs(kwargs: dict, row: int, keys: int, device) -> dict:
    """A layer's captured keywords cut to the query rows ``row ..``: rotary tables and position
    ids along the sequence, the mask to those query rows (plain causal made explicit, since
    the kernel's own causal flag assumes as many queries as keys)."""
    out = dict(kwargs)
    if row == 0:
        return out
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones(keys, keys, dtype=torch.bool, device=device).tril()[None, None]
    out["attention_mask"] = mask[..., row:, :] if mask.shape[-2] != 1 else mask
    embeddings = kwargs.get("position_embeddings")
    if embeddings is not None:
        out["position_embeddings"] = type(embeddings)(t[..., row:, :] for t in embeddings)
    for key in ("position_ids", "cache_position"):
        if isinstance(kwargs.get(key), torch.Tensor):
            out[key] = kwargs[key][..., row:]
    return out


def _layer_mask(mask, rows: int, keys: int, row: int, n_variants: int, device):
    """``(tensor, blocked value)``: the layer's mask for query rows ``row .. row+rows-1``, one
    editable copy per variant — a bool keep-mask for SDPA (``None`` means plain causal), the
    additive float mask for eager."""
    if mask is None:
        causal = torch.ones(keys, keys, dtype=torch.bool, device=device).tril()[row : row + rows]
        return causal[None, None].expand(n_variants, 1, rows, keys).clone(), False
    if not isinstance(mask, torch.Tensor):
        raise InterpError(f"cannot edit an attention mask of type {type(mask).__name__} on the fast path")
    tensor, blocked = editable_tensor(mask, rows, keys, additive=lambda: mask)
    return tensor.expand(n_variants, *tensor.shape[1:]).clone(), blocked


class _Variants:
    """The variants' interventions, sorted by layer and site, and one step context each
    (``offset``: the absolute position of the first recomputed row)."""

    def __init__(self, clean: CleanPass, start: int, variants: list[list[Intervention]], offset: int = 0):
        prepared = clean.prepared
        self.contexts = [StepContext(0, offset, prepared.image_positions, prepared.question_positions,
                                     prepared.seq_len, {}) for _ in variants]
        self.offset = offset
        self.at: dict[tuple[int, str], list[tuple[int, Intervention]]] = {}
        for v, items in enumerate(variants):
            for layer, site, group in build_schedule(items):
                if layer is not None and layer < start:
                    for item in group:
                        item.before_restart(layer, site, clean, self.contexts[v])
                    continue
                if layer is None or (site not in _HIDDEN_SITES and site != "attn_pattern"):
                    raise InterpError(f"the fast path runs decoder layers only; {site} edits need mode='naive'")
                self.at.setdefault((layer, site), []).extend((v, item) for item in group)

    def inside(self, layer: int) -> set[int]:
        """Variants with edits inside ``layer`` (its attention pattern, attention or MLP output)."""
        return {v for site in ("attn_pattern", "z", "attn_out", "mlp_out") for v, _ in self.at.get((layer, site), ())}

    def edit_hidden(self, layer: int, site: str, hidden: torch.Tensor, members: list[int]) -> torch.Tensor:
        """``hidden``'s batch row ``j`` holds variant ``members[j]``."""
        todo = self.at.get((layer, site))
        if not todo:
            return hidden
        where = {v: j for j, v in enumerate(members)}
        hidden = hidden.clone()
        for v, item in todo:
            j = where[v]
            hidden[j : j + 1] = item.edit_hidden(layer, site, hidden[j : j + 1], self.contexts[v])
        return hidden

    def edit_mask(self, layer: int, mask, hidden: torch.Tensor, keys: int, members: list[int]):
        todo = self.at.get((layer, "attn_pattern"))
        if not todo:
            return mask, False
        built: dict = {}
        rows = hidden.shape[1]

        def per_variant():
            if "tensor" not in built:
                built["tensor"], built["blocked"] = _layer_mask(mask, rows, keys, self.offset, hidden.shape[0],
                                                                hidden.device)
            return built["tensor"], built["blocked"]

        window = torch.arange(self.offset, self.offset + rows)
        where = {v: j for j, v in enumerate(members)}
        for v, item in todo:
            j = where[v]
            editable = EditableMask(lambda j=j: (per_variant()[0][j : j + 1], per_variant()[1]), window)
            item.edit_mask(layer, editable, self.contexts[v])
        return (built["tensor"], True) if "tensor" in built else (mask, False)

    def hooks(self, layer: int, block, access, members: list[int]) -> list:
        """Forward hooks for the edits inside ``block``: ``z`` on the attention's output
        projection's input (split into heads as ``hook_z`` shows it), ``attn_out`` and
        ``mlp_out`` on those modules' outputs."""
        handles = []
        attn = getattr(block, access.attn_name)
        if self.at.get((layer, "z")):
            def pre_hook(module, args):
                heads = split_heads(args[0], access.head_dim)
                return (merge_heads(self.edit_hidden(layer, "z", heads, members)),) + tuple(args[1:])

            handles.append(getattr(attn, access.o_name).register_forward_pre_hook(pre_hook))
        for site, module in (("attn_out", attn), ("mlp_out", getattr(block, access.mlp_name))):
            if self.at.get((layer, site)):
                def hook(module, args, output, site=site):
                    return replace_first(output, self.edit_hidden(layer, site, first(output), members))

                handles.append(module.register_forward_hook(hook))
        return handles


def _shared_rows(hidden: torch.Tensor, inside: set[int]) -> tuple[list[int], list[int]]:
    """``(members, owner)``: variants whose layer input is bit-for-bit the same and that have no
    edit inside the layer compute the same layer output, so one of them (``members``) runs it;
    ``owner[v]`` is the index into ``members`` whose output variant ``v`` takes."""
    members, owner = [], []
    for v in range(hidden.shape[0]):
        found = None
        if v not in inside:
            for j, u in enumerate(members):
                if u not in inside and torch.equal(hidden[v], hidden[u]):
                    found = j
                    break
        if found is None:
            members.append(v)
            found = len(members) - 1
        owner.append(found)
    return members, owner


@dataclass
class Restart:
    """What :func:`restart` returns: the variants' final hidden states ``[n, n_positions, d]`` at
    the clean pass's positions, each variant's step context, and — with ``kv_rows`` — every
    layer's keys and values of the first ``kv_rows`` rows ``[(keys, values)]`` (layers below the
    restart: the clean pass's, expanded), the prefill cache a generation continues from."""

    hidden: torch.Tensor
    contexts: list
    kv: list | None = None


def restart(vlm, clean: CleanPass, start: int, variants: list[list[Intervention]], *, first_row: int = 0,
            kv_rows: int | None = None, share: bool = True) -> Restart:
    """Run layers ``start .. L-1`` for a batch of variants (each one batch row, sharing the
    captured prefix); see :func:`continue_from`.

    ``first_row`` > 0 recomputes only the rows from it on (what :func:`first_changed_row`
    allows), the earlier rows' clean keys and values supplied to each layer through a
    ``DynamicCache`` the layer's own attention reads and extends. ``share`` runs a layer once
    for variants whose input to it is identical and that do not edit inside it (e.g. the same
    image-token edit at that layer's input), splitting them after."""
    if not clean.restartable:
        raise InterpError("this clean pass kept no layer inputs (it ran as a plain run); capture it restartable")
    layers = vlm.adapter.resolve(vlm.model, "layers")
    n_layers = len(layers)
    if not 0 <= start < n_layers:
        raise InterpError(f"restart layer {start} is out of range 0..{n_layers - 1}")
    positions = clean.positions
    if not 0 <= first_row <= int(positions.min()):
        raise InterpError(f"first_row {first_row} must lie in 0..{int(positions.min())} (the first scored position)")
    kv = fill_kv(vlm, clean) if first_row > 0 or kv_rows else None
    n = len(variants)
    plan = _Variants(clean, start, variants, first_row)
    args, kwargs = clean.layer_inputs[start]
    hidden = first(args) if args else kwargs["hidden_states"]
    keys = hidden.shape[1]
    hidden = hidden[:, first_row:].expand(n, -1, -1).clone()
    everyone = list(range(n))
    kept = [] if kv_rows else None
    vlm.counts["restart_forward"] += 1
    with torch.no_grad():
        for index in range(start, n_layers):
            args, kwargs = clean.layer_inputs[index]
            kwargs = _suffix_kwargs(_without_cache(kwargs), first_row, keys, hidden.device)
            kwargs.pop("hidden_states", None)
            hidden = plan.edit_hidden(index, "resid_pre", hidden, everyone)
            members, owner = _shared_rows(hidden, plan.inside(index)) if share else (everyone, everyone)
            rows = hidden if len(members) == n else hidden[members]
            mask, changed = plan.edit_mask(index, kwargs.get("attention_mask"), rows, keys, members)
            if changed:
                kwargs["attention_mask"] = mask
            cache = None
            if kv is not None:
                cache = DynamicCache()
                if first_row:
                    k, v = kv[index]
                    cache.update(k[:, :, :first_row].expand(len(members), -1, -1, -1),
                                 v[:, :, :first_row].expand(len(members), -1, -1, -1), index)
                kwargs[_layer_cache_keyword(layers[index])] = cache
            handles = plan.hooks(index, layers[index], vlm.access, members)
            try:
                out = first(layers[index](rows, *args[1:], **kwargs))
            finally:
                for handle in handles:
                    handle.remove()
            vlm.counts["layer_forwards"] += len(members)
            vlm.counts["layer_token_rows"] += len(members) * rows.shape[1]
            if kept is not None:
                layer_kv = cache.layers[index]
                kept.append(_take_rows(layer_kv.keys, layer_kv.values, kv_rows, owner, len(members) != n))
            hidden = out if len(members) == n else out[owner]
            hidden = plan.edit_hidden(index, "resid_post", hidden, everyone)
    final = hidden[:, (positions - first_row).to(hidden.device)]
    if kept is not None:
        below = [(k[:, :, :kv_rows].expand(n, -1, -1, -1), v[:, :, :kv_rows].expand(n, -1, -1, -1))
                 for k, v in kv[:start]]
        kept = below + kept
    return Restart(final, plan.contexts, kept)


def _take_rows(keys, values, rows: int, owner: list[int], shared: bool):
    keys, values = keys[:, :, :rows], values[:, :, :rows]
    if shared:
        index = torch.tensor(owner, device=keys.device)
        keys, values = keys[index], values[index]
    return keys, values


def continue_from(vlm, clean: CleanPass, start: int, variants: list[list[Intervention]], *,
                  first_row: int | None = None):
    """``(hidden, contexts)``: the variants' final hidden states ``[n_variants, n_positions, d]``
    at the clean pass's positions (before the final norm; see :func:`unembed`), and each
    variant's step context (its ``records``).

    ``variants`` holds, per variant, interventions already bound to ``clean.prepared``
    (``Plan(...).bind(vlm, prepared)``). Sites below ``start`` must be recordings the
    clean pass holds. ``first_row``: recompute only the rows from it on (None: every row;
    :func:`first_changed_row` gives the first row the variants can change)."""
    result = restart(vlm, clean, start, variants, first_row=first_row or 0)
    return result.hidden, result.contexts
