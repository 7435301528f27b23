"""The notebooks show their plots inline and pass ruff.

nbmake (``--nbmake`` in pyproject's addopts) checks that the other notebooks run; these tests
execute the plotting notebooks with nbclient (a cell that raises fails them) and check that each
plotting cell left a PNG figure in its outputs, which a notebook that switched matplotlib to the Agg
backend would not. pyproject's addopts leave these notebooks out of nbmake, so none runs twice.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PLOTTING_NOTEBOOKS = ("01_quickstart.ipynb", "02_segmentation.ipynb")
TIMEOUT_S = 300


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def png_count(cell) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def test_no_notebook_switches_matplotlib_to_a_non_interactive_backend():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in code_cells(nbformat.read(path, as_version=4)):
            assert "matplotlib.use(" not in cell.source, path.name


@pytest.mark.parametrize("name", PLOTTING_NOTEBOOKS)
def test_plotting_cells_display_their_figures(name, monkeypatch):
    # A headless CI often sets MPLBACKEND=Agg; the notebooks' `%matplotlib inline` must still win.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    ).execute()
    plotting = [cell for cell in code_cells(notebook) if "plotting.plot_" in cell.source]
    assert plotting, f"{name} has no plotting cell"
    for cell in plotting:
        expected = cell.source.count("plotting.plot_")  # one new figure per call
        assert png_count(cell) == expected, cell.source
    others = [cell for cell in code_cells(notebook) if "plotting.plot_" not in cell.source]
    assert sum(map(png_count, others)) == 0  # no stray figure from an earlier cell


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_notebooks_pass_ruff(command):
    result = subprocess.run(
        ["ruff", *command, str(NOTEBOOKS)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_benchmark_protocols_notebook_shows_its_table_and_comparison_plot(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS / "05_benchmark_protocols.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    ).execute()
    cells = code_cells(notebook)
    markdown = [
        output["data"]["text/markdown"]
        for cell in cells
        for output in cell.get("outputs", [])
        if "text/markdown" in output.get("data", {})
    ]
    assert len(markdown) == 1 and "| mean |" in markdown[0] and "pixel_AUPRO@0.3" in markdown[0]
    assert [png_count(cell) for cell in cells] == [0] * (len(cells) - 1) + [1]
    printed = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
    assert "Wilcoxon signed-rank" in printed and "Warning" not in printed
