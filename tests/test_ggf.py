"""Gotta Go Fast mechanics: NFE accounting, rejection, formulas, landing on t_end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.solvers.gotta_go_fast import GGFState
from jaxsde.testing import exact

SDE = jaxsde.VPSDE()
SCORE = exact.gaussian_score(SDE, 0.3, 0.2)


def reference_attempt(sde, score, x, t, h, x_prev, z, rtol, atol, safety=0.9, r=0.9, t_end=1e-3):
    """The paper's attempt written out in float64 NumPy (independent of the solver code)."""
    x, x_prev, z = (np.asarray(v, np.float64) for v in (x, x_prev, z))
    F = lambda y, s: np.asarray(sde.reverse_drift(jnp.asarray(y), s, score(jnp.asarray(y), s)),  # noqa: E731
                                np.float64)
    g = lambda s: float(sde.diffusion(s))  # noqa: E731
    k1 = -h * F(x, t) + g(t) * np.sqrt(h) * z
    x1 = x + k1
    k2 = -h * F(x1, t - h) + g(t - h) * np.sqrt(h) * z
    x2 = x + 0.5 * (k1 + k2)
    delta = np.maximum(atol, rtol * np.maximum(np.abs(x1), np.abs(x_prev)))
    e2 = np.sqrt(np.mean(((x2 - x1) / delta) ** 2))
    accept = e2 <= 1
    t_new = t - h if accept else t
    h_new = min(t_new - t_end, safety * h * e2 ** (-r))
    return dict(x=x2 if accept else x, t=t_new, h=h_new, x_prev=x1 if accept else x_prev, e2=e2,
                accepted=accept)


@pytest.mark.parametrize("h", [0.02, 0.3])  # one accepted, one rejected attempt
def test_attempt_matches_reference_formulas(h, x64):
    solver = jaxsde.GottaGoFast(rtol=0.05)
    x = jnp.linspace(-1.0, 1.0, 32)
    x_prev = 0.9 * x
    z = jax.random.normal(jax.random.PRNGKey(3), (1, 32), jnp.float64)
    t = 0.8
    # the solver's step (the maths) and its controller's verdict (the policy), as the driver runs them
    controller, t0, t_end = solver.step_controller, jnp.asarray(t), jnp.asarray(1e-3)
    state = controller.init(SDE, t0, t_end, jnp.float64)._replace(h=jnp.asarray(h))
    t1, state = controller.propose(SDE, t0, t_end, state)
    step = solver.step(SDE, SCORE, t0, t1, x, GGFState(x_prev), z)
    verdict = controller.adapt(SDE, t0, t1, step.x, step.error, step.reference, step.ok, state)
    t_next, _ = controller.propose(SDE, verdict.t, t_end, verdict.state)  # where the next attempt ends
    x_new = jnp.where(verdict.accepted, step.x, x)
    x_prev_new = jnp.where(verdict.accepted, step.state.x_prev, x_prev)
    ref = reference_attempt(SDE, SCORE, x, t, h, x_prev, z[0], 0.05, 0.0078)
    assert bool(verdict.accepted) == ref["accepted"]
    assert step.nfe == 2
    np.testing.assert_allclose(x_new, ref["x"], rtol=1e-12)
    np.testing.assert_allclose(x_prev_new, ref["x_prev"], rtol=1e-12)
    assert float(verdict.t) == pytest.approx(ref["t"], rel=1e-14)
    assert float(verdict.t - t_next) == pytest.approx(ref["h"], rel=1e-12)
    if not ref["accepted"]:  # a rejection leaves (x, t) unchanged and shrinks h
        assert float(verdict.t) == t and np.array_equal(x_new, x) and float(verdict.t - t_next) < h


def test_rejection_redraws_noise_from_next_attempt(x64):
    """After a rejection the retry uses the next attempt's noise, from the same (x, t)."""
    solver = jaxsde.GottaGoFast(rtol=0.05, h_init=0.05)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (16,), jnp.float64)
    z = jax.random.normal(jax.random.PRNGKey(1), (3, 1, 16), jnp.float64)
    z = z.at[0].multiply(50.0)  # attempt 0: huge noise, surely rejected
    sol = jaxsde.solve(jax.random.PRNGKey(0), SDE, SCORE, solver, x_T, noise=jaxsde.GivenNoise(z),
                       max_steps=2, denoise=False)
    assert int(sol.stats.num_rejected) == 1 and int(sol.stats.num_accepted) == 1
    first = reference_attempt(SDE, SCORE, x_T, 1.0, 0.05, x_T, z[0, 0], 0.05, 0.0078)
    assert not first["accepted"]
    second = reference_attempt(SDE, SCORE, x_T, 1.0, first["h"], x_T, z[1, 0], 0.05, 0.0078)
    assert second["accepted"]
    np.testing.assert_allclose(sol.x, second["x"], rtol=1e-10)
    assert float(sol.t) == pytest.approx(second["t"], rel=1e-12)
    # Fresh noise differs between attempts.
    fresh = jaxsde.FreshNoise()
    k = jax.random.PRNGKey(0)
    draws = [fresh.draw(k, attempt, 1.0, 0.9, (1, 16), jnp.float32) for attempt in (0, 1)]
    assert not np.allclose(*draws)


def test_nfe_accounting_and_landing(key):
    sde = jaxsde.VESDE()
    score = exact.gaussian_score(sde, 0.5, 0.1)
    sol = jax.jit(lambda k: jaxsde.sample(k, sde, score, jaxsde.GottaGoFast(rtol=0.05), (32,), 50))(key)
    steps = np.asarray(sol.stats.num_steps)
    np.testing.assert_array_equal(sol.stats.nfe, 2 * steps + 1)  # 2 per attempt + Tweedie
    np.testing.assert_array_equal(steps, np.asarray(sol.stats.num_accepted + sol.stats.num_rejected))
    assert np.all(np.asarray(sol.t) == np.float32(sde.eps)), "the last step must land exactly on eps"
    assert np.all(np.asarray(sol.result) == 0)
    assert len(set(np.asarray(sol.stats.nfe).tolist())) > 1, "step sizes are per sample"
    summary = jaxsde.summarize(sol)
    assert summary.loop_iterations == steps.max() and summary.max_nfe == 2 * steps.max() + 1


def test_default_atol_from_data_range():
    # the paper's eps_abs (one 8-bit level of the data range) wherever rtol is at least that level
    solver = jaxsde.GottaGoFast()
    assert float(solver.error_norm.absolute(jaxsde.VPSDE())) == pytest.approx(0.0078)
    assert float(solver.error_norm.absolute(jaxsde.SubVPSDE())) == pytest.approx(0.0078)
    assert float(solver.error_norm.absolute(jaxsde.VESDE())) == pytest.approx(0.0039)
    assert float(jaxsde.GottaGoFast(rtol=0.01).error_norm.absolute(jaxsde.VPSDE())) == pytest.approx(0.0078)
    assert jaxsde.GottaGoFast(atol=0.01).error_norm.absolute(jaxsde.VESDE()) == 0.01
    # below it, rtol times half the data range: the one knob keeps lowering the error
    assert float(jaxsde.GottaGoFast(rtol=1e-3).error_norm.absolute(jaxsde.VPSDE())) == pytest.approx(1e-3)
    assert float(jaxsde.GottaGoFast(rtol=1e-3).error_norm.absolute(jaxsde.VESDE())) == pytest.approx(5e-4)


@pytest.mark.parametrize("variant", [dict(extrapolate=False), dict(error_use_prev=False), dict(norm="linf"),
                                     dict(norm="l2_unscaled")])
def test_variants_run_and_converge(variant, key):
    """At rtol 0.01 every variant's sample mean and std are the exact law's within 4 Monte-Carlo sd
    (12 800 values: 0.0072 and 0.0049; measured at most 0.0017 and 0.0033, extrapolate=False)."""
    solver = jaxsde.GottaGoFast(rtol=0.01, **variant)
    sol = jax.jit(lambda k: jaxsde.sample(k, SDE, SCORE, solver, (64,), 200))(key)
    assert np.all(np.asarray(sol.result) == 0)
    x = np.asarray(sol.x, np.float64)
    ideal = exact.ideal_law(SDE, 0.3, 0.2)
    sd = ideal.var**0.5
    assert abs(x.mean() - ideal.mean) < 4 * sd / np.sqrt(x.size), x.mean()
    assert abs(x.std() - sd) < 4 * sd / np.sqrt(2 * x.size), x.std()


def test_lamba_variant_converges(key):
    """improved_euler=False controls only the drift error; its left-point noise inflates the
    variance at loose tolerances (about +14% at rtol 0.05 here) and converges as they tighten."""
    ideal_std = exact.ideal_law(SDE, 0.3, 0.2).var ** 0.5
    errs = []
    run = jax.jit(lambda k, solver: jaxsde.sample(k, SDE, SCORE, solver, (64,), 200))  # the solver an argument
    for rtol, atol in ((0.05, None), (0.001, 1e-4)):
        sol = run(key, jaxsde.GottaGoFast(rtol=rtol, atol=atol, improved_euler=False))
        assert np.all(np.asarray(sol.result) == 0)
        errs.append(abs(float(np.asarray(sol.x).std()) - ideal_std))
    assert errs[1] < errs[0] / 2, errs


@pytest.mark.parametrize("kwargs", [dict(rtol=0.0), dict(rtol=-1.0), dict(atol=0.0), dict(safety=1.5),
                                    dict(norm="l3"), dict(h_init=0.0), dict(exponent=float("nan"))])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="GottaGoFast"):
        jaxsde.GottaGoFast(**kwargs)
