"""``jaxsde generate``: resumable shard output survives SIGKILL; argument and directory errors."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxsde import cli
from jaxsde.generate_job import read_shards

N = 96
# A small problem (Gaussian mixture, exact score) through the same resumable loop as the CLI.
SCRIPT = f"""
import sys
import jax
import jaxsde
from jaxsde import targets
from jaxsde.generate_job import generate_to_dir

sde = jaxsde.VPSDE()
mixture = targets.GaussianMixture.random(jax.random.PRNGKey(3), 4, (8,))
solver = jaxsde.GottaGoFast(rtol=0.02)
manifest = dict(model="mixture", solver="ggf", solver_repr=repr(solver), n={N}, seed=0, batch_size=8, chunk_size=4,
                shape=[8], data_range=[-1.0, 1.0])
generate_to_dir(sys.argv[1], manifest, sde, lambda p: mixture.score(sde), None, solver, progress=False)
"""


def _env(tmp_path):
    cache = tmp_path / "jax-cache"  # reruns load the compiled loop instead of compiling it again
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_PLATFORMS="cpu")


def _shards(folder):
    return len([f for f in os.listdir(folder) if f.startswith("shard-")]) if os.path.isdir(folder) else 0


def test_sigkill_and_resume_gives_the_uninterrupted_result(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = _env(tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run([sys.executable, str(script), str(ref)], env=env, check=True, timeout=300)
    rng = random.Random(0)
    kills = 0
    for _ in range(5):
        before = _shards(out)
        proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
        deadline = time.monotonic() + (rng.uniform(0.5, 4.0) if rng.random() < 0.4 else 120)
        while proc.poll() is None and time.monotonic() < deadline and _shards(out) <= before:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if proc.returncode == 0:  # the run finished first: tolerated
            break
    subprocess.run([sys.executable, str(script), str(out)], env=env, check=True, timeout=300)
    got, want = read_shards(str(out)), read_shards(str(ref))
    np.testing.assert_array_equal(got["index"], np.arange(N))  # exactly 0..n-1, no duplicates
    for k in ("x", "nfe", "num_accepted", "num_rejected", "num_steps", "result", "t"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # bitwise
    assert got["x"].shape == (N, 8) and np.all(np.abs(got["x"]) <= 1.0)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    assert kills >= 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["generate", "--n", "8", "--out", str(blocker / "sub"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create --out" in err and "Traceback" not in err
    assert cli.main(["generate", "--n", "8", "--out", str(blocker), "--no-progress"]) == 2
    assert "not a directory" in capsys.readouterr().err
    out = tmp_path / "run"
    out.mkdir()
    manifest = dict(format="jaxsde-generate/1", model="digits", solver="ggf", n=8, seed=0, batch_size=256)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["generate", "--n", "9", "--seed", "1", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different arguments" in err and "n=8" in err and "(this run: 9)" in err
    assert cli.main(["generate", "--n", "0", "--out", str(out)]) == 2
    assert "--n must be a positive integer" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_dir(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    assert cli.main(["generate", "--n", "8", "--out", str(locked), "--no-progress"]) == 2
    assert "cannot write" in capsys.readouterr().err
