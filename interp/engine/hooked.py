"""TransformerLens habits on the engine: ``run_with_cache`` and ``run_with_hooks``.

Both build ordinary interventions and run them as one :class:`~interp.engine.plan.Plan`
(one nnsight pass, so ``remote="local"`` works and, where the hook function is plain
torch, ``remote=True`` too):

* ``run_with_cache(prepared, names_filter)`` records every selected hook point
  (:class:`~interp.interventions.RecordResidual`) and returns the logits at every
  position with an :class:`~interp.cache.ActivationCache`;
* ``run_with_hooks(prepared, fwd_hooks=[(name or filter, fn)])`` calls
  ``fn(activation, hook)`` at each matching hook point — TransformerLens' contract: a
  returned tensor replaces the activation, ``None`` leaves it; ``hook.name`` and
  ``hook.layer()`` say where it is.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Iterable

from ..errors import HookNameError, InterpError
from .. import sites as registry
from ..hooks import natural_key, parse_hook_name, read_only
from ..interventions.base import Intervention, StepContext
from ..interventions.record import RecordResidual
from ..interventions.runtime import attention_probs
from .plan import Plan


class HookContext:
    """What a hook function is told about where it runs (TransformerLens' ``hook`` argument)."""

    def __init__(self, name: str, layer: int | None, ctx: StepContext):
        self.name = name
        self._layer = layer
        self.ctx = ctx

    def layer(self) -> int | None:
        return self._layer

    def __repr__(self) -> str:
        return f"<hook {self.name}>"


class HookFunction(Intervention):
    """Call ``fn(activation, hook)`` at one hook point; a returned tensor replaces it."""

    # set by bind(): what the run resolved for one prompt
    _point: Any

    def __init__(self, name: str, fn: Callable, every_step: bool = False):
        if not callable(fn):
            raise InterpError(f"the hook for {name!r} must be a function fn(activation, hook), got {fn!r}")
        self.hook_name = name
        self.fn = fn
        self.every_step = every_step
        self.layers = "all"

    def bind(self, n_layers: int, prepared):
        bound = super().bind(n_layers, prepared)
        bound._point = parse_hook_name(self.hook_name, n_layers)
        return bound

    def sites(self):
        return [(self._point.layer, self._point.site)]

    def _call(self, value, ctx):
        result = self.fn(value, HookContext(self._point.name, self._point.layer, ctx))
        if result is None:
            return value
        if read_only(self._point.site):
            raise InterpError(
                f"{self._point.name} is read-only: its hook may look but not return a replacement"
                + (" (use AttentionKnockout to change attention)" if self._point.site == "attn_pattern" else "")
            )
        shape = getattr(result, "shape", None)
        if shape is None or tuple(shape) != tuple(value.shape):
            got = f"shape {tuple(shape)}" if shape is not None else type(result).__name__
            raise InterpError(
                f"the hook at {self._point.name} returned {got}; a replacement must have the "
                f"activation's shape {tuple(value.shape)} (or return None to leave it)"
            )
        return result

    def at_site(self, layer, site, value, ctx: StepContext):
        if site == "attn_pattern":
            self._call(attention_probs(value), ctx)
            return value
        return self._call(value, ctx)

    def edit_hidden(self, layer, site, hidden, ctx: StepContext):
        return self._call(hidden, ctx)


def select_names(vlm, names_filter: Any, use_attn_result: bool = False) -> list[str]:
    """The hook names a filter picks: None (all), a name, a list of names, or ``fn(name) -> bool``;
    None and a function leave out the sites not cached by default (per-head ``attn.hook_result``)
    unless ``use_attn_result``."""
    # the per-head results after o_proj ([batch, seq, heads, d_model], the widest sites) only when
    # asked, as TransformerLens' use_attn_result (interp.sites.Site.cached_by_default)
    every = [
        n
        for n in vlm.hook_names()
        if use_attn_result or registry.site(parse_hook_name(n, vlm.n_layers).site).cached_by_default
    ]
    if names_filter is None:
        return every
    if isinstance(names_filter, str):
        return [parse_hook_name(names_filter, vlm.n_layers, vlm.n_vision_layers).name]
    if callable(names_filter):
        picked = [name for name in every if names_filter(name)]
        if not picked:
            raise HookNameError("names_filter matched no hook name (see vlm.hook_names())")
        return picked
    names = list(names_filter)
    if not names:
        raise HookNameError("names_filter is an empty list")
    return [parse_hook_name(name, vlm.n_layers, vlm.n_vision_layers).name for name in names]


def run_with_cache(
    vlm,
    prepared,
    names_filter: Any = None,
    *,
    remote=None,
    remove_batch_dim: bool = False,
    use_attn_result: bool = False,
):
    """``(logits [batch, seq, vocab], ActivationCache)`` of one clean pass (per-head
    ``attn.hook_result`` only when named or ``use_attn_result``; see :func:`select_names`)."""
    from ..cache import ActivationCache

    names = select_names(vlm, names_filter, use_attn_result)
    run = Plan(RecordResidual(names)).run(vlm, prepared, logit_positions=list(range(prepared.seq_len)), remote=remote)
    values = {}
    for (label, _layer, step), value in run.records.items():
        if step == 0:
            values[label] = value
    cache = ActivationCache({name: values[name] for name in sorted(values, key=natural_key)}, vlm.n_layers, model=vlm)
    logits = run.logits
    assert logits is not None  # a cached run returns the logits
    if remove_batch_dim:
        cache = cache.remove_batch_dim()
        logits = logits[0]
    return logits, cache


def run_with_hooks(vlm, prepared, fwd_hooks: Iterable = (), *, remote=None, return_cache: bool = False):
    """Logits ``[batch, seq, vocab]`` with ``fn(activation, hook)`` applied at each hook point.

    ``fwd_hooks``: ``[(name or fn(name) -> bool, fn), ...]``; at a hook point the functions
    run in the order given."""
    hooks = []
    for entry in fwd_hooks:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise InterpError(f"fwd_hooks takes (name or filter, function) pairs, got {entry!r}")
        selector, fn = entry
        for name in select_names(vlm, selector):
            hooks.append(HookFunction(name, fn))
    run = Plan(hooks).run(vlm, prepared, logit_positions=list(range(prepared.seq_len)), remote=remote)
    return run.logits


__all__ = ["HookContext", "HookFunction", "run_with_cache", "run_with_hooks", "select_names"]
