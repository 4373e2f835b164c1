"""Execute the notebooks (small n) so they never rot."""

import os

import pytest

from jaxsde.embedded import available

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")


@pytest.mark.skipif("digits" not in available(), reason="embedded digits weights not present")
def test_quickstart_notebook_runs(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JAXSDE_NB_N", "32")
    nb = nbformat.read(os.path.join(NOTEBOOKS, "01_quickstart.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "FD-digits" in outputs and "GGF" in outputs


@pytest.mark.skipif("digits" not in available(), reason="embedded digits weights not present")
def test_solvers_notebook_runs(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JAXSDE_NB_N", "32")
    nb = nbformat.read(os.path.join(NOTEBOOKS, "02_solvers.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3").execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "measured order" in outputs and "FD-digits" in outputs and "SA-Solver" in outputs
