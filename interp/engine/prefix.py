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

Every intervention runs here through its own interface — ``edit_hidden`` at
``resid_pre`` / ``attn_out`` / ``mlp_out`` / ``resid_post``, ``edit_mask`` at
``attn_pattern`` (through the layer's attention mask), ``before_restart`` below the
restart layer — so the executor never looks at classes. Families whose forward adds
to the residual stream between layers outside the layer modules (the adapter's
``between_layer_edits``, e.g. Qwen3-VL's DeepStack) cannot restart mid-stack:
:func:`supports_prefix_reuse` says so and analyses fall back to full passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import nnsight
import torch

from ..errors import InterpError
from ..interventions.base import Intervention, StepContext
from ..interventions.runtime import EditableMask, editable_tensor, first, replace_first
from .plan import Plan, build_schedule, execute_step

#: sites the fast path recomputes (and so can edit) in the layers it runs
_HIDDEN_SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")


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

    def recorded(self, spec) -> torch.Tensor | None:
        """What the clean pass recorded at ``spec`` (see ``Intervention.recorded_as``), or None."""
        key = self.specs.get(spec)
        return None if key is None else self.records.get((key[0], key[1], 0))

    @property
    def restartable(self) -> bool:
        return self.layer_inputs is not None

    def prefix_bytes(self) -> int:
        """Memory held by the captured layer inputs (hidden states; shared keywords once)."""
        if self.layer_inputs is None:
            return 0
        seen, total = set(), 0
        for args, kwargs in self.layer_inputs:
            for value in list(args) + list(kwargs.values()):
                for tensor in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
                        seen.add(id(tensor))
                        total += tensor.numel() * tensor.element_size()
        return total

    def release_prefix(self) -> None:
        self.layer_inputs = None


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
            restartable: bool = True, remote: bool | str | None = None) -> CleanPass:
    """Run ``prepared`` once, clean, with ``recorders``; keep what restarting needs.

    ``restartable=False`` (the naive and remote paths) runs the same pass as a plain
    :class:`~interp.engine.plan.Plan` run and keeps no layer inputs."""
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
    with torch.no_grad(), model.trace(dict(prepared.inputs), use_cache=False):
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
    return CleanPass(prepared, positions.clone(), logits.detach().float(), records, specs, list(saved))


def unembed(vlm, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, unembedding and (Gemma) logit soft-capping, as the model's forward applies them."""
    model = vlm.model
    logits = vlm.adapter.resolve(model, "lm_head")(vlm.adapter.resolve(model, "final_norm")(hidden))
    cap = getattr(vlm.adapter.text_config(vlm.config), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def _layer_mask(mask, hidden: torch.Tensor, n_variants: int):
    """``(tensor, blocked value)``: the captured mask, one editable copy per variant — a
    bool keep-mask for SDPA (``None`` means plain causal), the additive float mask for eager."""
    seq = hidden.shape[1]
    if mask is None:
        causal = torch.ones(seq, seq, dtype=torch.bool, device=hidden.device).tril()
        return causal[None, None].expand(n_variants, 1, seq, seq).clone(), False
    if not isinstance(mask, torch.Tensor):
        raise InterpError(f"cannot edit an attention mask of type {type(mask).__name__} on the fast path")
    tensor, blocked = editable_tensor(mask, seq, mask.shape[-1], additive=lambda: mask)
    return tensor.expand(n_variants, *tensor.shape[1:]).clone(), blocked


class _Variants:
    """The variants' interventions, sorted by layer and site, and one step context each."""

    def __init__(self, clean: CleanPass, start: int, variants: list[list[Intervention]], n_layers: int):
        prepared = clean.prepared
        self.contexts = [StepContext(0, 0, prepared.image_positions, prepared.question_positions, prepared.seq_len, {})
                         for _ in variants]
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

    def edit_hidden(self, layer: int, site: str, hidden: torch.Tensor) -> torch.Tensor:
        todo = self.at.get((layer, site))
        if not todo:
            return hidden
        hidden = hidden.clone()
        for v, item in todo:
            hidden[v : v + 1] = item.edit_hidden(layer, site, hidden[v : v + 1], self.contexts[v])
        return hidden

    def edit_mask(self, layer: int, mask, hidden: torch.Tensor):
        todo = self.at.get((layer, "attn_pattern"))
        if not todo:
            return mask, False
        built: dict = {}

        def per_variant():
            if "tensor" not in built:
                built["tensor"], built["blocked"] = _layer_mask(mask, hidden, hidden.shape[0])
            return built["tensor"], built["blocked"]

        window = torch.arange(hidden.shape[1])
        for v, item in todo:
            editable = EditableMask(lambda v=v: (per_variant()[0][v : v + 1], per_variant()[1]), window)
            item.edit_mask(layer, editable, self.contexts[v])
        return (built["tensor"], True) if "tensor" in built else (mask, False)

    def hooks(self, layer: int, block, attn_name: str, mlp_name: str) -> list:
        handles = []
        for site, name in (("attn_out", attn_name), ("mlp_out", mlp_name)):
            if self.at.get((layer, site)):
                def hook(module, args, output, site=site):
                    return replace_first(output, self.edit_hidden(layer, site, first(output)))

                handles.append(getattr(block, name).register_forward_hook(hook))
        return handles


def continue_from(vlm, clean: CleanPass, start: int, variants: list[list[Intervention]]):
    """``(hidden, contexts)``: the variants' final hidden states ``[n_variants, n_positions, d]``
    at the clean pass's positions (before the final norm; see :func:`unembed`), and each
    variant's step context (its ``records``).

    ``variants`` holds, per variant, interventions already bound to ``clean.prepared``
    (``Plan(...).bind(vlm, prepared)``). Sites below ``start`` must be recordings the
    clean pass holds."""
    if not clean.restartable:
        raise InterpError("this clean pass kept no layer inputs (it ran as a plain run); capture it restartable")
    layers = vlm.adapter.resolve(vlm.model, "layers")
    n_layers = len(layers)
    if not 0 <= start < n_layers:
        raise InterpError(f"restart layer {start} is out of range 0..{n_layers - 1}")
    n = len(variants)
    plan = _Variants(clean, start, variants, n_layers)
    args, kwargs = clean.layer_inputs[start]
    hidden = first(args) if args else kwargs["hidden_states"]
    hidden = hidden.expand(n, *hidden.shape[1:]).clone()
    vlm.counts["restart_forward"] += 1
    vlm.counts["layer_forwards"] += (n_layers - start) * n
    vlm.counts["layer_token_rows"] += (n_layers - start) * n * hidden.shape[1]
    with torch.no_grad():
        for index in range(start, n_layers):
            args, kwargs = clean.layer_inputs[index]
            kwargs = dict(kwargs)
            kwargs.pop("hidden_states", None)
            hidden = plan.edit_hidden(index, "resid_pre", hidden)
            mask, changed = plan.edit_mask(index, kwargs.get("attention_mask"), hidden)
            if changed:
                kwargs["attention_mask"] = mask
            handles = plan.hooks(index, layers[index], vlm.adapter.attn_name, vlm.adapter.mlp_name)
            try:
                hidden = first(layers[index](hidden, *args[1:], **kwargs))
            finally:
                for handle in handles:
                    handle.remove()
            hidden = plan.edit_hidden(index, "resid_post", hidden)
        return hidden[:, clean.positions.to(hidden.device)], plan.contexts
