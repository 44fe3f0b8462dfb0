"""``interp reproduce``: every analysis of the paper on one model and dataset, with figures
and a report of every number they show (CIs, p-values, model, data, seed, versions)."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InterpError
from .attention import attention_maps, layer_distances, noise_mass, noise_summary, persistent_noise, relevant_mass, share_grid
from .contrastive import compare_to_baseline, contrastive_eval
from .items import Item, as_items
from .logit_lens import early_output
from .stats import bootstrap_mean_ci, detect_fusion, layer_effects, per_layer_ci
from .sweep import VARIANTS, masking_sweep


@dataclass
class ReproduceConfig:
    variants: tuple[str, ...] = VARIANTS
    window: int = 3
    scale: float = 1e-9
    scoring: str = "teacher"
    mode: str = "auto"
    rhos: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    primary: tuple[str, float, str] = ("all", 0.2, "jsd")
    heatmap_layers: int = 6
    n_boot: int = 2000
    seed: int = 0
    remote: Any = None
    progress: bool = True
    extra: dict = field(default_factory=dict)


def _versions() -> dict:
    import nnsight
    import torch
    import transformers

    from .. import __version__

    return {"interp": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "nnsight": getattr(nnsight, "__version__", "unknown"), "python": platform.python_version()}


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def choose_review_layer(effects: pd.DataFrame, finding, n_layers: int) -> tuple[int, str]:
    """The detected review layer, or (stated as a fallback) the deeper-half layer where
    single-layer masking lowers accuracy most."""
    if finding.review_layer is not None:
        return finding.review_layer, "detected"
    rows = effects[(effects.variant == "single") & (effects.layer >= max(2, n_layers // 2))]
    layer = int(rows.sort_values(["diff", "layer"]).iloc[0].layer) if not rows.empty else n_layers - 1
    return layer, "fallback: no review layer detected; the deeper-half layer with the largest (not significant) masking drop"


def reproduce(vlm, samples: Any, out_dir: str | Path, *, dataset: str = "", limit: int | None = None,
              config: ReproduceConfig = ReproduceConfig()) -> dict:
    """Run every analysis on ``samples`` and write figures, ``report.json`` and ``report.md``
    into ``out_dir``. Returns the report dict."""
    from .. import plotting

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = as_items(samples, limit)
    timings: dict[str, float] = {}
    common = dict(remote=config.remote, progress=config.progress)

    t = time.time()
    sweep = masking_sweep(vlm, items, variants=config.variants, window=config.window, scale=config.scale,
                          scoring=config.scoring, mode=config.mode, **common)
    timings["masking_sweep"] = time.time() - t
    sweep.to_csv(out / "masking_sweep.csv", index=False)
    effects = layer_effects(sweep, n_boot=config.n_boot, seed=config.seed)
    base_values = sweep[sweep.variant == "baseline"].correct.values
    baseline = bootstrap_mean_ci(base_values, n_boot=config.n_boot, seed=config.seed)
    findings = {v: detect_fusion(effects, variant=v, baseline=baseline[0]) for v in config.variants}
    review, review_source = choose_review_layer(effects, findings.get("single", next(iter(findings.values()))),
                                                vlm.n_layers)
    reference = review - 1

    t = time.time()
    maps = attention_maps(vlm, items, **common)
    timings["attention_maps"] = time.time() - t
    has_boxes = any(item.has_boxes for item in items)
    attention_report: dict = {"has_boxes": has_boxes}
    if has_boxes:
        mass = relevant_mass(maps)
        noise = persistent_noise(maps)
        nmass = noise_mass(maps, noise)
        relevant_ci = per_layer_ci(mass, "relevant_share", n_boot=config.n_boot, seed=config.seed)
        ratio_ci = per_layer_ci(mass, "ratio", n_boot=config.n_boot, seed=config.seed)
        noise_ci = per_layer_ci(nmass, "noise_share", n_boot=config.n_boot, seed=config.seed)
        area = float(mass.groupby("item").relevant_area.first().mean())
        attention_report.update({
            "relevant_share_per_layer": _records(relevant_ci), "relevant_ratio_per_layer": _records(ratio_ci),
            "relevant_area": area, "noise_share_per_layer": _records(noise_ci),
            "persistent_noise": noise_summary(maps, noise),
            "image_mass_per_layer": _records(per_layer_ci(mass, "image_mass", n_boot=config.n_boot, seed=config.seed)),
        })
        plotting.relevant_vs_noise(relevant_ci, noise_ci, area, out_dir=out)
    distances = layer_distances(maps, reference)
    distance_ci = {m: per_layer_ci(distances, m, n_boot=config.n_boot, seed=config.seed) for m in ("jsd", "hellinger")}
    plotting.layer_distance(distance_ci, reference, out_dir=out)

    t = time.time()
    lens = early_output(vlm, items, **common)
    timings["early_output"] = time.time() - t
    lens_ci = per_layer_ci(lens, "correct", n_boot=config.n_boot, seed=config.seed)
    plotting.early_output(lens_ci, final=baseline[0], out_dir=out)

    t = time.time()
    fusion_layers = findings["single"].fusion_layers if "single" in findings else []
    contrastive = contrastive_eval(vlm, items, review_layer=review, fusion_layers=fusion_layers, rhos=config.rhos,
                                   primary=config.primary, mode=config.mode, **common)
    timings["contrastive"] = time.time() - t
    contrastive.to_csv(out / "contrastive.csv", index=False)
    comparison = compare_to_baseline(contrastive, n_boot=config.n_boot, seed=config.seed)
    name, rho, distance = config.primary
    primary_rows = contrastive[(contrastive.method == "v1") & (contrastive.candidates == name)
                               & (contrastive.rho == rho) & (contrastive.distance == distance)]
    histogram = primary_rows.pre_layer.value_counts().rename_axis("layer").reset_index(name="count").sort_values("layer")
    rho_rows = comparison[(comparison.method == "v1") & (comparison.candidates == name) & (comparison.distance == distance)]

    plotting.masking_curve(effects[effects.variant.isin(config.variants)], baseline=baseline,
                           findings={v: f.to_dict() for v, f in findings.items()}, out_dir=out,
                           title=f"{vlm.name}: image tokens masked at one layer (n={len(items)})")
    plotting.accuracy_vs_rho(rho_rows.sort_values("rho"), out_dir=out)
    plotting.pre_layer_histogram(histogram, n_layers=vlm.n_layers, out_dir=out)
    example = _example(vlm, items, maps, out, review, reference, contrastive, config)
    _heatmaps(vlm, items, maps, out, config)

    report = {
        "model": vlm.name, "dataset": dataset, "n_samples": len(items), "seed": config.seed,
        "n_layers": vlm.n_layers, "versions": _versions(), "config": {
            "variants": list(config.variants), "window": config.window, "scale": config.scale,
            "scoring": sweep.attrs.get("scoring"), "sweep_mode": sweep.attrs.get("mode"), "rhos": list(config.rhos),
            "primary": list(config.primary), "n_boot": config.n_boot, "remote": bool(config.remote)},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "baseline_accuracy": {"mean": baseline[0], "low": baseline[1], "high": baseline[2]},
        "masking": {"per_layer": _records(effects), "findings": {v: f.to_dict() for v, f in findings.items()}},
        "review_layer": {"layer": review, "source": review_source, "reference_layer": reference},
        "attention": attention_report,
        "layer_distance": {"reference_layer": reference, **{m: _records(f) for m, f in distance_ci.items()}},
        "early_output": {"per_layer": _records(lens_ci)},
        "contrastive": {"comparison": _records(comparison), "pre_layer_histogram": _records(histogram),
                        "candidate_sets": contrastive.attrs.get("candidate_sets"), "mode": contrastive.attrs.get("mode"),
                        "example": example},
        "per_kind_baseline": _per_kind(sweep),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_markdown(report))
    return report


def _per_kind(sweep: pd.DataFrame) -> dict:
    base = sweep[sweep.variant == "baseline"]
    if not base.kind.astype(bool).any():
        return {}
    return {kind: float(group.correct.mean()) for kind, group in base.groupby("kind")}


def _pick_example(items: list[Item], contrastive: pd.DataFrame | None = None) -> Item:
    """A sample with boxes, preferring one the model answers correctly."""
    if contrastive is not None:
        right = set(contrastive[(contrastive.method == "baseline") & (contrastive.correct > 0)].item)
        for item in items:
            if item.id in right and item.has_boxes:
                return item
    return next((item for item in items if item.has_boxes), items[0])


def _heatmaps(vlm, items, maps, out, config) -> None:
    from .. import plotting
    from ..inputs import load_image

    item = _pick_example(items)
    n = vlm.n_layers
    layers = sorted({int(round(x)) for x in np.linspace(0, n - 1, config.heatmap_layers)})
    grids = {layer: share_grid(maps, item.id, layer) for layer in layers}
    shape = next(iter(grids.values())).shape
    relevant = item.relevant_mask(*shape).numpy() if item.has_boxes else None
    plotting.attention_heatmaps(load_image(item.image), grids, relevant=relevant,
                                question=f"{item.question} ({item.answers[0]})", out_dir=out)


def _example(vlm, items, maps, out, review, reference, contrastive, config) -> dict:
    from .. import plotting
    from ..inputs import load_image
    from ..interventions.contrastive import bottom_fraction, contrast
    import torch

    item = _pick_example(items, contrastive)
    name, rho, distance = config.primary
    sets = contrastive.attrs["candidate_sets"]
    table = maps[maps.item == item.id].pivot(index="layer", columns="token", values="attention")
    attention = {int(layer): torch.tensor(row.values) for layer, row in table.iterrows()}
    pre, c = contrast(attention[reference], {i: attention[i] for i in sets[name]}, distance)
    keep = ~bottom_fraction(c, rho)
    cells = maps[(maps.item == item.id) & (maps.layer == reference)].sort_values("token")
    rows, cols = int(cells.row.max()) + 1, int(cells.col.max()) + 1

    def on_grid(values) -> np.ndarray:
        grid = np.full((rows, cols), np.nan)
        ok = cells.row.values >= 0
        grid[cells.row.values[ok], cells.col.values[ok]] = np.asarray(values, dtype=float)[ok]
        return grid

    def norm(values):
        values = np.asarray(values, dtype=float)
        return values / max(values.sum(), 1e-12)

    panels = {f"A_pre (layer {pre})": on_grid(norm(attention[pre].numpy())),
              f"A_ref (layer {reference})": on_grid(norm(attention[reference].numpy())),
              "C = max(A_ref − A_pre, 0)": on_grid(c.numpy()),
              f"masked (dark): bottom ρ={rho}": on_grid(keep.numpy()).astype(bool)}
    plotting.contrastive_example(load_image(item.image), panels, title=f"{item.question} ({item.answers[0]})",
                                 out_dir=out)
    return {"item": item.id, "question": item.question, "answer": item.answers[0], "pre_layer": pre,
            "reference_layer": reference, "review_layer": review}


def _fmt_ci(entry: dict, key: str = "mean") -> str:
    return f"{entry[key]:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def render_markdown(report: dict) -> str:
    """The human-readable report: headline findings first, then the tables behind them."""
    lines = [f"# interp reproduce: {report['model']} on {report['dataset'] or 'custom samples'}", "",
             f"{report['n_samples']} samples, seed {report['seed']}, {report['n_layers']} decoder layers; "
             f"scoring: {report['config']['scoring']} (sweep mode {report['config']['sweep_mode']}); "
             f"versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", "",
             f"Baseline accuracy (greedy): {_fmt_ci(report['baseline_accuracy'])} (95% bootstrap CI).", ""]
    if report.get("per_kind_baseline"):
        lines += ["Per question kind: " + ", ".join(f"{k} {v:.2f}" for k, v in report["per_kind_baseline"].items()), ""]
    lines += ["## Fusion and review layers", ""]
    for variant, finding in report["masking"]["findings"].items():
        lines.append(f"- **{variant}**: {finding['statement']}")
    review = report["review_layer"]
    lines += ["", f"Review layer used by the contrastive method: {review['layer']} ({review['source']}); "
              f"reference layer {review['reference_layer']}.", "", "### Accuracy when masking at layer l (single)", "",
              "| layer | accuracy [95% CI] | diff vs baseline [95% CI] | McNemar p |", "|---|---|---|---|"]
    for row in report["masking"]["per_layer"]:
        if row["variant"] == "single":
            lines.append(f"| {row['layer']} | {row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}] | "
                         f"{row['diff']:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}] | {row.get('p_value', float('nan')):.3g} |")
    att = report["attention"]
    if att.get("has_boxes"):
        per = att["relevant_share_per_layer"]
        best = max(per, key=lambda r: r["mean"])
        noise = att["persistent_noise"]
        lines += ["", "## Attention evolution", "",
                  f"Relevant-region share of the last token's image attention: layer 0 {_fmt_ci(per[0])}, "
                  f"peak at layer {best['layer']} {_fmt_ci(best)}, last layer {_fmt_ci(per[-1])}; the region covers "
                  f"{att['relevant_area']:.3f} of the grid on average (uniform attention would give that).",
                  f"Persistent noise (cells outside the region in the top-{noise['k']} in at least "
                  f"{noise['persist']:.0%} of layers): {noise['items_with_noise']}/{noise['items']} samples have some, "
                  f"{noise['mean_noise_cells']:.2f} cells per sample on average."]
    lens = report["early_output"]["per_layer"]
    first_good = next((r["layer"] for r in lens if r["mean"] >= 0.9 * report["baseline_accuracy"]["mean"] > 0), None)
    lines += ["", "## Early output (logit lens)", "",
              f"Answer readable (>= 90% of final accuracy) from layer {first_good}." if first_good is not None
              else "The answer is not readable before the last layers."]
    lines += ["", "## Contrastive attention", "",
              "| method | candidates | rho | distance | accuracy | diff [95% CI] | McNemar p | gained/lost |",
              "|---|---|---|---|---|---|---|---|"]
    for row in report["contrastive"]["comparison"]:
        lines.append(f"| {row['method']} | {row['candidates']} | {row['rho']} | {row['distance']} | {row['accuracy']:.3f} | "
                     f"{row['diff']:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}] | {row['p_value']:.3g} | "
                     f"{row['gained']}/{row['lost']} |")
    hist = report["contrastive"]["pre_layer_histogram"]
    if hist:
        lines += ["", "Chosen pre layer i* (primary configuration): " + ", ".join(f"layer {h['layer']}: {h['count']}" for h in hist)]
    lines += ["", "Figures: masking_curve, attention_heatmaps, relevant_vs_noise, layer_distance, early_output, "
              "contrastive_example, accuracy_vs_rho, pre_layer_histogram (PNG and PDF).", ""]
    return "\n".join(lines)
