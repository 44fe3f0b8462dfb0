"""The notebooks run top to bottom (on a tiny model, to stay fast), and every plotting
cell shows its figure: executed here, and in the outputs committed with the notebooks."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from interp import plotting
from interp.plotting import patching as patching_figures

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
#: the package's figure functions: the paper's figures and the patching / lens / attribution ones
FIGURES = [
    *plotting.__all__,
    *(
        name
        for name, value in vars(patching_figures).items()
        if callable(value)
        and not name.startswith("_")
        and getattr(value, "__module__", "") == patching_figures.__name__
    ),
]
#: a cell that calls one of the package's figure functions or draws with pyplot
PLOTTING = re.compile(r"\b(" + "|".join(FIGURES) + r")\(|\bplt\.(subplots|plot|imshow|figure)\(")
#: what Jupyter itself uses; the suite's Agg would show no pyplot figure at all
INLINE = "module://matplotlib_inline.backend_inline"


def plotting_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code" and PLOTTING.search(cell.source)]


def has_png(cell) -> bool:
    return any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def test_plotting_cells_are_found():
    """The pattern finds the figure cells (else the checks below would pass vacuously)."""
    counts = {path.name: len(plotting_cells(nbformat.read(path, as_version=4))) for path in NOTEBOOKS}
    assert all(count >= 1 for count in counts.values()), counts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_its_outputs(path):
    """Committed as run top to bottom: every code cell ran in order, none failed, every
    plotting cell holds its PNG."""
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    assert not [o for cell in code for o in cell.outputs if o.get("output_type") == "error"]
    missing = [cell.source.splitlines()[0] for cell in plotting_cells(notebook) if not has_png(cell)]
    assert not missing, f"plotting cells committed without their figure: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("INTERP_NOTEBOOK_MODEL", "tiny:llava")
    monkeypatch.setenv("INTERP_NOTEBOOK_LIMIT", "2")
    monkeypatch.setenv("MPLBACKEND", INLINE)
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:  # judge what this run shows, not the committed outputs
        if cell.cell_type == "code":
            cell.outputs = []
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert outputs, "the notebook produced no output"
    missing = [cell.source.splitlines()[0] for cell in plotting_cells(notebook) if not has_png(cell)]
    assert not missing, f"plotting cells that showed no figure: {missing}"
    if path.name.startswith("01_"):
        assert any("answer:" in o.get("text", "") for o in outputs)
