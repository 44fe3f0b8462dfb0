"""``interp explore``: one self-contained HTML page to look around a model and a run.

The page holds, per sample, the image with the last token's attention over it and every
head's map, moved together by one layer slider (every sample opens at the same layer);
from a run directory (``interp reproduce`` or ``interp patch`` output), the masking curve
with its 95% CIs and the activation-patching map: effect per (layer, position group),
one map per change type, the per-cell rows drawn apart. Every asset is inline (plotly's
JavaScript, the images as data URIs): open the file from disk, mail it, put it in a
notebook; no server, no network.

::

    from interp.explore import explore
    page = explore(vlm, SyntheticVQA("test"), "out/explore", run_dir="runs/organism", limit=4)
    page            # in Jupyter: shows inline

    interp explore --model organism --run runs/organism --out out/explore
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .runfiles import FILES

#: opacity of the dimming layer from no attention (0) to the most (1): attended cells show the image as it is
SPOTLIGHT = [[0.0, "rgba(0,0,0,0.72)"], [1.0, "rgba(0,0,0,0)"]]
VARIANT_COLOURS = {
    "single": "#0072B2",
    "window": "#E69F00",
    "cumulative": "#009E73",
    "knockout_last": "#CC79A7",
    "knockout_question": "#56B4E9",
}
#: the columns of ``patching_sweep.csv`` (``interp reproduce``, ``interp patch``) the map needs
SWEEP_COLUMNS = ("pair", "change", "site", "layer", "group", "row", "col", "effect")
#: the columns of a patching summary (``patching.effects`` in report.json / patching.json)
SUMMARY_COLUMNS = ("change", "site", "layer", "group", "mean")
#: position groups in the map's order, from the image to the last token
GROUP_ORDER = ("changed", "other_image", "image", "question", "other_text", "last")
#: the per-sample figure's sizes in pixels: image column, the gap holding its colour bar, a head
IMAGE_PX, GAP_PX, HEAD_PX = 420, 110, 140


@dataclass
class SampleAttention:
    """Last-token attention to one sample's image: ``grids[layer, head, row, col]`` (NaN
    where no token covers a cell), with the model's answer."""

    id: str
    question: str
    answers: tuple[str, ...]
    answer: str
    image: Any
    grids: np.ndarray
    relevant: np.ndarray | None = None

    @property
    def head_mean(self) -> np.ndarray:
        """The mean over heads, ``[layer, row, col]`` (NaN where no token covers a cell)."""
        if not self.grids.size:
            return self.grids
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a cell no token covers: NaN, as meant
            return np.nanmean(self.grids, axis=1)


def sample_attention(
    vlm, samples: Any, *, limit: int | None = None, max_new_tokens: int = 8, progress: bool = True
) -> list[SampleAttention]:
    """Run each sample once (greedy answer + last-token attention of every head at every
    layer, recorded in the same pass) and put the attention on the image's patch grid."""
    from tqdm.auto import tqdm

    from . import RecordAttention
    from .analysis.items import as_items
    from .inputs import load_image

    out = []
    for item in tqdm(as_items(samples, limit), desc="attention per sample", unit="sample", disable=not progress):
        image = load_image(item.image)
        prepared = vlm.prepare(image, item.question)
        result = vlm.run(prepared, RecordAttention("all", heads="all"), generate=True, max_new_tokens=max_new_tokens)
        grid = prepared.layouts[0].grid
        column_of = {int(p): i for i, p in enumerate(prepared.image_positions.tolist())}
        cells = [(r, c, column_of[int(p)]) for (r, c), p in np.ndenumerate(grid.positions.numpy()) if p >= 0]
        rows_, cols_, columns = (np.array(v) for v in zip(*cells))
        layers = []
        for layer in range(vlm.n_layers):
            values = result.record("attention", layer)[0, :, -1].float().cpu().numpy()  # (heads, n_image)
            grids = np.full((values.shape[0], grid.rows, grid.cols), np.nan)
            grids[:, rows_, cols_] = values[:, columns]
            layers.append(grids)
        relevant = item.relevant_mask(grid.rows, grid.cols).numpy() if item.has_boxes else None
        out.append(
            SampleAttention(
                id=item.id,
                question=item.question,
                answers=item.answers,
                answer=result.text[0].strip(),
                image=image,
                grids=np.stack(layers),
                relevant=relevant,
            )
        )
    return out


# -- run directories ------------------------------------------------------------


def _patching_files() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Patching outputs in a run directory, preferred first: the sweep, a sweep still running (a
    reproduce run's section log, ``interp patch --resume``'s log), the summary (a report)."""
    files = FILES
    return (
        (files.patching_sweep,),
        (files.section_log("patching"), files.patching_partial),
        (files.report_json, files.patching_json),
    )


def _patching_wanted(section_first: bool = False) -> str:
    """The patching outputs a reader takes, for a message: the sweep, its row log, a report's section."""
    files = FILES
    reports = f"{files.report_json} / {files.patching_json}"
    summary = f"a patching section in {reports}" if section_first else f"{reports} with a patching section"
    return f"{files.patching_sweep}, {files.section_log('patching')}, or {summary}"


@dataclass
class Patching:
    """Patching outputs as read: ``rows`` (one per pair and condition, as in
    ``patching_sweep.csv``) or, where only a JSON report holds them, ``summary`` (mean per
    change, site, head, layer and group). ``partial``: a sweep still running (its row log)."""

    rows: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    source: str = ""
    partial: bool = False


@dataclass
class RunData:
    """What the page shows from a run directory: the masking table, the baseline, and
    the patching outputs when the run has them."""

    masking: pd.DataFrame | None = None
    baseline: dict | None = None
    findings: dict = field(default_factory=dict)
    patching: Patching | None = None
    title: str = ""


def _read_json(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON: {error.msg} (line {error.lineno})") from None
    if not isinstance(report, dict):
        raise InputError(f"{path} is not a JSON object")
    return report


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not a readable CSV: {str(error).splitlines()[0]}") from None


def patching_table(table: pd.DataFrame, source: str = "the patching table") -> Patching:
    """``table`` as patching sweep rows (``patching_sweep.csv``'s columns) or a patching
    summary (``patching.effects``); anything else is refused with one line.

    Raises:
        InputError: the columns are neither, or there are no rows.
    """
    columns = set(map(str, table.columns))
    kind = "rows" if set(SWEEP_COLUMNS) <= columns else "summary" if set(SUMMARY_COLUMNS) <= columns else None
    if kind is None:
        hint = " (it looks like a masking sweep: the masking curve comes from --run)" if "variant" in columns else ""
        raise InputError(
            f"{source} is not a patching table{hint}: expected the columns of {FILES.patching_sweep} "
            f"({', '.join(SWEEP_COLUMNS)}; written by `interp reproduce` and `interp patch`) or of a "
            f"patching summary ({', '.join(SUMMARY_COLUMNS)}); it has {', '.join(sorted(columns)) or 'none'}"
        )
    table = table.copy()
    table["layer"] = pd.to_numeric(table["layer"], errors="coerce")
    if table.empty or table["layer"].isna().any():
        raise InputError(f"{source} has no rows" if table.empty else f"{source}: column 'layer' must hold integers")
    table["layer"] = table["layer"].astype(int)
    table["head"] = pd.to_numeric(table["head"], errors="coerce").fillna(-1).astype(int) if "head" in table else -1
    for column in ("effect", "answer_logit_change", "mean", "low", "high", "n"):
        if column in table:
            table[column] = pd.to_numeric(table[column], errors="coerce")
    if kind == "rows":
        for column in ("row", "col"):
            table[column] = pd.to_numeric(table[column], errors="coerce").fillna(-1).astype(int)
        return Patching(rows=table, source=source)
    if "metric" not in table:
        table["metric"] = "effect"
    return Patching(summary=table, source=source)


def _patching_log(path: Path) -> Patching | None:
    """A sweep's row log (one JSON line per finished pair), read without changing it."""
    from .outputs import RowLog

    records, _ = RowLog(path).read()
    rows = [row for record in records for row in record.get("rows", [])]
    if not rows:
        return None
    found = patching_table(pd.DataFrame(rows), str(path))
    found.partial = True
    return found


def _patching_summary(path: Path) -> Patching | None:
    """The ``patching`` section of a report.json / patching.json (its per-group means)."""
    section = _read_json(path).get("patching") or {}
    records = list(section.get("effects") or []) + list(section.get("head_effects") or [])
    return patching_table(pd.DataFrame(records), f"{path} (patching summary)") if records else None


def _patching_in(directory: Path) -> Patching | None:
    """The patching outputs an ``interp reproduce`` / ``interp patch`` directory holds, the
    fullest first: the sweep's CSV, its row log (still running), the report's summary."""
    sweeps, partials, reports = _patching_files()
    for name in sweeps:
        if (directory / name).is_file():
            return patching_table(_read_csv(directory / name), str(directory / name))
    for name in partials:
        if (directory / name).is_file() and (found := _patching_log(directory / name)) is not None:
            return found
    for name in reports:
        if (directory / name).is_file() and (found := _patching_summary(directory / name)) is not None:
            return found
    return None


def read_patching(path: str | Path) -> Patching:
    """The patching outputs at ``path``: a ``patching_sweep.csv``, a sweep's row log
    (``rows/patching.jsonl``), a ``report.json`` / ``patching.json``, or a directory of an
    ``interp reproduce`` / ``interp patch`` run holding any of them.

    Raises:
        InputError: no patching output there, or a file of another kind.
    """
    path = Path(path).expanduser()
    wanted = _patching_wanted()
    if path.is_dir():
        found = _patching_in(path)
        if found is None:
            raise InputError(f"no patching output in {path}: expected {wanted}")
        return found
    if not path.is_file():
        raise InputError(f"no such patching file: {path}")
    if path.suffix.lower() == ".json":
        found = _patching_summary(path)
        if found is None:
            raise InputError(f"{path} has no patching section (patching.effects); expected {wanted}")
        return found
    if path.suffix.lower() == ".jsonl":
        found = _patching_log(path)
        if found is None:
            raise InputError(f"{path} holds no patching rows yet")
        return found
    return patching_table(_read_csv(path), str(path))


def read_run(run_dir: str | Path) -> RunData:
    """The masking rows (variant, layer, mean, low, high), baseline and findings of an
    ``interp reproduce`` run's ``report.json``, and the patching outputs of the run (or of
    an ``interp patch`` run: its ``patching.json``) when present.

    Raises:
        InputError: neither report is there, or it is unreadable.
    """
    run = Path(run_dir).expanduser()
    files, (_, _, reports) = FILES, _patching_files()
    report_path = next((run / name for name in reports if (run / name).is_file()), None)
    if report_path is None:
        raise InputError(
            f"no {files.report_json} in run directory {run}; pass the --out of an `interp reproduce` run "
            f"(or of `interp patch`: {files.patching_json})"
        )
    report = _read_json(report_path)
    masking = report.get("masking") or {}
    rows = pd.DataFrame(masking.get("per_layer", []))
    missing = {"variant", "layer", "mean", "low", "high"} - set(rows.columns)
    if len(rows) and missing:
        raise InputError(f"{report_path}: masking.per_layer rows lack {sorted(missing)}")
    n = report.get("n_samples")
    title = f"{report.get('model', '')} on {report.get('dataset', '')}" + (f" (n={n})" if n is not None else "")
    return RunData(
        masking=rows if len(rows) else None,
        baseline=report.get("baseline_accuracy"),
        findings=masking.get("findings", {}),
        patching=_patching_in(run),
        title=title,
    )


# -- what the figures show ----------------------------------------------------------


def _value_column(rows: pd.DataFrame) -> str | None:
    """``effect`` where any pair's answers differ; else (a control, e.g. a distractor
    change) ``answer_logit_change``; None when neither has a value."""
    if rows["effect"].notna().any():
        return "effect"
    if "answer_logit_change" in rows and rows["answer_logit_change"].notna().any():
        return "answer_logit_change"
    return None


def _group_rank(group: str) -> int:
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)


def _in_order(table: pd.DataFrame) -> pd.DataFrame:
    """Sites that patch whole activations first, changes as they come, groups from the
    image to the last token, then head and layer."""
    sites = {s: (s == "z", i) for i, s in enumerate(dict.fromkeys(table.site))}
    changes = {c: i for i, c in enumerate(dict.fromkeys(table.change))}
    keys = [
        (sites[s], changes[c], _group_rank(g), str(g), int(h), int(layer))
        for s, c, g, h, layer in zip(table.site, table.change, table.group, table["head"], table.layer)
    ]
    order = sorted(range(len(table)), key=keys.__getitem__)
    return table.iloc[order].reset_index(drop=True)


def patching_bands(patching: Patching) -> pd.DataFrame:
    """The patching map's values: per (site, change, group, head, layer) the mean over
    pairs of ``effect`` (pairs whose answers differ; a change with none, the distractor
    control, gets ``answer_logit_change``) and ``n`` pairs; ``band`` labels the map's row
    (the group, with its head for site ``z``). The per-cell rows (group ``cell``) are left
    out: :func:`patching_cells` keeps them.

    Returns:
        Columns site, change, group, head, band, layer, metric, mean, n (and low, high
        from a summary).
    """
    columns, parts = ["site", "change", "group", "head", "layer", "metric", "mean", "n"], []
    if patching.rows is not None:
        groups = patching.rows[patching.rows.group.astype(str) != "cell"]
        for (site, change), part in groups.groupby(["site", "change"], sort=False):
            metric = _value_column(part)
            if metric is None:
                continue
            means = part.dropna(subset=[metric]).groupby(["group", "head", "layer"], sort=False)[metric]
            parts.append(
                means.agg(mean="mean", n="count").reset_index().assign(site=site, change=change, metric=metric)
            )
    else:
        for _, part in patching.summary.groupby(["site", "change"], sort=False):
            metrics = list(dict.fromkeys(part.metric))
            parts.append(part[part.metric == ("effect" if "effect" in metrics else metrics[0])])
        columns += [c for c in ("low", "high") if c in patching.summary]
    if not parts:
        return pd.DataFrame(columns=columns[:4] + ["band"] + columns[4:])
    table = _in_order(pd.concat(parts, ignore_index=True).reindex(columns=columns))
    table.insert(4, "band", [g if h < 0 else f"{g} · head {h}" for g, h in zip(table.group, table["head"])])
    return table


def patching_cells(patching: Patching) -> pd.DataFrame:
    """The per-cell rows (group ``cell``: one image cell patched alone), apart from the
    group bands: per (site, pair, head, layer, row, col) the ``value`` of ``metric``
    (``effect``, or ``answer_logit_change`` for a pair whose answers agree).

    Returns:
        Columns site, change, pair, head, layer, row, col, metric, value (empty from a summary).
    """
    columns = ["site", "change", "pair", "head", "layer", "row", "col", "metric", "value"]
    rows = patching.rows
    cells = rows[(rows.group.astype(str) == "cell") & (rows.row >= 0) & (rows.col >= 0)] if rows is not None else []
    parts = []
    for _, part in cells.groupby(["site", "pair"], sort=False) if len(cells) else ():
        metric = _value_column(part)
        if metric is not None:
            parts.append(part.assign(metric=metric, value=part[metric]))
    if not parts:
        return pd.DataFrame(columns=columns)
    table = pd.concat(parts, ignore_index=True)[columns]
    return table.astype({"layer": int, "row": int, "col": int})


def layer_concentration(samples: list[SampleAttention]) -> pd.DataFrame:
    """How concentrated each sample's head-mean attention is at each layer: ``peak``, the
    share of its hottest image cell (NaN where no cell has a value).

    Returns:
        Columns sample, layer, peak.
    """
    rows = [
        {"sample": sample.id, "layer": layer, "peak": float(np.nanmax(grid)) if np.isfinite(grid).any() else np.nan}
        for sample in samples
        for layer, grid in enumerate(sample.head_mean)
    ]
    return pd.DataFrame(rows, columns=["sample", "layer", "peak"])


def start_layer(samples: list[SampleAttention]) -> int:
    """The layer every sample's slider opens at: the highest mean :func:`layer_concentration`
    over ``samples`` (the lowest such layer on a tie; 0 when nothing is known)."""
    means = layer_concentration(samples).groupby("layer").peak.mean().dropna()
    return int(means.idxmax()) if len(means) else 0


# -- figures ----------------------------------------------------------------------


def _png_data_uri(image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell_centres(n: int, extent: int) -> list[float]:
    return [(i + 0.5) * extent / n for i in range(n)]


def _grid_lists(grid: np.ndarray) -> list:
    """A grid as nested lists with None for NaN (plotly draws None as a gap)."""
    return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in np.asarray(grid, dtype=float)]


def _sqrt_scale(top: float) -> tuple[dict, float]:
    """Colour-bar ticks for values drawn as their square root (small shares stay visible),
    labelled with the values themselves; and the top of the drawn range."""
    top = top if top > 0 else 1.0
    ticks = [t for t in np.linspace(0, top, 5)]
    return dict(tickvals=[float(np.sqrt(t)) for t in ticks], ticktext=[f"{t:.3g}" for t in ticks]), float(np.sqrt(top))


def _drawn(grid: np.ndarray) -> list:
    return _grid_lists(np.sqrt(np.clip(grid, 0, None)))


def _top(values: np.ndarray) -> float:
    return float(np.nanmax(values)) if np.isfinite(values).any() else 1.0


def _relevant_shapes(relevant: np.ndarray | None, width: int, height: int, xref="x", yref="y") -> list[dict]:
    if relevant is None:
        return []
    rows, cols = relevant.shape
    return [
        dict(
            type="rect",
            xref=xref,
            yref=yref,
            x0=c * width / cols,
            x1=(c + 1) * width / cols,
            y0=r * height / rows,
            y1=(r + 1) * height / rows,
            line=dict(color="cyan", width=1.5),
        )
        for r, c in zip(*np.nonzero(relevant))
    ]


def _slider(n_layers: int, args_for, label: str = "layer", active: int = 0) -> dict:
    return dict(
        active=active,
        currentvalue=dict(prefix=f"{label} "),
        pad=dict(t=30),
        steps=[dict(method="restyle", label=str(layer), args=args_for(layer)) for layer in range(n_layers)],
    )


def _menu(labels: list[str], traces_of: list[list[int]], n_traces: int, y: float) -> dict:
    """A dropdown at the top left, its bottom at ``y`` (paper units), that shows one view's
    traces (the modebar is top right)."""
    buttons = [
        dict(label=label, method="restyle", args=[{"visible": [t in traces for t in range(n_traces)]}])
        for label, traces in zip(labels, traces_of)
    ]
    return dict(buttons=buttons, direction="down", x=0, xanchor="left", y=y, yanchor="bottom", showactive=True)


def _sample_grid(sample: SampleAttention):
    """The per-sample figure's subplots: the image (spanning every row), a gap for its
    colour bar, then the heads, four to a row; and the figure's plot-area height."""
    from plotly.subplots import make_subplots

    n_heads = sample.grids.shape[1]
    per_row = min(n_heads, 4)
    head_rows = -(-n_heads // per_row)
    width, height = sample.image.size
    plot_height = max(IMAGE_PX * height / width, HEAD_PX * head_rows + 40 * (head_rows - 1))
    total = IMAGE_PX + GAP_PX + HEAD_PX * per_row
    specs = [
        [{"rowspan": head_rows} if r == 0 else None, None]
        + [{} if r * per_row + c < n_heads else None for c in range(per_row)]
        for r in range(head_rows)
    ]
    fig = make_subplots(
        rows=head_rows,
        cols=per_row + 2,
        specs=specs,
        column_widths=[IMAGE_PX, GAP_PX] + [HEAD_PX] * per_row,
        subplot_titles=["mean over heads"] + [f"head {h}" for h in range(n_heads)],
        horizontal_spacing=8 / total,
        vertical_spacing=40 / plot_height if head_rows > 1 else 0.0,
    )
    return fig, per_row, plot_height


def attention_figure(sample: SampleAttention, start: int | None = None):
    """The image with the head-mean last-token attention over it (trace 1) and every head's
    map (traces 2 on), one colour scale per kind across layers; one layer slider moves them
    all. Opens at layer ``start`` (default: :func:`start_layer` of this sample alone)."""
    import plotly.graph_objects as go

    n_layers, n_heads, rows, cols = sample.grids.shape
    mean = sample.head_mean
    width, height = sample.image.size
    start = start_layer([sample]) if start is None else start
    fig, per_row, plot_height = _sample_grid(sample)
    image_x = fig.layout.xaxis.domain
    mean_ticks, mean_top = _sqrt_scale(_top(mean))
    fig.add_trace(go.Image(source=_png_data_uri(sample.image), hoverinfo="skip"), row=1, col=1)
    fig.add_trace(
        go.Heatmap(
            z=_drawn(mean[start]),
            customdata=_grid_lists(mean[start]),
            x=_cell_centres(cols, width),
            y=_cell_centres(rows, height),
            zmin=0,
            zmax=mean_top,
            colorscale=SPOTLIGHT,
            hovertemplate="mean over heads: attention %{customdata:.4f}<extra></extra>",
            colorbar=dict(
                title=dict(text="share of<br>image attn<br>(sqrt scale)"),
                x=image_x[1] + 0.01,
                xanchor="left",
                y=1,
                yanchor="top",
                len=min(1.0, IMAGE_PX * height / width / plot_height),
                thickness=12,
                **mean_ticks,
            ),
        ),
        row=1,
        col=1,
    )
    head_ticks, head_top = _sqrt_scale(_top(sample.grids))
    for head in range(n_heads):
        fig.add_trace(
            go.Heatmap(
                z=_drawn(sample.grids[start, head]),
                customdata=_grid_lists(sample.grids[start, head]),
                zmin=0,
                zmax=head_top,
                colorscale="Viridis",
                showscale=head == 0,
                colorbar=dict(title=dict(text="attention<br>per head<br>(sqrt scale)"), thickness=12, **head_ticks),
                hovertemplate=f"head {head}<br>" + "row %{y} col %{x}<br>attention %{customdata:.4f}<extra></extra>",
            ),
            row=head // per_row + 1,
            col=head % per_row + 3,
        )
    traces = list(range(1, n_heads + 2))

    def step(layer: int) -> list:
        maps = [mean[layer]] + [sample.grids[layer, h] for h in range(n_heads)]
        return [{"z": [_drawn(m) for m in maps], "customdata": [_grid_lists(m) for m in maps]}, traces]

    fig.update_layout(
        sliders=[_slider(n_layers, step, active=start)],
        shapes=_relevant_shapes(sample.relevant, width, height),
        width=IMAGE_PX + GAP_PX + HEAD_PX * per_row + 120,
        height=int(plot_height) + 60 + 110,
        margin=dict(l=20, r=100, t=60, b=110),
    )
    fig.update_annotations(font_size=12)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    for trace in fig.data[2:]:  # each head's map keeps the grid's shape, at the top of its cell
        fig.layout["xaxis" + trace.xaxis[1:]].update(constrain="domain")
        fig.layout["yaxis" + trace.yaxis[1:]].update(scaleanchor=trace.xaxis, constrain="domain", constraintoward="top")
    fig.update_xaxes(range=[0, width], constrain="domain", row=1, col=1)
    fig.update_yaxes(
        range=[height, 0], autorange=False, scaleanchor="x", constrain="domain", constraintoward="top", row=1, col=1
    )
    return fig


def masking_figure(run: RunData):
    """Accuracy per masked layer, one line per variant with its 95% CI band, the baseline with its CI."""
    import plotly.graph_objects as go

    fig = go.Figure()
    table = run.masking
    for variant in dict.fromkeys(table.variant):
        rows = table[table.variant == variant].sort_values("layer")
        colour = VARIANT_COLOURS.get(variant, "#555555")
        fig.add_trace(
            go.Scatter(
                x=list(rows.layer) + list(rows.layer[::-1]),
                y=list(rows.high) + list(rows.low[::-1]),
                fill="toself",
                fillcolor=colour,
                opacity=0.15,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=variant,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=rows.layer,
                y=rows["mean"],
                mode="lines+markers",
                name=variant,
                legendgroup=variant,
                line=dict(color=colour, dash="dash" if variant.startswith("knockout") else "solid"),
                customdata=np.stack([rows.low, rows.high], axis=1),
                hovertemplate=f"{variant}<br>layer %{{x}}: %{{y:.3f}} "
                "[%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>",
            )
        )
    if run.baseline:
        fig.add_hrect(
            y0=run.baseline["low"], y1=run.baseline["high"], fillcolor="grey", opacity=0.15, line_width=0, layer="below"
        )
        fig.add_hline(
            y=run.baseline["mean"],
            line=dict(color="black", dash="dot", width=1),
            layer="below",
            annotation_text=f"no edit {run.baseline['mean']:.3f}",
            annotation_position="bottom right",
        )
    fusion = (run.findings.get("single") or {}).get("fusion_layers") or []
    if fusion:
        fig.add_vrect(
            x0=min(fusion) - 0.5,
            x1=max(fusion) + 0.5,
            y0=0,
            y1=0.04,
            fillcolor="#D55E00",
            opacity=0.6,
            line_width=0,
            annotation_text="fusion layers (single)",
            annotation_position="top left",
        )
    fig.update_layout(
        xaxis_title="layer l",
        yaxis_title="accuracy",
        yaxis_range=[-0.02, 1.02],
        height=430,
        margin=dict(l=60, r=20, t=40, b=50),
    )
    return fig


def _view_label(change: str, site: str, several_sites: bool) -> str:
    return f"{change} · {site}" if several_sites else str(change)


def _band_grid(part: pd.DataFrame, column: str, bands: list[str], layers: list[int]) -> np.ndarray:
    if column not in part:
        return np.full((len(bands), len(layers)), np.nan)
    grid = part.pivot(index="band", columns="layer", values=column).reindex(index=bands, columns=layers)
    return grid.to_numpy(dtype=float)


def patching_figure(bands: pd.DataFrame):
    """The patching map: one heatmap per (change, site) of :func:`patching_bands`, its rows
    the position groups and its columns the layers; a menu picks the change."""
    import plotly.graph_objects as go

    views = list(dict.fromkeys(zip(bands.change, bands.site)))
    several_sites = bands.site.nunique() > 1
    fig = go.Figure()
    most = 1
    for index, (change, site) in enumerate(views):
        part = bands[(bands.change == change) & (bands.site == site)]
        names, layers = list(dict.fromkeys(part.band)), sorted(part.layer.unique())
        most = max(most, len(names))
        mean = _band_grid(part, "mean", names, layers)
        extra = np.stack([_band_grid(part, c, names, layers) for c in ("n", "low", "high")], axis=-1)
        metric = str(part.metric.iloc[0])
        interval = "<br>95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]" if "low" in part else ""
        fig.add_trace(
            go.Heatmap(
                z=_grid_lists(mean),
                customdata=[[[None if np.isnan(v) else float(v) for v in cell] for cell in row] for row in extra],
                x=[str(layer) for layer in layers],
                y=names,
                name=_view_label(change, site, several_sites),
                visible=index == 0,
                colorscale="RdBu",
                zmid=0,
                colorbar=dict(title=dict(text=metric.replace("_", " "))),
                hovertemplate=f"{html.escape(str(change))} ({html.escape(str(site))})<br>%{{y}}, layer %{{x}}<br>"
                f"{metric} %{{z:.3f}} (n=%{{customdata[0]}}){interval}<extra></extra>",
            )
        )
    height = max(320, 44 * most + 200)
    if len(views) > 1:
        labels = [_view_label(c, s, several_sites) for c, s in views]
        y = 1 + 8 / (height - 120)  # 8 px above the plot, below the modebar
        fig.update_layout(updatemenus=[_menu(labels, [[i] for i in range(len(views))], len(views), y)])
    fig.update_layout(
        xaxis=dict(title="layer", type="category"),
        yaxis=dict(title="position group", autorange="reversed", type="category"),
        height=height,
        margin=dict(l=150, r=20, t=70, b=50),
    )
    return fig


def _cell_grid(part: pd.DataFrame, rows: int, cols: int) -> np.ndarray:
    grid = np.full((rows, cols), np.nan)
    grid[part.row.to_numpy(), part.col.to_numpy()] = part.value.to_numpy(dtype=float)
    return grid


def patching_cells_figure(cells: pd.DataFrame):
    """The per-cell patching maps (:func:`patching_cells`, whole-activation sites): one image
    grid per cell layer, one pair at a time (the menu picks it), one colour scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cells = cells[cells["head"] < 0]
    layers = sorted(cells.layer.unique())
    views = list(dict.fromkeys(zip(cells.pair, cells.site)))
    several_sites = cells.site.nunique() > 1
    rows, cols = int(cells.row.max()) + 1, int(cells.col.max()) + 1
    top = float(np.nanmax(np.abs(cells.value.to_numpy(dtype=float)))) if cells.value.notna().any() else 1.0
    fig = make_subplots(
        rows=1, cols=len(layers), subplot_titles=[f"layer {layer}" for layer in layers], horizontal_spacing=0.03
    )
    traces_of = []
    for index, (pair, site) in enumerate(views):
        part = cells[(cells.pair == pair) & (cells.site == site)]
        metric, first = str(part.metric.iloc[0]), len(fig.data)
        for column, layer in enumerate(layers, start=1):
            fig.add_trace(
                go.Heatmap(
                    z=_grid_lists(_cell_grid(part[part.layer == layer], rows, cols)),
                    zmin=-top,
                    zmax=top,
                    colorscale="RdBu",
                    showscale=column == 1,
                    colorbar=dict(title=dict(text=metric.replace("_", " "))),
                    visible=index == 0,
                    hovertemplate=f"{html.escape(str(pair))}, layer {layer}<br>row %{{y}} col %{{x}}<br>"
                    f"{metric} %{{z:.3f}}<extra></extra>",
                ),
                row=1,
                col=column,
            )
        traces_of.append(list(range(first, len(fig.data))))
    side = min(260, 900 // max(1, len(layers)))
    if len(views) > 1:
        labels = [
            f"{p} ({cells[cells.pair == p].change.iloc[0]})" + (f" · {s}" if several_sites else "") for p, s in views
        ]
        y = 1 + 30 / side  # above the subplot titles, below the modebar
        fig.update_layout(updatemenus=[_menu(labels, traces_of, len(fig.data), y)])
    fig.update_layout(width=max(560, side * len(layers) + 160), height=side + 120, margin=dict(l=20, r=20, t=100, b=20))
    fig.update_annotations(font_size=12)
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", constrain="domain")
    for column in range(1, len(layers) + 1):
        fig.update_yaxes(scaleanchor=f"x{column if column > 1 else ''}", row=1, col=column)
    return fig


# -- the page -----------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.1em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
.note {{ color: #555; font-size: 0.9em; }}
.caption {{ font-size: 0.95em; margin: 0.4em 0; max-width: 70em; }}
</style>
<script type="text/javascript">{plotly_js}</script>
</head><body>
<h1>{title}</h1>
<p class="note">{note}</p>
{body}
</body></html>
"""


@dataclass
class ExplorerPage:
    """The written page: ``path`` (index.html) and its ``html``; shows inline in Jupyter."""

    path: Path | None
    html: str

    def _repr_html_(self) -> str:
        # an iframe keeps the page's scripts and styles apart from the notebook's
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:900px;'
            'border:1px solid #ddd"></iframe>'
        )


def _figure_div(fig, div_id: str, caption: str = "") -> str:
    """A figure with its caption above it, outside the plot, where plotly's modebar cannot cover it."""
    import plotly.io as pio

    figure = pio.to_html(
        fig, include_plotlyjs=False, full_html=False, div_id=div_id, config={"displaylogo": False, "responsive": False}
    )
    return f'<p class="caption" id="{div_id}-caption">{caption}</p>{figure}' if caption else figure


def _sample_section(index: int, sample: SampleAttention, start: int) -> str:
    answer = f"{sample.question}  →  {sample.answer}" + (f"  (expected: {sample.answers[0]})" if sample.answers else "")
    return f"<h2>sample {html.escape(sample.id)}: {html.escape(sample.question)}</h2>" + _figure_div(
        attention_figure(sample, start), f"attention-{index}", html.escape(answer)
    )


def _masking_section(run: RunData | None) -> str:
    if run is None:
        return ""
    if run.masking is None:
        return '<h2>masking curve</h2><p class="note">this run has no masking table</p>'
    caption = html.escape(f"masking: {run.title} — accuracy per layer, 95% CIs")
    return f"<h2>masking curve</h2>{_figure_div(masking_figure(run), 'masking', caption)}"


def _patching_section(patching: Patching | None) -> str:
    if patching is None:
        return (
            '<h2>activation patching</h2><p class="note" id="patching-missing">no patching map: the run has no '
            f"patching output ({_patching_wanted(section_first=True)}; written by `interp reproduce` "
            "on the synthetic data and by `interp patch`); "
            "pass a run directory with one, or --patching FILE</p>"
        )
    bands, cells = patching_bands(patching), patching_cells(patching)
    source = html.escape(patching.source) + (" (a sweep still running: the pairs finished so far)" * patching.partial)
    parts = ["<h2>activation patching</h2>"]
    if bands.empty:
        parts.append(f'<p class="note">{source} has no position-group rows to map</p>')
    else:
        caption = (
            f"From {source}: the source's activation patched into the base at one layer and one position group "
            "at a time. Colour: the mean over pairs of effect = (patched − base) / (source − base) logit "
            "difference (1: patching restores the source's answer); a change whose answers never differ (a "
            "control) shows the answer logit's change instead. One band per position group; the per-cell rows "
            "are drawn apart below, not averaged in."
        )
        views = bands[["change", "site"]].drop_duplicates()
        if len(views) > 1:
            caption += " The menu at the top left picks the change type" + (
                " and site." if views.site.nunique() > 1 else "."
            )
        parts.append(_figure_div(patching_figure(bands), "patching", caption))
    whole = cells[cells["head"] < 0]
    if not whole.empty:
        caption = (
            "Per-cell patching (group “cell”): one image cell of the base patched alone, at the layers the "
            "sweep mapped cell by cell; one colour scale"
            + ("; the menu at the top left picks the pair." if whole.pair.nunique() > 1 else ".")
        )
        parts.append(_figure_div(patching_cells_figure(whole), "patching-cells", caption))
    elif patching.rows is None:
        parts.append(f'<p class="note">per-cell rows are only in {FILES.patching_sweep}, not in this summary</p>')
    return "\n".join(parts)


def build_page(samples: list[SampleAttention], run: RunData | None = None, *, title: str = "interp explore") -> str:
    """The page's HTML: plotly's JS inline once, then every figure with its caption."""
    from plotly.offline import get_plotlyjs

    start = start_layer(samples)
    sections = [_sample_section(index, sample, start) for index, sample in enumerate(samples)]
    sections += [_masking_section(run), _patching_section(run.patching if run is not None else None)]
    note = (
        "Last prompt token → image attention: the image with the mean over heads, and every head's map beside "
        "it; one slider per sample moves both. Dark cells get little attention; attended cells show the image "
        "as it is. Relevant region outlined (cyan) where the sample has boxes. One colour scale across layers. "
        f"Every sample opens at layer {start}: the layer whose mean-over-heads attention is most concentrated "
        f"(largest share on one image cell) on average over the {len(samples)} sample(s) shown."
    )
    return PAGE.format(title=html.escape(title), plotly_js=get_plotlyjs(), note=note, body="\n".join(sections))


def explore(
    vlm,
    samples: Any = None,
    out: str | Path | None = None,
    run_dir: str | Path | None = None,
    *,
    patching: pd.DataFrame | str | Path | None = None,
    limit: int | None = 4,
    max_new_tokens: int = 8,
    progress: bool = True,
) -> ExplorerPage:
    """Build the explorer page and write ``out/index.html`` when ``out`` is given.

    Args:
        vlm: the loaded model.
        samples: anything :func:`interp.analysis.items.as_items` takes (default: the synthetic test split).
        out: directory for ``index.html``.
        run_dir: an ``interp reproduce`` (or ``interp patch``) output directory: the masking
            curve and, when the run has one, the patching map.
        patching: patching outputs to map instead of the run's: a ``patching_sweep.csv``, a
            report.json / patching.json, a row log, a directory holding one (see
            :func:`read_patching`), or a DataFrame of sweep rows.
        limit: samples on the page.
        max_new_tokens: greedy answer length.
        progress: show a progress bar.

    Raises:
        InputError: a bad run directory or patching input, before any sample runs.
    """
    if samples is None:
        from .data.synthetic import SyntheticVQA

        samples = SyntheticVQA("test", seed=0, image_size=vlm.scene_size)
    run = read_run(run_dir) if run_dir is not None else None
    if patching is not None:
        found = (
            patching_table(patching, "the patching DataFrame")
            if isinstance(patching, pd.DataFrame)
            else read_patching(patching)
        )
        run = run or RunData()
        run.patching = found
    attention = sample_attention(vlm, samples, limit=limit, max_new_tokens=max_new_tokens, progress=progress)
    page = build_page(attention, run, title=f"interp explore: {vlm.name}")
    path = None
    if out is not None:
        path = Path(out).expanduser() / "index.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    return ExplorerPage(path=path, html=page)


__all__ = [
    "ExplorerPage",
    "Patching",
    "RunData",
    "SampleAttention",
    "attention_figure",
    "build_page",
    "explore",
    "layer_concentration",
    "patching_bands",
    "patching_cells",
    "patching_figure",
    "read_patching",
    "read_run",
    "sample_attention",
    "start_layer",
]
