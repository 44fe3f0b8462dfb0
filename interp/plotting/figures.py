"""One function per figure of the paper's analyses. Each takes the tidy tables the
analyses return (aggregated by :mod:`interp.analysis.stats`), draws, optionally saves
PNG and PDF, and returns the figure (a :class:`matplotlib.figure.Figure`; in Jupyter it
shows inline as the cell's value). Nothing here runs a model, and nothing touches pyplot
or the matplotlib backend. Every figure states its sample size ``n``: pass ``n=`` or
let it be read from the table's ``n`` column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, Normalize, PowerNorm
from matplotlib.cm import ScalarMappable
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from .style import COLOURS, COLUMN, FULL, new_figure, palette, paper_style, save

VARIANT_LABELS = {
    "single": "mask layer l",
    "window": "mask window from l",
    "cumulative": "mask l and after",
    "knockout_last": "knock out last→image",
    "knockout_question": "knock out question→image",
}
#: colour, marker, line style per sweep variant: no two alike, knockouts dashed
VARIANT_STYLES = {
    "single": (COLOURS["blue"], "o", "-"),
    "window": (COLOURS["orange"], "s", "-"),
    "cumulative": (COLOURS["green"], "^", "-"),
    "knockout_last": (COLOURS["purple"], "D", "--"),
    "knockout_question": (COLOURS["sky"], "v", "--"),
}
SPOTLIGHT = ListedColormap(np.column_stack([np.zeros((256, 3)), np.linspace(0.7, 0.0, 256)]), name="spotlight")
"""Black with opacity falling as the value rises: attended cells show the image as it is
(so no object is recoloured or hidden), unattended cells are dimmed."""


def _n_from(n: int | None, *frames) -> int | None:
    """``n`` as given, else the largest ``n`` column among ``frames`` (tables from per_layer_ci etc.)."""
    if n is not None:
        return int(n)
    found = [
        int(frame["n"].max()) for frame in frames if isinstance(frame, pd.DataFrame) and "n" in frame and len(frame)
    ]
    return max(found) if found else None


def _n_label(n: int | None, unit: str = "questions") -> str:
    return f"n = {n} {unit}" if n is not None else ""


def _state_n(ax, n: int | None, unit: str = "questions") -> None:
    """Write ``n = ...`` above the top-right corner of ``ax`` (clear of curves and titles)."""
    if n is not None:
        ax.annotate(
            _n_label(n, unit),
            (1.0, 1.0),
            xycoords="axes fraction",
            xytext=(0, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=6.5,
            color="0.3",
        )


def _spotlight(ax, image, grid: np.ndarray, norm: Normalize) -> ScalarMappable:
    width, height = image.size
    ax.imshow(image)
    ax.imshow(
        np.nan_to_num(grid, nan=0.0), extent=(0, width, height, 0), cmap=SPOTLIGHT, norm=norm, interpolation="nearest"
    )
    return ScalarMappable(norm=norm, cmap=SPOTLIGHT)


def _outline(ax, image, mask: np.ndarray, colour: str = "cyan", lw: float = 0.8, **kwargs) -> None:
    width, height = image.size
    rows, cols = mask.shape
    for r, c in zip(*np.nonzero(mask)):
        ax.add_patch(
            Rectangle(
                (c * width / cols, r * height / rows),
                width / cols,
                height / rows,
                fill=False,
                ec=colour,
                lw=lw,
                **kwargs,
            )
        )


def masking_curve(
    effects: pd.DataFrame,
    *,
    baseline: tuple[float, float, float],
    findings: dict | None = None,
    out_dir: str | Path | None = None,
    name: str = "masking_curve",
    title: str = "",
    n: int | None = None,
):
    """Accuracy per edited layer (one line per variant, 95% CI bands), the unmasked baseline
    with its CI, fusion layers shaded and the review layer marked (from ``findings``, a dict
    variant -> FusionFinding.to_dict(); the ``single`` variant's are drawn)."""
    n = _n_from(n, effects)
    with paper_style():
        fig, ax = new_figure(figsize=(FULL, 2.6))
        mean, low, high = baseline
        # the baseline underneath everything: a curve equal to it stays visible on top
        ax.axhspan(low, high, color="0.5", alpha=0.12, lw=0, zorder=0)
        ax.axhline(mean, color="0.25", lw=0.9, ls=":", zorder=1)
        handles = []
        variants = list(dict.fromkeys(effects.variant))
        spare = iter(palette(len(variants) + len(VARIANT_STYLES))[len(VARIANT_STYLES) :])
        for order, variant in enumerate(variants):
            colour, marker, style = VARIANT_STYLES.get(variant, (next(spare), "o", "-"))
            rows = effects[effects.variant == variant].sort_values("layer")
            (line,) = ax.plot(
                rows.layer,
                rows["mean"],
                marker=marker,
                ms=2.8,
                lw=1.2,
                ls=style,
                color=colour,
                label=VARIANT_LABELS.get(variant, variant),
                zorder=3 + order,
            )
            ax.fill_between(rows.layer, rows.low, rows.high, color=colour, alpha=0.13, lw=0, zorder=2)
            handles.append(line)
        handles.append((Line2D([], [], color="0.25", lw=0.9, ls=":"), Patch(color="0.5", alpha=0.12)))
        labels = [h.get_label() for h in handles[:-1]] + ["no edit (95% CI)"]
        finding = (findings or {}).get("single")
        if finding:
            fusion = finding.get("fusion_layers", [])
            for layer in fusion:  # a strip along the bottom: clear of every curve and CI band
                ax.axvspan(
                    layer - 0.5,
                    layer + 0.5,
                    ymin=0,
                    ymax=0.035,
                    color=COLOURS["vermillion"],
                    alpha=0.55,
                    lw=0,
                    zorder=1,
                )
            if fusion:
                handles.append(Patch(color=COLOURS["vermillion"], alpha=0.55))
                labels.append(f"fusion layers ({VARIANT_LABELS['single']})")
            if finding.get("review_layer") is not None:
                ax.axvline(finding["review_layer"], color=COLOURS["vermillion"], lw=1, ls="-.", zorder=1)
                handles.append(Line2D([], [], color=COLOURS["vermillion"], lw=1, ls="-."))
                labels.append(f"review layer ({finding['review_layer']})")
        ax.set_xlabel("layer l")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.05, 1.02)
        ax.legend(
            handles,
            labels,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            frameon=False,
            title=_n_label(n) or None,
            title_fontsize=7,
            alignment="left",
        )  # outside: never over a curve
        if title:
            ax.set_title(title)
        save(fig, out_dir, name)
    return fig


def attention_heatmaps(
    image,
    grids: dict[int, np.ndarray],
    *,
    relevant: np.ndarray | None = None,
    question: str = "",
    out_dir: str | Path | None = None,
    name: str = "attention_heatmaps",
    answer: str | None = None,
):
    """The last token's attention over the patch grid at selected layers (``grids``:
    layer -> [rows, cols] share of image attention), on one colour scale for all layers
    with a colourbar: attended cells show the image as it is, unattended cells are dimmed
    (so attention never hides an object). The image itself comes first; the relevant
    region is outlined when given (``relevant``: [rows, cols] bool)."""
    layers = sorted(grids)
    vmax = max(float(np.nanmax(grids[layer])) for layer in layers) if layers else 1.0
    norm = PowerNorm(0.5, 0.0, vmax if vmax > 0 else 1.0)  # square-root scale: small shares still differ
    with paper_style():
        panels = len(layers) + 1
        fig, axes = new_figure(1, panels, figsize=(min(FULL, 1.1 * panels + 0.6), 1.75), gridspec_kw={"wspace": 0.06})
        axes = np.atleast_1d(axes)
        axes[0].imshow(image)
        axes[0].set_title("image")
        if relevant is not None:
            _outline(axes[0], image, relevant)
        mappable = None
        for ax, layer in zip(axes[1:], layers):
            mappable = _spotlight(ax, image, np.asarray(grids[layer], dtype=float), norm)
            if relevant is not None:
                _outline(ax, image, relevant)
            ax.set_title(f"layer {layer}")
        for ax in axes:
            ax.axis("off")
        if mappable is not None:
            bar = fig.colorbar(mappable, cax=axes[-1].inset_axes([1.06, 0.0, 0.07, 1.0]))
            bar.set_label("share of image attention\n(dark: little)", fontsize=6.5)
            bar.ax.tick_params(labelsize=6)
        lines = [question] if question else []
        if answer:
            lines.append(f"model answer: {answer}")
        lines.append("one sample" + ("; relevant region outlined (cyan)" if relevant is not None else ""))
        fig.suptitle("\n".join(lines), fontsize=7, y=0.97, va="bottom")
        save(fig, out_dir, name)
    return fig


def relevant_vs_noise(
    relevant: pd.DataFrame,
    noise: pd.DataFrame,
    area: float,
    *,
    out_dir: str | Path | None = None,
    name: str = "relevant_vs_noise",
    n: int | None = None,
):
    """Per layer: share of image attention on the relevant region and on persistent noise
    cells (means with 95% CIs), against the relevant region's area share (uniform attention)."""
    n = _n_from(n, relevant, noise)
    with paper_style():
        fig, ax = new_figure(figsize=(COLUMN, 2.5))
        for frame, label, colour in (
            (relevant, "relevant region", COLOURS["green"]),
            (noise, "persistent noise", COLOURS["vermillion"]),
        ):
            ax.plot(frame.layer, frame["mean"], marker="o", ms=2.5, lw=1.2, color=colour, label=label)
            ax.fill_between(frame.layer, frame.low, frame.high, color=colour, alpha=0.15, lw=0)
        ax.axhline(area, color=COLOURS["green"], ls=":", lw=1, label="region area (uniform)")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("share of image attention")
        ax.set_ylim(bottom=0)
        ax.legend(
            frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, handlelength=1.5, columnspacing=1.0
        )  # below the axes: never over a curve
        _state_n(ax, n)
        save(fig, out_dir, name)
    return fig


def layer_distance(
    distances: dict[str, pd.DataFrame],
    reference_layer: int,
    *,
    out_dir: str | Path | None = None,
    name: str = "layer_distance",
    n: int | None = None,
):
    """Hellinger and JSD between each layer's image attention and the reference layer's
    (``distances``: metric -> per-layer mean/low/high)."""
    n = _n_from(n, *distances.values())
    with paper_style():
        fig, ax = new_figure(figsize=(COLUMN, 2.3))
        for colour, (metric, frame) in zip(palette(len(distances)), distances.items()):
            ax.plot(frame.layer, frame["mean"], marker="o", ms=2.5, lw=1.2, color=colour, label=metric)
            ax.fill_between(frame.layer, frame.low, frame.high, color=colour, alpha=0.15, lw=0)
        ax.axvline(reference_layer, color="grey", ls=":", lw=1)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"distance to layer {reference_layer}")
        ax.legend(frameon=False)
        _state_n(ax, n)
        save(fig, out_dir, name)
    return fig


def early_output(
    accuracy: pd.DataFrame,
    *,
    final: float | None = None,
    out_dir: str | Path | None = None,
    name: str = "early_output",
    n: int | None = None,
):
    """Accuracy of the answer read at each layer through the final norm and unembedding."""
    n = _n_from(n, accuracy)
    with paper_style():
        fig, ax = new_figure(figsize=(COLUMN, 2.3))
        ax.plot(
            accuracy.layer,
            accuracy["mean"],
            marker="o",
            ms=2.5,
            lw=1.2,
            color=COLOURS["blue"],
            label="read at layer (95% CI)",
        )
        ax.fill_between(accuracy.layer, accuracy.low, accuracy.high, color=COLOURS["blue"], alpha=0.15, lw=0)
        if final is not None:
            ax.axhline(final, color="black", ls="--", lw=1, label="model output")
        ax.legend(frameon=False, loc="center left")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("layer read out")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy")
        _state_n(ax, n)
        save(fig, out_dir, name)
    return fig


def _wrap(text: str, width: int = 22) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def contrastive_example(
    image,
    panels: dict[str, np.ndarray],
    *,
    title: str = "",
    out_dir: str | Path | None = None,
    name: str = "contrastive_example",
    answer_before: str | None = None,
    answer_after: str | None = None,
    reference: str | None = None,
    relevant: np.ndarray | None = None,
):
    """One sample: A_pre, A_ref, C and the kept tokens, each on the patch grid over the image
    (``panels``: panel title -> [rows, cols] array; a boolean array is drawn as a mask:
    False cells, the masked ones, hatched and outlined so the object under them stays
    visible). Attention panels whose titles start with ``A_`` share one colour scale.
    ``answer_before`` / ``answer_after``: the model's answer without and with the mask;
    ``reference``: the expected answer; ``relevant``: the relevant region, outlined."""
    items = list(panels.items())
    shared = [np.asarray(g, dtype=float) for label, g in items if g.dtype != bool and label.startswith("A_")]
    shared_max = max((float(np.nanmax(g)) for g in shared), default=0.0)
    with paper_style():
        fig, axes = new_figure(1, len(items), figsize=(FULL, 2.35), gridspec_kw={"wspace": 0.25})
        for ax, (label, grid) in zip(np.atleast_1d(axes), items):
            if grid.dtype == bool:
                ax.imshow(image)
                _outline(ax, image, ~grid, colour=COLOURS["vermillion"], lw=0.9, hatch="////", alpha=0.9)
            else:
                values = np.asarray(grid, dtype=float)
                top = shared_max if label.startswith("A_") and shared_max > 0 else float(np.nanmax(values))
                mappable = _spotlight(ax, image, values, PowerNorm(0.5, 0.0, top if top > 0 else 1.0))
                bar = fig.colorbar(mappable, cax=ax.inset_axes([0.0, -0.1, 1.0, 0.045]), orientation="horizontal")
                bar.ax.tick_params(labelsize=5.5)
                bar.locator = MaxNLocator(3)
                bar.update_ticks()
            if relevant is not None:
                _outline(ax, image, relevant)
            ax.set_title(_wrap(label, 26), fontsize=7)
            ax.axis("off")
        lines = [title] if title else []
        if answer_before is not None or answer_after is not None:
            lines.append(
                f"answer without mask: {answer_before if answer_before is not None else '?'}"
                f"   →   with contrastive mask: {answer_after if answer_after is not None else '?'}"
                + (f"   (expected: {reference})" if reference is not None else "")
            )
        elif reference is not None:
            lines.append(f"expected: {reference}")
        notes = ["one sample", "dark: little attention"]
        if any(g.dtype == bool for _, g in items):
            notes.append("masked cells hatched (red)")
        if relevant is not None:
            notes.append("relevant region outlined (cyan)")
        lines.append("; ".join(notes))
        fig.suptitle("\n".join(lines), fontsize=7, y=0.97, va="bottom")
        save(fig, out_dir, name)
    return fig


def _config_label(row) -> str:
    return f"{row.method} {row.candidates} ρ={row.rho:g} {row.distance}"


def accuracy_vs_rho(
    comparison: pd.DataFrame,
    *,
    out_dir: str | Path | None = None,
    name: str = "accuracy_vs_rho",
    baseline: tuple[float, float, float] | None = None,
    n: int | None = None,
):
    """Contrastive masking against the greedy baseline, on the accuracy scale.

    Left: accuracy per masked fraction ρ for each configuration swept over ρ. Right: every
    configuration in ``comparison`` (rows of ``compare_to_baseline``) with its paired 95% CI
    (baseline + CI of the difference) and McNemar p. The baseline is the dashed line (its
    own 95% CI shaded when ``baseline=(mean, low, high)`` is given; otherwise the table's
    ``baseline`` column)."""
    n = _n_from(n, comparison)
    table = comparison.reset_index(drop=True)
    base = baseline[0] if baseline is not None else float(table["baseline"].mean()) if "baseline" in table else 0.0
    with paper_style():
        fig, (left, right) = new_figure(
            1,
            2,
            figsize=(FULL, max(2.4, 0.9 + 0.2 * len(table))),
            gridspec_kw={"width_ratios": [1, 1.25], "wspace": 0.75},
        )
        for ax in (left, right):
            (ax.axhline if ax is left else ax.axvline)(base, color="black", ls="--", lw=1, zorder=1)
            if baseline is not None:
                (ax.axhspan if ax is left else ax.axvspan)(
                    baseline[1], baseline[2], color="0.5", alpha=0.12, lw=0, zorder=0
                )
        keys = ["method", "candidates", "distance"]
        swept = [
            (key, group.sort_values("rho")) for key, group in table.groupby(keys, sort=False) if group.rho.nunique() > 1
        ]
        for colour, (key, group) in zip(palette(max(1, len(swept))), swept):
            accuracy = group["baseline"] + group["diff"] if "baseline" in group else group["diff"] + base
            left.errorbar(
                group.rho,
                accuracy,
                yerr=[group["diff"] - group.diff_low, group.diff_high - group["diff"]],
                marker="o",
                ms=3,
                capsize=2,
                lw=1.2,
                color=colour,
                label=" ".join(map(str, key)),
            )
        left.set_xlabel("ρ (fraction of image tokens masked)")
        left.set_ylabel("accuracy (paired 95% CI)")
        handles, labels = left.get_legend_handles_labels()
        handles.append(Line2D([], [], color="black", ls="--", lw=1))
        labels.append("greedy baseline" + (" (95% CI shaded)" if baseline is not None else ""))
        left.legend(handles, labels, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)

        y = np.arange(len(table))[::-1]
        accuracy = table["baseline"] + table["diff"] if "baseline" in table else table["diff"] + base
        right.errorbar(
            accuracy,
            y,
            xerr=[table["diff"] - table.diff_low, table.diff_high - table["diff"]],
            fmt="o",
            ms=3,
            capsize=2,
            lw=1.1,
            color=COLOURS["purple"],
            zorder=3,
        )
        right.set_yticks(y, [_config_label(row) for row in table.itertuples()], fontsize=6.5)
        if "p_value" in table:
            for yy, p in zip(y, table.p_value):
                right.annotate(
                    f"p={p:.2g}",
                    (1.0, yy),
                    xycoords=("axes fraction", "data"),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=6,
                )
        right.set_xlabel("accuracy (paired 95% CI)")
        right.set_ylim(-0.7, len(table) - 0.3)
        right.grid(axis="y", visible=False)
        _state_n(right, n)
        save(fig, out_dir, name)
    return fig


def pre_layer_histogram(
    counts: pd.DataFrame,
    *,
    n_layers: int,
    out_dir: str | Path | None = None,
    name: str = "pre_layer_histogram",
    n: int | None = None,
):
    """How often each layer was chosen as the pre layer i* (``counts``: layer, count);
    ``n`` defaults to the total count (one choice per sample)."""
    n = int(counts["count"].sum()) if n is None else int(n)
    with paper_style():
        fig, ax = new_figure(figsize=(COLUMN, 2.0))
        ax.bar(counts.layer, counts["count"], color=COLOURS["orange"], width=0.8)
        ax.set_xlim(-0.5, n_layers - 0.5)
        ax.set_xlabel("chosen pre layer i*")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("samples")
        _state_n(ax, n, "samples")
        save(fig, out_dir, name)
    return fig
