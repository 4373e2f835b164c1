"""Exact flow targets (#35): velocity and posterior mean of the Gaussian mixtures under any
Gaussian path, checked against the score-based formulas, the continuity equation, and exactly at
alpha = 0 (t = 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsde.sde import VPSDE, FlowSDE, GaussianPathSDE
from jaxsde.testing.targets import GaussianMixture, LowRankMixture


class CosinePath(GaussianPathSDE):
    def marginal(self, t):
        t = jnp.asarray(t)
        return jnp.sin(0.5 * jnp.pi * (1.0 - t)), jnp.sin(0.5 * jnp.pi * t)


SDES = [FlowSDE(), CosinePath(), VPSDE()]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _mixture(dtype=jnp.float64, d=3, k=3):
    rng = np.random.default_rng(0)
    return GaussianMixture.create(rng.uniform(0.5, 1.5, k), rng.uniform(-0.8, 0.8, (k, d)),
                                  rng.uniform(0.05, 0.3, k), dtype=dtype)


def _low_rank(dtype=jnp.float64):
    return LowRankMixture.random(jax.random.PRNGKey(1), num_modes=3, shape=(4, 2), rank=2, dtype=dtype)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_flow_targets_equal_the_score_formulas(x64, sde):
    """Away from alpha = 0: posterior mean = Tweedie on the exact score, velocity = the
    probability-flow drift f x - g^2 s / 2, for both mixture kinds."""
    for target in (_mixture(), _low_rank()):
        data = target.sample(jax.random.PRNGKey(0), 4)
        noise = jnp.linspace(-1.0, 1.0, target.dim).reshape(target.shape)

        @jax.jit
        def both(x0, t, target=target, noise=noise):
            alpha, sigma = sde.marginal(t)
            x = alpha * x0 + sigma * noise
            s = target.score(sde)(x, t)
            return (target.posterior_mean(sde)(x, t), sde.tweedie(x, t, s),
                    target.velocity(sde)(x, t), sde.probability_flow_drift(x, t, s))

        for i, t in enumerate((1e-3, 0.2, 0.6, 0.97)):
            x0, tweedie, v, pf = both(data[i], jnp.float64(t))
            np.testing.assert_allclose(x0, tweedie, rtol=1e-9, atol=1e-11)
            np.testing.assert_allclose(v, pf, rtol=1e-9, atol=1e-10)


def test_velocity_satisfies_the_continuity_equation(x64):
    """d/dt log p_t + div v + v . grad log p_t = 0, by autodiff of the exact log density, up to
    t = 1 - 1e-6 on the linear path."""
    gm, sde = _mixture(d=2), FlowSDE()
    v = gm.velocity(sde)

    def residual(x, t):
        dlogp_dt = jax.grad(lambda u: gm.log_prob(sde, x, u))(t)
        div = jnp.trace(jax.jacfwd(lambda y: v(y, t))(x))
        return dlogp_dt + div + v(x, t) @ jax.grad(lambda y: gm.log_prob(sde, y, t))(x)

    residual = jax.jit(residual)
    for t in (0.05, 0.5, 0.9, 1.0 - 1e-6):
        for x in (jnp.asarray([0.3, -0.4]), jnp.asarray([-1.2, 0.8])):
            assert abs(float(residual(x, jnp.float64(t)))) < 1e-7, t


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_flow_targets_are_exact_at_t_equal_1(dtype):
    """At alpha = 0 the posterior mean is the data mean and the velocity is x - E[x0] (linear
    path) or alpha' E[x0] + sigma' x (any path), to the dtype's rounding; finite next to it."""
    tol = 1e-6 if dtype == jnp.float32 else 1e-14
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray([0.4, -1.3, 2.0, 0.1, -0.7, 1.5, 0.0, -2.2], dtype)
        gm = _mixture(dtype, d=8)
        lr = _low_rank(dtype)
        means = {id(gm): jnp.einsum("k,kd->d", gm.weights, gm.means.reshape(3, -1)),
                 id(lr): jnp.einsum("k,kd->d", lr.weights, lr.means.reshape(3, -1))}
        for target in (gm, lr):
            xt = x.reshape(target.shape)
            mean = means[id(target)].reshape(target.shape)
            sdes = (FlowSDE(), CosinePath())

            @jax.jit
            def evaluate(xt, t, target=target, sdes=sdes):
                return [(target.posterior_mean(sde)(xt, t), target.velocity(sde)(xt, t)) for sde in sdes]

            one, near = jnp.asarray(1.0, dtype), jnp.asarray(1.0 - 1e-6, dtype)
            for sde, (x0, v), (x0_near, v_near) in zip(sdes, evaluate(xt, one), evaluate(xt, near), strict=True):
                assert x0.dtype == dtype and v.dtype == dtype
                dalpha, dsigma = sde.marginal_derivatives(one)
                np.testing.assert_allclose(x0, mean, rtol=tol, atol=tol)
                np.testing.assert_allclose(v, dalpha * mean + dsigma * xt, rtol=tol, atol=tol)
                if isinstance(sde, FlowSDE):
                    np.testing.assert_allclose(v, xt - mean, rtol=tol, atol=tol)
                    np.testing.assert_allclose(sde.x0_from_velocity(xt, one, v), mean, rtol=tol, atol=tol)
                assert bool(jnp.all(jnp.isfinite(v_near)))
                np.testing.assert_allclose(x0_near, mean, atol=1e-4)
