"""``jaxsde.BrownianTreeNoise``: one Brownian path per sample (a function of its key), so an adaptive
solver's retry after a rejection integrates the same path, and the accepted steps are not biased
toward the draws that passed the error test (what fresh noise per attempt does)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.testing.targets import GaussianMixture


def _increment(noise, key, t, t_next, shape=(1, 3)):
    z = noise.draw(key, jnp.int32(0), jnp.float32(t), jnp.float32(t_next), shape, jnp.float32)
    return np.asarray(z) * np.sqrt(t - t_next)


def test_increments_are_one_path_per_key():
    """Additive over adjacent intervals (the same path whatever the steps), the same for the same key
    whatever the attempt index, another path for another key."""
    noise, key = jaxsde.BrownianTreeNoise(), jax.random.PRNGKey(0)
    whole = _increment(noise, key, 0.9, 0.3)
    parts = _increment(noise, key, 0.9, 0.55) + _increment(noise, key, 0.55, 0.3)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)
    first, again = (noise.draw(key, jnp.int32(a), jnp.float32(0.9), jnp.float32(0.3), (1, 3), jnp.float32)
                    for a in (0, 7))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
    assert np.abs(_increment(noise, jax.random.PRNGKey(1), 0.9, 0.3) - whole).max() > 1e-3


def test_draws_are_standard_normal_and_independent_over_disjoint_intervals():
    noise = jaxsde.BrownianTreeNoise()
    keys = jax.random.split(jax.random.PRNGKey(3), 4000)

    def pair(k):
        a = noise.draw(k, jnp.int32(0), jnp.float32(0.8), jnp.float32(0.5), (2, 1), jnp.float32)
        b = noise.draw(k, jnp.int32(1), jnp.float32(0.5), jnp.float32(0.45), (2, 1), jnp.float32)
        return jnp.concatenate([a.ravel(), b.ravel()])

    z = np.asarray(jax.jit(jax.vmap(pair))(keys))  # (4000, 4): two normals per attempt, two attempts
    se = 1.0 / np.sqrt(len(z))
    assert np.abs(z.mean(0)).max() < 4 * se
    assert np.abs(z.var(0) - 1.0).max() < 4 * np.sqrt(2) * se
    corr = np.corrcoef(z.T) - np.eye(4)  # the count's normals and the attempts: uncorrelated
    assert np.abs(corr).max() < 4 * se


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="t0 < t1"):
        jaxsde.BrownianTreeNoise(t0=1.0, t1=0.0)
    with pytest.raises(ValueError, match="tol"):
        jaxsde.BrownianTreeNoise(tol=0.0)


@pytest.mark.slow
def test_rejections_do_not_bias_gotta_go_fast_on_one_path():
    """Gotta Go Fast on a 2-d mixture whose steps are rejected often (about 1 in 5 attempts): with a
    fresh normal per attempt the accepted increments are those that passed the error test and the
    samples' spread is off by far more than the sampling noise; on one Brownian path per sample it
    is within it (4000 samples: a std's relative sampling error is about 1.1%)."""
    rng = np.random.default_rng(0)
    target = GaussianMixture.create(rng.uniform(0.5, 1.5, 3), rng.uniform(-0.8, 0.8, (3, 2)), rng.uniform(0.05, 0.3, 3))
    ref_std = np.asarray(target.sample(jax.random.PRNGKey(3), 100_000)).std(0)
    sde = jaxsde.VPSDE()
    solver = jaxsde.GottaGoFast(rtol=0.05)

    def spread_error(noise):
        sol = jax.jit(lambda k: jaxsde.sample(k, sde, target.score(sde), solver, (2,), 4000, noise=noise))(
            jax.random.PRNGKey(1))
        assert float(np.mean(sol.stats.num_rejected)) > 0.15 * float(np.mean(sol.stats.num_steps))
        return np.abs(np.asarray(sol.x).std(0) / ref_std - 1.0).max()

    assert spread_error(jaxsde.FreshNoise()) > 0.1
    assert spread_error(jaxsde.BrownianTreeNoise()) < 0.035
