"""``jaxsde generate``: resumable shard output survives SIGKILL; argument and directory errors."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import mixture_job
import numpy as np
import pytest

from jaxsde.apps import cli
from jaxsde.apps.generate_job import read_shards

N = 160
JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mixture_job.py")  # the same loop as the CLI


def _env(tmp_path):
    cache = tmp_path / "jax-cache"  # reruns load the compiled loop instead of compiling it again
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_PLATFORMS="cpu")


def _shards(folder):
    return len([f for f in os.listdir(folder) if f.startswith("shard-")]) if os.path.isdir(folder) else 0


@pytest.mark.slow  # 12+ subprocess runs; test_disk_full_keeps_the_shards_written_and_resumes covers resuming in-process
def test_ten_sigkills_then_resume_give_the_uninterrupted_result(tmp_path):
    """10 SIGKILLs at random points (during start-up and compile-cache loading, or just after a
    shard lands, mid-chunk), then a clean rerun: exactly 0..n-1, bitwise equal to one run."""
    env = _env(tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run([sys.executable, JOB, str(ref), str(N)], env=env, check=True, timeout=300)
    rng = random.Random(0)
    kills, finished = 0, False
    while kills < 10:
        before = _shards(out)
        early = rng.random() < 0.4  # a random moment of start-up, else just after the next shard lands
        proc = subprocess.Popen([sys.executable, JOB, str(out), str(N), "--slow-writes"], env=env)
        deadline = time.monotonic() + (rng.uniform(0.1, 1.5) if early else 120)
        while proc.poll() is None and time.monotonic() < deadline and (early or _shards(out) <= before):
            time.sleep(0.002)
        if not early:
            time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if proc.returncode == 0:
            finished = True
            break
        got = read_shards(str(out), keys=("index",))["index"]  # whole shards only, never a duplicate
        assert np.array_equal(np.unique(got), got) and not [f for f in os.listdir(out) if f.endswith(".npz")
                                                            and not f.startswith("shard-")]
    assert kills == 10 and not finished, f"the run finished after {kills} kills; make N larger"
    subprocess.run([sys.executable, JOB, str(out), str(N)], env=env, check=True, timeout=300)
    got, want = read_shards(str(out)), read_shards(str(ref))
    np.testing.assert_array_equal(got["index"], np.arange(N))  # exactly 0..n-1, no duplicates
    for k in ("x", "nfe", "num_accepted", "num_rejected", "num_steps", "result", "t"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # bitwise
    assert got["x"].shape == (N, 8) and np.all(np.abs(got["x"]) <= 1.0)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_disk_full_keeps_the_shards_written_and_resumes(tmp_path, monkeypatch):
    """ENOSPC at the 3rd shard's fsync: a clear error naming what is kept, no partial or temporary
    file, the first shards intact; the rerun completes them bitwise equal to an uninterrupted run."""
    mixture_job.run(tmp_path / "ref", 24)
    want = read_shards(str(tmp_path / "ref"))
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".tmp-"):
            calls.append(fd)
            if len(calls) == 4:  # manifest, shard 0, shard 1, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    out = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match=r"No space left on device.*the 8 samples written before it are kept.*rerun"):
        mixture_job.run(out, 24)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(os.listdir(out)) == [".lock", "manifest.json", "shard-000000.npz", "shard-000001.npz"]
    assert read_shards(str(out))["index"].size == 8
    report = mixture_job.run(out, 24)
    assert report["resumed"] == 8 and report["generated"] == 16
    got = read_shards(str(out))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_cli_reports_os_errors_in_one_line(monkeypatch, capsys):
    from jaxsde.apps import generate_job

    def full(**kwargs):
        raise OSError(errno.ENOSPC, "cannot write out/shard-000002.npz (No space left on device); the 8 samples "
                                    "written before it are kept in out: make room and rerun the same command")

    monkeypatch.setattr(generate_job, "run_generate", full)
    assert cli.main(["generate", "--n", "8", "--out", "out", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err


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


def test_unwritable_dir(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root (as in CI) may write anywhere: the OS answers for a normal user here
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
            False if os.path.abspath(path) == str(locked) and mode & os.W_OK else real_access(path, mode, **kw)))
    assert cli.main(["generate", "--n", "8", "--out", str(locked), "--no-progress"]) == 2
    assert "cannot write" in capsys.readouterr().err
