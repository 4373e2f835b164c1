"""The console script: the demo runs; user errors give one line and exit code 2, no traceback."""

import os
import subprocess
import sys

import pytest

from jaxsde.apps.cli import main
from jaxsde.checkpoints.embedded import available


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jaxsde.apps.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.slow  # a subprocess sampling 200 points with EM-200 and GGF; test_sample_writes_a_grid stays fast
def test_demo_writes_plot_and_prints_table(tmp_path):
    out = tmp_path / "demo.png"
    r = run_cli("demo", "--n", "200", "--dim", "16", "--em-steps", "200", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "GGF rtol=0.05" in r.stdout and "EM 200" in r.stdout and "floor" in r.stdout
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("args,needle", [
    (["sample", "--model", "cifar10"], "available: digits"),
    (["sample", "--solver", "rk99"], "available: "),
    (["sample", "--n", "0"], "positive"),
    (["sample", "--out", "/nonexistent-dir/grid.png"], "does not exist"),
    (["train", "--size", "huge", "--out", "x"], "choose one of"),
    (["sample", "--model", "digits-ve", "--solver", "mlem"], "use --model digits"),
    (["likelihood", "--n", "400"], "more than the 359 digits"),
    (["likelihood", "--probes", "0", "--n", "2"], "num_probes must be an integer >= 1"),
])
def test_user_errors_are_one_line(args, needle, tmp_path, monkeypatch, capsys):
    """In-process (the console script's own process: test_a_negative_eta_is_one_line): main returns 2 and
    writes one line; an exception that escaped main would fail the test here as a traceback would."""
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif("digits-small" not in available(), reason="embedded weights not present")
def test_sample_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    r = run_cli("sample", "--model", "digits-small", "--solver", "em", "--steps", "20", "--n", "16",
                "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "NFE per sample: mean 21.0" in r.stdout and "FD-digits" in r.stdout
    assert os.path.getsize(out) > 100


@pytest.mark.slow  # a subprocess; test_sample_writes_a_grid (the sample command) and the eta error test stay fast
@pytest.mark.skipif("digits-small" not in available(), reason="embedded weights not present")
def test_sample_with_the_adaptive_dpm_solver_and_eta(tmp_path):
    solver = "dpm-adaptive"
    out = tmp_path / "grid.png"
    r = run_cli("sample", "--model", "digits-small", "--solver", solver, "--rtol", "0.1", "--eta", "1", "--n", "8",
                "--no-progress", "--no-metrics", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "NFE per sample: mean" in r.stdout and "failed 0" in r.stdout
    assert os.path.getsize(out) > 100


def test_a_negative_eta_is_one_line():
    r = run_cli("sample", "--solver", "dpm-adaptive", "--eta", "-1")
    assert r.returncode == 2 and "eta must be a finite number >= 0" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # a subprocess; tests/test_likelihood.py covers the likelihood itself
@pytest.mark.skipif("digits-small" not in available(), reason="embedded weights not present")
def test_likelihood_reports_bits_per_dim(tmp_path):
    import json

    hist, report = tmp_path / "hist.png", tmp_path / "report.json"
    r = run_cli("likelihood", "--model", "digits-small", "--n", "3", "--probes", "2", "--rtol", "1e-3", "--atol",
                "1e-3", "--out", str(hist), "--json", str(report))
    assert r.returncode == 0, r.stderr
    assert "bits/dim" in r.stdout and "failed 0" in r.stdout
    got = json.loads(report.read_text())
    # a model better than uniform noise over the 17 levels, worse than a perfect one
    assert 0.0 < got["bits_per_dim"] < 4.09 and len(got["per_sample"]) == 3 and got["mean_nfe"] > 0
    assert hist.stat().st_size > 1000
