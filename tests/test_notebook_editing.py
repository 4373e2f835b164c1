"""Execute notebooks/03_editing.ipynb (small n) so it never rots."""

import os

import pytest

from jaxsde.checkpoints.embedded import available

pytestmark = pytest.mark.slow  # executes notebooks (minutes each)

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")


@pytest.mark.skipif("digits" not in available(), reason="embedded digits weights not present")
def test_editing_notebook_runs(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("sklearn")
    monkeypatch.setenv("JAXSDE_NB_N", "4")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(os.path.join(NOTEBOOKS, "03_editing.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "known pixels exact: True" in outputs
    assert "max |sparse - masked-dense reference|" in outputs and "FLOPs per step" in outputs
    assert "exact sparse - frozen-stats dense" in outputs
