"""The localisation benchmark's figure: each method's F1 against the planted layers, with its CI.
It draws the table :func:`interp.analysis.faithfulness.score_methods` returns; nothing here runs a model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .style import FULL, new_figure, paper_style, save


def localisation_scores(
    scores: pd.DataFrame,
    *,
    truth: list[int],
    title: str = "",
    out_dir: str | Path | None = None,
    name: str = "localisation",
):
    """Horizontal bars: F1 per method with its 95% bootstrap CI, the reported layers beside each."""
    with paper_style():
        fig, ax = new_figure(figsize=(FULL, 0.3 * len(scores) + 1.0))
        order = scores.iloc[::-1]
        ys = range(len(order))
        ax.barh(ys, order.f1, color="#0072B2", alpha=0.8)
        ax.errorbar(
            order.f1, ys, xerr=[order.f1 - order.f1_low, order.f1_high - order.f1], fmt="none", ecolor="black", lw=0.8
        )
        ax.set_yticks(list(ys), list(order.method))
        for y, reported in zip(ys, order.reported):
            ax.text(1.02, y, _layers(reported), va="center", fontsize=6, transform=ax.get_yaxis_transform())
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"F1 against the planted layers {_layers(truth)} (95% CI over questions)")
        ax.set_title(title)
        save(fig, out_dir, name)
    return fig


def _layers(layers) -> str:
    """``[4, 5, 6, 20]`` -> ``"4-6, 20"``; nothing -> ``"none"``."""
    layers = sorted(int(x) for x in layers)
    if not layers:
        return "none"
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def localisation_matrix(
    table: pd.DataFrame,
    *,
    out_dir: str | Path | None = None,
    name: str = "localisation_matrix",
    title: str = "F1 against the planted layers (95% CI over questions)",
):
    """Methods x organisms: each cell the method's F1 on that organism, its CI and reported layers
    written in (``table`` from :func:`interp.analysis.faithfulness.benchmark_table`)."""
    import numpy as np

    organisms = list(dict.fromkeys(table.organism))
    methods = list(dict.fromkeys(table.method))
    grid = np.full((len(methods), len(organisms)), np.nan)
    for row in table.itertuples():
        grid[methods.index(row.method), organisms.index(row.organism)] = row.f1
    with paper_style():
        fig, ax = new_figure(figsize=(min(FULL, 1.9 * len(organisms) + 2.2), 0.32 * len(methods) + 1.2))
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.grid(False)
        for row in table.itertuples():
            y, x = methods.index(row.method), organisms.index(row.organism)
            colour = "black" if row.f1 > 0.6 else "white"
            text = f"{row.f1:.2f} [{row.f1_low:.2f}, {row.f1_high:.2f}]\n{_layers(row.reported)}"
            ax.text(x, y, text, ha="center", va="center", fontsize=5, color=colour)
        ax.set_xticks(range(len(organisms)), [f"{o}\nS = {_layers(s)}" for o, s in _truths(table, organisms)])
        ax.set_yticks(range(len(methods)), methods)
        ax.set_title(title)
        fig.colorbar(image, ax=ax, label="F1", fraction=0.04)
        save(fig, out_dir, name)
    return fig


def _truths(table: pd.DataFrame, organisms: list[str]) -> list[tuple[str, list[int]]]:
    return [(o, list(table[table.organism == o].planted_layers.iloc[0])) for o in organisms]
