"""The notebooks: their stored outputs are fresh (fast), and they execute (small n, slow) so they never rot.

The site shows the outputs stored in the notebooks (mkdocs-jupyter, ``execute: false``), written by
``python notebooks/store_outputs.py``, which also records the hash of the code cells in each
notebook's metadata; ``test_stored_outputs_fresh`` fails when a code cell changed since.
"""

import importlib.util
import os

import pytest

from jaxsde.checkpoints.embedded import available

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")
_spec = importlib.util.spec_from_file_location("store_outputs", os.path.join(NOTEBOOKS, "store_outputs.py"))
store_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store_outputs)


def test_every_notebook_is_stored():
    on_disk = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
    assert on_disk == sorted(store_outputs.SIZES), "add the notebook to SIZES in notebooks/store_outputs.py"
    docs = os.path.join(NOTEBOOKS, "..", "docs", "examples")
    assert sorted(os.listdir(docs)) == on_disk, "docs/examples/ links every notebook"
    with open(os.path.join(NOTEBOOKS, "..", "mkdocs.yml")) as f:
        nav = f.read()
    assert [name for name in on_disk if f"examples/{name}" not in nav] == [], "the Examples nav in mkdocs.yml"


@pytest.mark.parametrize("name", sorted(store_outputs.SIZES))
def test_stored_outputs_fresh(name):
    """The outputs on the site come from the notebook's current code, ran without errors, and have figures."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    stored = nb.metadata.get("jaxsde", {})
    assert stored.get("code_sha256") == store_outputs.code_hash(nb), (
        f"{name}: its code cells changed since its outputs were stored: run python notebooks/store_outputs.py {name}")
    assert stored.get("JAXSDE_NB_N") == store_outputs.SIZES[name]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"], f"{name}: an error is stored"
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code"), f"{name}: a cell did not run"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no figure stored"


@pytest.mark.slow  # executes notebooks (minutes each)
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
