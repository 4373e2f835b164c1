"""benchmarks/galaxies.py --quick: a tiny run on galaxygrad's HSC-32 writes consistent results files."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
_spec = importlib.util.find_spec("galaxygrad")  # finds the package without importing it (import fails on Linux)
if _spec is None or _spec.origin is None or not os.path.exists(
        os.path.join(os.path.dirname(_spec.origin), "eqx_hsc_ScoreNet32.eqx")):
    pytest.skip("galaxygrad==0.2.1 (its HSC-32 weights) is not installed", allow_module_level=True)
pytest.importorskip("torch")
# k_diffusion may already be registered by tests/k_diffusion_sampling.py (no __spec__: find_spec would raise)
if "k_diffusion" not in sys.modules and importlib.util.find_spec("k_diffusion") is None:
    pytest.skip("k-diffusion is not installed: pip install --no-deps k-diffusion==0.1.1.post1", allow_module_level=True)


def load_script():
    spec = importlib.util.spec_from_file_location("galaxies_benchmark", os.path.join(ROOT, "benchmarks", "galaxies.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # a benchmark smoke run on the HSC-32 network
def test_quick_run_writes_results(tmp_path):
    bench = load_script()
    out = bench.main(["--quick", "--models", "hsc32", "--n", "6", "--out", str(tmp_path)])
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"galaxies.{ext}").stat().st_size > 0
    data = json.loads((tmp_path / "galaxies.json").read_text())
    assert data["meta"]["command"].startswith("python benchmarks/galaxies.py --quick") and data["meta"]["quick"]
    mod = data["models"]["hsc32"]
    assert mod["n"] == 6 and mod["n_ref"] == 12 and mod["shape"] == [32, 32, 1]
    families = {r["family"] for r in mod["rows"]}
    assert {"EM", "GottaGoFast", "DPMSolverPP-2M", "AdaptiveDPMSolver eta=0", "AdaptiveMultistepSolver tau=0",
            "k-diffusion dpm_adaptive eta=0"} <= families
    for r in mod["rows"]:
        assert r["failed"] == 0 and r["max_nfe"] >= r["mean_nfe"] > 0 and r["wall_s"] > 0
        for m in ("sw2", "ps", "hist"):
            assert r[m] >= 0 and r[m + "_sd"] >= 0
    # fixed-grid rows: EM-n pays n steps plus the final denoising step, DPM-Solver++ its grid
    em = {r["setting"]: r for r in mod["rows"] if r["family"] == "EM"}
    assert em["50"]["max_nfe"] == em["50"]["mean_nfe"] == 51
    assert mod["headline"]["anchor"] == "EM-50"
    assert em["50"]["within_anchor"]  # the anchor is within noise of itself
    md = (tmp_path / "galaxies.md").read_text()
    assert data["meta"]["command"] in md and "Fewest mean NFE within noise of EM-50" in md
    assert out["models"]["hsc32"]["headline"] == mod["headline"]
