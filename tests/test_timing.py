"""Benchmark timing helpers (``jaxsde.timing``)."""

import jax.numpy as jnp
import numpy as np

from jaxsde.timing import compile_cpu_seconds, time_compiled


def test_compile_cpu_seconds_compiles_afresh_each_repeat():
    calls = []

    def fn(x):
        calls.append(1)  # Python runs once per trace
        return jnp.sin(x) * 2

    compiled, seconds = compile_cpu_seconds(fn, jnp.arange(4.0), repeats=3)
    assert len(calls) == 3, "each repeat traces afresh (no jit cache hit)"
    assert seconds > 0
    np.testing.assert_allclose(compiled(jnp.arange(4.0)), np.sin(np.arange(4.0)) * 2, rtol=1e-6)


def test_time_compiled_reports_the_output_and_repeats():
    out, timing = time_compiled(lambda x: x + 1, jnp.ones(3), repeats=2)
    np.testing.assert_array_equal(out, 2.0)
    assert timing.repeats == 2 and timing.median_s >= timing.min_s > 0 and timing.compile_s > 0
