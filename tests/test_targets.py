"""Exact Gaussian-mixture targets: scores, marginals, ideal-sampler laws, constructors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsde.sde import VESDE, VPSDE, SubVPSDE
from jaxsde.testing.targets import GaussianMixture, gaussian

SDES = [VPSDE(), SubVPSDE(), VESDE()]
SDE_IDS = ["vp", "subvp", "ve"]


@pytest.fixture
def x64():
    """Enable float64 for one test only (no global leak)."""
    with jax.enable_x64(True):
        yield


def _mixture64(d=5, k=3):
    rng = np.random.default_rng(0)
    return GaussianMixture.create(
        weights=rng.uniform(0.5, 1.5, k),
        means=rng.uniform(-0.8, 0.8, (k, d)),
        scales=rng.uniform(0.05, 0.3, k),
        dtype=jnp.float64,
    )


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_score_matches_grad_log_prob(x64, sde):
    gm = _mixture64()
    score = jax.jit(gm.score(sde))
    for i, t in enumerate([sde.eps, 0.05, 0.3, 1.0]):
        xs = gm.marginal_sample(jax.random.PRNGKey(i), sde, t, 2)
        assert xs.dtype == jnp.float64
        for x in xs:
            expected = jax.grad(lambda y, t=t: gm.log_prob(sde, y, t))(x)
            np.testing.assert_allclose(score(x, t), expected, rtol=1e-9, atol=1e-9)


def test_log_prob_normalised(x64):
    gm = GaussianMixture.create([0.3, 0.7], [[-0.5], [0.4]], [0.1, 0.2], dtype=jnp.float64)
    grid = jnp.linspace(-8.0, 8.0, 16001)[:, None]
    for sde, t in [(None, None), (VPSDE(), 0.2), (VESDE(), 0.5)]:
        dens = jnp.exp(gm.log_prob(sde, grid, t))
        assert dens.shape == (16001,)
        np.testing.assert_allclose(float(jnp.trapezoid(dens, grid[:, 0])), 1.0, atol=1e-6)


def test_float32_stable_and_batched_at_image_size():
    sde = VPSDE()
    gm = GaussianMixture.random(jax.random.PRNGKey(0), 4, (32, 32, 3))
    assert gm.shape == (32, 32, 3) and gm.dim == 3072 and gm.num_modes == 4
    score = jax.jit(jax.vmap(gm.score(sde), in_axes=(0, None)))
    x = jnp.concatenate([gm.sample(jax.random.PRNGKey(1), 3), 50.0 * jnp.ones((1, 32, 32, 3))])
    for t in [sde.eps, 0.5, 1.0]:
        s = score(x, t)
        assert s.dtype == jnp.float32 and s.shape == x.shape
        assert bool(jnp.all(jnp.isfinite(s)))
    r = gm.responsibilities(sde, x, 0.5)
    assert r.shape == (4, 4) and r.dtype == jnp.float32
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-5)
    assert gm.responsibilities(sde, x[0], 0.5).shape == (4,)
    assert gm.log_prob(sde, x, 0.5).shape == (4,)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_marginal_sample_moments(sde):
    t, d, n = 0.3, 4, 20000
    mu, s = jnp.array([0.5, -0.2, 0.1, 0.9]), 0.2
    x = gaussian(mu, s).marginal_sample(jax.random.PRNGKey(3), sde, t, n)
    alpha, sigma = sde.marginal(t)
    c = alpha**2 * s**2 + sigma**2
    assert x.shape == (n, d)
    # MC error: mean ~ sqrt(C/n), variance ~ C sqrt(2/n); 5 standard errors.
    np.testing.assert_allclose(x.mean(0), alpha * mu, atol=5 * float(jnp.sqrt(c / n)))
    np.testing.assert_allclose(x.var(0), c, rtol=5 * np.sqrt(2 / n))


def test_sample_weights_and_assign_modes():
    gm = GaussianMixture.ring(4, (3,), radius=0.6, scale=0.05, weights=[0.1, 0.2, 0.3, 0.4])
    x, labels = gm.sample_with_labels(jax.random.PRNGKey(0), 4000)
    freq = np.bincount(np.asarray(labels), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.03)
    assert np.array_equal(gm.assign_modes(x), labels)
    sde = VPSDE()
    np.testing.assert_array_equal(gm.assign_modes(x, sde, 0.01), labels)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("denoise", [True, False])
def test_ideal_mode_scales_match_ideal_sample(sde, denoise):
    # scale 0.01 ~ sigma(eps) for both defaults, so Tweedie visibly shrinks the modes.
    center = 0.5 if isinstance(sde, VESDE) else 0.0
    gm = GaussianMixture.ring(4, (3,), radius=0.3, scale=0.01, center=center)
    n = 12000
    x = gm.ideal_sample(jax.random.PRNGKey(7), sde, n, denoise=denoise)
    labels = np.asarray(gm.assign_modes(x))
    means = np.asarray(gm.ideal_mode_means(sde, denoise))
    scales = np.asarray(gm.ideal_mode_scales(sde, denoise))
    data_s = float(gm.scales[0])
    assert (scales < data_s).all() if denoise else (scales > data_s).all()
    for k in range(4):
        xk = np.asarray(x)[labels == k]
        np.testing.assert_allclose(xk.mean(0), means[k], atol=5 * scales[k] / np.sqrt(len(xk)))
        std = np.sqrt(np.mean((xk - xk.mean(0)) ** 2))
        np.testing.assert_allclose(std, scales[k], rtol=0.04)


def test_ideal_sample_dtype_and_jit_pytree():
    gm = GaussianMixture.ring(8, (2,))
    sde = VPSDE()
    x = gm.ideal_sample(jax.random.PRNGKey(0), sde, 16)
    assert x.shape == (16, 2) and x.dtype == jnp.float32
    # The mixture is a pytree: it can be a traced jit argument.
    f = jax.jit(lambda g, y: g.score(sde)(y, 0.5))
    assert f(gm, x[0]).shape == (2,)
    leaves = jax.tree_util.tree_leaves(gm)
    assert len(leaves) == 3


def test_constructors():
    gm = GaussianMixture.random(jax.random.PRNGKey(1), 6, (4, 4, 3), spread=0.7, scale=0.05)
    mu = np.asarray(gm.means).reshape(6, -1)
    assert gm.means.shape == (6, 4, 4, 3) and np.all(np.abs(mu) <= 0.7 + 1e-6)
    dists = [np.linalg.norm(mu[i] - mu[j]) for i in range(6) for j in range(i)]
    assert min(dists) > 20 * 0.05
    gm2 = GaussianMixture.random(jax.random.PRNGKey(1), 8, (2,), data_range=(0.0, 1.0))
    mu2 = np.asarray(gm2.means)
    assert np.all((mu2 >= 0.0) & (mu2 <= 1.0))
    assert min(np.linalg.norm(mu2[i] - mu2[j]) for i in range(8) for j in range(i)) > 0.15
    np.testing.assert_allclose(gm2.weights, np.full(8, 1 / 8), rtol=1e-6)

    ring = GaussianMixture.ring(8, (6,), radius=0.6, key=jax.random.PRNGKey(2), jitter=0.05)
    m = np.asarray(ring.means)
    np.testing.assert_allclose(np.hypot(m[:, 0], m[:, 1]), 0.6, rtol=1e-6)
    assert np.all(np.abs(m[:, 2:]) <= 0.05) and np.any(m[:, 2:] != 0)

    g = gaussian(jnp.zeros((2, 2)), 0.3)
    assert g.num_modes == 1 and g.shape == (2, 2)
    np.testing.assert_allclose(g.scales, [0.3])
    with pytest.raises(ValueError):
        GaussianMixture.create([0.5, 0.5], jnp.zeros((3, 2)), 0.1)
    with pytest.raises(ValueError):
        GaussianMixture.create(None, jnp.zeros((3, 2)), -1.0)


def test_low_rank_mixture_score_is_the_gradient_of_its_dense_log_density(x64):
    """Woodbury score and log density of LowRankMixture against dense covariances (d = 12, rank 3)."""
    from jax.scipy.stats import multivariate_normal

    from jaxsde.testing.targets import LowRankMixture

    mix = LowRankMixture.random(jax.random.PRNGKey(0), 3, (3, 4), rank=3, dtype=jnp.float64)
    sde = VPSDE()
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4), jnp.float64) * 0.5
    t = 0.3
    alpha, sigma = sde.marginal(t)
    d = mix.dim
    dense = []
    for k in range(mix.num_modes):
        cov = alpha**2 * (mix.bases[k] @ jnp.diag(mix.variances[k]) @ mix.bases[k].T
                          + mix.floor[k] ** 2 * jnp.eye(d)) + sigma**2 * jnp.eye(d)
        mean = alpha * mix.means[k].reshape(-1)
        dense.append(jnp.log(mix.weights[k]) + multivariate_normal.logpdf(x.reshape(-1), mean, cov))
    expected = jax.nn.logsumexp(jnp.stack(dense))
    np.testing.assert_allclose(mix.log_prob(sde, x, t), expected, rtol=1e-12)
    grad = jax.grad(lambda y: mix.log_prob(sde, y, t))(x)
    np.testing.assert_allclose(mix.score(sde)(x, t), grad, rtol=1e-10, atol=1e-12)


def test_low_rank_mixture_samples_have_its_moments():
    from jaxsde.testing.targets import LowRankMixture

    mix = LowRankMixture.random(jax.random.PRNGKey(2), 1, (8,), rank=2, std_range=(0.2, 0.4), floor=0.05)
    x = np.asarray(mix.sample(jax.random.PRNGKey(3), 40_000), np.float64)
    cov = np.asarray(mix.bases[0] @ jnp.diag(mix.variances[0]) @ mix.bases[0].T) + 0.05**2 * np.eye(8)
    np.testing.assert_allclose(x.mean(0), np.asarray(mix.means[0]), atol=0.01)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.002)  # sd of each entry <= 0.16 sqrt(2/40000) ~ 1e-3
