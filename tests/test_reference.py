"""jaxsde against diffrax, the independent reference: same noise, same grids, same answers."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.testing import metrics, reference
from jaxsde.testing.targets import GaussianMixture


def problem(sde, d=8):
    center = 0.0 if isinstance(sde, jaxsde.VPSDE) else 0.5
    mixture = GaussianMixture.ring(4, (d,), radius=0.3, scale=0.05, center=center, key=jax.random.PRNGKey(3))
    return mixture, mixture.score(sde)


@pytest.mark.parametrize("sde", [jaxsde.VPSDE(), jaxsde.VESDE()], ids=["VP", "VE"])
def test_em_equals_diffrax_euler_on_the_same_path(sde):
    mixture, score = problem(sde)
    n_steps = 100
    ts = jaxsde.time_grid(sde, n_steps)

    @jax.jit
    def both(key, x_T):
        path = reference.brownian_path(key, sde, x_T.shape)
        noise = reference.jaxsde_noise(path, sde.T)
        ours = jaxsde.solve(key, sde, score, jaxsde.EulerMaruyama(n_steps), x_T, noise=noise)
        theirs = reference.diffrax_solve(key, sde, score, x_T, dfx.Euler(), ts=ts, path=path)
        return ours, theirs

    for seed in range(3):
        x_T = sde.prior_sample(jax.random.PRNGKey(100 + seed), (8,))
        ours, theirs = both(jax.random.PRNGKey(seed), x_T)
        np.testing.assert_allclose(ours.x, theirs.x, atol=1e-5, rtol=0)
        assert int(ours.stats.nfe) == int(theirs.stats.nfe) == n_steps + 1
        assert int(ours.result) == int(theirs.result) == 0


@pytest.mark.parametrize("sde", [jaxsde.VPSDE(), jaxsde.VESDE()], ids=["VP", "VE"])
@pytest.mark.parametrize("method", [dfx.Dopri5, dfx.Tsit5])
def test_pf_ode_matches_diffrax_adaptive(sde, method, key):
    _, score = problem(sde)
    ours = jax.jit(lambda k: jaxsde.sample(k, sde, score, jaxsde.ProbabilityFlow(rtol=1e-6, atol=1e-6), (8,), 16))(key)
    theirs = jax.jit(lambda k: reference.diffrax_sample(
        k, sde, score, method(), (8,), 16, ode=True, controller=dfx.PIDController(rtol=1e-6, atol=1e-6)))(key)
    np.testing.assert_allclose(ours.x, theirs.x, atol=1e-4, rtol=0)
    assert np.all(np.asarray(ours.result) == 0) and np.all(np.asarray(theirs.result) == 0)


@pytest.mark.slow  # long (one big program or a statistical run): the slow tier
def test_ggf_distribution_matches_diffrax_adaptive_sde(key):
    """GGF (tight rtol) vs diffrax ShARK + PID + VirtualBrownianTree: the sample laws agree
    (unbiased MMD^2 within the exact-vs-exact noise); a coarse EM does not."""
    sde = jaxsde.VPSDE()
    mixture, score = problem(sde, d=16)
    n = 600
    # 600 samples each: run time outweighs compile time, so XLA's full optimisation (tests/conftest.py
    # lowers the default to 0 for compile speed)
    optimized = {"xla_backend_optimization_level": 3}
    ggf = jax.jit(lambda k: jaxsde.sample(k, sde, score, jaxsde.GottaGoFast(rtol=0.01), (16,), n),
                  compiler_options=optimized)(key)
    shark = jax.jit(lambda k: reference.diffrax_sample(
        k, sde, score, dfx.ShARK(), (16,), n, controller=dfx.PIDController(rtol=1e-3, atol=1e-3), dt0=0.01,
        brownian_tol=1e-3), compiler_options=optimized)(jax.random.PRNGKey(1))
    coarse = jax.jit(lambda k: jaxsde.sample(k, sde, score, jaxsde.EulerMaruyama(8), (16,), n))(key)
    assert np.all(np.asarray(ggf.result) == 0) and np.all(np.asarray(shark.result) == 0)
    bandwidth = metrics.median_bandwidth(shark.x)
    floor = [metrics.mmd2_unbiased(mixture.ideal_sample(jax.random.PRNGKey(10 + i), sde, n),
                                   mixture.ideal_sample(jax.random.PRNGKey(20 + i), sde, n), bandwidth=bandwidth)
             for i in range(4)]
    noise = 4 * max(abs(f) for f in floor)
    mmd_ggf = metrics.mmd2_unbiased(ggf.x, shark.x, bandwidth=bandwidth)
    mmd_coarse = metrics.mmd2_unbiased(coarse.x, shark.x, bandwidth=bandwidth)
    assert mmd_ggf < noise, (mmd_ggf, floor)
    assert mmd_coarse > noise, (mmd_coarse, floor)


@pytest.mark.parametrize("solver,ode", [(dfx.Euler(), False), (dfx.Heun(), False), (dfx.ShARK(), False),
                                        (dfx.Dopri5(), True), (dfx.Tsit5(), True)],
                         ids=["euler", "heun", "shark", "dopri5", "tsit5"])
def test_diffrax_nfe_formula_matches_counted_evaluations(solver, ode):
    sde = jaxsde.VPSDE()
    _, score = problem(sde)
    count = []

    def counting_score(x, t):
        jax.debug.callback(lambda: count.append(1))
        return score(x, t)

    kwargs = dict(ode=ode, denoise=False)
    if isinstance(solver, dfx.Euler):
        kwargs.update(dt0=0.02)
    else:
        kwargs.update(controller=dfx.PIDController(rtol=1e-3, atol=1e-3), dt0=None if ode else 0.01)
    x_T = sde.prior_sample(jax.random.PRNGKey(0), (8,))
    sol = reference.diffrax_solve(jax.random.PRNGKey(1), sde, counting_score, x_T, solver, **kwargs)
    jax.block_until_ready(sol.x)
    assert len(count) == int(sol.stats.nfe) > 0


def test_unknown_diffrax_solver_has_no_guessed_nfe():
    with pytest.raises(KeyError, match="no NFE count"):
        reference.nfe_per_step(dfx.ReversibleHeun())


def test_brownian_noise_rejects_multi_draw_solvers(key):
    sde = jaxsde.VPSDE()
    _, score = problem(sde)
    path = reference.brownian_path(key, sde, (8,))
    with pytest.raises(ValueError, match="one normal per attempt"):
        noise = reference.jaxsde_noise(path, sde.T)
        jaxsde.solve(key, sde, score, jaxsde.PredictorCorrector(5), jnp.ones(8), noise=noise)
