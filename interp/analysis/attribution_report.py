"""The attribution section of a report: every pair and the per-cell grid estimated, scored against exact patching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import pandas as pd

from .attribution import IG_STEPS, agreement, attribution_sweep
from ..runfiles import FILES
from .patching import (
    REPORT_CHANGES,
    REPORT_GROUPS,
    cell_effect_grid,
    default_cell_layers,
    patching_effects,
    section_pairs,
)


def attribution_section(
    vlm,
    samples: Any,
    out_dir: str | Path | None = None,
    *,
    n_pairs: int = 60,
    changes: Sequence[str] = REPORT_CHANGES,
    positions: Sequence[str] = REPORT_GROUPS,
    sites: Sequence[str] = ("resid_pre",),
    heads: Any = "all",
    layers: Any = "all",
    cell_layers: Any = None,
    cell_pairs: int | None = None,
    method: str = "atp",
    steps: int = IG_STEPS,
    exact: pd.DataFrame | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    remote: bool | str | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
) -> tuple[dict, list[str]]:
    """Attribution patching on the patching section's pairs, every pair with its per-cell grid.

    Args:
        vlm: the model.
        samples: a dataset that offers counterfactual pairs, or ready pairs.
        out_dir: where ``attribution_sweep.csv``, ``attribution_agreement.csv`` and the figures go.
        n_pairs: the pairs (the same draw as the patching section's).
        changes: the changes taking turns.
        positions: the position groups.
        sites: the sites (``resid_pre``, ``attn_out``, ``mlp_out``, ``resid_post``, ``z``).
        heads: site ``z``: ``"all"`` or a list of heads.
        layers: the layers (``"all"`` or a list).
        cell_layers: the layers of the per-cell grids (default: four spread out).
        cell_pairs: the first pairs that get per-cell grids (None: every pair).
        method: ``"atp"``, ``"atp*"`` or ``"ig"``.
        steps: ``method="ig"``: interpolation steps.
        exact: exact patching rows of (some of) these pairs to score the estimate against.
        n_boot: bootstrap resamples.
        seed: the pairs' draw and the bootstrap's seed.
        remote: as in :meth:`interp.VLM.run`.
        progress: show a progress bar.
        resume: the section's row log.

    Returns:
        ``(dict for report.json, markdown lines)``.
    """
    from ..inputs import load_image
    from ..plotting import patching as figures

    pairs = section_pairs(samples, n_pairs, changes, seed)
    cell_layers = default_cell_layers(vlm.n_layers) if cell_layers is None else list(cell_layers)
    frame = attribution_sweep(
        vlm,
        pairs,
        positions=positions,
        sites=sites,
        heads=heads,
        layers=layers,
        cell_layers=cell_layers,
        cell_pairs=cell_pairs,
        method=method,
        steps=steps,
        remote=remote,
        progress=progress,
        resume=resume,
    )
    effects = patching_effects(frame, n_boot=n_boot, seed=seed)
    table = None
    exact_effects = None
    if exact is not None and not exact.empty:
        shared = exact[exact.pair.isin(set(frame.pair))]
        if not shared.empty:
            table = agreement(shared, frame, n_boot=min(n_boot, 1000), seed=seed)
            exact_effects = patching_effects(shared, n_boot=n_boot, seed=seed)
    example = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / FILES.attribution_sweep, index=False)
        if table is not None:
            table.to_csv(out / FILES.attribution_agreement, index=False)
        main = next((str(s) for s in dict.fromkeys(frame.site) if s != "z"), "")
        for change in dict.fromkeys(effects.change) if main else ():
            figures.attribution_curves(
                exact_effects if exact_effects is not None else effects.iloc[:0],
                effects,
                change=change,
                site=main,
                out_dir=out,
                name=f"attribution_curves_{change}",
            )
        mapped = set(frame[frame.group == "cell"].pair)
        pick = next((p for p in pairs if p.id in mapped and p.changed_boxes and p.change != "distractor"), None)
        if pick is not None and cell_layers and main:
            from ..data.synthetic import boxes_mask

            grids = {layer: cell_effect_grid(frame, pick.id, layer, site=main) for layer in cell_layers}
            shape = next(iter(grids.values())).shape
            image = load_image(pick.base.image)
            figures.patching_cell_maps(
                image,
                grids,
                changed=boxes_mask(pick.changed_boxes, image.size, *shape, min_fraction=1e-6).numpy(),
                out_dir=out,
                name="attribution_cells",
                question=f"{pick.source.question} {pick.source.answer} -> {pick.base.answer} "
                f"({pick.description}); attribution estimate per cell",
            )
            example = {"pair": pick.id, "description": pick.description, "cell_layers": cell_layers}
    report = {
        "n_pairs": len(pairs),
        "method": method,
        "steps": frame.attrs.get("steps"),
        "metric": frame.attrs.get("metric"),
        "cell_layers": cell_layers,
        "effects": json.loads(effects.to_json(orient="records")),
        "agreement": None if table is None else json.loads(table.to_json(orient="records")),
        "example": example,
    }
    return report, attribution_markdown(report)


def _number(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def attribution_markdown(report: dict) -> list[str]:
    """The section's markdown lines."""
    lines = [
        "## Attribution patching",
        "",
        f"Every pair ({report['n_pairs']}) and its per-cell grid at layers "
        f"{', '.join(str(layer) for layer in report['cell_layers'])} estimated by {report['method']} "
        "(one source forward, one base forward and backward per pair): the first-order change of "
        "the logit difference, normalised like exact patching.",
        "",
    ]
    rows = report.get("agreement")
    if not rows:
        lines += ["No exact patching of these pairs to compare with.", ""]
        return lines
    n_pairs = max(row["n_pairs"] for row in rows)
    small = " (a small sample: read the CIs)" if n_pairs < 20 else ""
    graddrop = any("graddrop_spearman" in row for row in rows)
    extra = (" GradDrop vs exact size: rho, top-10 |", "---|") if graddrop else ("", "")
    lines += [
        f"Agreement with exact patching over the (layer, group) conditions, {n_pairs} pairs{small}:",
        "",
        "| change | site | Spearman rho [95% CI] | top-10 overlap | sign agreement (exact beyond 0.1) |" + extra[0],
        "|---|---|---|---|---|" + extra[1],
    ]
    for row in rows:
        rho = _number(row["spearman"], 3)
        if row.get("low") is not None:
            rho += f" [{_number(row['low'], 3)}, {_number(row['high'], 3)}]"
        sign = "n/a" if row.get("sign_agreement") is None else f"{row['sign_agreement']:.2f} (n={row['n_signed']})"
        line = f"| {row['change']} | {row['site']} | {rho} | {_number(row['top_k_overlap'], 1)} | {sign} |"
        if graddrop:
            line += f" {_number(row.get('graddrop_spearman'), 3)}, {_number(row.get('graddrop_top_k_overlap'), 1)} |"
        lines.append(line)
    lines += ["", "Figures: attribution_curves_<change> (exact and estimated side by side), attribution_cells.", ""]
    return lines
