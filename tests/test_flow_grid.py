"""The SD3/Flux time shift as a warp of the time grid (#35): jaxsde.flow against diffusers'
FlowMatchEulerDiscreteScheduler, its quirks, and bad input."""

import math

import numpy as np
import pytest

import jaxsde
from jaxsde.flow import dynamic_shift_mu, flow_grid, time_shift
from jaxsde.grids import time_grid, validate_grid

CASES = [
    (4, dict(shift=3.0), {}),
    (10, dict(shift=1.0), {}),
    (28, dict(shift=3.0), {}),
    (7, dict(shift=0.37), {}),
    (20, dict(use_dynamic_shifting=True, mu=0.8), dict(mu=0.8)),
    (20, dict(use_dynamic_shifting=True, mu=dynamic_shift_mu(4096)), dict(mu=1.15)),
    (12, dict(use_dynamic_shifting=True, mu=1.5, time_shift_type="linear"), dict(mu=1.5)),
    (8, dict(shift=3.0, shift_terminal=0.1), {}),
    (8, dict(use_dynamic_shifting=True, mu=0.5, shift_terminal=0.02), dict(mu=0.5)),
    (5, dict(shift=2.0, num_train_timesteps=100), {}),
]


@pytest.mark.parametrize("steps,kwargs,set_kwargs", CASES)
def test_flow_grid_equals_diffusers_sigmas(steps, kwargs, set_kwargs):
    """flow_grid == float64(sched.sigmas[:-1]) to float32 rounding, for static, dynamic and
    terminal-stretched shifts."""
    diffusers = pytest.importorskip("diffusers")
    init = {k: v for k, v in kwargs.items() if k != "mu"}
    sched = diffusers.FlowMatchEulerDiscreteScheduler(**init)
    sched.set_timesteps(steps, **set_kwargs)
    expected = sched.sigmas.numpy().astype(np.float64)
    assert expected[-1] == 0.0
    grid = flow_grid(steps, **kwargs)
    assert isinstance(grid, tuple) and len(grid) == steps and grid[0] == 1.0
    np.testing.assert_allclose(grid, expected[:-1], rtol=1e-6, atol=0)


def test_flow_grid_quirks_and_use_as_a_jaxsde_grid():
    """The static shift applies twice to sigma_min (diffusers' quirk); the dynamic one once; the
    grid is a valid jaxsde grid on FlowSDE."""
    g = flow_grid(4, shift=3.0)
    once = time_shift(1e-3, 3.0)
    np.testing.assert_allclose(g[-1], time_shift(once, 3.0), rtol=1e-6)
    np.testing.assert_allclose(g[-1], 0.0089286, rtol=1e-4)
    np.testing.assert_allclose(flow_grid(4, use_dynamic_shifting=True, mu=math.log(3.0))[-1], once, rtol=1e-6)
    np.testing.assert_allclose(flow_grid(6, shift=3.0, shift_terminal=0.05)[-1], 0.05, rtol=1e-12)
    np.testing.assert_allclose(flow_grid(3), [1.0, 0.5005, 0.001], rtol=1e-6)
    assert validate_grid(g, 3) == g
    ts = time_grid(jaxsde.FlowSDE(), 3, g)
    assert ts[0] == 1.0 and ts.shape == (4,)
    assert jaxsde.flow_grid is flow_grid


def test_time_shift_map():
    t = np.linspace(0.0, 1.0, 11)
    for s in (0.3, 1.0, 3.0):
        u = time_shift(t, s)
        assert u[0] == 0.0 and u[-1] == 1.0 and np.all(np.diff(u) > 0)
        np.testing.assert_allclose(time_shift(u, 1.0 / s), t, atol=1e-15)
    np.testing.assert_array_equal(time_shift(t, 1.0), t)
    assert time_shift(0.5, 3.0) == 0.75
    np.testing.assert_allclose([dynamic_shift_mu(256), dynamic_shift_mu(4096)], [0.5, 1.15])


@pytest.mark.parametrize("kwargs,match", [
    (dict(shift=0.0), "shift must be a finite number > 0"),
    (dict(shift=-2.0), "shift must be a finite number > 0"),
    (dict(shift=float("nan")), "shift must be a finite number > 0"),
    (dict(shift=float("inf")), "shift must be a finite number > 0"),
    (dict(mu=0.8), "only used by the dynamic-shift schedule: pass use_dynamic_shifting=True"),
    (dict(use_dynamic_shifting=True), "needs mu"),
    (dict(use_dynamic_shifting=True, mu=0.8, shift=3.0), "ignored under dynamic shifting"),
    (dict(use_dynamic_shifting=True, mu=-1.0, time_shift_type="linear"), "must be finite and > 0"),
    (dict(use_dynamic_shifting=True, mu=0.8, time_shift_type="log"), "unknown time_shift_type"),
    (dict(time_shift_type="linear"), "dynamic shifting only"),
    (dict(shift_terminal=1.0), "shift_terminal must lie in"),
    (dict(shift_terminal=0.0), "shift_terminal must lie in"),
    (dict(num_train_timesteps=1), "num_train_timesteps"),
])
def test_flow_grid_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flow_grid(10, **kwargs)


def test_flow_grid_needs_two_times():
    for n in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 2"):
            flow_grid(n)
    with pytest.raises(ValueError, match="shift must be"):
        time_shift(0.5, 0.0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        flow_grid(3, shift=1e300)  # every time rounds to 1
