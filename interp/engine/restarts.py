"""Restarting edited variants from a captured clean pass at their first edited layer.

:func:`restart_many` runs groups of variants (:class:`RestartGroup`) with different start layers
in one layer-major pass, batched by :func:`~interp.engine.restart_batches.forward_batches`;
:func:`restart` is one group, :func:`continue_from` its ``(hidden, contexts)`` form. Variants
with the same input to a layer and no edit inside it share its forward (:func:`_shared_rows`);
the last layer computes its output projection and MLP for the scored rows only (:func:`_only_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from ..errors import InterpError
from ..interventions.base import Intervention
from ..interventions.runtime import first, replace_first
from .clean_kv import fill_kv
from .clean_pass import CleanPass
from .kv_cache import _layer_cache_keyword, _without_cache, cache_layer_kv
from .restart_batches import forward_batches
from .row_suffix import _suffix_kwargs
from .variant_edits import _Variants


def _only_rows(block, access, needed: torch.Tensor) -> list:
    """Hooks that make a layer's output projection and MLP compute only the ``needed`` rows
    (the last layer's scored positions: no later layer reads the other rows' outputs, and the
    keys and values a generation continues from come before the output projection). The other
    rows' outputs are left at zero. Returns the hook handles."""
    attn = getattr(block, access.attn_name)
    handles = []
    for module in (getattr(attn, access.o_name), getattr(block, access.mlp_name)):
        length: list[int] = []

        def take(module, args, length=length):
            length[:] = [args[0].shape[1]]
            return (args[0][:, needed],) + tuple(args[1:])

        def put(module, args, output, length=length):
            out = first(output)
            full = out.new_zeros(out.shape[0], length[0], out.shape[-1])
            full[:, needed] = out
            return replace_first(output, full)

        handles.append(module.register_forward_pre_hook(take))
        handles.append(module.register_forward_hook(put))
    return handles


def _shared_rows(hidden: torch.Tensor, inside: set[int]) -> tuple[list[int], list[int]]:
    """``(members, owner)``: variants whose layer input is bit-for-bit the same and that have no
    edit inside the layer compute the same layer output, so one of them (``members``) runs it;
    ``owner[v]`` is the index into ``members`` whose output variant ``v`` takes."""
    members: list[int] = []
    owner: list[int] = []
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


@dataclass
class RestartGroup:
    """Variants (each a list of bound interventions) that restart at layer ``start`` on the rows
    from ``first_row`` on (see :func:`restart_many`)."""

    start: int
    variants: list
    first_row: int = 0


def restart(
    vlm,
    clean: CleanPass,
    start: int,
    variants: list[list[Intervention]],
    *,
    first_row: int = 0,
    kv_rows: int | None = None,
    share: bool = True,
) -> Restart:
    """Run layers ``start .. L-1`` for a batch of variants (each one batch row, sharing the
    captured prefix); see :func:`continue_from`.

    ``first_row`` > 0 recomputes only the rows from it on (what :func:`first_changed_row`
    allows), the earlier rows' clean keys and values supplied to each layer through a
    ``DynamicCache`` the layer's own attention reads and extends. ``share`` runs a layer once
    for variants whose input to it is identical and that do not edit inside it (e.g. the same
    image-token edit at that layer's input), splitting them after."""
    group = RestartGroup(start, variants, first_row)
    return restart_many(vlm, clean, [group], batch=max(1, len(variants)), kv_rows=kv_rows, share=share)[0]


def _flatten_groups(groups: list[RestartGroup], n_layers: int, first_scored: int) -> tuple[list, list, list, list]:
    """Per variant of every group (checked): its start layer, first row, interventions and group index."""
    starts, offsets, items, group_of = [], [], [], []
    for g, group in enumerate(groups):
        if not 0 <= group.start < n_layers:
            raise InterpError(f"restart layer {group.start} is out of range 0..{n_layers - 1}")
        if not 0 <= group.first_row <= first_scored:
            raise InterpError(f"first_row {group.first_row} must lie in 0..{first_scored} (the first scored position)")
        for variant in group.variants:
            starts.append(group.start)
            offsets.append(group.first_row)
            items.append(variant)
            group_of.append(g)
    return starts, offsets, items, group_of


def restart_many(
    vlm, clean: CleanPass, groups: list[RestartGroup], *, batch: int = 8, kv_rows: int | None = None, share: bool = True
) -> list[Restart]:
    """Restart several groups of variants in one layer-major pass; one :class:`Restart` per group.

    Layer by layer from the lowest start, every variant whose group has started runs the layer,
    in batches of at most ``batch`` variants that recompute the same rows (a group's variants
    kept together, so those with the same input to a layer can share its forward). A variant
    restarting at layer 20 thus rides in the same forward as those that restarted at 10: the
    work per layer is the same as restarting each group alone, in far fewer, larger calls.
    Memory: every started variant's hidden states ``[rows, d]`` at once (and with ``kv_rows``
    their prompt keys and values: call it on slices of the groups to bound that).

    The last layer computes its output projection and MLP for the scored positions only
    (nothing reads the other rows' outputs), unless a variant edits or records inside it."""
    if not clean.restartable:
        raise InterpError("this clean pass kept no layer inputs (it ran as a plain run); capture it restartable")
    if batch < 1:
        raise InterpError(f"batch must be at least 1, got {batch}")
    layers = vlm.adapter.resolve(vlm.model, "layers")
    n_layers = len(layers)
    positions = clean.positions
    starts, offsets, items, group_of = _flatten_groups(groups, n_layers, int(positions.min()))
    n = len(items)
    kv = fill_kv(vlm, clean) if any(offsets) or kv_rows else None
    plan = _Variants(clean, starts, items, offsets)
    first_input = clean.layer_input(0)
    keys = first_input.shape[1]
    state: list = [None] * n
    kept: list | None = [[] for _ in range(n)] if kv_rows else None
    vlm.counts["restart_forward"] += len(groups)
    with torch.no_grad():
        for index in range(min(starts, default=n_layers), n_layers):
            entering = [v for v in range(n) if starts[v] == index]
            if entering:
                hidden = clean.layer_input(index)
                for v in entering:  # a copy: the clean pass's layer inputs are shared by every analysis
                    state[v] = hidden[:, offsets[v] :].clone()
            active = [v for v in range(n) if starts[v] <= index]
            for row, members in forward_batches(active, offsets, group_of, batch):
                hidden = state[members[0]] if len(members) == 1 else torch.cat([state[v] for v in members])
                out = _run_layer(vlm, clean, plan, layers, index, hidden, members, row, kv, keys, kept, kv_rows, share)
                for j, v in enumerate(members):
                    state[v] = out[j : j + 1]
    results = []
    for g, group in enumerate(groups):
        members = [v for v in range(n) if group_of[v] == g]
        local = positions - group.first_row
        if members:  # (on the last layer's device, which a device map may make another than the first's)
            final = torch.cat([state[v][:, local.to(state[v].device)] for v in members])
        else:
            final = first_input.new_zeros(0, len(positions), first_input.shape[-1])
        group_kv = (
            None if kept is None or kv_rows is None else _group_kv(kv, kept, group.start, members, kv_rows, n_layers)
        )
        results.append(Restart(final, [plan.contexts[v] for v in members], group_kv))
    return results


def _group_kv(kv, kept: list, start: int, members: list[int], kv_rows: int, n_layers: int) -> list:
    """A group's per-layer prompt keys/values: the clean ones below ``start`` (shared, not copied),
    its variants' own from there (each variant's copy dropped once joined)."""
    out = []
    for index in range(n_layers):
        if index < start:
            k, v = kv[index]
            out.append(
                (k[:, :, :kv_rows].expand(len(members), -1, -1, -1), v[:, :, :kv_rows].expand(len(members), -1, -1, -1))
            )
            continue
        step = index - start
        out.append((torch.cat([kept[m][step][0] for m in members]), torch.cat([kept[m][step][1] for m in members])))
        for m in members:
            kept[m][step] = None
    return out


def _run_layer(
    vlm,
    clean: CleanPass,
    plan: _Variants,
    layers,
    index: int,
    hidden: torch.Tensor,
    members: list[int],
    row: int,
    kv,
    keys: int,
    kept,
    kv_rows,
    share: bool,
) -> torch.Tensor:
    """Decoder layer ``index`` of ``layers`` for a batch of variants (batch row ``j``: variant
    ``members[j]``) recomputing the rows from ``row``: their input edits, the layer (once per
    distinct input, with the edits inside it), their output edits."""
    layer = layers[index]
    args, kwargs = clean.layer_call(index)
    kwargs = _suffix_kwargs(_without_cache(kwargs), row, keys, hidden.device)
    kwargs.pop("hidden_states", None)
    hidden = plan.edit_hidden(index, "resid_pre", hidden, members)
    if share:
        inside = plan.inside(index, members)
        local, owner = _shared_rows(hidden, {j for j, v in enumerate(members) if v in inside})
    else:
        local = owner = list(range(len(members)))
    shared = len(local) != len(members)
    rows = hidden[local] if shared else hidden
    run = [members[j] for j in local]
    mask, changed = plan.edit_mask(index, kwargs.get("attention_mask"), rows, keys, run)
    if changed:
        kwargs["attention_mask"] = mask
    cache = None
    if kv is not None:
        cache = DynamicCache()
        if row:
            k, v = kv[index]
            cache.update(k[:, :, :row].expand(len(run), -1, -1, -1), v[:, :, :row].expand(len(run), -1, -1, -1), index)
        kwargs[_layer_cache_keyword(layer)] = cache
    handles = plan.hooks(index, layer, vlm.access, run)
    if index == len(layers) - 1 and not plan.edits_rows(index, run):
        handles += _only_rows(layer, vlm.access, (clean.positions - row).to(hidden.device))
    try:
        out = first(layer(rows, *args[1:], **kwargs))
    finally:
        for handle in handles:
            handle.remove()
    vlm.counts["layer_forwards"] += len(run)
    vlm.counts["layer_token_rows"] += len(run) * rows.shape[1]
    vlm.counts["restart_layer_calls"] += 1  # one decoder-layer call for the batch (what the restart batch sizes)
    if kept is not None and cache is not None:  # kept rows come with the keys/values of the rows before
        keys_all, values_all = cache_layer_kv(cache.layers[index])
        k, v = keys_all[:, :, :kv_rows], values_all[:, :, :kv_rows]
        for j, m in enumerate(members):
            kept[m].append((k[owner[j] : owner[j] + 1], v[owner[j] : owner[j] + 1]))
    hidden = out[owner] if shared else out
    return plan.edit_hidden(index, "resid_post", hidden, members)


def continue_from(
    vlm, clean: CleanPass, start: int, variants: list[list[Intervention]], *, first_row: int | None = None
):
    """``(hidden, contexts)``: the variants' final hidden states ``[n_variants, n_positions, d]``
    at the clean pass's positions (before the final norm; see :func:`unembed`), and each
    variant's step context (its ``records``).

    ``variants`` holds, per variant, interventions already bound to ``clean.prepared``
    (``Plan(...).bind(vlm, prepared)``). Sites below ``start`` must be recordings the
    clean pass holds. ``first_row``: recompute only the rows from it on (None: every row;
    :func:`first_changed_row` gives the first row the variants can change)."""
    result = restart(vlm, clean, start, variants, first_row=first_row or 0)
    return result.hidden, result.contexts
