"""The benchmark harness (``python -m benchmarks``): exact-name selection, the writer's stored command and its
re-rendering, the suite list, the frontier summary's pooling, and the smoke suite (the smallest run of the suites
that write cited results) in a subprocess, as a user runs it."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.harness import cli
from benchmarks.harness.select import parse_names, select
from benchmarks.harness.writer import Context, command_line
from benchmarks.suites import quality_vs_nfe, smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_selection_is_by_exact_name_in_the_order_asked():
    rows = [("unipc", 1), ("unipc tuned grid", 2), ("k-diffusion lms", 3)]
    assert select(rows, parse_names("k-diffusion lms, unipc")) == [("k-diffusion lms", 3), ("unipc", 1)]
    assert select(rows, parse_names("")) == rows
    with pytest.raises(ValueError, match=r"unknown names \['tuned'\]"):  # a substring selects nothing
        select(rows, ["tuned"])


def test_save_stores_the_command_and_report_rerenders_from_the_json(tmp_path):
    ctx = Context(smoke, "smoke", ["--only", "gpu"], str(tmp_path))
    assert ctx.command == command_line("smoke", ["--only", "gpu"]) == "python -m benchmarks run smoke --only gpu"
    ctx.save("smoke", dict(ran=[dict(suite="gpu", argv=["--smoke"])], skipped=[dict(suite="x", reason="why")]))
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert data["suite"] == "smoke" and data["command"] == ctx.command and data["machine"]["jax"]
    md = (tmp_path / "smoke.md").read_text()
    assert ctx.command in md and "skipped `x`: why" in md
    (tmp_path / "smoke.md").unlink()
    (tmp_path / "other.json").write_text("{}")  # not the harness': left alone
    assert cli.report(str(tmp_path)) == 1
    assert (tmp_path / "smoke.md").read_text() == md


def test_every_suite_has_arguments_and_run():
    assert {"gpu", "quality_vs_nfe", "galaxies", "smoke", "work_precision"} <= set(cli.names())
    for name in cli.names():
        suite = cli.load(name)
        assert callable(suite.arguments) and callable(suite.run), name
        assert cli.summary(name), name


def test_frontier_summary_pools_files_of_the_same_draws(tmp_path):
    """frontier_summary.md pools an untagged file with its tagged partial runs (same problem, n, seed), keeps other
    draws apart, takes the latest run's row for a sampler in several files, and gives jaxsde's best without the
    tuned-grid rows next to the best with them."""

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
    quality_vs_nfe.write_frontier_summary(str(tmp_path))
    lines = [ln for ln in (tmp_path / "frontier_summary.md").read_text().splitlines() if ln.startswith("| p |")]
    assert len(lines) == 2
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    pooled = next(c for c in cells if c[3] == "0")
    assert pooled[5] == "a tuned grid" and pooled[7] == "k-diffusion y" and pooled[9] == "jaxsde better"
    assert pooled[10] == "a" and pooled[11].startswith("0.5000") and pooled[12] == "k-diffusion better"
    assert pooled[13] == "frontier_p_again.json, frontier_p.json, frontier_p_more.json"
    other = next(c for c in cells if c[3] == "1")
    assert other[5] == "a" and other[7] == "k-diffusion x" and other[13] == "frontier_p_confirm.json"


def finite_positive(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def check_gpu(data):
    assert data["status"] == "complete" and data["smoke"] is True and data["errors"] == [], data["errors"]
    plan = data["plan"]
    assert {r["section"] for r in data["rows"]} >= {"ddpmpp"}
    for r in data["rows"]:
        assert finite_positive(r["samples_per_s"], r["compile_s"], r["run_s"], r["first_s"], r["nfe_per_s"]), r
        assert r["samples_per_s"] == pytest.approx(r["batch"] / r["run_s"])
        assert r["nfe_min"] <= r["nfe_mean"] <= r["nfe_max"]
        if r["nfe_expected"] is not None:  # fixed grid: steps + the final denoising step, every sample
            steps = plan["em_steps"] if r["solver"].startswith("EulerMaruyama") else plan["dpm_steps"]
            assert r["nfe_expected"] == steps + 1 and r["nfe_min"] == r["nfe_max"] == r["nfe_expected"], r
            assert r["failed"] == 0 and r["all_finite"]
        if r["dtype"] == "bfloat16":  # a bfloat16 network runs every convolution and matmul in bfloat16
            assert r["bf16_ops"] == 1.0, r["op_dtypes"]
        else:
            assert r["bf16_ops"] == 0.0
    for d in data["diffusers"]:
        assert d["nfe"] == plan["ddim_steps"] and d["rel_l2_diff"] < 1e-2, d


def check_frontier(res):
    assert res["budgets"] == [5] and res["n"] == 64 and res["sde"] == "VPSDE"
    names = {r["sampler"] for r in res["rows"] if r["lib"] == "jaxsde"}
    assert {"ddim", "dpmpp", "unipc", "em"} <= names and any(r["lib"] == "k-diffusion" for r in res["rows"])
    for r in res["rows"]:  # budget 5 is odd: the 2-NFE-per-step samplers hit it exactly too
        assert r["budget"] == 5 and r["mean_nfe"] == r["max_nfe"] == 5 and r["failed"] == 0, r
        assert math.isfinite(r["quality"]) and r["sd"] >= 0, r
    q = {r["sampler"]: r["quality"] for r in res["rows"]}
    assert q["em"] > 2 * min(q.values())  # the metric separates samplers at 5 NFE


def check_galaxies(data):
    mod = data["models"]["hsc32"]
    assert mod["n"] == 6 and mod["shape"] == [32, 32, 1]
    em = {r["setting"]: r for r in mod["rows"] if r["family"] == "EM"}
    assert em["50"]["max_nfe"] == em["50"]["mean_nfe"] == 51 and em["50"]["within_anchor"]
    for r in mod["rows"]:
        assert r["failed"] == 0 and r["max_nfe"] >= r["mean_nfe"] > 0 and r["wall_s"] > 0


@pytest.mark.slow  # a subprocess compiling every smoke item (about 1-3 minutes on 2 cores)
def test_smoke_suite(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "run", "smoke", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "smoke.json").read_text())
    ran = {r["suite"] for r in summary["ran"]}
    checks = {"gpu": ("gpu_smoke.json", check_gpu), "quality_vs_nfe": ("frontier_lowrank_quick.json", check_frontier),
              "galaxies": ("galaxies.json", check_galaxies)}
    assert "gpu" in ran and ran | {s["suite"] for s in summary["skipped"]} == set(checks)
    for suite in ran:
        name, check = checks[suite]
        data = json.loads((tmp_path / name).read_text())
        stated = data.get("command") or data.get("meta", {}).get("command") or data["machine"]["command"]
        assert stated.startswith(f"python -m benchmarks run {suite} "), stated
        check(data)
