"""The report of ``interp reproduce``: statistics, figures, ``report.json`` and ``report.md``,
from the tables the pipeline (:mod:`interp.analysis.reproduce`) measured. Nothing here
runs the model."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from ..outputs import write_atomic
from .attention import (
    layer_distances,
    noise_mass,
    noise_summary,
    persistent_noise,
    relevant_mass,
    share_grid,
    token_grid,
)
from .contrastive import compare_to_baseline
from .items import Item
from ..runfiles import FILES
from .stats import per_layer_ci


def _versions() -> dict:
    import nnsight
    import torch
    import transformers

    from .. import __version__

    return {
        "interp": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "nnsight": getattr(nnsight, "__version__", "unknown"),
        "python": platform.python_version(),
    }


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def write_report(vlm, tables, config, out: Path, *, dataset: str = "", extras: dict | None = None) -> dict:
    """Statistics and figures of ``tables``; writes the CSVs, ``report.json`` and ``report.md``.
    ``extras``: further sections, ``{name: (dict for report.json, markdown lines)}``."""
    from .. import plotting

    items, sweep, maps, lens, contrastive = tables.items, tables.sweep, tables.maps, tables.lens, tables.contrastive
    effects, baseline, findings, review = tables.effects, tables.baseline, tables.findings, tables.review
    reference = review - 1
    boot = dict(n_boot=config.n_boot, seed=config.seed)
    write_atomic(out / "masking_sweep.csv", sweep.to_csv(index=False))
    write_atomic(out / "contrastive.csv", contrastive.to_csv(index=False))

    has_boxes = any(item.has_boxes for item in items)
    attention_report: dict = {"has_boxes": has_boxes}
    if has_boxes:
        mass = relevant_mass(maps)
        noise = persistent_noise(maps)
        nmass = noise_mass(maps, noise)
        relevant_ci = per_layer_ci(mass, "relevant_share", **boot)
        ratio_ci = per_layer_ci(mass, "ratio", **boot)
        noise_ci = per_layer_ci(nmass, "noise_share", **boot)
        area = float(mass.groupby("item").relevant_area.first().mean())
        attention_report.update(
            {
                "relevant_share_per_layer": _records(relevant_ci),
                "relevant_ratio_per_layer": _records(ratio_ci),
                "relevant_area": area,
                "noise_share_per_layer": _records(noise_ci),
                "persistent_noise": noise_summary(maps, noise),
                "image_mass_per_layer": _records(per_layer_ci(mass, "image_mass", **boot)),
            }
        )
        plotting.relevant_vs_noise(relevant_ci, noise_ci, area, out_dir=out)
    distances = layer_distances(maps, reference)
    distance_ci = {m: per_layer_ci(distances, m, **boot) for m in ("jsd", "hellinger")}
    plotting.layer_distance(distance_ci, reference, out_dir=out)

    lens_ci = per_layer_ci(lens, "correct", **boot)
    plotting.early_output(lens_ci, final=baseline[0], out_dir=out)

    comparison = compare_to_baseline(contrastive, **boot)
    name, rho, distance = config.primary
    primary_rows = contrastive[
        (contrastive.method == "v1")
        & (contrastive.candidates == name)
        & (contrastive.rho == rho)
        & (contrastive.distance == distance)
    ]
    histogram = (
        primary_rows.pre_layer.value_counts().rename_axis("layer").reset_index(name="count").sort_values("layer")
    )

    plotting.masking_curve(
        effects[effects.variant.isin(config.variants)],
        baseline=baseline,
        findings={v: f.to_dict() for v, f in findings.items()},
        out_dir=out,
        n=len(items),
        title=f"{vlm.name}: accuracy when image tokens are masked, or attention to them knocked out, at layer l",
    )
    plotting.accuracy_vs_rho(comparison, baseline=baseline, out_dir=out, n=len(items))
    plotting.pre_layer_histogram(histogram, n_layers=vlm.n_layers, out_dir=out)
    example = _example(items, maps, out, review, reference, contrastive, config, tables.example)
    _heatmaps(vlm, items, maps, out, config)

    report = {
        "model": vlm.name,
        "dataset": dataset,
        "n_samples": len(items),
        "seed": config.seed,
        "n_layers": vlm.n_layers,
        "versions": _versions(),
        "config": {
            "variants": list(config.variants),
            "window": config.window,
            "scale": config.scale,
            **scale_precision(config.scale, vlm.dtype),
            "scoring": sweep.attrs.get("scoring"),
            "sweep_mode": sweep.attrs.get("mode"),
            "rhos": list(config.rhos),
            "primary": list(config.primary),
            "n_boot": config.n_boot,
            "remote": bool(config.remote),
        },
        "timings_s": {k: round(v, 1) for k, v in tables.timings.items()},
        "counts": tables.counts,
        "baseline_accuracy": {"mean": baseline[0], "low": baseline[1], "high": baseline[2]},
        "masking": {"per_layer": _records(effects), "findings": {v: f.to_dict() for v, f in findings.items()}},
        "review_layer": {"layer": review, "source": tables.review_source, "reference_layer": reference},
        "attention": attention_report,
        "layer_distance": {"reference_layer": reference, **{m: _records(f) for m, f in distance_ci.items()}},
        "early_output": {"per_layer": _records(lens_ci)},
        "contrastive": {
            "comparison": _records(comparison),
            "pre_layer_histogram": _records(histogram),
            "candidate_sets": contrastive.attrs.get("candidate_sets"),
            "mode": contrastive.attrs.get("mode"),
            "example": example,
        },
        "per_kind_baseline": _per_kind(sweep),
    }
    markdown = render_markdown(report)
    for name, (section, lines) in (extras or {}).items():
        report[name] = section
        markdown += "\n" + "\n".join(lines) + "\n"
    write_atomic(out / FILES.report_json, json.dumps(report, indent=1, default=str))
    write_atomic(out / FILES.report_md, markdown)
    return report


def _per_kind(sweep: pd.DataFrame) -> dict:
    base = sweep[sweep.variant == "baseline"]
    if not base.kind.astype(bool).any():
        return {}
    return {kind: float(group.correct.mean()) for kind, group in base.groupby("kind")}


def pick_example(items: list[Item], contrastive: pd.DataFrame | None = None) -> Item:
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

    item = pick_example(items)
    layers = sorted({int(round(x)) for x in np.linspace(0, vlm.n_layers - 1, config.heatmap_layers)})
    grids = {layer: share_grid(maps, item.id, layer) for layer in layers}
    shape = next(iter(grids.values())).shape
    relevant = item.relevant_mask(*shape).numpy() if item.has_boxes else None
    plotting.attention_heatmaps(
        load_image(item.image), grids, relevant=relevant, question=f"{item.question} ({item.answers[0]})", out_dir=out
    )


def _example(items, maps, out, review, reference, contrastive, config, answers: dict) -> dict:
    import torch

    from .. import plotting
    from ..inputs import load_image
    from ..interventions.contrastive import bottom_fraction, contrast

    item = pick_example(items, contrastive)
    name, rho, distance = config.primary
    sets = contrastive.attrs["candidate_sets"]
    table = maps[maps.item == item.id].pivot(index="layer", columns="token", values="attention")
    attention = {int(layer): torch.tensor(row.values) for layer, row in table.iterrows()}
    pre, c = contrast(attention[reference], {i: attention[i] for i in sets[name]}, distance)
    keep = ~bottom_fraction(c, rho)

    def norm(values):
        values = np.asarray(values, dtype=float)
        return values / max(values.sum(), 1e-12)

    panels = {
        f"A_pre (layer {pre})": token_grid(maps, item.id, norm(attention[pre].numpy())),
        f"A_ref (layer {reference})": token_grid(maps, item.id, norm(attention[reference].numpy())),
        "C = max(A_ref − A_pre, 0)": token_grid(maps, item.id, c.numpy()),
        f"masked (hatched): bottom ρ={rho}": token_grid(maps, item.id, keep.numpy()).astype(bool),
    }
    shape = panels["C = max(A_ref − A_pre, 0)"].shape
    relevant = item.relevant_mask(*shape).numpy() if item.has_boxes else None
    same = answers.get("item") == item.id
    plotting.contrastive_example(
        load_image(item.image),
        panels,
        title=item.question,
        out_dir=out,
        answer_before=answers.get("answer_before") if same else None,
        answer_after=answers.get("answer_after") if same else None,
        reference=item.answers[0],
        relevant=relevant,
    )
    summary = {
        "item": item.id,
        "question": item.question,
        "answer": item.answers[0],
        "pre_layer": pre,
        "reference_layer": reference,
        "review_layer": review,
    }
    if same:
        summary.update({"answer_without_mask": answers["answer_before"], "answer_with_mask": answers["answer_after"]})
    return summary


def _fmt_ci(entry: dict, key: str = "mean") -> str:
    return f"{entry[key]:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def scale_precision(scale: object, dtype: object) -> dict:
    """The masking scale as the model's dtype holds it, and a note where it is not the number
    asked for (the paper's 1e-9 underflows to exactly 0 in float16; bfloat16 and float32 keep it)."""
    import torch

    if not isinstance(scale, (int, float)) or not isinstance(dtype, torch.dtype):
        return {}
    held = float(torch.tensor(scale, dtype=dtype))
    out: dict = {"dtype": str(dtype).replace("torch.", ""), "scale_in_dtype": held}
    if (held == 0) != (scale == 0) or abs(held - scale) > 0.01 * abs(scale):  # lost, not just rounded
        out["scale_note"] = f"x{scale:g} is {held:g} in {out['dtype']}" + (
            ": the masked image-token states are exactly zero" if held == 0 else ""
        )
    return out


def render_markdown(report: dict) -> str:
    """The human-readable report: headline findings first, then the tables behind them."""
    lines = [
        f"# interp reproduce: {report['model']} on {report['dataset'] or 'custom samples'}",
        "",
        f"{report['n_samples']} samples, seed {report['seed']}, {report['n_layers']} decoder layers; "
        f"scoring: {report['config']['scoring']} (sweep mode {report['config']['sweep_mode']}); "
        f"versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        f"Baseline accuracy (greedy): {_fmt_ci(report['baseline_accuracy'])} (95% bootstrap CI).",
        "",
    ]
    if report["config"].get("scale_note"):
        lines += [f"Masking scale: {report['config']['scale_note']}.", ""]
    if report.get("per_kind_baseline"):
        lines += ["Per question kind: " + ", ".join(f"{k} {v:.2f}" for k, v in report["per_kind_baseline"].items()), ""]
    lines += ["## Fusion and review layers", ""]
    for variant, finding in report["masking"]["findings"].items():
        lines.append(f"- **{variant}**: {finding['statement']}")
    review = report["review_layer"]
    lines += [
        "",
        f"Review layer used by the contrastive method: {review['layer']} ({review['source']}); "
        f"reference layer {review['reference_layer']}.",
        "",
        "### Accuracy when masking at layer l (single)",
        "",
        "| layer | accuracy [95% CI] | diff vs baseline [95% CI] | McNemar p |",
        "|---|---|---|---|",
    ]
    for row in report["masking"]["per_layer"]:
        if row["variant"] == "single":
            lines.append(
                f"| {row['layer']} | {row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}] | "
                f"{row['diff']:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}] | {row.get('p_value', float('nan')):.3g} |"
            )
    att = report["attention"]
    if att.get("has_boxes"):
        per = att["relevant_share_per_layer"]
        best = max(per, key=lambda r: r["mean"])
        noise = att["persistent_noise"]
        lines += [
            "",
            "## Attention evolution",
            "",
            f"Relevant-region share of the last token's image attention: layer 0 {_fmt_ci(per[0])}, "
            f"peak at layer {best['layer']} {_fmt_ci(best)}, last layer {_fmt_ci(per[-1])}; the region covers "
            f"{att['relevant_area']:.3f} of the grid on average (uniform attention would give that).",
            f"Persistent noise (cells outside the region in the top-{noise['k']} in at least "
            f"{noise['persist']:.0%} of layers): {noise['items_with_noise']}/{noise['items']} samples have some, "
            f"{noise['mean_noise_cells']:.2f} cells per sample on average.",
        ]
    lens = report["early_output"]["per_layer"]
    first_good = next((r["layer"] for r in lens if r["mean"] >= 0.9 * report["baseline_accuracy"]["mean"] > 0), None)
    lines += [
        "",
        "## Early output (logit lens)",
        "",
        f"Answer readable (>= 90% of final accuracy) from layer {first_good}."
        if first_good is not None
        else "The answer is not readable before the last layers.",
    ]
    lines += [
        "",
        "## Contrastive attention",
        "",
        "| method | candidates | rho | distance | accuracy | diff [95% CI] | McNemar p | gained/lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["contrastive"]["comparison"]:
        lines.append(
            f"| {row['method']} | {row['candidates']} | {row['rho']} | {row['distance']} | {row['accuracy']:.3f} | "
            f"{row['diff']:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}] | {row['p_value']:.3g} | "
            f"{row['gained']}/{row['lost']} |"
        )
    hist = report["contrastive"]["pre_layer_histogram"]
    if hist:
        lines += [
            "",
            "Chosen pre layer i* (primary configuration): "
            + ", ".join(f"layer {h['layer']}: {h['count']}" for h in hist),
        ]
    counts = report.get("counts") or {}
    if counts:
        sizes = counts.get("batch_sizes") or []
        batched = f"; clean-pass batch size {', '.join(map(str, sizes))}" if sizes else ""
        # counted since the restart batch became a setting (a run from before has no such count)
        calls = f" in {counts['restart_layer_calls']} layer calls" if counts.get("restart_layer_calls") else ""
        lines += [
            "",
            f"Passes: {counts.get('clean_forward', 0)} clean forwards "
            f"({counts.get('clean_forwards_per_sample', 0):.2f} per sample{batched}), "
            f"{counts.get('crop_forward', 0)} crop "
            f"forwards (v2), {counts.get('restart_forward', 0)} restarts "
            f"({counts.get('layer_forwards', 0)} layer-forwards{calls}), {counts.get('full_forward', 0)} other full "
            f"forwards, {counts.get('generate', 0)} generations.",
        ]
    lines += [
        "",
        "Figures: masking_curve, attention_heatmaps, relevant_vs_noise, layer_distance, early_output, "
        "contrastive_example, accuracy_vs_rho, pre_layer_histogram (PNG and PDF).",
        "",
    ]
    return "\n".join(lines)
