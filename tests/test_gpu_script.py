"""benchmarks/gpu.py --smoke: runs on CPU in a subprocess and writes a well-formed, consistent results file."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.py")


def run(tmp_path, *extra, timeout=150):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "gpu_smoke.json") as f:
        data = json.load(f)
    assert (tmp_path / "gpu_smoke.md").read_text().startswith("# GPU throughput benchmark (--smoke")
    return data


def hsc_eqx():
    spec = importlib.util.find_spec("galaxygrad")  # not imported: `import galaxygrad` fails on Linux
    return None if spec is None else os.path.join(os.path.dirname(spec.origin), "eqx_hsc_ScoreNet32.eqx")


def finite_positive(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@pytest.mark.slow  # the benchmark smoke run (a subprocess compiling every section)
def test_smoke_results(tmp_path):
    eqx = hsc_eqx()
    # a budget no loaded CI machine exhausts: this test checks the rows; test_budget_skips_and_records the budget
    data = run(tmp_path, "--budget", "600", *(["--eqx", eqx] if eqx else []), timeout=600)
    assert data["status"] == "complete" and data["smoke"] is True
    assert data["errors"] == [], data["errors"]
    assert data["machine"]["command"].startswith("python benchmarks/gpu.py --smoke")
    sections = {r["section"] for r in data["rows"]}
    assert "ddpmpp" in sections and (eqx is None or "hsc64" in sections)
    plan = data["plan"]
    for r in data["rows"]:
        assert finite_positive(r["samples_per_s"], r["compile_s"], r["run_s"], r["first_s"], r["nfe_per_s"]), r
        assert r["samples_per_s"] == pytest.approx(r["batch"] / r["run_s"])
        assert r["nfe_min"] <= r["nfe_mean"] <= r["nfe_max"]
        assert r["dtype"] in ("float32", "bfloat16")
        if r["nfe_expected"] is not None:  # fixed grid: steps + the final denoising step, every sample
            steps = plan["em_steps"] if r["solver"].startswith("EulerMaruyama") else plan["dpm_steps"]
            assert r["nfe_expected"] == steps + 1
            assert r["nfe_min"] == r["nfe_max"] == r["nfe_expected"], r
            assert r["failed"] == 0 and r["all_finite"]
        else:  # adaptive: at least one attempt (2-3 NFE for GGF / AdaptiveDPM, 1 for multistep) + denoising
            assert r["nfe_min"] >= 2
        assert 0.0 <= r["bf16_ops"] <= 1.0
        if r["dtype"] == "float32":
            assert r["bf16_ops"] == 0.0
    # the smoke's few items fit its budget: all five solvers ran, each in one compiled program
    assert data["skipped"] == [] or eqx is None, data["skipped"]
    assert len({r["solver"] for r in data["rows"]}) == (5 if eqx else 4)
    # a bfloat16 network runs every convolution and matmul in bfloat16
    for r in data["rows"]:
        if r["dtype"] == "bfloat16":
            assert r["bf16_ops"] == 1.0, r["op_dtypes"]
    assert len(data["generate"]) == (1 if eqx else 0)
    for g in data["generate"]:
        assert finite_positive(g["generate_samples_per_s"], g["sample_samples_per_s"], g["speedup"])
        assert 0 < g["sample_useful_work"] <= 1 and 0 < g["generate_useful_work"] <= 1
    if importlib.util.find_spec("diffusers") is None:
        assert any("diffusers" in s["reason"] for s in data["skipped"])
    else:
        (d,) = data["diffusers"]
        assert d["nfe"] == plan["ddim_steps"]  # K network calls, as diffusers' K-step loop
        assert finite_positive(d["jaxsde_samples_per_s"], d["diffusers_samples_per_s"])
        # same weights, x_T and grid; random weights make DDIM's x0 predictions (1 / sqrt(alpha_bar) ~ 160 at
        # t = 999) amplify float32 rounding, so this is a loose check: a wrong grid or label is off by O(1)
        assert d["rel_l2_diff"] < 1e-2, d


def test_budget_skips_and_records(tmp_path):
    """A budget that is already spent: nothing runs, every section says why, the file is complete."""
    data = run(tmp_path, "--budget", "0", "--sections", "diffusers", "hsc64", timeout=60)
    assert data["status"] == "complete" and data["rows"] == [] and data["diffusers"] == []
    reasons = {s["section"]: s["reason"] for s in data["skipped"]}
    assert "--eqx" in reasons["hsc64"]
    assert "budget" in reasons["diffusers"] or "cannot import diffusers" in reasons["diffusers"]
