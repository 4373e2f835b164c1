import os

# Compile time, not run time, is what the test programs cost on a CPU: almost every test compiles a small
# solver program (a while loop over a few steps of a tiny network or a closed-form score) and runs it once.
# XLA's backend optimisation level 0 (no LLVM optimisation passes) compiles them in about 60% of the CPU time
# (12 registry solvers' sampling programs, 2 cores: 18 s -> 10 s) and runs them a little slower. Set before
# jax creates its CPU client, so the subprocesses that tests start (CLI runs) inherit it too; an XLA_FLAGS
# that already names the option wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run a test in float64 (convergence-order tests need it)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
