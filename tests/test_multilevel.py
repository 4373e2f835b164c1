"""Multilevel Euler-Maruyama: unbiased estimator, equivalences with EM and with the batched path,
exact moments on a Gaussian target, cost accounting, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.solvers.multilevel import multilevel_cost, optimal_probabilities
from jaxsde.testing.targets import GaussianMixture

SDE = jaxsde.VPSDE()
MIX = GaussianMixture.gaussian(jnp.array([0.3, -0.2]), 0.4)


def _levels(scales=(0.7, 0.9, 1.0)):
    """Score functions of wrong-scale Gaussians converging to the exact one (finest last)."""
    exact = MIX.score(SDE)
    return [lambda x, t, c=c: c * exact(x, t) for c in scales]


def test_estimator_is_unbiased():
    solver = jaxsde.MultilevelEM(10, probabilities=(1.0, 0.3, 0.1))
    values = [jnp.array([1.0, -2.0]), jnp.array([1.5, -1.0]), jnp.array([1.7, -0.5])]
    est = jax.vmap(lambda k: solver.estimate(values, solver.coins(k)))(jnp.arange(200_000))
    mean, se = np.asarray(est.mean(0)), np.asarray(est.std(0)) / np.sqrt(est.shape[0])
    assert np.all(np.abs(mean - np.asarray(values[-1])) < 4 * se), (mean, se)
    coins = np.asarray(jax.vmap(solver.coins)(jnp.arange(200_000)))
    np.testing.assert_allclose(coins.mean(0), [1.0, 0.3, 0.1], atol=0.005)


def test_all_levels_drawn_equals_em_on_finest(key):
    score = jaxsde.MultilevelScore(_levels())
    ml = jaxsde.sample(key, SDE, score, jaxsde.MultilevelEM(40, probabilities=(1.0, 1.0, 1.0)), (2,), 16)
    em = jaxsde.sample(key, SDE, score.levels[-1], jaxsde.EulerMaruyama(40), (2,), 16)
    np.testing.assert_allclose(ml.x, em.x, atol=1e-5)
    assert np.all(np.asarray(ml.stats.nfe) == 40 * 3 + 1)


def test_batched_path_equals_sample(key):
    score = jaxsde.MultilevelScore(_levels())
    solver = jaxsde.MultilevelEM(50, probabilities=(1.0, 0.4, 0.2), coin_seed=3)
    ref = jaxsde.sample(key, SDE, score, solver, (2,), 32, offset=5)
    fast = jax.jit(lambda k: jaxsde.sample_multilevel(k, SDE, score, solver, (2,), 32, offset=5))(key)
    np.testing.assert_allclose(fast.x, ref.x, atol=1e-5)
    for field in ("nfe", "num_accepted", "num_rejected", "num_steps"):
        np.testing.assert_array_equal(getattr(fast.stats, field), getattr(ref.stats, field))
    np.testing.assert_array_equal(fast.result, ref.result)
    # coins are shared: every sample pays the same, and fewer evaluations than all levels
    nfe = np.asarray(fast.stats.nfe)
    assert np.all(nfe == nfe[0]) and nfe[0] < 50 * 3 + 1


def test_nonfinite_level_gives_result_code(key):
    bad = [lambda x, t: jnp.where(t < 0.5, jnp.nan, 1.0) * x, *(_levels()[1:])]
    score = jaxsde.MultilevelScore(bad)
    solver = jaxsde.MultilevelEM(20, probabilities=(1.0, 0.5, 0.5))
    ref = jaxsde.sample(key, SDE, score, solver, (2,), 4)
    fast = jaxsde.sample_multilevel(key, SDE, score, solver, (2,), 4)
    assert np.all(np.asarray(fast.result) == jaxsde.results.NONFINITE)
    np.testing.assert_array_equal(fast.result, ref.result)
    np.testing.assert_allclose(fast.x, ref.x, atol=1e-5)
    np.testing.assert_allclose(fast.t, ref.t, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(fast.x)))


@pytest.mark.slow
def test_moments_match_exact_target(key):
    """ML-EM with coarse levels 30%/70% off still samples the finest level's law (unbiased drift):
    its moments match plain EM's on the finest level within Monte-Carlo error, and both match the target."""
    n, steps = 4000, 200
    score = jaxsde.MultilevelScore(_levels((0.4, 0.8, 1.0)))
    solver = jaxsde.MultilevelEM(steps, probabilities=(1.0, 0.5, 0.25))
    ml = jax.jit(lambda k: jaxsde.sample_multilevel(k, SDE, score, solver, (2,), n))(key).x
    em = jax.jit(lambda k: jaxsde.sample(k, SDE, score.levels[-1], jaxsde.EulerMaruyama(steps), (2,), n))(key).x
    coarse = jax.jit(lambda k: jaxsde.sample(k, SDE, score.levels[0], jaxsde.EulerMaruyama(steps), (2,), n))(key).x
    target_mean, target_std = np.array([0.3, -0.2]), 0.4
    for x in (ml, em):
        x = np.asarray(x)
        assert np.all(np.abs(x.mean(0) - target_mean) < 4 * target_std / np.sqrt(n) + 0.01), x.mean(0)
        assert np.all(np.abs(x.std(0) - target_std) < 0.03), x.std(0)
    assert np.all(np.abs(np.asarray(coarse).std(0) - target_std) > 0.1)  # the coarse level alone is visibly wrong


def test_cost_accounting():
    costs = (1.0, 3.0, 10.0)
    full = jaxsde.MultilevelEM(30, probabilities=(1.0, 1.0, 1.0))
    assert multilevel_cost(full, costs) == pytest.approx(30 * 14 / 10 + 1)
    coarse_only = jaxsde.MultilevelEM(30, probabilities=(1.0, 1e-9, 1e-9))
    assert multilevel_cost(coarse_only, costs) == pytest.approx(30 * 0.1 + 1)
    p = optimal_probabilities(costs, (5.0, 1.0, 0.25), scale=0.5)
    assert p[0] == 1.0 and p[1] == 0.5 and p[2] == pytest.approx(0.5 * 0.25 * np.sqrt(3 / 10))


def test_bad_input():
    with pytest.raises(ValueError, match="probabilities"):
        jaxsde.MultilevelEM(10, probabilities=(0.5, 0.5))
    with pytest.raises(ValueError, match="probabilities"):
        jaxsde.MultilevelEM(10, probabilities=(1.0, 1.5))
    with pytest.raises(ValueError, match="costs"):
        jaxsde.MultilevelScore(_levels(), costs=(1.0, 2.0))
    solver = jaxsde.MultilevelEM(10, probabilities=(1.0, 0.5))
    with pytest.raises(TypeError, match="MultilevelScore"):
        jaxsde.solve(jax.random.PRNGKey(0), SDE, MIX.score(SDE), solver, jnp.zeros(2))
    with pytest.raises(ValueError, match="levels"):
        jaxsde.solve(jax.random.PRNGKey(0), SDE, jaxsde.MultilevelScore(_levels()), solver, jnp.zeros(2))
