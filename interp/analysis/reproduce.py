"""``interp reproduce``: every analysis of the paper on one model and dataset.

The pipeline runs ONE clean pass per sample (:mod:`interp.analysis.clean`) and derives
from it the masking sweep's baseline and restart prefix, the attention maps and the
logit lens (phase 1). The contrastive method needs the review layer, which the sweep
over all samples decides, so it runs in phase 2 from the same clean passes — kept in
memory up to ``keep_prefix_mb``; a sample beyond that budget re-runs its clean pass
(counted). Only v2's crop is an extra forward. ``report.json`` records the passes of
each kind (``counts``).

The tables go to :mod:`interp.analysis.report`, which computes the statistics, draws
the figures and writes ``report.json`` / ``report.md``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..engine.prefix import supports_prefix_reuse
from ..interventions.base import resolve_layers
from ..options import PAPER_MASK_SCALE
from .attention import attention_rows, attention_table
from .clean import sample_pass
from .contrastive import ContrastiveSetup, contrastive_frame, contrastive_rows
from .items import as_items
from .logit_lens import lens_frame, lens_rows
from .stats import bootstrap_mean_ci, detect_fusion, layer_effects
from .sweep import MODES, SCORINGS, VARIANTS, check_options, sweep_frame, sweep_rows, use_fast


@dataclass(frozen=True)
class ReproduceConfig:
    variants: tuple[str, ...] = VARIANTS
    window: int = 3
    scale: float = PAPER_MASK_SCALE
    scoring: str = SCORINGS[0]
    mode: str = MODES[0]
    rhos: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    primary: tuple[str, float, str] = ("all", 0.2, "jsd")
    heatmap_layers: int = 6
    n_boot: int = 2000
    seed: int = 0
    remote: Any = None
    progress: bool = True
    #: memory for clean prefixes kept between the two phases; beyond it, phase 2 re-runs them
    keep_prefix_mb: float = 2048.0


@dataclass
class Tables:
    """What the pipeline measured: tidy per-sample tables, timings, pass counts."""

    items: list
    sweep: pd.DataFrame
    maps: pd.DataFrame
    lens: pd.DataFrame
    contrastive: pd.DataFrame
    effects: pd.DataFrame
    baseline: tuple
    findings: dict
    review: int
    review_source: str
    timings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)


def choose_review_layer(effects: pd.DataFrame, finding, n_layers: int) -> tuple[int, str]:
    """The detected review layer, or (stated as a fallback) the deeper-half layer where
    single-layer masking lowers accuracy most — saying whether that drop is significant."""
    if finding.review_layer is not None:
        return finding.review_layer, "detected"
    rows = effects[(effects.variant == "single") & (effects.layer >= max(2, n_layers // 2))]
    if rows.empty:
        return n_layers - 1, "fallback: no review layer detected and no deeper-half layer measured; the last layer"
    row = rows.sort_values(["diff", "layer"]).iloc[0]
    significant = int(row.layer) in finding.significant_layers
    return int(row.layer), ("fallback: no review layer detected; the deeper-half layer with the largest masking drop "
                            f"({'significant' if significant else 'not significant'} family-wise)")


def run_analyses(vlm, items: list, config: ReproduceConfig) -> Tables:
    """Phase 1 (clean pass, sweep, attention, lens) and phase 2 (contrastive) over ``items``."""
    variants = check_options(config.variants, config.scoring, config.mode, config.window)
    remote = config.remote
    restartable = config.mode != "naive" and supports_prefix_reuse(vlm) is None and remote in (None, False)
    fast_sweep = use_fast(vlm, config.mode, config.scoring, remote)
    layers = resolve_layers("all", vlm.n_layers)
    before = Counter(vlm.counts)
    timings: Counter = Counter()
    budget = config.keep_prefix_mb * 2**20
    kept, held = [], 0
    sweep, maps, lens = [], [], []

    for item in tqdm(items, desc=f"clean pass, sweep ({'fast' if fast_sweep else 'naive'}), attention, lens",
                     unit="sample", disable=not config.progress):
        t = time.time()
        sp = sample_pass(vlm, item, restartable=restartable, remote=remote)
        timings["clean_pass"] += time.time() - t
        t = time.time()
        sweep.extend(sweep_rows(vlm, sp, variants, layers, window=config.window, scale=config.scale,
                                scoring=config.scoring, fast=fast_sweep, remote=remote))
        timings["masking_sweep"] += time.time() - t
        t = time.time()
        maps.append(attention_rows(sp))
        timings["attention_maps"] += time.time() - t
        t = time.time()
        lens.extend(lens_rows(vlm, sp))
        timings["early_output"] += time.time() - t
        sp.clean.records = {k: v for k, v in sp.clean.records.items() if k[0] == "attention"}  # lens done
        size = sp.clean.prefix_bytes()
        if held + size > budget:
            sp.clean.release_prefix()
        else:
            held += size
        kept.append(sp)

    sweep_table = sweep_frame(sweep, vlm, scoring=config.scoring, fast=fast_sweep, scale=config.scale,
                              window=config.window)
    effects = layer_effects(sweep_table, n_boot=config.n_boot, seed=config.seed)
    base_values = sweep_table[sweep_table.variant == "baseline"].correct.values
    baseline = bootstrap_mean_ci(base_values, n_boot=config.n_boot, seed=config.seed)
    findings = {v: detect_fusion(effects, variant=v, baseline=baseline[0]) for v in variants}
    review, review_source = choose_review_layer(effects, findings.get("single", next(iter(findings.values()))),
                                                vlm.n_layers)

    fusion_layers = findings["single"].fusion_layers if "single" in findings else []
    setup = ContrastiveSetup.build(vlm, review, fusion_layers, config.rhos, ("jsd", "hellinger"), config.primary,
                                   config.mode, remote)
    contrastive = []
    for sp in tqdm(kept, desc="contrastive attention", unit="sample", disable=not config.progress):
        t = time.time()
        if setup.fast and not sp.clean.restartable:
            sp = sample_pass(vlm, sp.item, restartable=True, remote=remote, residual_layers=None)
        contrastive.extend(contrastive_rows(vlm, sp, setup, remote=remote))
        sp.clean.release_prefix()
        timings["contrastive"] += time.time() - t

    counts = {k: v - before.get(k, 0) for k, v in vlm.counts.items() if v - before.get(k, 0)}
    counts["clean_forwards_per_sample"] = counts.get("clean_forward", 0) / max(1, len(items))
    counts["crop_forwards_per_sample"] = counts.get("crop_forward", 0) / max(1, len(items))
    return Tables(items, sweep_table, attention_table(maps, vlm), lens_frame(lens, vlm),
                  contrastive_frame(contrastive, vlm, setup), effects, baseline, findings, review, review_source,
                  dict(timings), counts)


def reproduce(vlm, samples: Any, out_dir: str | Path, *, dataset: str = "", limit: int | None = None,
              config: ReproduceConfig | None = None) -> dict:
    """Run every analysis on ``samples`` and write figures, ``report.json`` and ``report.md``
    into ``out_dir``. Returns the report dict."""
    from .report import write_report

    config = config or ReproduceConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = as_items(samples, limit)
    tables = run_analyses(vlm, items, config)
    return write_report(vlm, tables, config, out, dataset=dataset)
