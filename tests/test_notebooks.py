"""Execute the notebooks (small n) so they never rot."""

import os

import pytest

from jaxsde.checkpoints.embedded import available

pytestmark = pytest.mark.slow  # executes notebooks (minutes each)

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")


@pytest.mark.skipif("digits" not in available(), reason="embedded digits weights not present")
@pytest.mark.parametrize("name,timeout,needles", [
    ("01_quickstart.ipynb", 600, ("FD-digits", "GGF", "same NFE:", "would put")),
    ("02_solvers.ipynb", 900, ("measured order", "FD-digits", "SA-Solver")),
    ("04_guidance.ipynb", 600, ("accuracy", "classifier guidance w=4.0")),
])
def test_notebook_runs(name, timeout, needles, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JAXSDE_NB_N", "32")
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3").execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for needle in needles:
        assert needle in outputs, f"{name}: {needle!r} missing from the outputs"
