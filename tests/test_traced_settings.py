"""Float settings of solvers and controllers are pytree leaves: one compiled program serves a sweep
of values passed as arguments, ``jax.grad`` differentiates through them, and a bad traced value is
a result code (``results.INVALID_SETTING``), never a silent default."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde import results
from jaxsde.controllers import PIDController
from jaxsde.testing import exact

SDE = jaxsde.VPSDE()
SCORE = exact.gaussian_score(SDE, 0.3, 0.2)
SHAPE, N = (6,), 4


def _counted_sampler():
    """A jitted ``sample`` taking the solver as an argument, and how many times it was traced."""
    traces = []

    @jax.jit
    def run(solver, key):
        traces.append(1)
        sol = jaxsde.sample(key, SDE, SCORE, solver, SHAPE, N)
        return sol.x, sol.stats.nfe, sol.result

    return run, traces


def _closed_over(solver, key):
    return jax.jit(lambda k: jaxsde.sample(k, SDE, SCORE, solver, SHAPE, N))(key)


@pytest.mark.parametrize("make, values", [
    (lambda r: jaxsde.GottaGoFast(rtol=r), (0.2, 0.05, 0.01)),
    (lambda e: jaxsde.DDIM(8, eta=e), (0.25, 1.0)),
    (lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r, atol=r), (0.1, 0.001)),
    (lambda a: jaxsde.ProbabilityFlow(rtol=1e-3, atol=a), (1e-2, 1e-4)),
    (lambda c: jaxsde.GottaGoFast(rtol=0.05, controller=PIDController(pcoeff=c, icoeff=0.3)), (0.0, 0.4)),
    (lambda g: jaxsde.DPMSolverPP(4, grid=g), tuple(
        tuple(float(t) for t in jaxsde.time_grid(SDE, 4, kind)) for kind in ("logsnr", "edm"))),
], ids=["ggf-rtol", "ddim-eta", "multistep-rtol", "pf-atol", "pid-pcoeff", "dpmpp-grid"])
def test_one_program_serves_a_sweep_and_matches_closed_over_solvers(make, values, key):
    run, traces = _counted_sampler()
    outputs = []
    for v in values:
        x, nfe, result = run(make(v), key)
        ref = _closed_over(make(v), key)
        assert np.all(np.asarray(result) == results.SUCCESS)
        np.testing.assert_array_equal(nfe, ref.stats.nfe)  # the same steps taken
        np.testing.assert_allclose(x, ref.x, rtol=1e-5, atol=1e-6)
        outputs.append((float(jnp.mean(nfe)), float(jnp.sum(x))))
    assert len(traces) == 1  # one compilation for the whole sweep
    assert len(set(outputs)) == len(values)  # and the setting really changed what ran


def test_zero_eta_is_its_own_static_structure(key):
    # eta = 0 exactly draws no noise (a different program); it still equals the closed-over solver
    run, traces = _counted_sampler()
    run(jaxsde.DDIM(8, eta=0.5), key)
    x, _, _ = run(jaxsde.DDIM(8, eta=0.0), key)
    assert len(traces) == 2
    assert jaxsde.DDIM(8, eta=0.0).noise_per_attempt == 0 and jaxsde.DDIM(8, eta=0.5).noise_per_attempt == 1
    np.testing.assert_allclose(x, _closed_over(jaxsde.DDIM(8, eta=0.0), key).x, rtol=1e-6, atol=1e-7)


def test_grad_of_a_sample_statistic_with_respect_to_eta(key, x64):
    x_T = jax.random.normal(jax.random.PRNGKey(3), (N, *SHAPE), jnp.float64)
    keys = jax.random.split(key, N)

    def second_moment(eta):
        sol = jaxsde.solve_batch(keys, SDE, SCORE, jaxsde.DDIM(6, eta=eta), x_T)
        return jnp.mean(sol.x**2)

    eta = 0.6
    grad = jax.jit(jax.grad(second_moment))(eta)
    moment = jax.jit(second_moment)  # one program for both sides of the difference (eta traced)
    d = 1e-5
    fd = (moment(eta + d) - moment(eta - d)) / (2 * d)
    assert abs(float(grad)) > 1e-3  # eta matters to this statistic
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_forward_derivative_with_respect_to_a_tolerance(key, x64):
    # an adaptive solve is a while loop: forward mode differentiates it. Between changes of the
    # accepted-step pattern the solution is smooth in rtol (the step sizes the controller computes
    # from the error norm carry the dependence): jacfwd equals a central difference
    x_T = jax.random.normal(jax.random.PRNGKey(4), SHAPE, jnp.float64)

    def mean_value(rtol):
        return jnp.mean(jaxsde.solve(key, SDE, SCORE, jaxsde.ProbabilityFlow(rtol=rtol, atol=1e-4), x_T).x)

    rtol, d = 1e-3, 1e-9
    derivative = jax.jit(jax.jacfwd(mean_value))(rtol)
    value = jax.jit(mean_value)  # one program for both sides of the difference (rtol traced)
    fd = (value(rtol + d) - value(rtol - d)) / (2 * d)
    assert abs(float(derivative)) > 0
    np.testing.assert_allclose(derivative, fd, rtol=1e-4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.05, 0.0])
def test_bad_traced_tolerance_is_a_result_code(bad, key):
    run, _ = _counted_sampler()
    x, nfe, result = run(jaxsde.GottaGoFast(rtol=0.05), key)  # a valid value first: the same program
    assert np.all(np.asarray(result) == results.SUCCESS)
    leaves, tree = jax.tree_util.tree_flatten(jaxsde.GottaGoFast(rtol=0.05))
    assert leaves[0] == 0.05  # rtol is the first traced setting
    solver = jax.tree_util.tree_unflatten(tree, [bad] + leaves[1:])
    x, nfe, result = run(solver, key)
    assert np.all(np.asarray(result) == results.INVALID_SETTING)
    assert np.all(np.isfinite(np.asarray(x)))
    assert "out of its range" in results.describe(results.INVALID_SETTING)


def test_bad_traced_controller_coefficient_is_a_result_code(key):
    run, _ = _counted_sampler()
    good = jaxsde.GottaGoFast(controller=PIDController(pcoeff=0.2, icoeff=0.3))
    leaves, tree = jax.tree_util.tree_flatten(good)
    names = [n for n in PIDController.traced_settings if getattr(good.controller, n) is not None]
    bad = list(leaves)
    bad[-len(names) + names.index("icoeff")] = jnp.float32(-1.0)  # icoeff must be > 0
    _, _, result = run(jax.tree_util.tree_unflatten(tree, bad), key)
    assert np.all(np.asarray(result) == results.INVALID_SETTING)
    _, _, result = run(good, key)
    assert np.all(np.asarray(result) == results.SUCCESS)


def test_solver_built_inside_jit_from_a_traced_value(key):
    @jax.jit
    def run(rtol, k):
        return jaxsde.sample(k, SDE, SCORE, jaxsde.GottaGoFast(rtol=rtol), SHAPE, N).stats.nfe

    np.testing.assert_array_equal(run(0.05, key), _closed_over(jaxsde.GottaGoFast(rtol=0.05), key).stats.nfe)


def test_concrete_bad_settings_still_raise_at_construction():
    with pytest.raises(ValueError, match="rtol"):
        jaxsde.GottaGoFast(rtol=float("nan"))
    with pytest.raises(ValueError, match="eta"):
        jaxsde.DDIM(4, eta=-1.0)
    with pytest.raises(ValueError, match="icoeff"):
        PIDController(icoeff=0.0)


def test_traced_grid_spans_its_own_end_points(key):
    # a grid passed into the program carries its (traced) end points; a shorter span is honoured
    run, traces = _counted_sampler()
    grid = tuple(float(t) for t in jaxsde.time_grid(SDE, 4, "logsnr", t_start=0.5))
    x, nfe, result = run(jaxsde.DPMSolverPP(4, grid=grid), key)
    ref = _closed_over(jaxsde.DPMSolverPP(4, grid=grid), key)
    np.testing.assert_allclose(x, ref.x, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(result) == results.SUCCESS)
    bad = grid[:2] + (float("nan"),) + grid[3:]
    leaves, tree = jax.tree_util.tree_flatten(jaxsde.DPMSolverPP(4, grid=grid))
    _, _, result = run(jax.tree_util.tree_unflatten(tree, list(bad)), key)
    assert np.all(np.asarray(result) == results.INVALID_SETTING) and len(traces) == 1


def test_structure_must_be_static():
    @jax.jit
    def build(n):
        return jaxsde.DDIM(n).num_steps

    with pytest.raises(TypeError, match="num_steps is structure"):
        build(4)
    with pytest.raises(TypeError, match="order is structure"):
        jax.jit(lambda q: jaxsde.AdaptiveDPMSolver(order=q).order)(3)
    with pytest.raises(TypeError, match="order is structure"):
        jax.jit(lambda q: jaxsde.DPMSolverPP(10, order=q).order)(2)


def test_a_solver_missing_part_of_the_contract_is_refused_at_construction():
    from jaxsde.solvers.base import AdaptiveSolver, FixedGridSolver, solver_class

    @solver_class
    class NoAdvance(FixedGridSolver):
        num_steps: int = 3
        grid: str = "uniform"

    @solver_class
    class NoAttempt(AdaptiveSolver):
        rtol: float = 0.1

    with pytest.raises(TypeError, match="NoAdvance does not implement nfe_per_attempt, step"):
        NoAdvance()
    with pytest.raises(TypeError, match="NoAttempt does not implement default_norm, default_rule, init, "
                                        "nfe_per_attempt, step:"):
        NoAttempt()
    for solver in (jaxsde.GottaGoFast(), jaxsde.MultilevelEM(4), jaxsde.UniPC(4), jaxsde.LMS(4)):
        assert solver.missing_hooks() == []
