"""Figures of ``interp compare``: several runs' curves on relative depth (layer / L).

Draws the tables of :func:`interp.analysis.compare.compare_runs`; computes nothing.
Uses matplotlib's object API (no pyplot state, no backend switch), so the returned
figure shows inline in a notebook and saves headless.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from .style import save

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": ":",
}
COLOURS = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#56b4e9", "#949494")


def _curve(ax, table: pd.DataFrame, runs: list[str], *, baseline: bool = False) -> None:
    for i, run in enumerate(runs):
        part = table[table.run == run].sort_values("rel_depth")
        if part.empty:
            continue
        colour = COLOURS[i % len(COLOURS)]
        n = int(part["n"].iloc[0]) if "n" in part else None
        ax.plot(
            part.rel_depth, part["mean"], color=colour, lw=1.2, marker="o", ms=2, label=f"{run} (n={n})" if n else run
        )
        ax.fill_between(part.rel_depth, part.low, part.high, color=colour, alpha=0.15, lw=0)
        if baseline:
            ax.axhline(float(part.baseline.iloc[0]), color=colour, ls="--", lw=0.8)


def compare_curves(
    comparison, *, variant: str = "single", out_dir: str | Path | None = None, name: str = "compare_curves"
) -> Figure:
    """Three panels on relative depth: accuracy with image tokens masked at one layer
    (``variant``; dashed: each run's unmasked baseline), relevant-region share of the
    image attention, and early-output accuracy. Bands are the reports' 95% CIs."""
    runs = list(comparison.summary.run)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.9, 2.4), layout="constrained")
        axes = fig.subplots(1, 3, sharex=True)
        masking = comparison.masking
        if not masking.empty:
            _curve(axes[0], masking[masking.variant == variant], runs, baseline=True)
        axes[0].set(title=f"masking image tokens ({variant})", ylabel="accuracy", ylim=(-0.02, 1.02))
        _curve(axes[1], comparison.relevant_share, runs)
        axes[1].set(title="image attention on the relevant region", ylabel="share")
        _curve(axes[2], comparison.early_output, runs)
        axes[2].set(title="early output", ylabel="accuracy", ylim=(-0.02, 1.02))
        for ax in axes:
            ax.set_xlabel("relative depth (layer / L)")
            ax.set_xlim(0, 1)
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
        save(fig, out_dir, name, dpi=200)
    return fig
