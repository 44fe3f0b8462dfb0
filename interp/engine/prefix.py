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

:func:`restart_many` restarts groups with different start layers in one layer-major pass:
at each layer every started variant runs it, batched with the others that recompute the
same rows, so the restarts of 30 layers take 30 rounds of large forwards instead of 30
separate stacks of small ones (the same layer-row work). The last layer computes its
output projection and MLP for the scored rows only (:func:`_only_rows`).

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
from typing import Any
from collections.abc import Iterable

import inspect

import nnsight
import torch
from transformers.cache_utils import Cache, DynamicCache

from .. import sites as registry
from ..errors import InterpError
from ..interventions.base import Intervention, StepContext
from ..interventions.runtime import EditableMask, editable_tensor, first, merge_heads, replace_first, split_heads
from .plan import Plan, build_schedule, execute_step

#: sites the fast path recomputes (and so can edit) in the layers it runs (interp.sites: restartable)
_HIDDEN_SITES = registry.keys(restartable=True)


def cache_layer_kv(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys, values)`` of one layer of a transformers cache (attention layers hold both)."""
    return layer.keys, layer.values


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

    def layer_call(self, index: int) -> tuple:
        """The captured ``(args, kwargs)`` of decoder layer ``index``'s call."""
        if self.layer_inputs is None:
            raise InterpError("this clean pass kept no layer inputs (it ran as a plain run); capture it restartable")
        return self.layer_inputs[index]

    def layer_input(self, index: int) -> torch.Tensor:
        """The hidden states at the input of decoder layer ``index`` (captured)."""
        args, kwargs = self.layer_call(index)
        return first(args) if args else kwargs["hidden_states"]

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


def capture(
    vlm,
    prepared,
    positions: torch.Tensor,
    recorders: Iterable[Intervention] = (),
    *,
    restartable: bool = True,
    remote: bool | str | None = None,
    keep_kv: bool = False,
) -> CleanPass:
    """Run ``prepared`` once, clean, with ``recorders``; keep what restarting needs.

    ``restartable=False`` (the naive and remote paths) runs the same pass as a plain
    :class:`~interp.engine.plan.Plan` run and keeps no layer inputs. ``keep_kv=True`` also
    keeps every layer's keys and values (the forward runs with a ``DynamicCache`` of full
    layers, which the model fills itself), for row-suffix restarts and generation."""
    positions = torch.as_tensor(positions, dtype=torch.long)
    plan = Plan(list(recorders))
    if not restartable:
        run = plan.run(vlm, prepared, logit_positions=positions.tolist(), remote=remote, count_as="clean_forward")
        assert run.logits is not None  # asked for at the positions
        return CleanPass(
            prepared, positions.clone(), run.logits[0].float(), run.records, _recorder_specs(plan.bind(vlm, prepared))
        )
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
        ctx = StepContext.of(prepared, records, vlm.device)
        for index in range(vlm.n_layers):
            saved.append(layers[index].inputs)
            if index in by_layer:
                execute_step(model, access, by_layer[index], ctx)
        if None in by_layer:
            execute_step(model, access, by_layer[None], ctx)
        logits = model.output.logits[0, positions].save()
    records = {key: value.detach() for key, value in records.items()}
    kv = None
    if cache is not None:
        if len(cache.layers) != vlm.n_layers:
            raise InterpError(
                f"the clean pass filled {len(cache.layers)} cache layers for {vlm.n_layers} decoder layers"
            )
        kv = [cache_layer_kv(layer) for layer in cache.layers]
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
_ROW_KEYWORDS = {
    "attention_mask",
    "position_embeddings",
    "position_ids",
    "cache_position",
    "cache",
    "past_key_values",
    "use_cache",
}


def _layer_cache_keyword(layer) -> str:
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


def _is_tensorish(value) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, (tuple, list)) and any(isinstance(item, torch.Tensor) for item in value)
    )


def _sees_forward(mask, row: int) -> int | None:
    """The first query row before ``row`` that may attend to a key at or after ``row``
    (bidirectional image attention), or None when none does (causal masks)."""
    if mask is None or row <= 0:
        return None
    block = mask[..., :row, row:]
    keep = block if block.dtype == torch.bool else block > torch.finfo(block.dtype).min / 2
    seeing = keep.reshape(-1, *keep.shape[-2:]).any(dim=0).any(dim=-1).nonzero()
    return int(seeing[0]) if seeing.numel() else None


def first_changed_row(vlm, clean: CleanPass, start: int, variants: list[list[Intervention]]) -> int:
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
        args, kwargs = clean.layer_call(index)
        if len(args) > 1 or any(
            key not in _ROW_KEYWORDS and key != "hidden_states" and _is_tensorish(value)
            for key, value in kwargs.items()
        ):
            return 0
        mask = kwargs.get("attention_mask")
        full = (clean.prepared.seq_len,) * 2
        if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape[-2:]) != full):
            return 0  # only a full (query x key) mask can be cut to the query rows
        while (earlier := _sees_forward(mask, row)) is not None:
            row = earlier
    return row


def fill_kv(vlm, clean: CleanPass) -> list:
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
            args, kwargs = clean.layer_call(index)
            kwargs = _without_cache(kwargs)
            kwargs[_layer_cache_keyword(layer)] = cache
            kwargs.pop("hidden_states", None)
            hidden = clean.layer_input(index)
            layer(hidden, *args[1:], **kwargs)
            vlm.counts["layer_forwards"] += 1
            vlm.counts["layer_token_rows"] += hidden.shape[1]
    clean.kv = [cache_layer_kv(layer) for layer in cache.layers]
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
    """The variants' interventions, sorted by layer and site, and one step context each.

    Variant ``v`` restarts at layer ``starts[v]`` on the rows from ``offsets[v]`` (the absolute
    position of its first recomputed row); its sites below ``starts[v]`` ran clean
    (:meth:`Intervention.before_restart`). Every method takes ``members``: the variants a batch
    holds, batch row ``j`` holding variant ``members[j]``."""

    def __init__(self, clean: CleanPass, starts: list[int], variants: list[list[Intervention]], offsets: list[int]):
        prepared = clean.prepared
        self.contexts = [StepContext.of(prepared, {}, offset=offset) for offset in offsets]
        self.offsets = offsets
        self.at: dict[tuple[int, str], list[tuple[int, Intervention]]] = {}
        for v, items in enumerate(variants):
            for layer, site, group in build_schedule(items):
                if layer is not None and layer < starts[v]:
                    for item in group:
                        item.before_restart(layer, site, clean, self.contexts[v])
                    continue
                if layer is None or (site not in _HIDDEN_SITES and site != "attn_pattern"):
                    raise InterpError(f"the fast path runs decoder layers only; {site} edits need mode='naive'")
                self.at.setdefault((layer, site), []).extend((v, item) for item in group)

    def _todo(self, layer: int, site: str, members: list[int]) -> list[tuple[int, int, Intervention]]:
        """``(batch row, variant, intervention)`` of the members' edits at the site."""
        where = {v: j for j, v in enumerate(members)}
        return [(where[v], v, item) for v, item in self.at.get((layer, site), ()) if v in where]

    def inside(self, layer: int, members: list[int]) -> set[int]:
        """Members with edits inside ``layer`` (its attention pattern, attention or MLP output)."""
        return {
            v for site in ("attn_pattern", "z", "attn_out", "mlp_out") for _, v, _ in self._todo(layer, site, members)
        }

    def edits_rows(self, layer: int, members: list[int]) -> bool:
        """Whether any member edits or records a hidden state of ``layer`` beyond its input
        (``z``, ``attn_out``, ``mlp_out``, ``resid_post``; attention-mask edits act before them)."""
        return any(self._todo(layer, site, members) for site in _HIDDEN_SITES if site != "resid_pre")

    def edit_hidden(self, layer: int, site: str, hidden: torch.Tensor, members: list[int]) -> torch.Tensor:
        todo = self._todo(layer, site, members)
        if not todo:
            return hidden
        hidden = hidden.clone()
        for j, v, item in todo:
            hidden[j : j + 1] = item.edit_hidden(layer, site, hidden[j : j + 1], self.contexts[v])
        return hidden

    def edit_mask(self, layer: int, mask, hidden: torch.Tensor, keys: int, members: list[int]):
        todo = self._todo(layer, "attn_pattern", members)
        if not todo:
            return mask, False
        built: dict = {}
        rows = hidden.shape[1]
        offset = self.offsets[members[0]]

        def per_variant():
            if "tensor" not in built:
                built["tensor"], built["blocked"] = _layer_mask(
                    mask, rows, keys, offset, hidden.shape[0], hidden.device
                )
            return built["tensor"], built["blocked"]

        window = torch.arange(offset, offset + rows)
        for j, v, item in todo:
            editable = EditableMask(lambda j=j: (per_variant()[0][j : j + 1], per_variant()[1]), window)
            item.edit_mask(layer, editable, self.contexts[v])
        return (built["tensor"], True) if "tensor" in built else (mask, False)

    def hooks(self, layer: int, block, access, members: list[int]) -> list:
        """Forward hooks for the edits inside ``block``: ``z`` on the attention's output
        projection's input (split into heads as ``hook_z`` shows it), ``attn_out`` and
        ``mlp_out`` on those modules' outputs."""
        handles = []
        attn = getattr(block, access.attn_name)
        if self._todo(layer, "z", members):

            def pre_hook(module, args):
                heads = split_heads(args[0], access.head_dim)
                return (merge_heads(self.edit_hidden(layer, "z", heads, members)),) + tuple(args[1:])

            handles.append(getattr(attn, access.o_name).register_forward_pre_hook(pre_hook))
        for site, module in (("attn_out", attn), ("mlp_out", getattr(block, access.mlp_name))):
            if self._todo(layer, site, members):

                def hook(module, args, output, site=site):
                    return replace_first(output, self.edit_hidden(layer, site, first(output), members))

                handles.append(module.register_forward_hook(hook))
        return handles


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


def forward_batches(active: list[int], offsets: list[int], group_of: list[int], batch: int):
    """``(first row, members)``: the started variants split into batches of at most ``batch``
    that recompute the same rows, each group's variants kept together where they fit."""
    by_row: dict[int, list[int]] = {}
    for v in active:
        by_row.setdefault(offsets[v], []).append(v)
    for row, variants in by_row.items():
        runs: list[list[int]] = []
        for v in variants:
            if runs and group_of[runs[-1][0]] == group_of[v]:
                runs[-1].append(v)
            else:
                runs.append([v])
        chunk: list[int] = []
        for run in runs:
            while len(run) > batch:
                yield row, run[:batch]
                run = run[batch:]
            if len(chunk) + len(run) > batch:
                yield row, chunk
                chunk = []
            chunk = chunk + run
        if chunk:
            yield row, chunk


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
