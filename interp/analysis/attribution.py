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

from collections.abc import Iterator, Sequence
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
METHODS = ("atp", "ig")
#: the default interpolation steps of ``method="ig"``
IG_STEPS = 8


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
    if method == "atp":
        return 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InterpError(f"steps must be a positive integer, got {steps!r}")
    return steps


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
    remote: bool | str | None = None,
) -> dict:
    """One pair's gradient pass: per-position attribution at every ``(layer, site)`` of ``needed``.

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
        remote: as in :meth:`interp.VLM.run`.

    Returns:
        ``{"contributions": {(layer, site): (len(B),) or (len(B), heads) tensor}, "source_logits",
        "base_logits"}`` (last position, float32, CPU).

    Raises:
        InputError: ``steps > 1`` with a source laid out unlike the base.
    """
    if steps > 1 and source.seq_len != base.seq_len:
        raise InputError(
            f"integrated gradients interpolate the LM input: the source has {source.seq_len} tokens, the base "
            f"{base.seq_len}; use method='atp'"
        )
    model, access = vlm.nnsight, vlm.access
    n_layers = vlm.n_layers
    a_source, a_base = answers
    canon = {key: _canonical(*key, n_layers) for key in needed}
    tensors = sorted(set(canon.values()), key=lambda key: (key[0], registry.forward_key(registry.site(key[1]))))
    per_head = {key: registry.site(key[1]).per_head for key in tensors}
    head_dim = access.head_dim
    b_idx, s_idx = base_positions, source_positions

    def read_later():
        """Every needed tensor after layer 0's input (read once per trace, in forward order)."""
        return {key: _raw(access, model, *key) for key in tensors if key != (0, "resid_pre")}

    with gradient_pass(vlm.model), model.session(**vlm.trace_kwargs(remote)):
        shared = nnsight.save({})
        totals = nnsight.save({})
        with model.trace(dict(source.inputs)):
            start = _raw(access, model, 0, "resid_pre")
            shared["source_start"] = start.detach()
            for key, value in {(0, "resid_pre"): start, **read_later()}.items():
                shared[("source",) + key] = value.detach()[:, s_idx.to(value.device)]
            source_logits = nnsight.save(model.output.logits[:, -1].detach().float())
        for step in range(steps):
            with model.trace(dict(base.inputs)):
                start = _raw(access, model, 0, "resid_pre")
                if step == 0:
                    shared["base_start"] = start.detach()
                    leaf = start.detach().requires_grad_(True)
                else:
                    alpha = step / steps
                    mixed = shared["base_start"] + alpha * (shared["source_start"] - shared["base_start"])
                    leaf = mixed.detach().requires_grad_(True)
                access.write(model, 0, "resid_pre", leaf)
                values = {(0, "resid_pre"): leaf, **read_later()}
                logits = model.output.logits[:, -1]
                if step == 0:
                    base_logits = nnsight.save(logits.detach().float())
                    for key, value in values.items():
                        shared[("base",) + key] = value.detach()[:, b_idx.to(value.device)]
                metric = (
                    (logits[:, a_source] - logits[:, a_base]).sum() if a_source != a_base else logits[:, a_source].sum()
                )
                with metric.backward():
                    for key in reversed(tensors):
                        grad = values[key].grad[:, b_idx.to(values[key].device)]
                        delta = shared[("source",) + key] - shared[("base",) + key]
                        if per_head[key]:
                            grad, delta = split_heads(grad, head_dim), split_heads(delta, head_dim)
                        part = (delta.float() * grad.float()).sum(-1)[0]
                        totals[key] = part if step == 0 else totals[key] + part
    contributions = {key: (totals[canon[key]] / steps).detach().cpu() for key in needed}
    return {
        "contributions": contributions,
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
        method: ``"atp"`` or ``"ig"`` (see the module docstring).
        steps: ``method="ig"``: interpolation steps.
        remote: as in :meth:`interp.VLM.run`.
        progress: show a progress bar.
        resume: a row log (JSON Lines): finished pairs are read back, a torn record recomputed.

    Returns:
        One row per (pair, site, layer, group[, cell][, head]) with ``patching_sweep``'s columns:
        ``logit_diff`` is the base's plus the estimated change, ``effect`` the estimate over
        ``clean - corrupt``; ``answer_logit_change`` is estimated for control pairs (same first
        token) and NaN otherwise; ``method`` names the estimator.

    Raises:
        InterpError: an unknown method, site, group, or bad steps.
        InputError: pairs that cannot be aligned (see :func:`interp.interventions.patch.aligned_positions`).
    """
    from ..outputs import logged_units

    n_steps = _check_method(method, steps)
    pair_list = as_pairs(pairs)
    site_list = _sites(sites)
    plan = _condition_plan(vlm, site_list, layers, heads, cell_layers, cell_pairs, positions)
    numbered = list(enumerate(pair_list))
    rows = logged_units(
        resume,
        tqdm(numbered, desc=f"attribution ({method})", unit="pair", disable=not progress),
        lambda entry: entry[1].id,
        lambda entry: _attribute_pair(vlm, entry[1], plan.conditions(vlm, entry[1], entry[0]), method, n_steps, remote),
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
            "metric": f"estimated ({method}): {METRIC}",
        }
    )
    return frame


def _attribute_pair(vlm, pair: PatchPair, planned: tuple, method: str, steps: int, remote) -> list[dict]:
    """One pair's rows, shaped like :func:`interp.analysis.patching._patch_pair`'s."""
    base, source, conditions = planned
    if not conditions:
        return []
    b_pos, s_pos, members = _alignment(conditions, base, source)
    needed = sorted({(key[1], key[0]) for key in conditions})
    # the answers' first tokens, or (no answer given) the model's own top token: one plain forward
    a_source = _first_token(vlm, source, pair.source.answer) if pair.source.answer else _top_token(vlm, source)
    a_base = _first_token(vlm, base, pair.base.answer) if pair.base.answer else _top_token(vlm, base)
    found = pair_attribution(vlm, base, source, needed, b_pos, s_pos, (a_source, a_base), steps=steps, remote=remote)
    common = pair_columns(pair, found["source_logits"], found["base_logits"], a_source, a_base)
    corrupt_ld = common["corrupt_logit_diff"]
    denominator = common["clean_logit_diff"] - corrupt_ld
    rows = []
    for key, idx in members.items():
        site, layer, _, _, _, head = key
        chosen = found["contributions"][(layer, site)][idx]
        estimate = float(chosen[:, head].sum() if head >= 0 else chosen.sum())
        if a_source == a_base:  # a control: the logit difference is 0, its answer's logit is estimated
            row = condition_row(common, key, corrupt_ld, float("nan"), estimate)
        else:
            effect = estimate / denominator if abs(denominator) > 1e-6 else float("nan")
            row = condition_row(common, key, corrupt_ld + estimate, effect, float("nan"))
        rows.append({**row, "method": method})
    return rows


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
        (fraction, NaN when no condition passes the threshold) and ``n_signed``.

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
    rng = np.random.default_rng(seed)
    out = []
    for (change, site), part in merged.groupby(["change", "site"], sort=False):
        cond = ["head", "layer", "group"]
        pairs = np.array(sorted(part.pair.unique()))
        table = part.pivot_table(index="pair", columns=cond, values=["value_exact", "value_est"], aggfunc="mean")
        ex, es = table["value_exact"].to_numpy(), table["value_est"].to_numpy()

        everyone = np.arange(len(pairs))
        point = _rank_correlation(ex, es, everyone)
        boots = (
            [_rank_correlation(ex, es, rng.integers(0, len(pairs), len(pairs))) for _ in range(n_boot)]
            if len(pairs) > 1
            else []
        )
        boots = [b for b in boots if not np.isnan(b)]
        mean_ex, mean_es = np.nanmean(ex, axis=0), np.nanmean(es, axis=0)
        k = min(top_k, len(mean_ex))
        top_ex = set(np.argsort(-np.abs(mean_ex))[:k])
        top_es = set(np.argsort(-np.abs(mean_es))[:k])
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
                "top_k_overlap": len(top_ex & top_es) / k if k else float("nan"),
                "sign_agreement": float((np.sign(mean_ex[signed]) == np.sign(mean_es[signed])).mean())
                if signed.any()
                else float("nan"),
                "n_signed": int(signed.sum()),
            }
        )
    return pd.DataFrame(out)
