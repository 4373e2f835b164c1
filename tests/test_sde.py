"""SDE formulas: marginals consistent with drift/diffusion, log-SNR inverse, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde

SDES = [jaxsde.VPSDE(), jaxsde.SubVPSDE(), jaxsde.VESDE(), jaxsde.VPSDE(beta_min=0.5, beta_max=10.0)]
TIMES = [1e-3, 0.05, 0.3, 0.7, 1.0]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_marginal_solves_moment_odes(sde, x64):
    # Linear SDE dx = k(t) x dt + g dw: alpha' = k alpha and (sigma^2)' = 2 k sigma^2 + g^2.
    def k(t):
        return sde.drift(jnp.ones(()), t)

    for t in TIMES[1:-1]:
        t = jnp.asarray(t)
        alpha, sigma = sde.marginal(t)
        d_alpha = jax.grad(lambda u: sde.marginal(u)[0])(t)
        d_var = jax.grad(lambda u: sde.marginal(u)[1] ** 2)(t)
        np.testing.assert_allclose(d_alpha, k(t) * alpha, rtol=1e-10)
        np.testing.assert_allclose(d_var, 2 * k(t) * sigma**2 + sde.diffusion(t) ** 2, rtol=1e-9)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_log_snr_inverse_round_trip(sde, x64):
    ts = jnp.linspace(sde.eps, sde.T, 50)
    lam = sde.log_snr(ts)
    assert jnp.all(jnp.diff(lam) < 0), "log-SNR must decrease in t"
    alpha, sigma = sde.marginal(ts)
    np.testing.assert_allclose(lam, jnp.log(alpha**2 / sigma**2), rtol=1e-10)
    np.testing.assert_allclose(sde.inverse_log_snr(lam), ts, rtol=1e-9, atol=1e-12)


def test_log_snr_inverse_float32():
    sde = jaxsde.VPSDE()
    ts = jnp.linspace(sde.eps, sde.T, 50, dtype=jnp.float32)
    np.testing.assert_allclose(sde.inverse_log_snr(sde.log_snr(ts)), ts, rtol=2e-3, atol=1e-5)


def test_known_values():
    vp, ve = jaxsde.VPSDE(), jaxsde.VESDE()
    assert float(vp.marginal(1e-3)[1]) == pytest.approx(0.01049, rel=1e-3)
    assert float(ve.marginal(1e-5)[1]) == pytest.approx(0.01, rel=1e-3)
    assert float(ve.marginal(1.0)[1]) == pytest.approx(50.0, rel=1e-5)
    assert vp.default_atol == 0.0078 and ve.default_atol == 0.0039
    x = ve.prior_sample(jax.random.PRNGKey(0), (10000,))
    assert float(jnp.std(x)) == pytest.approx(50.0, rel=0.03)
    assert vp.prior_sample(jax.random.PRNGKey(0), (3, 4)).shape == (3, 4)


@pytest.mark.parametrize("sde", SDES[:3], ids=lambda s: type(s).__name__)
def test_tweedie_and_drifts(sde):
    x, s, t = jnp.array([0.5, -1.0]), jnp.array([2.0, 3.0]), 0.3
    alpha, sigma = sde.marginal(t)
    np.testing.assert_allclose(sde.tweedie(x, t, s), (x + sigma**2 * s) / alpha, rtol=1e-6)
    g2 = sde.diffusion(t) ** 2
    np.testing.assert_allclose(sde.reverse_drift(x, t, s), sde.drift(x, t) - g2 * s, rtol=1e-6)
    np.testing.assert_allclose(sde.probability_flow_drift(x, t, s), sde.drift(x, t) - 0.5 * g2 * s, rtol=1e-6)


def test_sdes_are_static_pytrees():
    sde = jaxsde.VPSDE()
    assert jax.tree_util.tree_leaves(sde) == []
    assert hash(sde) == hash(jaxsde.VPSDE())

    @jax.jit
    def f(s, x):
        return s.drift(x, 0.5)

    assert f(sde, jnp.ones(3)).shape == (3,)


@pytest.mark.parametrize(
    "make",
    [
        lambda: jaxsde.VPSDE(beta_min=-1.0),
        lambda: jaxsde.VPSDE(beta_min=5.0, beta_max=1.0),
        lambda: jaxsde.VESDE(sigma_min=1.0, sigma_max=0.5),
        lambda: jaxsde.VESDE(eps=2.0),
    ],
)
def test_bad_parameters(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("kind", ["uniform", "logsnr", "edm"])
def test_time_grids(kind):
    sde = jaxsde.VPSDE()
    ts = jaxsde.time_grid(sde, 10, kind)
    assert ts.shape == (11,) and float(ts[0]) == sde.T and float(ts[-1]) == np.float32(sde.eps)
    assert jnp.all(jnp.diff(ts) < 0)
    if kind == "logsnr":
        lam = sde.log_snr(ts.astype(jnp.float32))
        np.testing.assert_allclose(jnp.diff(lam), jnp.diff(lam)[0] * jnp.ones(10), rtol=2e-3)


def test_bad_grids():
    with pytest.raises(ValueError, match="unknown grid"):
        jaxsde.EulerMaruyama(10, grid="cosine")
    with pytest.raises(ValueError, match="strictly decreasing"):
        jaxsde.EulerMaruyama(2, grid=[1.0, 0.1, 0.5])
    with pytest.raises(ValueError, match="needs 4 times"):
        jaxsde.EulerMaruyama(3, grid=[1.0, 0.1])
    with pytest.raises(ValueError, match="num_steps"):
        jaxsde.EulerMaruyama(0)


def test_discrete_vp_matches_table_and_moment_odes(x64):
    """DiscreteVPSDE hits the alphas_cumprod table exactly at t_n = (n+1)/N, inverts its log-SNR,
    and its drift/diffusion are consistent with its marginals (d log alpha/dt = -beta/2, VP)."""
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    sde = jaxsde.DiscreteVPSDE.from_alphas_cumprod(abar)
    assert sde.eps == 1e-3 and sde.num_train_timesteps == 1000
    t_n = (np.arange(1000) + 1) / 1000
    alpha, sigma = sde.marginal(jnp.asarray(t_n))
    np.testing.assert_allclose(np.asarray(alpha) ** 2, abar, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(alpha) ** 2 + np.asarray(sigma) ** 2, 1.0, atol=1e-12)
    np.testing.assert_allclose(sde.timestep(jnp.asarray(t_n)), np.arange(1000), atol=1e-9)
    t = jnp.linspace(sde.eps, 1.0, 501)
    np.testing.assert_allclose(sde.inverse_log_snr(sde.log_snr(t)), t, atol=1e-12)
    for tm in (0.0123, 0.5, 0.9871):  # inside table intervals
        dlog_alpha = jax.grad(lambda s: jnp.log(sde.marginal(s)[0]))(tm)
        np.testing.assert_allclose(sde.beta(tm), -2 * dlog_alpha, rtol=1e-9)
        np.testing.assert_allclose(sde.diffusion(tm) ** 2, sde.beta(tm), rtol=1e-12)
    # the linear constructor reproduces diffusers' float32 betas
    lin = jaxsde.DiscreteVPSDE.linear()
    np.testing.assert_allclose(np.asarray(lin.marginal(jnp.asarray(t_n))[0]) ** 2, abar, rtol=1e-5)
    assert hash(lin) == hash(jaxsde.DiscreteVPSDE.linear())


def test_discrete_vp_bad_tables():
    with pytest.raises(ValueError, match="inside"):
        jaxsde.DiscreteVPSDE.from_alphas_cumprod([0.9, 1.0])
    with pytest.raises(ValueError, match="decreasing"):
        jaxsde.DiscreteVPSDE.from_alphas_cumprod([0.5, 0.9])
    with pytest.raises(ValueError, match="at least 2"):
        jaxsde.DiscreteVPSDE.from_alphas_cumprod([0.5])
    with pytest.raises(ValueError, match="betas"):
        jaxsde.DiscreteVPSDE.from_betas([0.0, 0.1])
