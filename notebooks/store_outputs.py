"""Execute the notebooks and store their outputs (what the documentation site shows).

    python notebooks/store_outputs.py                 # all five, each at its documented size
    python notebooks/store_outputs.py 03_editing      # one (a name, a prefix or a path)

Each notebook runs top to bottom in a fresh kernel in ``notebooks/`` with ``JAXSDE_NB_N`` set to
the size in ``SIZES`` below (CPU: about 10 minutes for all five on 2 busy cores) and is written back in place with its
outputs and figures. Its metadata gets ``jaxsde.code_sha256``, the hash of its code cells
(:func:`code_hash`), and ``jaxsde.JAXSDE_NB_N``: ``tests/test_notebooks.py`` fails when a code cell
changed after the outputs were stored (rerun this script then), and the site renders the stored
outputs as they are (mkdocs-jupyter with ``execute: false``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# JAXSDE_NB_N per notebook: big enough for the figures (an 8x8 grid of digits, 8 per class),
# small enough to run on a laptop CPU in a few minutes
SIZES = {
    "01_quickstart.ipynb": 64,
    "02_solvers.ipynb": 256,
    "03_editing.ipynb": 16,
    "04_guidance.ipynb": 80,
    "05_galaxies.ipynb": 16,
}


def code_hash(nb) -> str:
    """sha256 of the notebook's code cells, in order (outputs, markdown and metadata not included)."""
    h = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(cell.source.strip().encode())
            h.update(b"\0")
    return h.hexdigest()


def tidy_streams(nb) -> None:
    """Merge each cell's consecutive stdout / stderr outputs and keep what a terminal shows after
    carriage returns (a progress bar's last state, not its every redraw)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.outputs:
            if out.output_type == "stream" and merged and merged[-1].output_type == "stream" \
                    and merged[-1].name == out.name:
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in out.text.split("\n"))
        cell.outputs = merged


def store(path: Path, n: int, timeout: int = 1800) -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    os.environ["JAXSDE_NB_N"] = str(n)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures as outputs
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    for cell in nb.cells:  # no kernel-run counters in the diff beyond the execution counts
        cell.metadata.pop("execution", None)
    tidy_streams(nb)
    nb.metadata["jaxsde"] = {"code_sha256": code_hash(nb), "JAXSDE_NB_N": n}
    nbformat.write(nb, path)


def main(argv: list[str]) -> None:
    names = sorted(SIZES)
    if argv:
        names = [name for name in names if any(Path(a).name.removesuffix(".ipynb") in name for a in argv)]
    for name in names:
        print(f"executing {name} (JAXSDE_NB_N={SIZES[name]})", flush=True)
        store(HERE / name, SIZES[name])


if __name__ == "__main__":
    main(sys.argv[1:])
