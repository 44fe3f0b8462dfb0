"""Figures of activation patching and the image-token lens. Each function draws the tables
or grids :mod:`interp.analysis.patching` / :mod:`interp.analysis.image_lens` return,
optionally saves PNG and PDF, and returns the figure; nothing here runs a model."""

from __future__ import annotations

from pathlib import Path

from matplotlib.patches import Rectangle
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .style import COLUMN, FULL, new_figure, palette, paper_style, save

GROUP_LABELS = {
    "changed": "changed cells",
    "other_image": "other image cells",
    "question": "question tokens",
    "other_text": "other text tokens",
    "last": "last token",
    "image": "all image tokens",
}
GROUP_ORDER = ("changed", "other_image", "image", "question", "other_text", "last")


def _effect_image(ax, values: np.ndarray, metric: str):
    """``(image, colourbar label)``: normalised effects on viridis spanning at least [0, 1];
    raw answer-logit changes (controls) on a diverging scale centred on 0."""
    if metric == "effect":
        image = ax.imshow(
            values,
            aspect="auto",
            cmap="viridis",
            vmin=min(0.0, np.nanmin(values)),
            vmax=max(1.0, np.nanmax(values)),
            interpolation="nearest",
        )
        return image, "normalised effect"
    bound = max(1e-6, float(np.nanmax(np.abs(values))))
    image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    return image, "answer logit change"


def _one_metric(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of one metric: the normalised effect where a change has answer-changing pairs,
    else the controls' answer-logit change (a change may hold both kinds of pair)."""
    metric = "effect" if (rows.metric == "effect").any() else str(rows.metric.iloc[0])
    return rows[rows.metric == metric], metric


def patching_heatmap(
    effects: pd.DataFrame,
    *,
    site: str = "resid_pre",
    out_dir: str | Path | None = None,
    name: str = "patching_heatmap",
    title: str = "",
):
    """Layer x position-group heatmap of the mean patching effect, one panel per change
    (``effects`` from :func:`~interp.analysis.patching.patching_effects`): the normalised
    effect for changes of the answer, the raw answer-logit change for controls."""
    rows = effects[effects.site == site]
    changes = list(dict.fromkeys(rows.change))
    with paper_style():
        fig, axes = new_figure(1, len(changes), figsize=(min(FULL, 2.3 * len(changes) + 0.6), 2.4), squeeze=False)
        for ax, change in zip(axes[0], changes):
            part, metric = _one_metric(rows[rows.change == change])
            groups = [g for g in GROUP_ORDER if g in set(part.group)]
            table = part.pivot(index="group", columns="layer", values="mean").reindex(groups)
            image, label = _effect_image(ax, table.values, metric)
            ax.set_yticks(range(len(groups)), [GROUP_LABELS.get(g, g) for g in groups])
            layers = list(table.columns)
            ticks = list(range(0, len(layers), max(1, len(layers) // 6)))
            ax.set_xticks(ticks, [layers[t] for t in ticks])
            ax.set_xlabel("layer")
            n = int(part.n.max())
            ax.set_title(f"{change} (n={n})")
            ax.grid(False)
            fig.colorbar(image, ax=ax, shrink=0.8, label=label)
        for ax in axes[0][1:]:
            ax.set_yticklabels([])
        if title:
            fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        save(fig, out_dir, name)
    return fig


def patching_head_heatmap(
    effects: pd.DataFrame,
    *,
    change: str,
    group: str = "last",
    out_dir: str | Path | None = None,
    name: str = "patching_heads",
    title: str = "",
):
    """Layer x head heatmap of the mean effect of patching one attention head's output
    (``blocks.{l}.attn.hook_z``) at one position group, for one change (``effects`` from
    :func:`~interp.analysis.patching.patching_effects` of a sweep with site ``z``)."""
    rows = effects[(effects.site == "z") & (effects.change == change) & (effects.group == group)]
    if rows.empty:
        raise ValueError(f"no per-head rows for change {change!r} at {group!r}: sweep with sites=('z',)")
    rows, metric = _one_metric(rows)
    table = rows.pivot(index="head", columns="layer", values="mean").sort_index()
    with paper_style():
        fig, ax = new_figure(figsize=(COLUMN, 0.18 * len(table) + 1.2))
        image, label = _effect_image(ax, table.values, metric)
        layers = list(table.columns)
        ticks = list(range(0, len(layers), max(1, len(layers) // 6)))
        ax.set_xticks(ticks, [layers[t] for t in ticks])
        ax.set_yticks(range(len(table)), [str(h) for h in table.index])
        ax.set_xlabel("layer")
        ax.set_ylabel("head")
        ax.set_title(
            title or f"{change}: one head patched at the {GROUP_LABELS.get(group, group)} (n={int(rows.n.max())})"
        )
        ax.grid(False)
        fig.colorbar(image, ax=ax, shrink=0.8, label=label)
        fig.tight_layout()
        save(fig, out_dir, name)
    return fig


def patching_curves(
    effects: pd.DataFrame,
    *,
    change: str,
    site: str = "resid_pre",
    out_dir: str | Path | None = None,
    name: str = "patching_curves",
):
    """The effect per layer of each position group, with 95% CI bands, for one change."""
    rows = effects[(effects.site == site) & (effects.change == change)]
    if not rows.empty:
        rows, _ = _one_metric(rows)
    with paper_style():
        fig, ax = new_figure(figsize=(COLUMN, 2.2))
        groups = [g for g in GROUP_ORDER if g in set(rows.group)]
        for colour, group in zip(palette(len(groups)), groups):
            part = rows[rows.group == group].sort_values("layer")
            ax.plot(
                part.layer, part["mean"], color=colour, lw=1.2, marker="o", ms=2, label=GROUP_LABELS.get(group, group)
            )
            ax.fill_between(part.layer, part.low, part.high, color=colour, alpha=0.15, lw=0)
        ax.set_xlabel("layer patched (input of)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        metric = rows.metric.iloc[0] if not rows.empty else "effect"
        ax.set_ylabel("normalised effect" if metric == "effect" else "answer logit change")
        ax.set_title(f"{change} (n={int(rows.n.max()) if not rows.empty else 0})")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        save(fig, out_dir, name)
    return fig


def patching_cell_maps(
    image,
    grids: dict[int, np.ndarray],
    *,
    changed: np.ndarray | None = None,
    question: str = "",
    out_dir: str | Path | None = None,
    name: str = "patching_cells",
):
    """Per-cell patching effect over the image at chosen layers (``grids``: layer ->
    ``[rows, cols]``), the changed cells outlined."""
    layers = sorted(grids)
    values = np.concatenate([np.ravel(g) for g in grids.values()])
    top = max(1.0, float(np.nanmax(values))) if np.isfinite(values).any() else 1.0
    low = min(0.0, float(np.nanmin(values))) if np.isfinite(values).any() else 0.0
    with paper_style():
        fig, axes = new_figure(1, len(layers), figsize=(min(FULL, 1.3 * len(layers) + 0.5), 1.7), squeeze=False)
        width, height = image.size
        for ax, layer in zip(axes[0], layers):
            ax.imshow(image)
            mapped = ax.imshow(
                grids[layer],
                extent=(0, width, height, 0),
                cmap="viridis",
                vmin=low,
                vmax=top,
                alpha=0.65,
                interpolation="nearest",
            )
            if changed is not None:
                rows, cols = changed.shape
                for r, c in zip(*np.nonzero(changed)):
                    ax.add_patch(
                        Rectangle(
                            (c * width / cols, r * height / rows),
                            width / cols,
                            height / rows,
                            fill=False,
                            ec="red",
                            lw=0.6,
                        )
                    )
            ax.set_title(f"layer {layer}")
            ax.axis("off")
        fig.colorbar(mapped, ax=list(axes[0]), shrink=0.8, label="effect")
        if question:
            fig.suptitle(question, fontsize=7, y=1.04)
        save(fig, out_dir, name)
    return fig


def lens_accuracy_curve(
    accuracy: pd.DataFrame,
    *,
    metrics=None,
    chance: dict | None = None,
    out_dir: str | Path | None = None,
    name: str = "image_lens_accuracy",
    title: str = "",
):
    """Per-layer image-token lens accuracy (from :func:`~interp.analysis.image_lens.lens_accuracy`)
    with 95% CI bands, one line per metric; ``chance`` (metric -> level) draws dashed chance lines."""
    metrics = list(dict.fromkeys(accuracy.metric)) if metrics is None else list(metrics)
    with paper_style():
        fig, ax = new_figure(figsize=(FULL * 0.62, 2.3))
        for colour, metric in zip(palette(len(metrics)), metrics):
            part = accuracy[accuracy.metric == metric].sort_values("layer")
            ax.plot(part.layer, part["mean"], color=colour, lw=1.2, marker="o", ms=2, label=metric.replace("_", " "))
            ax.fill_between(part.layer, part.low, part.high, color=colour, alpha=0.15, lw=0)
            if chance and metric in chance:
                ax.axhline(chance[metric], color=colour, lw=0.8, ls="--")
        ax.set_xlabel(
            "layer (residual stream at its input; dashed: chance)" if chance else "layer (residual stream at its input)"
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy (object cells)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        if title:
            ax.set_title(title)
        save(fig, out_dir, name)
    return fig


def lens_words(
    image,
    grids: dict[int, np.ndarray],
    *,
    truth: np.ndarray | None = None,
    question: str = "",
    out_dir: str | Path | None = None,
    name: str = "image_lens_words",
):
    """The lens's top word of every cell written on the image grid at chosen layers
    (``grids``: layer -> ``[rows, cols]`` of strings); with ``truth`` (same shape, the
    expected word or ""), words that match are green and others grey."""
    layers = sorted(grids)
    with paper_style():
        fig, axes = new_figure(1, len(layers), figsize=(min(FULL, 1.9 * len(layers)), 2.0), squeeze=False)
        width, height = image.size
        for ax, layer in zip(axes[0], layers):
            grid = grids[layer]
            rows, cols = grid.shape
            ax.imshow(image, alpha=0.45)
            for r in range(rows):
                for c in range(cols):
                    text = "".join(ch if ch.isprintable() else "?" for ch in str(grid[r, c])) or "␣"
                    ok = truth is not None and truth[r, c] and text == truth[r, c]
                    ax.text(
                        (c + 0.5) * width / cols,
                        (r + 0.5) * height / rows,
                        text[:8],
                        ha="center",
                        va="center",
                        fontsize=4.5,
                        color="darkgreen" if ok else "black",
                        fontweight="bold" if ok else "normal",
                    )
            ax.set_title(f"layer {layer}")
            ax.axis("off")
        if question:
            fig.suptitle(question, fontsize=7, y=1.03)
        save(fig, out_dir, name)
    return fig


def attribution_curves(
    exact: pd.DataFrame,
    estimate: pd.DataFrame,
    *,
    change: str,
    site: str = "resid_pre",
    out_dir: str | Path | None = None,
    name: str = "attribution_curves",
):
    """Exact patching (solid, 95% CI bands) and its attribution estimate (dashed) per layer and
    position group, for one change (both tables from
    :func:`~interp.analysis.patching.patching_effects`)."""
    pick = {}
    for label, table in (("exact", exact), ("estimate", estimate)):
        rows = table[(table.site == site) & (table.change == change)]
        pick[label] = _one_metric(rows)[0] if not rows.empty else rows
    with paper_style():
        fig, ax = new_figure(figsize=(COLUMN, 2.2))
        present = set(pick["exact"].group) | set(pick["estimate"].group)
        groups = [g for g in GROUP_ORDER if g in present]
        for colour, group in zip(palette(len(groups)), groups):
            part = pick["exact"][pick["exact"].group == group].sort_values("layer")
            ax.plot(part.layer, part["mean"], color=colour, lw=1.2, label=GROUP_LABELS.get(group, group))
            ax.fill_between(part.layer, part.low, part.high, color=colour, alpha=0.15, lw=0)
            guess = pick["estimate"][pick["estimate"].group == group].sort_values("layer")
            ax.plot(guess.layer, guess["mean"], color=colour, lw=1.0, ls="--")
        ax.plot([], [], color="0.3", lw=1.2, label="exact")
        ax.plot([], [], color="0.3", lw=1.0, ls="--", label="attribution")
        ax.set_xlabel("layer patched (input of)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        both = pd.concat([pick["exact"], pick["estimate"]])
        metric = both.metric.iloc[0] if not both.empty else "effect"
        ax.set_ylabel("normalised effect" if metric == "effect" else "answer logit change")
        n = int(pick["exact"].n.max()) if not pick["exact"].empty else 0
        ax.set_title(f"{change} (n={n}): exact vs attribution")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        save(fig, out_dir, name)
    return fig
