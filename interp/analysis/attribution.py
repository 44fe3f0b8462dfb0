"""Attribution patching: every (site, layer, position group, cell, head) patch effect from gradients.

Activation patching (:mod:`interp.analysis.patching`) restarts the base once per condition.
Attribution patching (Nanda 2023; Kramár et al., AtP*, arXiv 2403.00745) estimates every
condition at once, to first order::

    effect(site, layer, positions) ~= sum over positions of (a_source - a_base) . dM / da_base

from one forward on the source and one forward + backward on the base, where ``M`` is the
patching metric: the logit difference ``logit(source answer) - logit(base answer)`` at the
last prompt position (the raw logit of the source answer when both answers share their
first token, the control pairs, whose difference is identically zero).

Methods (``method=``):

* ``"atp"``: the first-order estimate above.
* ``"atp*"``: AtP*'s two corrections. At sites ``q`` and ``k`` the attention softmax is
  recomputed with the source's rotated queries or keys and only the head outputs' change is
  linearised (the QK fix: first-order estimates miss a saturated softmax's change). And
  GradDrop: one more backward per decoder layer ``l``, with the gradient through ``l``'s
  attention and MLP outputs stopped; the ``graddrop`` column holds
  ``sum over l of |estimate without l| / (L - 1)`` (normalised like ``effect``), an unsigned
  score that a cancellation through one layer cannot hide.
* ``"ig"``: integrated gradients (EAP-IG style): the gradient is averaged over ``steps``
  forwards whose LM input (the residual stream entering layer 0, image features merged in)
  is interpolated from the base's (alpha = 0) towards the source's, left Riemann sum, so
  ``steps=1`` is ``"atp"``. Needs the source laid out exactly like the base.

:func:`attribution_sweep` returns the same tidy frame as
:func:`~interp.analysis.patching.patching_sweep` (plus ``method``), so every summary and
figure of patching reads it; :func:`agreement` scores an estimate against exact patching.

Gradients come from nnsight's backward trace, inside one session per pair (with ``remote=``
one request). Parameters never get gradients: locally they are frozen for the call, and
the graph starts at the LM's input, which the trace makes a leaf that requires grad.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nnsight
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import sites as registry
from ..errors import InputError, InterpError
from ..interventions.patch import aligned_positions
from ..interventions.runtime import first, split_heads
from .patching import (
    GROUPS,
    METRIC,
    PatchPair,
    _condition_plan,
    _first_token,
    _sites,
    as_pairs,
    condition_row,
    pair_columns,
)

#: the estimators :func:`attribution_sweep` offers
METHODS = ("atp", "atp*", "ig")
#: the default interpolation steps of ``method="ig"``
IG_STEPS = 8
#: the sites inside a decoder layer's own contribution to the residual stream (GradDrop stops them)
_INSIDE = frozenset({"q", "k", "v", "z", "attn_out", "mlp_out"})
#: the sites whose effect runs through the attention softmax (AtP*'s QK fix recomputes it)
_QK_SITES = ("q", "k")


@contextmanager
def gradient_pass(model) -> Iterator[None]:
    """Where a backward runs: gradients on (whatever the caller's grad mode), no parameter
    requiring grad, and nnsight's refusal to differentiate a forward that built no graph (e.g.
    a remote backend that runs without gradients) turned into one line.

    Raises:
        InterpError: the forward carried no gradient tracking.
    """
    with torch.enable_grad(), frozen_parameters(model):
        try:
            yield
        except NotImplementedError as error:
            reason = str(error).split(":")[0]
            raise InterpError(
                f"attribution needs a backward pass and this run cannot make one ({reason}); use exact patching"
            ) from None


@contextmanager
def frozen_parameters(model) -> Iterator[None]:
    """Inside the block no parameter of ``model`` requires grad (so a backward keeps no
    parameter gradients); each parameter's own flag is restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _canonical(layer: int, site: str, n_layers: int) -> tuple[int, str]:
    """The tensor a site's value is: ``resid_pre`` of layer ``l > 0`` is the same tensor as
    ``resid_post`` of layer ``l - 1`` (one gradient hook per tensor)."""
    if site == "resid_pre" and layer > 0:
        return layer - 1, "resid_post"
    return layer, site


def _raw(access, model, layer: int, site: str):
    """The site's tensor as the forward holds it (per-head sites unsplit: the gradient lives
    on the module's own tensor)."""
    row = registry.site(site)
    envoy = access.module(model, layer, row.module)
    return first(envoy.input if row.io == "input" else envoy.output)


def _alignment(conditions: dict, base, source) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(base positions B, source positions S, {condition: indices into B})``: every condition's
    positions matched by role once, so the trace reads one index set per site."""
    order: dict[int, int] = {}
    source_of: dict[int, int] = {}
    members: dict = {}
    for key, selector in conditions.items():
        base_pos, source_pos = aligned_positions(selector, base, source)
        idx = []
        for b, s in zip(base_pos.tolist(), source_pos.tolist()):
            if source_of.setdefault(b, s) != s:
                raise InputError(f"base position {b} matches two source positions ({source_of[b]}, {s})")
            idx.append(order.setdefault(b, len(order)))
        members[key] = torch.tensor(idx, dtype=torch.long)
    base_positions = torch.tensor(list(order), dtype=torch.long)
    source_positions = torch.tensor([source_of[b] for b in order], dtype=torch.long)
    return base_positions, source_positions, members


def _check_method(method: str, steps: int) -> int:
    if method not in METHODS:
        raise InterpError(f"unknown attribution method {method!r}; use one of {', '.join(METHODS)}")
    if method in ("atp", "atp*"):
        return 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InterpError(f"steps must be a positive integer, got {steps!r}")
    return steps


def _attention_change(call_inputs, site: str, positions: torch.Tensor, replacement: torch.Tensor):
    """The exact change of every head's output when the rotated queries (``site="q"``) or keys
    (``"k"``) at ``positions`` are replaced: the attention softmax recomputed, not linearised
    (AtP*'s QK fix).

    Returns:
        ``(rows, change)``: the query rows that change and their output change ``(rows, heads, d)``
        (float32, detached).
    """
    from ..interventions.runtime import attention_probs, expand_kv

    args, kwargs = call_inputs
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    which = 1 if site == "q" else 2
    patched = args[which].clone()
    patched[:, :, positions.to(patched.device)] = replacement.to(patched.device, patched.dtype)
    changed = args[:which] + (patched,) + args[which + 1 :]
    rows = positions if site == "q" else torch.arange(args[1].shape[-2])
    before = attention_probs((args, kwargs), rows=rows).float()
    after = attention_probs((changed, kwargs), rows=rows).float()
    value = expand_kv(args[3].float(), before.shape[1])
    return rows, ((after - before) @ value)[0].transpose(0, 1)  # (rows, heads, d)


def _read_order(tensors, qk_layers, dropped) -> list[tuple[int, str]]:
    """Every read and write of one base pass in forward order: the needed tensors, each QK-fixed
    layer's attention call and ``hook_z`` (whose gradient the fix uses), and the dropped layer's
    two writes (``drop_attn_out``, ``drop_mlp_out``: the value with its gradient stopped)."""
    events = set(tensors) | {(layer, "attn_pattern") for layer in qk_layers} | {(layer, "z") for layer in qk_layers}
    if dropped is not None:
        events |= {(dropped, "drop_attn_out"), (dropped, "drop_mlp_out")}

    def order(event):
        layer, site = event
        if site.startswith("drop_"):
            return (layer, registry.forward_key(registry.site(site[5:])), 1)
        return (layer, registry.forward_key(registry.site(site)), 0)

    return sorted(events, key=order)


def pair_attribution(
    vlm,
    base,
    source,
    needed: Sequence[tuple[int, str]],
    base_positions: torch.Tensor,
    source_positions: torch.Tensor,
    answers: tuple[int, int],
    *,
    steps: int = 1,
    qk_sets: dict | None = None,
    graddrop: bool = False,
    metric: Callable | None = None,
    remote: bool | str | None = None,
) -> dict:
    """One pair's gradient passes: per-position attribution at every ``(layer, site)`` of ``needed``.

    Args:
        vlm: the model.
        base: the base's :class:`~interp.inputs.Prepared` (its run is differentiated).
        source: the source's Prepared.
        needed: the ``(layer, site)`` pairs to attribute (decoder sites).
        base_positions: the base positions read (``B``).
        source_positions: the source position matched to each of ``B``.
        answers: ``(source answer token, base answer token)``; equal tokens score the source
            answer's logit instead of the (zero) difference.
        steps: gradient averaging steps (1: attribution patching; more: integrated gradients
            along the interpolated LM input).
        qk_sets: AtP*'s QK fix: ``{condition: indices into B}`` of conditions at sites ``q`` / ``k``,
            each estimated through its heads' exactly recomputed attention instead of per position.
        graddrop: AtP*'s GradDrop: one more forward and backward per decoder layer, with the
            gradient through that layer's attention and MLP outputs stopped.
        metric: ``metric(logits, answers)`` of the last position's logits ``(vocab,)`` and
            ``answers``, one number (None: the answers' logit difference).
        remote: as in :meth:`interp.VLM.run`.

    Returns:
        ``{"contributions": {(layer, site): (len(B),) or (len(B), heads) tensor}, "qk": {condition:
        (heads,) tensor}, "dropped": {layer: the same two dicts with that layer dropped},
        "source_logits", "base_logits"}`` (last position, float32, CPU).

    Raises:
        InputError: ``steps > 1`` with a source laid out unlike the base, or a QK-fixed
            condition whose source positions differ from its base positions (its rotated keys
            would not apply).
    """
    if steps > 1 and source.seq_len != base.seq_len:
        raise InputError(
            f"integrated gradients interpolate the LM input: the source has {source.seq_len} tokens, the base "
            f"{base.seq_len}; use method='atp'"
        )
    passes = _Passes(vlm, needed, base_positions, source_positions, qk_sets or {})
    model = vlm.nnsight
    a_source, a_base = answers
    runs = [(step, None) for step in range(steps)] + [(0, layer) for layer in range(vlm.n_layers) if graddrop]
    with gradient_pass(vlm.model), model.session(**vlm.trace_kwargs(remote)):
        shared = nnsight.save({})
        found = nnsight.save({})
        with model.trace(dict(source.inputs)):
            passes.read_source(shared)
            source_logits = nnsight.save(model.output.logits[:, -1].detach().float())
        for step, dropped in runs:
            with model.trace(dict(base.inputs)):
                values = passes.read_base(shared, step, steps, dropped)
                logits = model.output.logits[:, -1]
                if step == 0 and dropped is None:
                    base_logits = nnsight.save(logits.detach().float())
                    passes.keep_base(shared, values)
                if metric is not None:
                    scored = metric(logits[0], answers).sum()
                elif a_source != a_base:
                    scored = (logits[:, a_source] - logits[:, a_base]).sum()
                else:
                    scored = logits[:, a_source].sum()
                with scored.backward():
                    found[(step, dropped)] = passes.totals(shared, values, dropped)
    return _gathered(found, passes.canon, passes.qk_sets, steps, vlm.n_layers, source_logits, base_logits)


class _Passes:
    """What one pair's traces read, write and multiply, shared by its source, base and dropped passes."""

    def __init__(self, vlm, needed, base_positions: torch.Tensor, source_positions: torch.Tensor, qk_sets: dict):
        for key, idx in qk_sets.items():
            if not torch.equal(base_positions[idx], source_positions[idx]):
                raise InputError(
                    "the QK fix reuses the source's rotated queries and keys, so it needs them at the base's "
                    f"positions; condition {key[:3]} matches other positions: use method='atp'"
                )
        self.model, self.access = vlm.nnsight, vlm.access
        self.canon = {key: _canonical(key[0], key[1], vlm.n_layers) for key in needed}
        self.tensors = sorted(set(self.canon.values()), key=_forward_order)
        self.per_head = {key: registry.site(key[1]).per_head for key in self.tensors}
        self.qk_sets = qk_sets
        self.qk_layers = sorted({key[1] for key in qk_sets})
        self.b_idx, self.s_idx = base_positions, source_positions

    def read_source(self, shared: dict) -> None:
        """The source's values at the base positions' matches (and its rotated queries and keys)."""
        model, access, s_idx = self.model, self.access, self.s_idx
        start = _raw(access, model, 0, "resid_pre")
        shared["source_start"] = start.detach()  # integrated gradients interpolate towards it
        for layer, site in _read_order(self.tensors, self.qk_layers, None):
            if (layer, site) == (0, "resid_pre"):
                shared[("source", 0, "resid_pre")] = start.detach()[:, s_idx.to(start.device)]
            elif site == "attn_pattern":
                args, _ = access.read(model, layer, "attn_pattern")
                shared[("source_q", layer)] = args[1].detach()[:, :, s_idx.to(args[1].device)]
                shared[("source_k", layer)] = args[2].detach()[:, :, s_idx.to(args[2].device)]
            elif (layer, site) in self.per_head:
                value = _raw(access, model, layer, site)
                shared[("source", layer, site)] = value.detach()[:, s_idx.to(value.device)]

    def read_base(self, shared: dict, step: int, steps: int, dropped: int | None) -> dict:
        """One base pass's forward: its LM input made a leaf (interpolated for IG steps), every
        tensor read, the QK-fixed changes computed (first pass), the dropped layer's gradient stopped."""
        model, access = self.model, self.access
        start = _raw(access, model, 0, "resid_pre")
        if step == 0:
            if dropped is None:
                shared["base_start"] = start.detach()
            leaf = start.detach().requires_grad_(True)
        else:
            mixed = shared["base_start"] + step / steps * (shared["source_start"] - shared["base_start"])
            leaf = mixed.detach().requires_grad_(True)
        access.write(model, 0, "resid_pre", leaf)
        values = {(0, "resid_pre"): leaf}
        for layer, site in _read_order(self.tensors, self.qk_layers, dropped):
            if site.startswith("drop_"):
                kept = access.read(model, layer, site[5:])
                access.write(model, layer, site[5:], kept.detach())
            elif site == "attn_pattern":
                if step == 0 and dropped is None:
                    self._qk_changes(shared, layer, access.read(model, layer, "attn_pattern"))
            elif (layer, site) != (0, "resid_pre"):
                values[(layer, site)] = _raw(access, model, layer, site)
        return values

    def _qk_changes(self, shared: dict, layer: int, call) -> None:
        for key, idx in self.qk_sets.items():
            if key[1] == layer:
                replacement = shared[(f"source_{key[0]}", layer)][:, :, idx]
                shared[("change",) + key] = _attention_change(call, key[0], self.b_idx[idx], replacement)

    def keep_base(self, shared: dict, values: dict) -> None:
        for key in self.tensors:
            value = values[key]
            shared[("base",) + key] = value.detach()[:, self.b_idx.to(value.device)]

    def totals(self, shared: dict, values: dict, dropped: int | None) -> dict:
        """Inside the backward: ``(source - base) . gradient`` per position at every needed tensor,
        and per head for every QK-fixed condition, in reverse forward order."""
        head_dim = self.access.head_dim
        out: dict = {}
        for key in sorted(values, key=_forward_order, reverse=True):
            if key[0] == dropped and key[1] in _INSIDE:
                continue  # its gradient is stopped: no contribution through this layer
            grad = values[key].grad
            if key in self.per_head:
                grad_b = grad[:, self.b_idx.to(grad.device)]
                delta = shared[("source",) + key] - shared[("base",) + key]
                if self.per_head[key]:
                    grad_b, delta = split_heads(grad_b, head_dim), split_heads(delta, head_dim)
                out[key] = (delta.float() * grad_b.float()).sum(-1)[0].detach()
            if key[1] == "z" and key[0] in self.qk_layers:
                heads = split_heads(grad, head_dim)[0].float()
                for cond in self.qk_sets:
                    if cond[1] == key[0]:
                        rows, change = shared[("change",) + cond]
                        out[cond] = (heads[rows.to(heads.device)] * change.to(heads.device)).sum((0, 2)).detach()
        return out


def _forward_order(key: tuple[int, str]) -> tuple:
    return key[0], registry.forward_key(registry.site(key[1]))


def _gathered(found: dict, canon: dict, qk_sets: dict, steps: int, n_layers: int, source_logits, base_logits) -> dict:
    """:func:`pair_attribution`'s passes gathered: the mean over the IG steps, the QK-fixed
    conditions, and each dropped layer's own estimates (zero inside that layer)."""
    plain = [found[(step, None)] for step in range(steps)]
    contributions = {key: (sum(t[canon[key]] for t in plain) / steps).cpu() for key in canon}
    qk = {cond: plain[0][cond].cpu() for cond in qk_sets}
    dropped = {}
    for layer in range(n_layers):
        totals = found.get((0, layer))
        if totals is None:
            continue
        dropped[layer] = {
            "contributions": {
                key: totals[canon[key]].cpu() if canon[key] in totals else torch.zeros_like(contributions[key])
                for key in canon
            },
            "qk": {cond: totals[cond].cpu() if cond in totals else torch.zeros_like(qk[cond]) for cond in qk_sets},
        }
    return {
        "contributions": contributions,
        "qk": qk,
        "dropped": dropped,
        "source_logits": source_logits[0].cpu(),
        "base_logits": base_logits[0].cpu(),
    }


def attribution_sweep(
    vlm,
    pairs: Any,
    *,
    sites: Any = ("resid_pre",),
    positions: Any = GROUPS,
    layers: Any = "all",
    cell_layers: Any = (),
    cell_pairs: int | None = None,
    heads: Any = "all",
    method: str = "atp",
    steps: int = IG_STEPS,
    metric: Callable | None = None,
    remote: bool | str | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
) -> pd.DataFrame:
    """Estimate every patching condition of :func:`~interp.analysis.patching.patching_sweep` from gradients.

    Args:
        vlm: the model.
        pairs: as in ``patching_sweep`` (Counterfactuals, PatchPairs or ``(base, source)`` tuples).
        sites: the sites (``resid_pre``, ``attn_out``, ``mlp_out``, ``resid_post``, ``z`` per head).
        positions: the position groups.
        layers: the layers (``"all"`` or a list).
        cell_layers: layers also attributed per image cell.
        cell_pairs: the first pairs that get per-cell rows (None: all; attribution makes cells cheap).
        heads: site ``z``: ``"all"`` or a list of heads.
        method: ``"atp"``, ``"atp*"`` or ``"ig"`` (see the module docstring).
        steps: ``method="ig"``: interpolation steps.
        metric: ``metric(logits, answers) -> one-element tensor``: what is attributed, from a run's
            last-position logits ``(vocab,)`` and the answers' first tokens ``(source, base)``
            (None: the logit difference, or for a control pair the answer's logit). With a metric
            the ``*_logit_diff`` columns hold its values and ``effect`` is the estimate over
            ``clean - corrupt``.
        remote: as in :meth:`interp.VLM.run`.
        progress: show a progress bar.
        resume: a row log (JSON Lines): finished pairs are read back, a torn record recomputed.

    Returns:
        One row per (pair, site, layer, group[, cell][, head]) with ``patching_sweep``'s columns:
        ``logit_diff`` is the base's plus the estimated change, ``effect`` the estimate over
        ``clean - corrupt``; ``answer_logit_change`` is estimated for control pairs (same first
        token) and NaN otherwise; ``method`` names the estimator; with ``"atp*"``, ``graddrop``
        holds AtP*'s unsigned GradDrop score.

    Raises:
        InterpError: an unknown method, site, group, bad steps, or a metric that does not
            return one number.
        InputError: pairs that cannot be aligned (see :func:`interp.interventions.patch.aligned_positions`).
    """
    from ..outputs import logged_units

    n_steps = _check_method(method, steps)
    _check_metric(vlm, metric)
    pair_list = as_pairs(pairs)
    site_list = _sites(sites)
    plan = _condition_plan(vlm, site_list, layers, heads, cell_layers, cell_pairs, positions)
    numbered = list(enumerate(pair_list))
    rows = logged_units(
        resume,
        tqdm(numbered, desc=f"attribution ({method})", unit="pair", disable=not progress),
        lambda entry: entry[1].id,
        lambda entry: _attribute_pair(
            vlm, entry[1], plan.conditions(vlm, entry[1], entry[0]), method, n_steps, metric, remote
        ),
    )
    frame = pd.DataFrame(rows)
    frame.attrs.update(
        {
            "model": vlm.name,
            "n_layers": vlm.n_layers,
            "sites": site_list,
            "mode": method,
            "method": method,
            "steps": n_steps,
            "metric": f"estimated ({method}): {METRIC if metric is None else getattr(metric, '__name__', 'metric')}",
        }
    )
    return frame


def _check_metric(vlm, metric) -> None:
    """A metric must map a run's last-position logits ``(vocab,)`` and the answers to one number."""
    if metric is None:
        return
    if not callable(metric):
        raise InterpError(f"metric must be a function of (logits, answers), got {type(metric).__name__}")
    vocab = int(vlm.adapter.text_config(vlm.config).vocab_size)
    probe = metric(torch.zeros(vocab, requires_grad=True), (0, 0))
    if not isinstance(probe, torch.Tensor) or probe.numel() != 1:
        shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise InterpError(
            f"metric must return one number per pair (a one-element tensor that keeps the gradient), got {shape}"
        )


def _attribute_pair(
    vlm, pair: PatchPair, planned: tuple, method: str, steps: int, metric: Callable | None, remote
) -> list[dict]:
    """One pair's rows, shaped like :func:`interp.analysis.patching._patch_pair`'s."""
    base, source, conditions = planned
    if not conditions:
        return []
    b_pos, s_pos, members = _alignment(conditions, base, source)
    needed = sorted({(key[1], key[0]) for key in conditions})
    starred = method == "atp*"
    qk_sets = {key: idx for key, idx in members.items() if key[0] in _QK_SITES} if starred else {}
    # the answers' first tokens, or (no answer given) the model's own top token: one plain forward
    a_source = _first_token(vlm, source, pair.source.answer) if pair.source.answer else _top_token(vlm, source)
    a_base = _first_token(vlm, base, pair.base.answer) if pair.base.answer else _top_token(vlm, base)
    found = pair_attribution(
        vlm,
        base,
        source,
        needed,
        b_pos,
        s_pos,
        (a_source, a_base),
        steps=steps,
        qk_sets=qk_sets,
        graddrop=starred,
        metric=metric,
        remote=remote,
    )
    common = pair_columns(pair, found["source_logits"], found["base_logits"], a_source, a_base)
    if metric is not None:  # the metric's values stand in for the logit difference
        for column, logits in (("clean_logit_diff", "source_logits"), ("corrupt_logit_diff", "base_logits")):
            common[column] = float(metric(found[logits], (a_source, a_base)).detach())
    corrupt_ld = common["corrupt_logit_diff"]
    denominator = common["clean_logit_diff"] - corrupt_ld
    control = a_source == a_base and metric is None  # the logit difference is 0: its answer's logit is estimated
    rows = []
    for key, idx in members.items():
        estimate = _estimate(found, key, idx)
        if control:
            row = condition_row(common, key, corrupt_ld, float("nan"), estimate)
        else:
            effect = estimate / denominator if abs(denominator) > 1e-6 else float("nan")
            row = condition_row(common, key, corrupt_ld + estimate, effect, float("nan"))
        row["method"] = method
        if starred:
            scale = 1.0 if control else abs(denominator) if abs(denominator) > 1e-6 else float("nan")
            row["graddrop"] = _graddrop(found, key, idx) / scale
        rows.append(row)
    return rows


def _estimate(found: dict, key: tuple, idx: torch.Tensor) -> float:
    """A condition's estimate from one pass's gathered values (QK-fixed or per position)."""
    site, layer, head = key[0], key[1], key[5]
    if key in found["qk"]:
        chosen = found["qk"][key]
        return float(chosen[head] if head >= 0 else chosen.sum())
    chosen = found["contributions"][(layer, site)][idx]
    return float(chosen[:, head].sum() if head >= 0 else chosen.sum())


def _graddrop(found: dict, key: tuple, idx: torch.Tensor) -> float:
    """AtP*'s GradDrop score: ``sum over layers l of |estimate with l's gradient dropped| / (L - 1)``
    (unsigned: it ranks by size, and a cancellation through one layer no longer hides an effect)."""
    dropped = found["dropped"]
    total = sum(abs(_estimate(passes, key, idx)) for passes in dropped.values())
    return total / max(len(dropped) - 1, 1)


def _top_token(vlm, prepared) -> int:
    """The model's top next token after ``prepared``'s prompt (one plain forward)."""
    return int(vlm.run(prepared).logits[0].argmax())


# -- trust: an estimate against exact patching -----------------------------------------------


def _rank_correlation(exact: np.ndarray, estimate: np.ndarray, rows: np.ndarray) -> float:
    """Spearman's rho of the conditions' means over ``rows`` (pairs; NaN when either side is constant)."""
    from scipy.stats import spearmanr

    a, b = np.nanmean(exact[rows], axis=0), np.nanmean(estimate[rows], axis=0)
    if np.nanstd(a) == 0 or np.nanstd(b) == 0:
        return float("nan")
    return float(spearmanr(a, b, nan_policy="omit").statistic)


def agreement(
    exact: pd.DataFrame,
    estimate: pd.DataFrame,
    *,
    top_k: int = 10,
    sign_threshold: float = 0.1,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """How far an estimate can be trusted, per (change, site): its conditions' mean effects
    over pairs against exact patching's.

    The conditions are the (layer, group[, head]) cells both frames hold, each scored by its
    mean over the pairs both hold (``effect``; ``answer_logit_change`` for control pairs).

    Args:
        exact: a :func:`~interp.analysis.patching.patching_sweep` frame.
        estimate: an :func:`attribution_sweep` frame of the same pairs.
        top_k: the size of the top sets compared (by absolute exact / estimated mean).
        sign_threshold: sign agreement counts conditions with ``|exact mean| >`` this.
        n_boot: bootstrap resamples of the pairs for the Spearman CI.
        seed: the bootstrap's seed.

    Returns:
        One row per (change, site): ``n_pairs``, ``n_conditions``, ``spearman`` with ``low`` /
        ``high`` (95% bootstrap CI over pairs), ``top_k_overlap`` (fraction), ``sign_agreement``
        (fraction, NaN when no condition passes the threshold) and ``n_signed``; for an estimate
        with GradDrop scores (``atp*``), ``graddrop_spearman`` (their rank correlation with the
        exact means' sizes) and ``graddrop_top_k_overlap``.

    Raises:
        InterpError: the frames share no condition.
    """
    keys = ["pair", "change", "site", "head", "layer", "group"]
    exact_rows = exact[exact.group != "cell"]
    est_rows = estimate[estimate.group != "cell"]
    merged = exact_rows.merge(est_rows, on=keys + ["same_first_token"], suffixes=("_exact", "_est"))
    if merged.empty:
        raise InterpError("the exact and estimated frames share no (pair, site, layer, group) condition")
    merged["value_exact"] = np.where(merged.same_first_token, merged.answer_logit_change_exact, merged.effect_exact)
    merged["value_est"] = np.where(merged.same_first_token, merged.answer_logit_change_est, merged.effect_est)
    merged = merged.dropna(subset=["value_exact", "value_est"])
    if "graddrop" not in merged:
        merged["graddrop"] = np.nan
    scored_any = bool(merged.graddrop.notna().any())
    rng = np.random.default_rng(seed)
    out = []
    for (change, site), part in merged.groupby(["change", "site"], sort=False):
        cond = ["head", "layer", "group"]
        pairs = np.array(sorted(part.pair.unique()))
        table = part.pivot_table(index="pair", columns=cond, values=["value_exact", "value_est"], aggfunc="mean")
        ex, es = table["value_exact"].to_numpy(), table["value_est"].to_numpy()
        scored = part.dropna(subset=["graddrop"])
        graddrop = (
            scored.pivot_table(index="pair", columns=cond, values="graddrop", aggfunc="mean")
            .reindex(index=table.index, columns=table["value_exact"].columns)
            .to_numpy()
            if not scored.empty
            else np.empty(0)
        )
        mean_ex, mean_es = np.nanmean(ex, axis=0), np.nanmean(es, axis=0)
        dropped = _graddrop_scores(mean_ex, graddrop, top_k) if scored_any else {}

        everyone = np.arange(len(pairs))
        point = _rank_correlation(ex, es, everyone)
        boots = (
            [_rank_correlation(ex, es, rng.integers(0, len(pairs), len(pairs))) for _ in range(n_boot)]
            if len(pairs) > 1
            else []
        )
        boots = [b for b in boots if not np.isnan(b)]
        k = min(top_k, len(mean_ex))
        signed = np.abs(mean_ex) > sign_threshold
        out.append(
            {
                "change": change,
                "site": site,
                "metric": "answer_logit_change" if bool(part.same_first_token.iloc[0]) else "effect",
                "n_pairs": len(pairs),
                "n_conditions": len(mean_ex),
                "spearman": point,
                "low": float(np.percentile(boots, 2.5)) if boots else float("nan"),
                "high": float(np.percentile(boots, 97.5)) if boots else float("nan"),
                "top_k": k,
                "top_k_overlap": _top_overlap(np.abs(mean_ex), np.abs(mean_es), k),
                "sign_agreement": float((np.sign(mean_ex[signed]) == np.sign(mean_es[signed])).mean())
                if signed.any()
                else float("nan"),
                "n_signed": int(signed.sum()),
                **dropped,
            }
        )
    return pd.DataFrame(out)


def _graddrop_scores(mean_exact: np.ndarray, graddrop: np.ndarray, top_k: int) -> dict:
    """How GradDrop's unsigned scores rank the conditions against the exact means' sizes."""
    from scipy.stats import spearmanr

    empty = {"graddrop_spearman": float("nan"), "graddrop_top_k_overlap": float("nan")}
    if graddrop.size == 0 or np.isnan(graddrop).all():
        return empty
    scores = np.nanmean(graddrop, axis=0)
    size = np.abs(mean_exact)
    rho = float(spearmanr(size, scores, nan_policy="omit").statistic) if np.nanstd(scores) > 0 else float("nan")
    return {"graddrop_spearman": rho, "graddrop_top_k_overlap": _top_overlap(size, scores, min(top_k, len(size)))}


def _top_overlap(first: np.ndarray, second: np.ndarray, k: int) -> float:
    """The share of the ``k`` largest entries of ``first`` that are among the ``k`` largest of ``second``."""
    if not k:
        return float("nan")
    return len(set(np.argsort(-first)[:k]) & set(np.argsort(-second)[:k])) / k
