"""benchmarks/quality_vs_nfe.py --frontier --quick: every fixed-budget sampler of jaxsde and k-diffusion at its
NFE budget on the low-rank mixture, with finite quality and consistent results files."""

import importlib.util
import json
import math
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
pytest.importorskip("torch")
pytest.importorskip("torchsde")  # k-diffusion's SDE samplers draw Brownian-tree noise
if "k_diffusion" not in sys.modules and importlib.util.find_spec("k_diffusion") is None:
    pytest.skip("k-diffusion is not installed: pip install --no-deps k-diffusion==0.1.1.post1", allow_module_level=True)

JAXSDE = {"ddim", "dpmpp", "dpmpp-3m", "sa", "unipc", "deis", "ipndm", "dpmpp-sde", "euler-ancestral", "lms", "fv",
          "edm", "em", "rd", "pc"}
K_DIFFUSION = {"euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde",
               "dpmpp_3m_sde", "dpmpp_sde", "dpmpp_2s_ancestral", "dpm_fast"}


def load_script():
    spec = importlib.util.spec_from_file_location("quality_vs_nfe", os.path.join(ROOT, "benchmarks",
                                                                                 "quality_vs_nfe.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_frontier_quick_run(tmp_path):
    bench = load_script()
    bench.main(["--frontier", "--quick", "--cache", "", "--out", str(tmp_path)])
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"frontier_lowrank_quick.{ext}").stat().st_size > 0
    res = json.loads((tmp_path / "frontier_lowrank_quick.json").read_text())
    assert res["budgets"] == [5] and res["n"] == 64 and res["sde"] == "VPSDE"
    assert "--frontier --quick" in res["command"]
    rows = res["rows"]
    names = {r["sampler"] for r in rows if r["lib"] == "jaxsde"}
    kd = {r["sampler"].removeprefix("k-diffusion ") for r in rows if r["lib"] == "k-diffusion"}
    assert JAXSDE <= names, JAXSDE - names
    assert K_DIFFUSION <= kd, K_DIFFUSION - kd
    assert len(rows) == len(names) + len(kd)  # one row per sampler at the one budget
    for r in rows:
        # budget 5 is odd: the 2-NFE-per-step samplers hit it exactly too (2 steps + Tweedie / 3 Karras steps)
        assert r["budget"] == 5 and r["mean_nfe"] == 5 and r["max_nfe"] == 5, r
        assert r["failed"] == 0, r
        assert math.isfinite(r["quality"]) and math.isfinite(r["sd"]) and r["sd"] >= 0, r
    floor = res["floor"][0]
    assert math.isfinite(floor) and floor > 0
    # the metric separates samplers at 5 NFE: Euler-Maruyama is far from the best and from the floor
    q = {r["sampler"]: r["quality"] for r in rows}
    assert q["em"] > 2 * min(q.values()) and q["em"] > 2 * floor, q
    best = res["best"]["5"]
    assert best["jaxsde"]["quality"] == min(r["quality"] for r in rows if r["lib"] == "jaxsde")
    assert best["k_diffusion"]["quality"] == min(r["quality"] for r in rows if r["lib"] == "k-diffusion")
    assert best["verdict"] in ("jaxsde better", "k-diffusion better", "tie (within 2 sd)")
    assert "## Best per budget" in (tmp_path / "frontier_lowrank_quick.md").read_text()


@pytest.mark.slow
def test_frontier_tuned_grid_row(tmp_path):
    """--tuned: the tuned-grid row learns its grid on calibration draws and runs at the budget's NFE."""
    bench = load_script()
    bench.main(["--frontier", "--quick", "--cache", "", "--out", str(tmp_path), "--tuned", "--samplers",
                "unipc tuned", "--n-calibration", "16", "--tune-iterations", "3", "--tag", "tuned"])
    res = json.loads((tmp_path / "frontier_lowrank_tuned_quick.json").read_text())
    (row,) = res["rows"]
    assert row["sampler"] == "unipc tuned grid" and row["mean_nfe"] == 5 and row["failed"] == 0, row
    tuning = row["tuning"]
    assert tuning["calibration_draws"] == 16 and tuning["calibration_seed"] == res["seed"] + 1000
    assert tuning["iterations"] == 3 and len(tuning["times"]) == 5 and tuning["loss"] <= tuning["initial_loss"]
    assert math.isfinite(row["quality"])


def test_frontier_summary_pools_files_of_the_same_draws(tmp_path):
    """frontier_summary.md pools an untagged file with its tagged partial runs (same problem, n, seed), keeps other
    draws apart, takes the latest run's row for a sampler in several files, and gives jaxsde's best without the
    tuned-grid rows next to the best with them."""
    bench = load_script()

    def row(sampler, lib, q, tuned=False):
        r = dict(sampler=sampler, lib=lib, budget=5, mean_nfe=5.0, quality=q, sd=0.001, failed=0)
        return dict(r, tuning={"times": []}) if tuned else r

    def write(name, seed, rows, date="2026-01-01"):
        res = dict(problem="p", n=10, seed=seed, sde="VPSDE", budgets=[5], rows=rows, machine=dict(date=date))
        (tmp_path / f"frontier_{name}.json").write_text(json.dumps(res))

    write("p", 0, [row("a", "jaxsde", 0.5), row("k-diffusion x", "k-diffusion", 0.4)])
    write("p_more", 0, [row("a tuned grid", "jaxsde", 0.2, tuned=True), row("k-diffusion y", "k-diffusion", 0.3)])
    write("p_confirm", 1, [row("a", "jaxsde", 0.1), row("k-diffusion x", "k-diffusion", 0.9)])
    write("p_again", 0, [row("a", "jaxsde", 0.45)], date="2025-12-31")  # an older run: its row is replaced
    bench.write_frontier_summary(str(tmp_path))
    lines = [ln for ln in (tmp_path / "frontier_summary.md").read_text().splitlines() if ln.startswith("| p |")]
    assert len(lines) == 2
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    pooled = next(c for c in cells if c[3] == "0")
    assert pooled[5] == "a tuned grid" and pooled[7] == "k-diffusion y" and pooled[9] == "jaxsde better"
    assert pooled[10] == "a" and pooled[11].startswith("0.5000") and pooled[12] == "k-diffusion better"
    assert pooled[13] == "frontier_p_again.json, frontier_p.json, frontier_p_more.json"
    other = next(c for c in cells if c[3] == "1")
    assert other[5] == "a" and other[7] == "k-diffusion x" and other[13] == "frontier_p_confirm.json"
