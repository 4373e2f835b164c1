import jax
import pytest


@pytest.fixture
def x64():
    """Run a test in float64 (convergence-order tests need it)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
