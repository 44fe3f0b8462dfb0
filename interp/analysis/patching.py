"""Counterfactual activation patching: runners, the sweep, its summary and report section.

Terms: the *source* is the clean input whose activations are copied; the *base* is the
corrupted input that runs with them written in. For a synthetic counterfactual pair
(:func:`interp.data.synthetic.counterfactual`) the source is the original scene and
the base the scene with one controlled change.

* :func:`run_patched` / :func:`patch_session` (the engine's source runs,
  :mod:`interp.engine.source_runs`) run the source and the patched base run(s) in ONE nnsight
  session (on ``remote=`` one request: the source's values never come back to Python between
  the runs).
* :func:`patching_sweep` patches the source's activations into the base at every layer,
  site and position group (and per image cell at chosen layers) and returns a tidy
  DataFrame; every patchable site runs on the captured-prefix fast path
  (:mod:`interp.engine.prefix`: each pair's source and base captured once, the base
  restarted at layer ``l`` with the source's values written in); ``mode="naive"``, a remote
  run or a family without prefix reuse patches through sessions.

Metric: the logit difference ``LD = logit(source answer) - logit(base answer)`` at the
last prompt position, each answer represented by its *first* token as generated after
the prompt (:func:`interp.analysis.teacher.answer_token_ids`); the normalised effect
``(LD_patched - LD_base) / (LD_source - LD_base)`` is 0 for no effect and 1 for the
source's behaviour. When both answers share their first token (the distractor control)
LD is 0 and the effect undefined (NaN): the control is reported as the raw change of
the answer token's logit, ``answer_logit_change = logit_patched(answer) - logit_base(answer)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import InputError, InterpError
from ..interventions.base import resolve_layers
from ..interventions.patch import PATCH_SITES, ImageCells, PatchActivations, RecordSource
from ..engine.source_runs import PatchedRuns, patch_session, run_patched  # noqa: F401 - the runners, re-exported
from ..runfiles import FILES
from .stats import per_layer_ci

#: position groups of the sweep, in display order
GROUPS = ("changed", "other_image", "question", "other_text", "last")
METRIC = "logit(source answer) - logit(base answer), first answer token, last prompt position"
#: the groups the report section patches by default (``other_text`` costs a fifth more and is optional)
REPORT_GROUPS = ("changed", "other_image", "question", "last")
#: the changes a report's pairs take turns with: the object's colour and shape, and the distractor control
REPORT_CHANGES = ("colour", "shape", "distractor")
GROUP_LABELS = {
    "changed": "changed cells",
    "other_image": "other image cells",
    "question": "question tokens",
    "other_text": "other text tokens",
    "last": "last token",
}


# -- pairs -------------------------------------------------------------------------------


@dataclass
class Side:
    """One input of a pair: an image, a question and (optionally) its answer."""

    image: Any
    question: str
    answer: str | None = None


@dataclass
class PatchPair:
    """A (base, source) pair: the base runs with the source's activations patched in.
    ``changed_boxes`` (pixel boxes, exclusive ends) mark where the images differ; with
    them the sweep splits the image into changed and other cells."""

    id: str
    base: Side
    source: Side
    change: str = "custom"
    changed_boxes: tuple = ()
    description: str = ""


def _side(entry) -> Side:
    if isinstance(entry, Side):
        return entry
    if isinstance(entry, (tuple, list)) and len(entry) in (2, 3):
        return Side(*entry)
    if hasattr(entry, "image") and hasattr(entry, "question"):
        return Side(entry.image, entry.question, getattr(entry, "answer", None))
    raise InputError(f"cannot use {type(entry).__name__} as one side of a pair: give (image, question[, answer])")


def as_pairs(pairs: Any) -> list[PatchPair]:
    """PatchPairs from synthetic :class:`~interp.data.synthetic.Counterfactual` objects
    (base: the changed scene, source: the original), PatchPairs, or ``(base, source)``
    tuples of ``(image, question[, answer])`` (answers default to the model's own top token)."""
    from ..data.synthetic import Counterfactual

    if isinstance(pairs, (Counterfactual, PatchPair)):
        pairs = [pairs]
    out = []
    for k, entry in enumerate(pairs):
        if isinstance(entry, PatchPair):
            out.append(entry)
        elif isinstance(entry, Counterfactual):
            out.append(
                PatchPair(
                    entry.id,
                    _side(entry.changed),
                    _side(entry.original),
                    entry.change,
                    tuple(tuple(b) for b in entry.changed_boxes),
                    entry.description,
                )
            )
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            out.append(PatchPair(str(k), _side(entry[0]), _side(entry[1])))
        else:
            raise InputError(
                f"cannot patch with {type(entry).__name__}: give Counterfactuals, PatchPairs or "
                "(base, source) tuples of (image, question[, answer])"
            )
    if not out:
        raise InputError("no pairs to patch: give at least one (base, source) pair")
    return out


# -- the sweep ---------------------------------------------------------------------------


def _sites(sites) -> list[str]:
    sites = [sites] if isinstance(sites, str) else list(sites)
    names = []
    for site in sites:
        site = site.removeprefix("hook_")
        if site not in PATCH_SITES:
            raise InterpError(f"cannot patch site {site!r}; patchable sites: {', '.join(PATCH_SITES)}")
        names.append(site)
    if not names:
        raise InterpError("give at least one site to patch")
    return list(dict.fromkeys(names))


def _groups(pair: PatchPair, base, source, positions) -> dict[str, Any]:
    """Position group -> selector on the base (matched by role on the source)."""
    rows, cols = base.grid.shape
    wanted = [positions] if isinstance(positions, str) else list(positions)
    unknown = [g for g in wanted if g not in GROUPS + ("image",)]
    if unknown:
        raise InterpError(f"unknown position group(s) {unknown}; use {', '.join(GROUPS + ('image',))}")
    out: dict[str, Any] = {}
    mask = None
    if pair.changed_boxes:
        from ..data.synthetic import boxes_mask
        from ..inputs import load_image

        size = load_image(pair.base.image).size
        mask = boxes_mask(pair.changed_boxes, size, rows, cols, min_fraction=1e-6)
    text = torch.ones(base.seq_len, dtype=torch.bool)
    text[base.image_positions.cpu()] = False
    text[base.question_positions.cpu()] = False
    text[base.seq_len - 1] = False
    for group in wanted:
        if group in ("changed", "other_image") and mask is None:
            continue  # a pair without changed boxes: use "image"
        if group == "changed":
            out[group] = ImageCells(mask)
        elif group == "other_image":
            out[group] = ImageCells(~mask)
        elif group == "other_text":
            out[group] = text.nonzero().flatten()
        else:
            out[group] = group  # "image", "question", "last"
    return out


def _first_token(vlm, prepared, answer: str) -> int:
    from .teacher import answer_token_ids

    tokenizer = getattr(vlm.processor, "tokenizer", vlm.processor)
    return int(answer_token_ids(tokenizer, prepared.prompt, answer)[0])


def patching_sweep(
    vlm,
    pairs: Any,
    *,
    sites: Any = ("resid_pre",),
    positions: Any = GROUPS,
    layers: Any = "all",
    cell_layers: Any = (),
    cell_pairs: int | None = None,
    mode: str = "auto",
    batch: int = 16,
    remote: bool | str | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    heads: Any = "all",
) -> pd.DataFrame:
    """Patch each pair's source activations into its base at every (site, layer, position
    group), and per image cell at ``cell_layers``; one row per (pair, site, layer, group
    [, cell][, head]) with ``logit_diff`` (patched), ``effect`` (normalised) and
    ``answer_logit_change``, plus the pair's ``clean_logit_diff`` / ``corrupt_logit_diff``
    and whether the model's top token is each answer's (``clean_correct`` / ``corrupt_correct``).

    Per-cell rows are computed for the first ``cell_pairs`` pairs only (all when None):
    they cost a restart per cell. ``resume``: a JSON Lines file (:class:`interp.outputs.RowLog`)
    that gets one fsynced record per finished pair; pairs already in it are not run again,
    and a record cut by a crash is dropped and its pair recomputed.

    Site ``z`` (``blocks.{l}.attn.hook_z``) patches one attention head at a time: a row
    per head in ``heads`` (``"all"`` or a list); the ``head`` column is -1 for the other
    sites' rows (the whole activation).

    ``mode``: ``"fast"`` (captured prefixes: the source and base each captured once, the
    base restarted at each layer, ``batch`` variants per forward), ``"naive"`` (one nnsight
    session per pair: the reference, and the ``remote=`` path) or ``"auto"`` (fast where
    the family allows prefix reuse).
    """
    from ..outputs import logged_units

    pair_list = as_pairs(pairs)
    site_list = _sites(sites)
    fast = _fast_patching(vlm, mode, remote)
    plan = _condition_plan(vlm, site_list, layers, heads, cell_layers, cell_pairs, positions)
    numbered = list(enumerate(pair_list))
    rows = logged_units(
        resume,
        tqdm(numbered, desc="patching sweep", unit="pair", disable=not progress),
        lambda entry: entry[1].id,
        lambda entry: _patch_pair(
            vlm, entry[1], plan.conditions(vlm, entry[1], entry[0]), fast=fast, batch=batch, remote=remote
        ),
    )
    frame = pd.DataFrame(rows)
    frame.attrs.update(
        {
            "model": vlm.name,
            "n_layers": vlm.n_layers,
            "sites": site_list,
            "mode": "fast" if fast else "naive",
            "metric": METRIC,
        }
    )
    return frame


def _fast_patching(vlm, mode: str, remote) -> bool:
    """Whether the sweep restarts from captured prefixes (one line when ``mode='fast'`` cannot)."""
    from ..engine.clean_pass import supports_prefix_reuse

    if mode not in ("auto", "fast", "naive"):
        raise InterpError(f"mode must be auto, fast or naive, got {mode!r}")
    reason = supports_prefix_reuse(vlm) or ("remote execution" if remote not in (None, False) else None)
    if mode == "fast" and reason:
        raise InterpError(f"the fast patching sweep does not apply here ({reason}); use mode='naive'")
    return mode != "naive" and reason is None


def _cell_layers(vlm, cell_layers: Any) -> list[int]:
    if cell_layers is None or (not isinstance(cell_layers, (str, int)) and len(cell_layers) == 0):
        return []
    return resolve_layers(cell_layers, vlm.n_layers)


@dataclass
class _ConditionPlan:
    """Which (site, layer, group, row, col, head) conditions a pair gets."""

    sites: list
    layers: list
    heads: list
    cell_layers: list
    cell_pairs: int | None
    positions: Any

    def conditions(self, vlm, pair: PatchPair, index: int) -> tuple[Any, Any, dict]:
        """``(base, source, {condition: selector})`` of the ``index``-th pair."""
        base = vlm.prepare(pair.base.image, pair.base.question)
        source = vlm.prepare(pair.source.image, pair.source.question)
        groups = _groups(pair, base, source, self.positions)
        grid = base.grid
        cells = {
            (r, c): ImageCells([(r, c)])
            for r in range(grid.rows)
            for c in range(grid.cols)
            if int(grid.positions[r, c]) >= 0
        }
        with_cells = self.cell_pairs is None or index < self.cell_pairs
        out = {}
        for site in self.sites:
            for head in self.heads if site == "z" else [-1]:
                for layer in self.layers:
                    for group, selector in groups.items():
                        out[(site, layer, group, -1, -1, head)] = selector
                for layer in self.cell_layers if with_cells else ():
                    for (r, c), selector in cells.items():
                        out[(site, layer, "cell", r, c, head)] = selector
        return base, source, out


def _condition_plan(vlm, site_list, layers, heads, cell_layers, cell_pairs, positions) -> _ConditionPlan:
    return _ConditionPlan(
        site_list,
        resolve_layers(layers, vlm.n_layers),
        _head_list(vlm, heads) if "z" in site_list else [],
        _cell_layers(vlm, cell_layers),
        cell_pairs,
        positions,
    )


def first_pair_plan(
    vlm,
    pairs: Any,
    *,
    batch: int = 16,
    sites: Any = ("resid_pre",),
    positions: Any = GROUPS,
    layers: Any = "all",
    cell_layers: Any = (),
    cell_pairs: int | None = None,
    heads: Any = "all",
    method: str = "exact",
    steps: int = 1,
):
    """What the first of ``pairs`` will hold and run in :func:`patching_sweep` (``method="exact"``)
    or :func:`interp.analysis.attribution.attribution_sweep` (``"atp"``, ``"atp*"``, ``"ig"``) with
    the same options (:func:`interp.planner.plan_pair`, :func:`interp.planner.plan_attribution`);
    no weights needed (a config-only load will do).

    Returns:
        The :class:`interp.planner.SamplePlan` of one pair.
    """
    from ..planner import plan_attribution, plan_pair

    site_list = _sites(sites)
    plan = _condition_plan(vlm, site_list, layers, heads, cell_layers, cell_pairs, positions)
    base, _, conditions = plan.conditions(vlm, as_pairs(pairs)[0], 0)
    per_layer: dict[int, int] = {}
    for key in conditions:
        per_layer[key[1]] = per_layer.get(key[1], 0) + 1
    if method != "exact":
        return plan_attribution(
            vlm.adapter,
            vlm.config,
            vlm.dtype,
            base,
            per_layer,
            method=method,
            steps=steps,
            attn_implementation=vlm.attn_implementation,
        )
    return plan_pair(
        vlm.adapter, vlm.config, vlm.dtype, base, per_layer, batch=batch, attn_implementation=vlm.attn_implementation
    )


def section_pairs(samples: Any, n_pairs: int, changes: Sequence[str], seed: int) -> list[PatchPair]:
    """The pairs :func:`patching_section` patches: ``n_pairs`` counterfactuals of a dataset that
    offers them (the ``changes`` taking turns), or the first ``n_pairs`` of ready pairs."""
    from ..data.capabilities import OffersCounterfactuals

    if isinstance(samples, OffersCounterfactuals):
        return as_pairs(samples.counterfactual_pairs(n_pairs, changes, seed=seed))
    return as_pairs(samples)[:n_pairs]


def _patch_pair(vlm, pair: PatchPair, planned: tuple, *, fast: bool, batch: int, remote) -> list[dict]:
    """One pair's rows: every condition patched, scored by the answers' logit difference."""
    base, source, conditions = planned
    if fast:
        clean, corrupt, logits = _fast_pair(vlm, base, source, conditions, batch)
    else:
        clean, corrupt, logits = _session_pair(vlm, base, source, conditions, remote)
    a_source = _first_token(vlm, source, pair.source.answer) if pair.source.answer else int(clean.argmax())
    a_base = _first_token(vlm, base, pair.base.answer) if pair.base.answer else int(corrupt.argmax())

    common = pair_columns(pair, clean, corrupt, a_source, a_base)
    clean_ld, corrupt_ld = common["clean_logit_diff"], common["corrupt_logit_diff"]
    denominator = clean_ld - corrupt_ld
    rows = []
    for key, row in logits.items():
        value = float(row[a_source] - row[a_base])
        effect = (value - corrupt_ld) / denominator if a_source != a_base and abs(denominator) > 1e-6 else float("nan")
        rows.append(condition_row(common, key, value, effect, float(row[a_source] - corrupt[a_source])))
    return rows


def pair_columns(pair: PatchPair, clean, corrupt, a_source: int, a_base: int) -> dict:
    """The columns every row of a pair shares: its id and change, the logit difference
    ``logit(a_source) - logit(a_base)`` of the source (``clean``) and base (``corrupt``) runs'
    last-position logits, whether each run's top token is its answer, and whether the answers
    share their first token."""
    return {
        "pair": pair.id,
        "change": pair.change,
        "clean_logit_diff": float(clean[a_source] - clean[a_base]),
        "corrupt_logit_diff": float(corrupt[a_source] - corrupt[a_base]),
        "clean_correct": int(clean.argmax()) == a_source,
        "corrupt_correct": int(corrupt.argmax()) == a_base,
        "same_first_token": a_source == a_base,
    }


def condition_row(common: dict, key: tuple, logit_diff: float, effect: float, answer_logit_change: float) -> dict:
    """One sweep row: the pair's columns, the condition ``(site, layer, group, row, col, head)``
    and its patched logit difference, normalised effect and answer-logit change."""
    site, layer, group, r, c, head = key
    return {
        **common,
        "site": site,
        "head": head,
        "layer": layer,
        "group": group,
        "row": r,
        "col": c,
        "logit_diff": logit_diff,
        "effect": effect,
        "answer_logit_change": answer_logit_change,
    }


def _head_list(vlm, heads) -> list[int]:
    n_heads = int(vlm.adapter.text_config(vlm.config).num_attention_heads)
    if isinstance(heads, str):
        if heads != "all":
            raise InterpError(f"heads must be 'all' or a list of head indices, got {heads!r}")
        return list(range(n_heads))
    head_list = [heads] if isinstance(heads, int) else list(heads)
    bad = [h for h in head_list if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h < n_heads]
    if bad or not head_list:
        raise InterpError(f"head {bad[0] if bad else '(none)'} is not one of the model's heads 0..{n_heads - 1}")
    return list(dict.fromkeys(head_list))


def _fast_pair(vlm, base, source, conditions: dict, batch: int):
    """Captured-prefix patching: ``(clean logits, corrupt logits, {condition: logits})``.

    The source and the base are each captured once. The source's values at ``resid_pre``
    are its captured layer inputs; at other sites its capture records them (one
    :class:`RecordSource`). Each condition restarts the base at its layer with the patch."""
    from ..engine.clean_pass import capture
    from ..engine.restarts import continue_from
    from ..engine.row_suffix import first_changed_row
    from ..engine.unembedding import unembed

    needed = sorted({(key[1], key[0]) for key in conditions if key[0] != "resid_pre"})
    src = capture(vlm, source, torch.tensor([source.seq_len - 1]), [RecordSource(needed)] if needed else [])
    # the base keeps its keys and values: a patch changes no row before its first position, so
    # each restart recomputes only the rows from its batch's first patched position on
    cor = capture(vlm, base, torch.tensor([base.seq_len - 1]), keep_kv=True)
    values = dict(src.records)
    for layer in sorted({key[1] for key in conditions if key[0] == "resid_pre"}):
        values[PatchActivations.source_key(layer, "resid_pre")] = src.layer_input(layer)
    out = {}
    by_layer: dict[int, list] = {}
    for key in conditions:  # one batch per layer (splitting it by first row costs more calls than rows saved)
        by_layer.setdefault(key[1], []).append((key, _patch_for(vlm, key, conditions[key], source, values, base)))
    for layer, members in sorted(by_layer.items()):
        for i in range(0, len(members), batch):
            chunk = members[i : i + batch]
            variants = [[patch] for _, patch in chunk]
            hidden_out, _ = continue_from(
                vlm, cor, layer, variants, first_row=first_changed_row(vlm, cor, layer, variants)
            )
            for (key, _), row in zip(chunk, unembed(vlm, hidden_out)):
                out[key] = row[0].float().cpu()
    return src.logits[0].cpu(), cor.logits[0].cpu(), out


def _patch_for(vlm, key, selector, source, values, base) -> PatchActivations:
    return PatchActivations(
        layers=key[1], site=key[0], positions=selector, source=source, source_values=values, heads=_heads(key)
    ).bind(vlm.n_layers, base)


def _heads(key) -> list[int] | None:
    """A condition key's patched heads (site ``z``: one head; other sites: None, the whole value)."""
    return None if key[5] < 0 else [key[5]]


def _session_pair(vlm, base, source, conditions: dict, remote):
    """One nnsight session per pair: the source, the unpatched base and every condition."""
    keys = list(conditions)
    runs = patch_session(
        vlm,
        base,
        source,
        [[]] + [[PatchActivations(layers=k[1], site=k[0], positions=conditions[k], heads=_heads(k))] for k in keys],
        remote=remote,
    )
    corrupt = runs.runs[0].logits[0].float()
    out = {key: run.logits[0].float() for key, run in zip(keys, runs.runs[1:])}
    return runs.source.logits[0].float(), corrupt, out


# -- summaries ---------------------------------------------------------------------------


def patching_effects(frame: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (change, site[, head], layer, group): the mean over pairs with a bootstrap CI of the
    normalised ``effect`` (pairs whose answers differ) or, for controls (same answer), of
    the raw ``answer_logit_change``; column ``metric`` says which."""
    groups = frame[frame.group != "cell"]
    if groups.empty:
        raise InterpError("the sweep has no position-group rows")
    parts = []
    for same, metric in ((False, "effect"), (True, "answer_logit_change")):
        part = groups[groups.same_first_token == same].dropna(subset=[metric])
        if part.empty:
            continue
        by = (
            ("change", "site", "head", "layer", "group")
            if "head" in part.columns
            else ("change", "site", "layer", "group")
        )
        ci = per_layer_ci(part, metric, by=by, n_boot=n_boot, seed=seed)
        ci["metric"] = metric
        parts.append(ci)
    return pd.concat(parts, ignore_index=True)


def cell_effect_grid(
    frame: pd.DataFrame, pair: str, layer: int, *, site: str = "resid_pre", value: str = "effect"
) -> np.ndarray:
    """One pair's per-cell ``value`` at ``layer`` on its image grid (NaN where not patched)."""
    cells = frame[(frame.pair == pair) & (frame.layer == layer) & (frame.site == site) & (frame.group == "cell")]
    if cells.empty:
        raise InterpError(f"no per-cell rows for pair {pair!r} at layer {layer} ({site}); sweep with cell_layers")
    grid = np.full((int(cells.row.max()) + 1, int(cells.col.max()) + 1), np.nan)
    grid[cells.row.values, cells.col.values] = cells[value].values
    return grid


def handover(effects: pd.DataFrame, *, site: str = "resid_pre", threshold: float = 0.5) -> dict:
    """Where the changed object's information leaves its cells, per change (answer-changing
    pairs): ``cells_until``, the last layer where patching the changed cells restores at
    least ``threshold`` of the logit difference; ``next_layer``, the next layer swept, and
    the mean effect of every group there (``after``: where the information went);
    ``last_from``, the first layer where the last token alone restores ``threshold``."""
    out = {}
    rows = effects[(effects.metric == "effect") & (effects.site == site)]
    for change, part in rows.groupby("change"):
        cells = part[part.group == "changed"].sort_values("layer")
        last = part[part.group == "last"].sort_values("layer")
        until = cells[cells["mean"] >= threshold].layer.max() if not cells.empty else None
        until = None if until is None or pd.isna(until) else int(until)
        later = sorted(l for l in part.layer.unique() if until is not None and l > until)
        nxt = int(later[0]) if later else None
        after = (
            {} if nxt is None else {g: float(v) for g, v in part[part.layer == nxt].set_index("group")["mean"].items()}
        )
        last_from = last[last["mean"] >= threshold].layer.min() if not last.empty else None
        out[change] = {
            "cells_until": until,
            "next_layer": nxt,
            "after": after,
            "last_from": None if last_from is None or pd.isna(last_from) else int(last_from),
            "threshold": threshold,
        }
    return out


# -- the report section ------------------------------------------------------------------


def _records(frame: pd.DataFrame) -> list[dict]:
    import json

    return json.loads(frame.to_json(orient="records"))


def _ci(entry) -> str:
    return f"{entry['mean']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def default_cell_layers(n_layers: int, count: int = 4) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, count)})


def patching_section(
    vlm,
    samples: Any,
    out_dir=None,
    *,
    n_pairs: int = 60,
    of_pairs: int | None = None,
    changes: Sequence[str] = REPORT_CHANGES,
    cell_layers: Any = None,
    cell_pairs: int | None = 2,
    positions: Sequence[str] = REPORT_GROUPS,
    layers: Any = "all",
    mode: str = "auto",
    n_boot: int = 2000,
    seed: int = 0,
    remote: bool | str | None = None,
    progress: bool = True,
    sweep: pd.DataFrame | None = None,
    resume: str | Path | None = None,
    sites: Sequence[str] = ("resid_pre",),
    heads: Any = "all",
) -> tuple[dict, list[str]]:
    """Counterfactual patching for a report: ``(dict for report.json, markdown lines)``.

    ``samples``: a :class:`~interp.data.synthetic.SyntheticVQA` (``n_pairs`` counterfactuals,
    the ``changes`` taking turns) or ready pairs (Counterfactuals, PatchPairs, tuples).
    Per-cell maps are computed for the first ``cell_pairs`` pairs (the figure shows one).
    ``of_pairs``: the run's pair count when these ``n_pairs`` are its first ones, patched exactly
    to validate an estimate of them all (the report says so).
    ``sweep``: a finished :func:`patching_sweep` of these pairs (e.g. read back from its
    CSV) to report instead of running one.
    Writes ``patching_sweep.csv`` and the figures ``patching_heatmap``, ``patching_curves_<change>``
    and ``patching_cells`` into ``out_dir`` when given. The summary reads the first of
    ``sites`` that patches whole activations; with site ``z`` among them, each head is
    patched alone and ``patching_heads_<change>`` maps layer x head at the last token.
    """
    from .. import plotting  # noqa: F401 - the package's figure style
    from ..inputs import load_image
    from ..plotting import patching as figures

    pairs = section_pairs(samples, n_pairs, changes, seed)
    cell_layers = default_cell_layers(vlm.n_layers) if cell_layers is None else list(cell_layers)
    if sweep is None:
        sweep = patching_sweep(
            vlm,
            pairs,
            positions=positions,
            layers=layers,
            cell_layers=cell_layers,
            cell_pairs=cell_pairs,
            mode=mode,
            remote=remote,
            progress=progress,
            resume=resume,
            sites=sites,
            heads=heads,
        )
    else:
        cell_layers = sorted(int(l) for l in sweep[sweep.group == "cell"].layer.unique()) or cell_layers
        sweep.attrs.setdefault("metric", METRIC)
    all_effects = patching_effects(sweep, n_boot=n_boot, seed=seed)
    site_list = list(dict.fromkeys(sweep.site))
    main = next((s for s in site_list if s != "z"), None)
    effects = all_effects[all_effects.site == main] if main else all_effects.iloc[:0]
    head_effects = all_effects[all_effects.site == "z"]
    found = handover(effects, site=main) if main else {}
    per_pair = sweep.groupby("pair").first()
    both_right = float((per_pair.clean_correct & per_pair.corrupt_correct).mean())
    layer0 = effects[(effects.layer == 0) & (effects.group == "changed")]
    control = effects[effects.metric == "answer_logit_change"]
    answer_moves = sweep[(~sweep.same_first_token) & (sweep.group != "cell")]
    reference_move = (
        float(
            (answer_moves.clean_logit_diff - answer_moves.corrupt_logit_diff)
            .abs()
            .groupby(answer_moves.pair)
            .first()
            .mean()
        )
        if not answer_moves.empty
        else float("nan")
    )
    example = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sweep.to_csv(out / FILES.patching_sweep, index=False)
        if main:
            figures.patching_heatmap(
                effects, site=main, out_dir=out, title=f"{vlm.name}: source activations patched in at one layer"
            )
        for change in dict.fromkeys(effects.change):
            figures.patching_curves(effects, change=change, site=main, out_dir=out, name=f"patching_curves_{change}")
        for change in dict.fromkeys(head_effects.change):
            figures.patching_head_heatmap(head_effects, change=change, out_dir=out, name=f"patching_heads_{change}")
        mapped = set(sweep[sweep.group == "cell"].pair)
        candidates = [
            p
            for p in pairs
            if p.id in mapped
            and p.changed_boxes
            and p.change not in ("distractor",)
            and bool(per_pair.loc[p.id, "clean_correct"])
            and bool(per_pair.loc[p.id, "corrupt_correct"])
        ]
        pick = candidates[0] if candidates else next((p for p in pairs if p.id in mapped and p.changed_boxes), None)
        if pick is not None and cell_layers and main:
            grids = {layer: cell_effect_grid(sweep, pick.id, layer, site=main) for layer in cell_layers}
            shape = next(iter(grids.values())).shape
            from ..data.synthetic import boxes_mask

            image = load_image(pick.base.image)
            changed = boxes_mask(pick.changed_boxes, image.size, *shape, min_fraction=1e-6).numpy()
            figures.patching_cell_maps(
                image,
                grids,
                changed=changed,
                out_dir=out,
                question=f"{pick.source.question} {pick.source.answer} -> {pick.base.answer} "
                f"({pick.description}); effect of patching one cell",
            )
            example = {"pair": pick.id, "description": pick.description, "cell_layers": cell_layers}
    report = {
        "n_pairs": len(pairs),
        "changes": {c: int(n) for c, n in per_pair.change.value_counts().items()},
        "mode": sweep.attrs.get("mode"),
        "metric": sweep.attrs.get("metric"),
        "sites": site_list,
        "summary_site": main,
        "both_answers_top_token": both_right,
        "effects": _records(effects),
        "handover": found,
        "head_effects": _records(head_effects),
        "top_heads": top_heads(head_effects),
        "layer0_changed_effect": _records(layer0),
        "control_answer_logit_change": _records(control),
        "mean_abs_clean_minus_corrupt_logit_diff": reference_move,
        "cell_layers": cell_layers,
        "example": example,
    }
    if of_pairs is not None and of_pairs > len(pairs):
        report["validation_of"] = of_pairs
    return report, patching_markdown(report)


def top_heads(head_effects: pd.DataFrame, *, group: str = "last", count: int = 5) -> list[dict]:
    """The ``count`` (layer, head) pairs whose patching at ``group`` restores most of the
    logit difference (answer-changing pairs), per change, with their CIs."""
    rows = head_effects[(head_effects.metric == "effect") & (head_effects.group == group)]
    out = []
    for change, part in rows.groupby("change"):
        for _, entry in part.sort_values("mean", ascending=False).head(count).iterrows():
            out.append(
                {
                    "change": change,
                    "group": group,
                    "layer": int(entry.layer),
                    "head": int(entry["head"]),
                    "mean": float(entry["mean"]),
                    "low": float(entry.low),
                    "high": float(entry.high),
                    "n": int(entry.n),
                }
            )
    return out


def patching_markdown(report: dict) -> list[str]:
    """The report section's markdown lines."""
    lines = [
        "## Counterfactual activation patching",
        "",
        f"{report['n_pairs']} pairs ("
        + ", ".join(f"{c}: {n}" for c, n in report["changes"].items())
        + "); the source (original scene) is patched into the base (changed scene) at one layer "
        f"({report.get('summary_site') or ('z, one head at a time' if report.get('sites') == ['z'] else 'resid_pre')}), "
        f"one position group at a time; metric: {report['metric']}; "
        "effect = (patched - base) / "
        "(source - base). Top token equals the expected answer in both runs for "
        f"{report['both_answers_top_token']:.0%} of the pairs.",
        "",
    ]
    if report.get("validation_of"):
        lines += [
            f"These are the first {report['n_pairs']} of the run's {report['validation_of']} pairs, patched exactly "
            "to validate the attribution estimate, which covers all of them (next section).",
            "",
        ]
    for entry in report["layer0_changed_effect"]:
        if entry["metric"] != "effect":
            continue
        lines.append(
            f"- **{entry['change']}**, changed cells at layer 0: effect {_ci(entry)} (95% bootstrap CI over pairs)."
        )
    for change, found in report["handover"].items():
        cells, nxt = found["cells_until"], found.get("next_layer")
        text = (
            f"- **{change}**: patching the changed cells restores >= {found['threshold']:.0%} of the logit "
            f"difference up to layer {cells if cells is not None else '- (never)'}"
        )
        if nxt is not None:
            text += f"; at layer {nxt}: " + ", ".join(
                f"{GROUP_LABELS.get(g, g)} {v:.2f}" for g, v in found["after"].items()
            )
        last = found["last_from"]
        text += f"; the last token alone restores >= {found['threshold']:.0%} " + (
            f"from layer {last}." if last is not None else "at no layer."
        )
        lines.append(text)
    control = report["control_answer_logit_change"]
    if control:
        worst = max(control, key=lambda e: abs(e["mean"]))
        lines.append(
            f"- **control** (a distractor changed, answer unchanged): the answer token's logit moves by at most "
            f"{worst['mean']:+.3f} [{worst['low']:+.3f}, {worst['high']:+.3f}] on average (layer {worst['layer']}, "
            f"{worst['group']}), against a mean |source - base| logit difference of "
            f"{report['mean_abs_clean_minus_corrupt_logit_diff']:.2f} in the answer-changing pairs."
        )
    table = pd.DataFrame(report["effects"])
    if not table.empty:
        lines += [
            "",
            "| change | group | " + " | ".join(f"layer {l}" for l in _table_layers(report)) + " |",
            "|---|---|" + "---|" * len(_table_layers(report)),
        ]
        mixed = table.groupby("change").metric.nunique() > 1  # changes holding both kinds of pair
        for (change, group, metric), part in table.groupby(["change", "group", "metric"], sort=False):
            values = part.set_index("layer")
            label = f"{change} ({metric})" if mixed[change] else change
            lines.append(
                f"| {label} | {group} | "
                + " | ".join(f"{values.loc[l, 'mean']:.2f}" if l in values.index else "" for l in _table_layers(report))
                + " |"
            )
    heads = report.get("top_heads") or []
    if heads:
        lines += [
            "",
            "### Single attention heads (blocks.{l}.attn.hook_z at the last token)",
            "",
            "Each head's output (before the output projection) at the last position patched alone from the "
            "source; the heads that restore most of the logit difference (95% bootstrap CI over pairs):",
            "",
            "| change | layer | head | effect |",
            "|---|---|---|---|",
        ]
        lines += [f"| {h['change']} | {h['layer']} | {h['head']} | {_ci(h)} |" for h in heads]
        lines += ["", "Figures: patching_heads_<change> (layer x head).", ""]
    if report.get("summary_site"):
        lines += ["", "Figures: patching_heatmap, patching_curves_<change>, patching_cells (PNG and PDF).", ""]
    return lines


def _table_layers(report: dict) -> list[int]:
    layers = sorted({e["layer"] for e in report["effects"]})
    step = max(1, len(layers) // 8)
    return layers[::step] + ([layers[-1]] if layers[::step][-1] != layers[-1] else [])
