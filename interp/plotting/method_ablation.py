"""The method-ablation figure: each component's paired accuracy gain with its CI, one panel per metric.

Draws the long table of :func:`interp.analysis.method_ablation.gains`; computes nothing.
Built on :class:`matplotlib.figure.Figure` directly, so it needs (and switches) no backend.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

REFERENCE_LABELS = {"greedy": "sampling vs greedy", "no_mask": "authors' mask vs no mask", "no_dola": "DoLa vs no DoLa"}
METRIC_TITLES = {"lmms": "items' own metric (lmms)", "wcd": "authors' lenient metric (wcd)"}
COLOURS = {"greedy": "#4477aa", "no_mask": "#cc6677", "no_dola": "#228833"}


def plot_gains(gains: pd.DataFrame, *, title: str = "") -> Figure:
    """Horizontal bars: paired difference in accuracy (CI whiskers) of every cell against the
    cell that differs from it in one component, coloured by that component."""
    metrics = [m for m in ("lmms", "wcd") if m in set(gains.metric)] if len(gains) else ["lmms"]
    labels = list(dict.fromkeys(f"{r.cell}  [{REFERENCE_LABELS[r.reference]}]" for r in gains.itertuples()))
    height = max(2.5, 0.22 * len(labels) + 1.0)
    figure = Figure(figsize=(4.2 * len(metrics), height), layout="constrained")
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    position = {label: i for i, label in enumerate(labels)}
    for ax, metric in zip(axes, metrics):
        part = gains[gains.metric == metric]
        for row in part.itertuples():
            y = position[f"{row.cell}  [{REFERENCE_LABELS[row.reference]}]"]
            ax.barh(y, row.diff, color=COLOURS[row.reference], alpha=0.8, height=0.7)
            ax.errorbar(
                row.diff,
                y,
                xerr=[[row.diff - row.low], [row.high - row.diff]],
                fmt="none",
                ecolor="black",
                elinewidth=0.8,
                capsize=2,
            )
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=8)
        ax.set_xlabel("paired accuracy difference (95% CI)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(axis="x", alpha=0.3, linestyle=":")
    axes[0].set_yticks(range(len(labels)))
    axes[0].set_yticklabels(labels, fontsize=6)
    axes[0].invert_yaxis()
    if title:
        figure.suptitle(title, fontsize=8)
    return figure


__all__ = ["plot_gains"]
