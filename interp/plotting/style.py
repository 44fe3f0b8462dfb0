"""Shared figure conventions: paper-size figures, readable fonts, PNG + PDF output."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; notebooks still show the returned figures
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

#: one column of a two-column paper is ~3.3 in; a full width ~6.9 in
COLUMN = 3.4
FULL = 6.9


def paper_style():
    """A context manager with the package's plotting style (fonts readable at paper size)."""
    return plt.rc_context({
        "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
        "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.dpi": 150, "savefig.dpi": 200,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "grid.linestyle": ":", "savefig.bbox": "tight",
    })


def save(fig, out_dir: str | Path | None, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.pdf`` into ``out_dir`` (if given); returns the paths."""
    if out_dir is None:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path)
    return paths


def palette(n: int):
    return sns.color_palette("colorblind", n)
