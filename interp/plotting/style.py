"""Shared figure conventions: paper-size figures, readable fonts, PNG + PDF output.

Figures are built as :class:`PaperFigure` objects (a :class:`matplotlib.figure.Figure`)
without pyplot, so nothing here selects or switches a matplotlib backend: saving works
headless whatever backend the user has, the user's own ``plt.plot`` keeps working, and
in Jupyter a returned figure shows inline (once) as the cell's value.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure

#: one column of a two-column paper is ~3.3 in; a full width ~6.9 in
COLUMN = 3.4
FULL = 6.9

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "figure.dpi": 150,
    "savefig.dpi": 200,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": ":",
    "savefig.bbox": "tight",
}

#: Okabe-Ito colour-blind-safe colours, picked so no two on one figure look alike
COLOURS = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "vermillion": "#D55E00",
    "yellow": "#F0E442",
    "black": "#000000",
}


class PaperFigure(Figure):
    """A figure that IPython shows as a PNG (``_repr_png_``) with no pyplot involved."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
        return buffer.getvalue()


def paper_style():
    """A context manager with the package's plotting style (fonts readable at paper size)."""
    return mpl.rc_context(STYLE)


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplot_kw):
    """``(figure, axes)`` like ``plt.subplots``, but pyplot-free (call inside :func:`paper_style`)."""
    fig = PaperFigure(figsize=figsize)
    axes = fig.subplots(nrows, ncols, **subplot_kw)
    return fig, axes


def save(fig, out_dir: str | Path | None, name: str, **savefig) -> list[Path]:
    """Write ``name.png`` and ``name.pdf`` into ``out_dir`` (if given), each atomically (a full
    disk leaves the previous file, never a truncated one; one line says so); returns the paths.
    ``savefig``: extra options for :meth:`matplotlib.figure.Figure.savefig` (e.g. ``dpi``)."""
    from ..outputs import write_atomic

    if out_dir is None:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix[1:], **savefig)
        write_atomic(path, buffer.getvalue())
    return paths


def palette(n: int) -> list[str]:
    """``n`` distinct colour-blind-safe colours."""
    names = ["blue", "orange", "green", "purple", "sky", "vermillion", "black", "yellow"]
    return [COLOURS[names[i % len(names)]] for i in range(n)]
