"""One function per figure of the paper's analyses. Each takes the tidy tables the
analyses return (aggregated by :mod:`interp.analysis.stats`), draws, optionally saves
PNG and PDF, and returns the figure. Nothing here runs a model."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .style import COLUMN, FULL, palette, paper_style, save

VARIANT_LABELS = {
    "single": "mask layer l", "window": "mask window from l", "cumulative": "mask l and after",
    "knockout_last": "knock out last→image", "knockout_question": "knock out question→image",
}


def masking_curve(effects: pd.DataFrame, *, baseline: tuple[float, float, float], findings: dict | None = None,
                  out_dir: str | Path | None = None, name: str = "masking_curve", title: str = ""):
    """Accuracy per masked layer (one line per variant, 95% CI bands), the unmasked baseline
    with its CI, fusion layers shaded and the review layer marked (from ``findings``, a dict
    variant -> FusionFinding.to_dict())."""
    with paper_style():
        fig, ax = plt.subplots(figsize=(FULL, 2.6))
        variants = list(dict.fromkeys(effects.variant))
        for colour, variant in zip(palette(len(variants)), variants):
            rows = effects[effects.variant == variant].sort_values("layer")
            ax.plot(rows.layer, rows["mean"], marker="o", ms=2.5, lw=1.2, color=colour,
                    label=VARIANT_LABELS.get(variant, variant))
            ax.fill_between(rows.layer, rows.low, rows.high, color=colour, alpha=0.15, lw=0)
        mean, low, high = baseline
        ax.axhline(mean, color="black", lw=1, ls="--", label="no masking")
        ax.axhspan(low, high, color="black", alpha=0.06, lw=0)
        finding = (findings or {}).get("single")
        if finding:
            for layer in finding.get("fusion_layers", []):
                ax.axvspan(layer - 0.5, layer + 0.5, color="tab:red", alpha=0.08, lw=0)
            if finding.get("review_layer") is not None:
                ax.axvline(finding["review_layer"], color="tab:red", lw=1, ls=":")
                ax.annotate("review", (finding["review_layer"], ax.get_ylim()[1]), fontsize=7, color="tab:red",
                            ha="center", va="bottom")
        ax.set_xlabel("layer l")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)  # outside: never over a curve
        if title:
            ax.set_title(title)
        save(fig, out_dir, name)
    return fig


def attention_heatmaps(image, grids: dict[int, np.ndarray], *, relevant: np.ndarray | None = None,
                       question: str = "", out_dir: str | Path | None = None, name: str = "attention_heatmaps"):
    """The last token's attention over the patch grid at selected layers, over the image
    (``grids``: layer -> [rows, cols] share); the relevant region outlined when given."""
    layers = sorted(grids)
    with paper_style():
        fig, axes = plt.subplots(1, len(layers), figsize=(min(FULL, 1.25 * len(layers)), 1.6))
        axes = np.atleast_1d(axes)
        width, height = image.size
        for ax, layer in zip(axes, layers):
            ax.imshow(image)
            grid = grids[layer]
            ax.imshow(grid, extent=(0, width, height, 0), cmap="magma", alpha=0.6, interpolation="nearest")
            if relevant is not None:
                rows, cols = relevant.shape
                for r, c in zip(*np.nonzero(relevant)):
                    ax.add_patch(plt.Rectangle((c * width / cols, r * height / rows), width / cols, height / rows,
                                               fill=False, ec="cyan", lw=0.6))
            ax.set_title(f"layer {layer}")
            ax.axis("off")
        if question:
            fig.suptitle(question, fontsize=7, y=1.02)
        save(fig, out_dir, name)
    return fig


def relevant_vs_noise(relevant: pd.DataFrame, noise: pd.DataFrame, area: float, *,
                      out_dir: str | Path | None = None, name: str = "relevant_vs_noise"):
    """Per layer: share of image attention on the relevant region and on persistent noise
    cells (means with 95% CIs), against the relevant region's area share (uniform attention)."""
    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN, 2.3))
        for frame, label, colour in ((relevant, "relevant region", "tab:green"), (noise, "persistent noise", "tab:red")):
            ax.plot(frame.layer, frame["mean"], marker="o", ms=2.5, lw=1.2, color=colour, label=label)
            ax.fill_between(frame.layer, frame.low, frame.high, color=colour, alpha=0.15, lw=0)
        ax.axhline(area, color="tab:green", ls=":", lw=1, label="region area (uniform)")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("share of image attention")
        ax.legend(frameon=False)
        save(fig, out_dir, name)
    return fig


def layer_distance(distances: dict[str, pd.DataFrame], reference_layer: int, *, out_dir: str | Path | None = None,
                   name: str = "layer_distance"):
    """Hellinger and JSD between each layer's image attention and the reference layer's
    (``distances``: metric -> per-layer mean/low/high)."""
    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN, 2.3))
        for colour, (metric, frame) in zip(palette(len(distances)), distances.items()):
            ax.plot(frame.layer, frame["mean"], marker="o", ms=2.5, lw=1.2, color=colour, label=metric)
            ax.fill_between(frame.layer, frame.low, frame.high, color=colour, alpha=0.15, lw=0)
        ax.axvline(reference_layer, color="grey", ls=":", lw=1)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"distance to layer {reference_layer}")
        ax.legend(frameon=False)
        save(fig, out_dir, name)
    return fig


def early_output(accuracy: pd.DataFrame, *, final: float | None = None, out_dir: str | Path | None = None,
                 name: str = "early_output"):
    """Accuracy of the answer read at each layer through the final norm and unembedding."""
    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN, 2.3))
        ax.plot(accuracy.layer, accuracy["mean"], marker="o", ms=2.5, lw=1.2, color="tab:blue")
        ax.fill_between(accuracy.layer, accuracy.low, accuracy.high, color="tab:blue", alpha=0.15, lw=0)
        if final is not None:
            ax.axhline(final, color="black", ls="--", lw=1, label="model output")
            ax.legend(frameon=False)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("layer read out")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy")
        save(fig, out_dir, name)
    return fig


def contrastive_example(image, panels: dict[str, np.ndarray], *, title: str = "", out_dir: str | Path | None = None,
                        name: str = "contrastive_example"):
    """One sample: A_pre, A_ref, C and the kept tokens, each on the patch grid over the image
    (``panels``: panel title -> [rows, cols] array; a boolean array is drawn as a mask)."""
    with paper_style():
        fig, axes = plt.subplots(1, len(panels), figsize=(FULL, 1.9))
        width, height = image.size
        for ax, (label, grid) in zip(np.atleast_1d(axes), panels.items()):
            ax.imshow(image)
            if grid.dtype == bool:
                ax.imshow(np.where(grid, np.nan, 0.0), extent=(0, width, height, 0), cmap="gray", alpha=0.75,
                          vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(grid, extent=(0, width, height, 0), cmap="magma", alpha=0.6, interpolation="nearest")
            ax.set_title(label)
            ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=7, y=1.03)
        save(fig, out_dir, name)
    return fig


def accuracy_vs_rho(comparison: pd.DataFrame, *, out_dir: str | Path | None = None, name: str = "accuracy_vs_rho"):
    """Accuracy change vs the greedy baseline (paired 95% CI) for each masked fraction rho."""
    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN, 2.3))
        ax.errorbar(comparison.rho, comparison["diff"],
                    yerr=[comparison["diff"] - comparison.diff_low, comparison.diff_high - comparison["diff"]],
                    marker="o", ms=3, capsize=2, lw=1.2, color="tab:purple")
        ax.axhline(0, color="black", lw=0.8)
        for rho, diff, p in zip(comparison.rho, comparison["diff"], comparison.p_value):
            ax.annotate(f"p={p:.2g}", (rho, diff), textcoords="offset points", xytext=(3, 4), fontsize=6)
        ax.set_xlabel("ρ (fraction of image tokens masked)")
        ax.set_ylabel("accuracy − baseline")
        save(fig, out_dir, name)
    return fig


def pre_layer_histogram(counts: pd.DataFrame, *, n_layers: int, out_dir: str | Path | None = None,
                        name: str = "pre_layer_histogram"):
    """How often each layer was chosen as the pre layer i* (``counts``: layer, count)."""
    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN, 2.0))
        ax.bar(counts.layer, counts["count"], color="tab:orange", width=0.8)
        ax.set_xlim(-0.5, n_layers - 0.5)
        ax.set_xlabel("chosen pre layer i*")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("samples")
        save(fig, out_dir, name)
    return fig
