"""Which localisation method finds where the image is read: scored against planted layers.

On a model whose text reads the image only at known layers ``S`` (a planted organism,
:mod:`interp.models.organism.planted`), every method that claims to localise fusion reports a
set of layers; each is scored against ``S`` by precision, recall and F1, with percentile
bootstrap CIs over questions (each resample re-runs the method's own rule on the resampled
questions), and its cost in layer forwards.

Methods (:data:`METHODS`, each a rule over per-question rows computed once):

* ``masking_single`` / ``masking_window`` / ``masking_cumulative``: the paper's fusion detector
  (:func:`interp.analysis.stats.detect_fusion`: the first block of layers where scaling the image
  tokens lowers accuracy significantly, family-wise) on each masking variant;
* ``review``: the paper's review layer (a later significant block after a recovery), if any;
* ``knockout_{last,question,text}`` (one layer) and ``knockout_{...}_window`` (``window``
  consecutive layers, the reported set the union of the significant windows): attention from the
  last token, the question, or every text position after the image to the image tokens blocked,
  significant drops by the same family-wise test;
* ``attention_mass``: the layers where the mean attention mass from text queries (after the
  image) to the image tokens is at least ``mass_share`` of the largest layer's;
* ``attribution_{last,question,text}``: attention-edge attribution
  (:func:`interp.analysis.edge_attribution.edge_attribution`: every layer's knockout of those edges
  estimated from one forward and one backward), the layers whose mean estimated drop of the
  answer's log-probability is at least ``mass_share`` of the largest drop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import InterpError
from .stats import detect_fusion, layer_effects

#: the share of the largest layer's text->image attention mass a layer needs to be reported
MASS_SHARE = 0.1
#: knockout windows (consecutive layers) of the windowed knockouts and the masking window
WINDOW = 3
#: the knockouts the benchmark also runs one layer at a time
KNOCKOUTS = ("knockout_last", "knockout_question", "knockout_text")


def layer_scores(reported: Sequence[int], truth: Sequence[int]) -> dict[str, float]:
    """Precision, recall and F1 of a reported layer set against the true one (an empty report:
    precision 0 by convention, so that reporting nothing never scores)."""
    found, true = set(reported), set(truth)
    hits = len(found & true)
    precision = hits / len(found) if found else 0.0
    recall = hits / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


@dataclass(frozen=True)
class Method:
    """A localisation method: the per-question rows it reads and its rule from rows to layers."""

    name: str
    table: str  # which table of per-question rows it reads ("sweep", "sweep_text", "sweep1", "mass")
    rule: Callable[[pd.DataFrame, int], list[int]]


def _fusion(variant: str) -> Callable[[pd.DataFrame, int], list[int]]:
    def rule(rows: pd.DataFrame, n_boot: int) -> list[int]:
        effects = layer_effects(rows[rows.variant.isin(["baseline", variant])], n_boot=n_boot)
        return list(detect_fusion(effects, variant=variant).fusion_layers)

    return rule


def _review(rows: pd.DataFrame, n_boot: int) -> list[int]:
    effects = layer_effects(rows[rows.variant.isin(["baseline", "single"])], n_boot=n_boot)
    review = detect_fusion(effects, variant="single").review_layer
    return [] if review is None else [int(review)]


def _significant(variant: str, span: int) -> Callable[[pd.DataFrame, int], list[int]]:
    """Layers of the windows (``span`` layers from each start) whose knockout lowers accuracy significantly."""

    def rule(rows: pd.DataFrame, n_boot: int) -> list[int]:
        effects = layer_effects(rows[rows.variant.isin(["baseline", variant])], n_boot=n_boot)
        n_layers = int(effects.layer.max()) + 1
        starts = detect_fusion(effects, variant=variant).significant_layers
        return sorted({layer for start in starts for layer in range(start, min(start + span, n_layers))})

    return rule


def _mass(rows: pd.DataFrame, n_boot: int) -> list[int]:
    per_layer = rows.groupby("layer")["mass"].mean()
    return [int(layer) for layer, value in per_layer.items() if value >= MASS_SHARE * per_layer.max()]


def _attributed(queries: str) -> Callable[[pd.DataFrame, int], list[int]]:
    """Layers whose estimated knockout of ``queries -> image`` lowers the answer most (see the module docstring)."""

    def rule(rows: pd.DataFrame, n_boot: int) -> list[int]:
        drop = -rows[rows.queries == queries].groupby("layer")["estimate"].mean()
        if drop.empty or drop.max() <= 0:
            return []
        return [int(layer) for layer, value in drop.items() if value >= MASS_SHARE * drop.max()]

    return rule


METHODS: tuple[Method, ...] = (
    Method("masking_single", "sweep", _fusion("single")),
    Method("masking_window", "sweep", _fusion("window")),
    Method("masking_cumulative", "sweep", _fusion("cumulative")),
    Method("review", "sweep", _review),
    Method("knockout_last", "sweep1", _significant("knockout_last", 1)),
    Method("knockout_question", "sweep1", _significant("knockout_question", 1)),
    Method("knockout_text", "sweep1", _significant("knockout_text", 1)),
    Method("knockout_last_window", "sweep", _significant("knockout_last", WINDOW)),
    Method("knockout_question_window", "sweep", _significant("knockout_question", WINDOW)),
    Method("knockout_text_window", "sweep_text", _significant("knockout_text", WINDOW)),
    Method("attention_mass", "mass", _mass),
    Method("attribution_last", "edges", _attributed("last")),
    Method("attribution_question", "edges", _attributed("question")),
    Method("attribution_text", "edges", _attributed("text")),
)


def attention_mass_rows(vlm, items: list, *, progress: bool = True) -> pd.DataFrame:
    """One row per (item, layer): the mean attention mass from the text queries after the image to the
    image tokens (heads averaged), recorded by :class:`interp.RecordAttention` (any attention kernel)."""
    from ..interventions import RecordAttention

    rows = []
    for item in tqdm(items, desc="text->image attention", unit="sample", disable=not progress):
        prepared = vlm.prepare(item.image, item.question)
        queries = list(range(int(prepared.image_positions.max()) + 1, prepared.seq_len))
        run = vlm.run(prepared, RecordAttention(layers="all", query=queries))
        for layer in range(vlm.n_layers):
            weights = run.record("attention", layer)[0].float()  # text queries x image keys, head mean
            rows.append({"item": item.id, "layer": layer, "mass": float(weights.sum(-1).mean())})
    return pd.DataFrame(rows)


#: what the methods need beyond the default masking sweep: table -> (sweep variants, window)
EXTRA_SWEEPS = {"sweep_text": (("knockout_text",), WINDOW), "sweep1": (KNOCKOUTS, 1)}


def item_tables(vlm, item) -> dict[str, list[dict]]:
    """One question's rows for the methods the default sweep does not cover: the all-text knockout
    over windows (``sweep_text``), the three knockouts one layer at a time (``sweep1``), the
    text->image attention mass (``mass``), the attention-edge attribution (``edges``)."""
    from .edge_attribution import edge_attribution
    from .sweep import masking_sweep

    out: dict[str, list[dict]] = {}
    for name, (variants, window) in EXTRA_SWEEPS.items():
        frame = masking_sweep(vlm, [item], variants=variants, window=window, progress=False)
        out[name] = json_rows(frame)
    out["mass"] = json_rows(attention_mass_rows(vlm, [item], progress=False))
    out["edges"] = json_rows(edge_attribution(vlm, [item], progress=False).rename(columns={"sample": "item"}))
    return out


def json_rows(frame: pd.DataFrame) -> list[dict]:
    """A frame's rows as plain JSON values (for the run store's row log)."""
    import json

    return json.loads(frame.to_json(orient="records"))


def method_cost(method: Method, n_layers: int) -> int:
    """Decoder-layer forwards one question costs a method on its own: one clean pass, then each of
    its conditions restarted from its layer (a masking or knockout sweep: every start layer, so
    ``n (n + 1) / 2`` layer forwards; the attention mass: the clean pass alone; the edge attribution:
    the clean pass and its backward, counted as three passes). Counted, not timed."""
    if method.table == "mass":
        return n_layers
    if method.table == "edges":  # one forward and one backward (about two forwards' work)
        return 3 * n_layers
    return n_layers + n_layers * (n_layers + 1) // 2


def score_methods(
    tables: dict[str, pd.DataFrame],
    truth: Sequence[int],
    n_layers: int,
    *,
    n_boot: int = 200,
    inner_boot: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per method whose rows are in ``tables``: the layers it reports on every question, its
    precision, recall and F1 against ``truth`` with percentile CIs over ``n_boot`` resamples of the
    questions (each re-running the method's rule; ``inner_boot``: the rule's own bootstrap), and
    its cost (:func:`method_cost`)."""
    rng = np.random.default_rng(seed)
    items = sorted(tables["mass"].item.unique())
    resamples = [rng.choice(len(items), size=len(items), replace=True) for _ in range(n_boot)]
    methods = [m for m in METHODS if m.table in tables and _has_rows(tables[m.table], m)]
    draws: dict[str, list[dict]] = {m.name: [] for m in methods}
    with tqdm(total=len(resamples) * len(methods), desc="scoring methods", unit="rule", disable=not progress) as bar:
        for table in dict.fromkeys(m.table for m in methods):  # each resample of a table built once
            readers = [m for m in methods if m.table == table]
            for picks in resamples:
                sample = _resample(tables[table], [items[i] for i in picks])
                for method in readers:
                    draws[method.name].append(layer_scores(method.rule(sample, inner_boot), truth))
                    bar.update(1)
    out = []
    for method in methods:
        reported = method.rule(tables[method.table], inner_boot)
        row: dict[str, Any] = {"method": method.name, "reported": reported, **layer_scores(reported, truth)}
        for metric in ("precision", "recall", "f1"):
            values = np.array([d[metric] for d in draws[method.name]])
            row[f"{metric}_low"], row[f"{metric}_high"] = (float(np.quantile(values, q)) for q in (0.025, 0.975))
        row["n"] = len(items)
        row["layer_forwards_per_question"] = method_cost(method, n_layers)
        out.append(row)
    return pd.DataFrame(out)


def _has_rows(rows: pd.DataFrame, method: Method) -> bool:
    """Whether ``rows`` hold what ``method`` reads (a run may have left a sweep variant out)."""
    if method.table in ("mass", "edges"):
        return not rows.empty
    variant = "single" if method.name == "review" else method.name.removeprefix("masking_").removesuffix("_window")
    return bool((rows.variant == variant).any())


def _resample(rows: pd.DataFrame, picks: list[str]) -> pd.DataFrame:
    """``rows`` of the resampled questions, each draw a new item id (so a question drawn twice counts twice)."""
    parts = []
    for index, item in enumerate(picks):
        part = rows[rows.item == item].copy()
        part["item"] = f"{item}#{index}"
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def check_truth(vlm) -> list[int]:
    """The planted layers ``S`` of ``vlm`` (from its config), or one error naming what to load."""
    from ..models.organism import PLANTED_VARIANTS, planted_layers_of

    layers = planted_layers_of(vlm.config)
    if layers is None:
        raise InterpError(
            f"{vlm.name} has no known reading layers (no planted_layers in its config): the localisation "
            f"benchmark needs a planted organism ({', '.join(PLANTED_VARIANTS)})"
        )
    if not layers or min(layers) < 0 or max(layers) >= vlm.n_layers:
        raise InterpError(f"{vlm.name}'s planted_layers {layers} lie outside its layers 0-{vlm.n_layers - 1}")
    return layers


def localisation_section(ctx) -> tuple[dict, list[str]]:
    """The benchmark as a ``reproduce`` section (:mod:`interp.analysis.sections`) on a planted
    organism: the phase-1 masking sweep's rows, plus each question's :func:`item_tables` through the
    run store (resumed question by question), scored by :func:`score_methods`. Writes
    ``localisation.csv`` and the ``localisation`` figure."""
    from ..outputs import logged_units, write_atomic
    from ..plotting.localisation import localisation_scores
    from .stats import SMALL_SAMPLE

    vlm, config = ctx.vlm, ctx.config
    truth = check_truth(vlm)
    settings = {
        "mass_share": MASS_SHARE,
        "window": WINDOW,
        "knockouts": list(KNOCKOUTS),
        "edges": ["last", "question", "text"],
    }
    logged = logged_units(
        ctx.run.section_log("localisation", settings),
        tqdm(ctx.items, desc="localisation methods", unit="sample", disable=not config.progress),
        lambda item: item.id,
        lambda item: [item_tables(vlm, item)],  # one record per question: its tables
    )
    parts: dict[str, list] = {name: [] for name in (*EXTRA_SWEEPS, "mass", "edges")}
    for record in logged:
        for name, part in record.items():
            parts[name].extend(part)
    tables = {name: pd.DataFrame(part) for name, part in parts.items()}
    sweep = ctx.tables.sweep
    if config.window != WINDOW:  # the windowed knockouts' reported spans assume WINDOW layers
        sweep = sweep[~sweep.variant.str.startswith("knockout_")]
    tables["sweep"] = sweep
    scores = score_methods(
        tables, truth, vlm.n_layers, n_boot=min(config.n_boot, 200), seed=config.seed, progress=config.progress
    )
    write_atomic(ctx.out / "localisation.csv", scores.to_csv(index=False))
    n = int(scores.n.iloc[0])
    localisation_scores(scores, truth=truth, title=f"{vlm.name} (n={n})", out_dir=ctx.out)
    report = {
        "planted_layers": truth,
        "n": n,
        "small_sample": n < SMALL_SAMPLE,
        "methods": json_rows(scores),
    }
    return report, localisation_markdown(report)


def benchmark_table(runs: dict[str, str]) -> pd.DataFrame:
    """Every method's scores on several organisms, from their runs' ``report.json``.

    Args:
        runs: organism name -> the directory of its ``interp faithfulness`` (or ``reproduce``) run.

    Returns:
        One row per (organism, method): ``planted_layers``, ``n``, ``reported``, precision, recall
        and F1 with their CIs, ``layer_forwards_per_question``.

    Raises:
        InterpError: a run without a localisation section.
    """
    import json
    from pathlib import Path

    from ..runfiles import FILES

    rows = []
    for organism, run in runs.items():
        path = Path(run) / FILES.report_json
        report = json.loads(path.read_text()) if path.is_file() else {}
        section = report.get("localisation")
        if not section:
            raise InterpError(f"{path} has no localisation section: run interp faithfulness on {organism} first")
        for method in section["methods"]:
            rows.append({"organism": organism, "planted_layers": section["planted_layers"], **method})
    return pd.DataFrame(rows)


def localisation_markdown(report: dict) -> list[str]:
    """The section's lines for ``report.md``."""
    small = " (a small sample: the CIs are rough)" if report["small_sample"] else ""
    lines = [
        "## Which method finds where the image is read",
        "",
        f"The model's text reads the image only at layers {report['planted_layers']} (planted, known by "
        f"construction). Each method's reported layers against them, {report['n']} questions{small}; "
        "95% bootstrap CIs over questions; cost in decoder-layer forwards per question.",
        "",
        "| method | reported layers | precision | recall | F1 | layer forwards |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["methods"]:
        lines.append(
            f"| {row['method']} | {row['reported']} | {row['precision']:.2f} "
            f"[{row['precision_low']:.2f}, {row['precision_high']:.2f}] | {row['recall']:.2f} "
            f"[{row['recall_low']:.2f}, {row['recall_high']:.2f}] | {row['f1']:.2f} "
            f"[{row['f1_low']:.2f}, {row['f1_high']:.2f}] | {row['layer_forwards_per_question']} |"
        )
    return lines + ["", "Table: localisation.csv; figure: localisation.png / .pdf.", ""]
