"""``interp explore``: one self-contained HTML page to look around a model and a run.

The page holds, per sample, the image with the last token's attention over it and a
layer slider, the same per head, and (from a run directory's ``report.json``) the
masking curve with its 95% CIs and, when the run has one, the activation-patching map.
Every asset is inline (plotly's JavaScript, the images as data URIs): open the file
from disk, mail it, put it in a notebook; no server, no network.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError

#: opacity of the dimming layer from no attention (0) to the most (1): attended cells show the image as it is
SPOTLIGHT = [[0.0, "rgba(0,0,0,0.72)"], [1.0, "rgba(0,0,0,0)"]]
VARIANT_COLOURS = {
    "single": "#0072B2",
    "window": "#E69F00",
    "cumulative": "#009E73",
    "knockout_last": "#CC79A7",
    "knockout_question": "#56B4E9",
}


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
        return np.nanmean(self.grids, axis=1) if self.grids.size else self.grids


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


@dataclass
class RunData:
    """What the page shows from a run directory: the masking table, the baseline, and
    an optional patching table."""

    masking: pd.DataFrame | None = None
    baseline: dict | None = None
    findings: dict = field(default_factory=dict)
    patching: pd.DataFrame | None = None
    title: str = ""


def read_run(run_dir: str | Path) -> RunData:
    """The masking rows (variant, layer, mean, low, high), baseline and findings of an
    ``interp reproduce`` run's ``report.json``, and its ``patching.csv`` when present."""
    run = Path(run_dir).expanduser()
    report_path = run / "report.json"
    if not report_path.is_file():
        raise InputError(f"no report.json in run directory {run}; pass the --out of an `interp reproduce` run")
    try:
        report = json.loads(report_path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{report_path} is not valid JSON: {error.msg} (line {error.lineno})") from None
    masking = report.get("masking", {})
    rows = pd.DataFrame(masking.get("per_layer", []))
    missing = {"variant", "layer", "mean", "low", "high"} - set(rows.columns)
    if len(rows) and missing:
        raise InputError(f"{report_path}: masking.per_layer rows lack {sorted(missing)}")
    patching = None
    if (run / "patching.csv").is_file():
        patching = pd.read_csv(run / "patching.csv")
    elif report.get("patching", {}).get("per_cell"):
        patching = pd.DataFrame(report["patching"]["per_cell"])
    title = f"{report.get('model', '')} on {report.get('dataset', '')} (n={report.get('n_samples', '?')})"
    return RunData(
        masking=rows if len(rows) else None,
        baseline=report.get("baseline_accuracy"),
        findings=masking.get("findings", {}),
        patching=patching,
        title=title,
    )


# -- figures ----------------------------------------------------------------------


def _png_data_uri(image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell_centres(n: int, extent: int) -> list[float]:
    return [(i + 0.5) * extent / n for i in range(n)]


def _grid_lists(grid: np.ndarray) -> list:
    """A grid as nested lists with None for NaN (plotly draws None as a gap)."""
    return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in grid]


def _sqrt_scale(top: float) -> tuple[dict, float]:
    """Colour-bar ticks for values drawn as their square root (small shares stay visible),
    labelled with the values themselves; and the top of the drawn range."""
    top = top if top > 0 else 1.0
    ticks = [t for t in np.linspace(0, top, 5)]
    return dict(tickvals=[float(np.sqrt(t)) for t in ticks], ticktext=[f"{t:.3g}" for t in ticks]), float(np.sqrt(top))


def _drawn(grid: np.ndarray) -> list:
    return _grid_lists(np.sqrt(np.clip(grid, 0, None)))


def _start_layer(grids: np.ndarray) -> int:
    """The layer whose attention is most concentrated (its hottest cell): where to open the slider."""
    peaks = [np.nanmax(g) if np.isfinite(g).any() else -1.0 for g in grids]
    return int(np.argmax(peaks))


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


def attention_figure(sample: SampleAttention):
    """The image, the head-mean last-token attention over it (one colour scale for all
    layers) and a layer slider."""
    import plotly.graph_objects as go

    mean = sample.head_mean
    width, height = sample.image.size
    rows, cols = mean.shape[1:]
    ticks, top = _sqrt_scale(float(np.nanmax(mean)) if np.isfinite(mean).any() else 1.0)
    start = _start_layer(mean)
    fig = go.Figure(
        [
            go.Image(source=_png_data_uri(sample.image), hoverinfo="skip"),
            go.Heatmap(
                z=_drawn(mean[start]),
                customdata=_grid_lists(mean[start]),
                x=_cell_centres(cols, width),
                y=_cell_centres(rows, height),
                zmin=0,
                zmax=top,
                colorscale=SPOTLIGHT,
                hovertemplate="attention %{customdata:.4f}<extra></extra>",
                colorbar=dict(title=dict(text="share of<br>image attn<br>(sqrt scale)"), **ticks),
            ),
        ]
    )
    fig.update_layout(
        title=dict(
            text=html.escape(
                f"{sample.question}  →  {sample.answer}  (expected: {sample.answers[0]})"
                if sample.answers
                else f"{sample.question}  →  {sample.answer}"
            ),
            font=dict(size=13),
        ),
        sliders=[
            _slider(
                mean.shape[0],
                lambda layer: [{"z": [_drawn(mean[layer])], "customdata": [_grid_lists(mean[layer])]}, [1]],
                active=start,
            )
        ],
        shapes=_relevant_shapes(sample.relevant, width, height),
        width=520,
        height=560,
        margin=dict(l=20, r=20, t=60, b=20),
    )
    fig.update_xaxes(visible=False, range=[0, width])
    fig.update_yaxes(visible=False, range=[height, 0], scaleanchor="x")
    return fig


def heads_figure(sample: SampleAttention):
    """Every head's last-token attention at one layer (slider), one colour scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n_layers, n_heads, rows, cols = sample.grids.shape
    per_row = min(n_heads, 6)
    grid_rows = -(-n_heads // per_row)
    fig = make_subplots(
        rows=grid_rows,
        cols=per_row,
        subplot_titles=[f"head {h}" for h in range(n_heads)],
        horizontal_spacing=0.02,
        vertical_spacing=0.08,
    )
    ticks, top = _sqrt_scale(float(np.nanmax(sample.grids)) if np.isfinite(sample.grids).any() else 1.0)
    start = _start_layer(sample.head_mean)
    for head in range(n_heads):
        fig.add_trace(
            go.Heatmap(
                z=_drawn(sample.grids[start, head]),
                customdata=_grid_lists(sample.grids[start, head]),
                zmin=0,
                zmax=top,
                colorscale="Viridis",
                showscale=head == 0,
                colorbar=dict(title=dict(text="attention<br>(sqrt scale)"), **ticks),
                hovertemplate=f"head {head}<br>" + "row %{y} col %{x}<br>attention %{customdata:.4f}<extra></extra>",
            ),
            row=head // per_row + 1,
            col=head % per_row + 1,
        )
    traces = list(range(n_heads))
    fig.update_layout(
        title=dict(text="per head (one colour scale for all heads and layers)", font=dict(size=13)),
        sliders=[
            _slider(
                n_layers,
                lambda layer: [
                    {
                        "z": [_drawn(sample.grids[layer, h]) for h in traces],
                        "customdata": [_grid_lists(sample.grids[layer, h]) for h in traces],
                    },
                    traces,
                ],
                active=start,
            )
        ],
        height=170 * grid_rows + 160,
        width=min(1100, 150 * per_row + 120),
        margin=dict(l=20, r=20, t=60, b=20),
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
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
        title=dict(text=html.escape(f"masking: {run.title} — accuracy per layer, 95% CIs"), font=dict(size=13)),
        xaxis_title="layer l",
        yaxis_title="accuracy",
        yaxis_range=[-0.02, 1.02],
        height=430,
        margin=dict(l=60, r=20, t=60, b=50),
    )
    return fig


def _patching_columns(table: pd.DataFrame) -> tuple[str, str, str]:
    x = next((c for c in ("position", "token", "pos", "column", "site") if c in table), None)
    value = next((c for c in ("effect", "value", "score", "mean", "recovered") if c in table), None)
    if "layer" not in table or x is None or value is None:
        raise InputError(
            "a patching table needs a 'layer' column, a position column (position/token/pos/column/site) "
            f"and a value column (effect/value/score/mean/recovered); got {list(table.columns)}"
        )
    return "layer", x, value


def patching_figure(table: pd.DataFrame):
    """The patching map: effect per (layer, position), as a heatmap."""
    import plotly.graph_objects as go

    layer, x, value = _patching_columns(table)
    grid = table.pivot_table(index=layer, columns=x, values=value, aggfunc="mean", sort=False)
    fig = go.Figure(
        go.Heatmap(
            z=grid.values.tolist(),
            x=[str(c) for c in grid.columns],
            y=list(grid.index),
            colorscale="RdBu",
            zmid=0,
            colorbar=dict(title=dict(text=value)),
            hovertemplate=f"layer %{{y}}, {x} %{{x}}: %{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_layout(
        title=dict(text=f"activation patching: {value} per layer and {x}", font=dict(size=13)),
        xaxis_title=x,
        yaxis_title="layer",
        height=460,
        margin=dict(l=60, r=20, t=60, b=50),
    )
    return fig


# -- the page -----------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.1em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }}
.note {{ color: #555; font-size: 0.9em; }}
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


def _figure_div(fig, div_id: str) -> str:
    import plotly.io as pio

    return pio.to_html(
        fig, include_plotlyjs=False, full_html=False, div_id=div_id, config={"displaylogo": False, "responsive": False}
    )


def build_page(samples: list[SampleAttention], run: RunData | None = None, *, title: str = "interp explore") -> str:
    """The page's HTML: plotly's JS inline once, then every figure."""
    from plotly.offline import get_plotlyjs

    sections = []
    for index, sample in enumerate(samples):
        sections.append(
            f"<h2>sample {html.escape(sample.id)}: {html.escape(sample.question)}</h2>"
            f'<div class="row">{_figure_div(attention_figure(sample), f"attention-{index}")}'
            f"{_figure_div(heads_figure(sample), f'heads-{index}')}</div>"
        )
    if run is not None and run.masking is not None:
        sections.append(f"<h2>masking curve</h2>{_figure_div(masking_figure(run), 'masking')}")
    elif run is not None:
        sections.append('<h2>masking curve</h2><p class="note">this run has no masking table</p>')
    if run is not None and run.patching is not None:
        sections.append(f"<h2>activation patching</h2>{_figure_div(patching_figure(run.patching), 'patching')}")
    else:
        sections.append(
            '<h2>activation patching</h2><p class="note" id="patching-missing">no patching map '
            "(pass a run directory with patching.csv, or patching=...)</p>"
        )
    note = (
        "Last prompt token → image attention. Dark cells get little attention; attended cells show the image "
        "as it is. Relevant region outlined (cyan) where the sample has boxes. One colour scale across layers."
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
    """Build the explorer page for ``samples`` (anything :func:`interp.analysis.items.as_items`
    takes; default: the synthetic test split) on ``vlm``, with the masking curve of
    ``run_dir`` (an ``interp reproduce`` output) and a patching table (``patching``: a
    DataFrame or CSV with ``layer``, a position column and a value column; default: the
    run's ``patching.csv``). Writes ``out/index.html`` when ``out`` is given."""
    if samples is None:
        from .data.synthetic import SyntheticVQA

        size = getattr(getattr(vlm.config, "vision_config", None), "image_size", 96) or 96
        samples = SyntheticVQA("test", seed=0, image_size=size)
    run = read_run(run_dir) if run_dir is not None else None
    if patching is not None:
        table = pd.read_csv(patching) if isinstance(patching, (str, Path)) else pd.DataFrame(patching)
        _patching_columns(table)
        run = run or RunData()
        run.patching = table
    attention = sample_attention(vlm, samples, limit=limit, max_new_tokens=max_new_tokens, progress=progress)
    page = build_page(attention, run, title=f"interp explore: {vlm.name}")
    path = None
    if out is not None:
        path = Path(out).expanduser() / "index.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    return ExplorerPage(path=path, html=page)


__all__ = ["ExplorerPage", "RunData", "SampleAttention", "build_page", "explore", "read_run", "sample_attention"]
