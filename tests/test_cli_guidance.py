"""``jaxsde sample`` with the class-conditional model: --label, --guidance, --samples, and their errors."""

import subprocess
import sys

import numpy as np
import pytest

from jaxsde.apps.cli import main
from jaxsde.apps.sampling_job import grid_columns, sample_labels


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxsde.apps.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow  # a subprocess on the conditional U-Net; the --samples and error tests stay fast
def test_conditional_sample_writes_the_requested_labels(tmp_path):
    grid, samples = tmp_path / "grid.png", tmp_path / "s.npz"
    r = run_cli("sample", "--model", "digits-cond", "--label", "3", "--guidance", "2.0", "--solver", "dpmpp",
                "--steps", "6", "--n", "8", "--out", str(grid), "--samples", str(samples), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "classifier-free guidance weight 2.0" in r.stdout and "classified as the requested class" in r.stdout
    with np.load(samples) as f:
        assert f["x"].shape == (8, 8, 8, 1) and np.all(np.isfinite(f["x"]))
        np.testing.assert_array_equal(f["label"], np.full(8, 3))
        np.testing.assert_array_equal(f["nfe"], np.full(8, 7))  # 6 steps + the final denoising step
        np.testing.assert_array_equal(f["result"], np.zeros(8))
        np.testing.assert_allclose(f["data_range"], [-1.0, 1.0])
    assert grid.stat().st_size > 100


def test_unconditional_samples_file(tmp_path):
    samples = tmp_path / "u.npz"
    r = run_cli("sample", "--model", "digits-small", "--solver", "em", "--steps", "5", "--n", "3", "--out", "",
                "--samples", str(samples), "--no-metrics", "--no-progress")
    assert r.returncode == 0, r.stderr
    with np.load(samples) as f:
        assert set(f.files) == {"x", "nfe", "result", "data_range"}
        assert f["x"].shape == (3, 8, 8, 1)
        np.testing.assert_array_equal(f["nfe"], np.full(3, 6))


def test_label_all_cycles_the_classes_over_grid_rows():
    labels = sample_labels("all", 25, 10)
    cols = grid_columns(25)
    assert cols == 5
    np.testing.assert_array_equal(labels, np.repeat(np.arange(5), 5))
    np.testing.assert_array_equal(sample_labels("all", 144, 10)[::12], np.arange(12) % 10)
    np.testing.assert_array_equal(sample_labels("7", 4, 10), np.full(4, 7))


@pytest.mark.parametrize("args,needle", [
    (["--model", "digits-cond", "--label", "10"], "--label must be an integer in 0..9 or 'all'"),
    (["--model", "digits-cond", "--label", "-1"], "--label must be an integer in 0..9 or 'all'"),
    (["--model", "digits-cond", "--label", "three"], "--label must be an integer in 0..9 or 'all'"),
    (["--model", "digits", "--label", "3"], "needs a class-conditional model"),
    (["--model", "digits", "--guidance", "2"], "needs a model trained with a null class"),
    (["--model", "digits-cond", "--guidance", "nan"], "--guidance must be finite"),
    (["--model", "digits-cond", "--samples", "out.txt"], "must name a .npz file"),
])
def test_conditional_user_errors_are_one_line(args, needle, tmp_path, monkeypatch, capsys):
    """In-process (test_unconditional_samples_file runs the console script): main returns 2 and writes one line."""
    monkeypatch.chdir(tmp_path)
    code = main(["sample", "--n", "2", "--steps", "2", "--solver", "em", "--no-progress", *args])
    out = capsys.readouterr()
    assert code == 2, out.out
    assert needle in out.err and "Traceback" not in out.err, out.err
    assert len(out.err.strip().splitlines()) == 1, out.err
