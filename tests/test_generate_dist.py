"""``generate`` over devices and hosts: 8 forced CPU devices, and two processes via jax.distributed."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxsde

pytestmark = pytest.mark.slow  # subprocesses: 8 forced host devices, two jax.distributed processes

COMMON = """
import jax
import numpy as np
import jaxsde
from jaxsde.testing import targets
from jaxsde.batching import Generator, generate, process_range

SDE = jaxsde.VPSDE()
SCORE = targets.GaussianMixture.random(jax.random.PRNGKey(3), 4, (6,)).score(SDE)
GGF = jaxsde.GottaGoFast(rtol=0.05)
KEY = jax.random.PRNGKey(0)
N = 40
"""

DEVICES = COMMON + """
assert jax.local_device_count() == 8
one = jax.jit(lambda k: generate(k, SDE, SCORE, GGF, (6,), N, 16, devices=jax.devices()[:1]))(KEY)
eight = jax.jit(lambda k: generate(k, SDE, SCORE, GGF, (6,), N, 16))(KEY)
assert eight.loop.iterations.shape == (8,) and eight.loop.slots == 2
np.testing.assert_allclose(np.asarray(eight.x), np.asarray(one.x), atol=1e-6, rtol=0)
for u, v in zip(eight.stats, one.stats):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
np.testing.assert_array_equal(np.asarray(eight.result), np.asarray(one.result))
# the same per-device width (2 slots): every device runs the program one device runs, bit for bit
narrow = jax.jit(lambda k: generate(k, SDE, SCORE, GGF, (6,), N, 2, devices=jax.devices()[:1]))(KEY)
assert narrow.loop.slots == 2
np.testing.assert_array_equal(np.asarray(eight.x), np.asarray(narrow.x))
np.testing.assert_array_equal(np.asarray(eight.stats.nfe), np.asarray(narrow.stats.nfe))
# 5 slots per device (5 samples each), halved while draining, each device on its own
drained = jax.jit(lambda k: generate(k, SDE, SCORE, GGF, (6,), N, 64, drain_halvings=2))(KEY)
assert drained.loop.slots == 5 and np.any(drained.loop.slot_iterations < 5 * drained.loop.iterations)
np.testing.assert_allclose(np.asarray(drained.x), np.asarray(one.x), atol=1e-6, rtol=0)
np.testing.assert_array_equal(np.asarray(drained.stats.nfe), np.asarray(one.stats.nfe))
chunks = list(Generator(KEY, SDE, lambda p: SCORE, None, GGF, (6,), np.arange(N), batch_size=16, chunk_size=16))
index = np.concatenate([c.index for c in chunks])
assert sorted(index) == list(range(N))
np.testing.assert_allclose(np.concatenate([c.x for c in chunks]), np.asarray(one.x)[index], atol=1e-6, rtol=0)
print("OK")
"""

HOSTS = """
import sys
import jax
port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
""" + COMMON + """
assert jax.process_count() == 2 and jax.process_index() == pid
offset, count = process_range(N)
gen = generate(KEY, SDE, SCORE, GGF, (6,), count, 8, offset=offset)
np.savez(out, index=np.arange(offset, offset + count), x=np.asarray(gen.x), nfe=np.asarray(gen.stats.nfe))
jax.distributed.shutdown()
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return dict(env, JAX_PLATFORMS="cpu", **extra)


def test_eight_host_devices_match_one(tmp_path):
    script = tmp_path / "devices.py"
    script.write_text(DEVICES)
    run = subprocess.run([sys.executable, str(script)], env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-3000:]


def test_two_processes_union_matches_one(tmp_path):
    script = tmp_path / "hosts.py"
    script.write_text(HOSTS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(tmp_path / f"p{i}.npz")],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    parts = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
    index = np.concatenate([p["index"] for p in parts])
    np.testing.assert_array_equal(index, np.arange(40))
    ns = {}
    exec(COMMON, ns)  # the same problem, in this process, through plain `sample`
    # at XLA's default optimisation level, like the worker processes (_env drops XLA_FLAGS; tests/conftest.py
    # lowers the level in this process): the two levels round differently (1.5e-5 here)
    ref = jax.jit(lambda k: jaxsde.sample(k, ns["SDE"], ns["SCORE"], ns["GGF"], (6,), 40),
                  compiler_options={"xla_backend_optimization_level": 3})(ns["KEY"])
    np.testing.assert_allclose(np.concatenate([p["x"] for p in parts]), np.asarray(ref.x), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(np.concatenate([p["nfe"] for p in parts]), np.asarray(ref.stats.nfe))
