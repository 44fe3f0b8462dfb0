"""The captured clean pass: one sample's clean forward, kept so that variants can restart from it.

:func:`capture` runs the clean forward once (in an nnsight trace, with the clean recorders) and
keeps every decoder layer's inputs, the logits at the scored positions, the recorders' records
and optionally every layer's keys and values: a :class:`CleanPass`.
:func:`supports_prefix_reuse` says whether a model can restart from one at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import nnsight
import torch
from transformers.cache_utils import DynamicCache

from ..errors import InterpError
from ..interventions.base import Intervention, StepContext
from ..interventions.runtime import first
from .kv_cache import cache_keyword, cache_layer_kv
from .plan import Plan, build_schedule, execute_step


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
