"""jaxsde.log_likelihood: exact Gaussian-mixture laws, Hutchinson unbiasedness, batch independence,
result codes, bad input, the bits/dim conventions, and k-diffusion's log_likelihood side by side."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde import results
from jaxsde.likelihood import (
    bits_per_dim,
    dequantize,
    evaluate_bits_per_dim,
    log_likelihood,
    log_likelihood_batch,
    quantize,
)
from jaxsde.testing.targets import GaussianMixture

SDES = {"vp": jaxsde.VPSDE(), "ve": jaxsde.VESDE(sigma_max=50.0), "subvp": jaxsde.SubVPSDE()}


def _mixture(sde, d=8):
    lo, hi = sde.data_range
    return GaussianMixture.random(jax.random.PRNGKey(0), 3, (d,), scale=0.1, data_range=(lo, hi))


@pytest.fixture(scope="module")
def mixture_runs():
    """Exact-trace likelihoods of 48 mixture samples per SDE at default tolerances (float32)."""
    out = {}
    for name, sde in SDES.items():
        gm = _mixture(sde)
        xs = gm.sample(jax.random.PRNGKey(1), 48)
        # the tolerance traced: one program serves both
        run = jax.jit(lambda k, xs, tol, sde=sde, gm=gm: log_likelihood_batch(k, sde, gm.score(sde), xs, rtol=tol,
                                                                              atol=tol))
        out[name] = (sde, gm, xs, run(jax.random.PRNGKey(2), xs, 1e-5), run(jax.random.PRNGKey(2), xs, 1e-7))
    return out


@pytest.mark.parametrize("name", list(SDES))
def test_exact_trace_matches_mixture_density(mixture_runs, name):
    sde, gm, xs, res, tight = mixture_runs[name]
    d = gm.dim
    assert np.all(np.asarray(res.result) == results.SUCCESS)
    true = np.asarray(gm.log_prob(sde, xs, sde.eps))
    err = (np.asarray(res.log_p) - true) / d
    assert abs(err.mean()) <= 5e-4, err.mean()
    # per sample, the error is the prior's mismatch with the true p_T plus the solver's error: with
    # the true p_T in place of the prior, what is left is the solver's, and it converges
    def solver_error(r):
        corrected = np.asarray(r.delta_log_p) + np.asarray(gm.log_prob(sde, r.x_T, sde.T))
        return np.abs(corrected - true) / d

    assert solver_error(res).max() <= 3e-4  # measured 0.3-1.1e-4 (f32), 0.7-2.2e-4 (f64) at 1e-5
    assert solver_error(tight).max() <= 5e-6  # measured 0.5-2e-6 at 1e-7
    mismatch = np.abs(np.asarray(gm.log_prob(sde, res.x_T, sde.T)) - np.asarray(res.prior_log_p)) / d
    assert np.max(np.abs(err)) <= mismatch.max() + 3e-4
    assert np.all(np.asarray(res.std_err) == 0.0)
    nfe = np.asarray(res.stats.nfe)
    assert np.all(nfe > 0) and np.all(np.asarray(res.num_jvps) == nfe * d)


def test_single_gaussian_to_1e5(x64):
    """Anisotropic Gaussian data: with the true p_T in place of the prior, the exact-trace likelihood is
    within 1e-5 nats/dim at rtol = atol = 1e-6 (at the default 1e-5: 2e-6 VP, 1.3e-5 VE, measured)."""
    d = 6
    rng = np.random.default_rng(0)
    m, s = rng.uniform(-0.5, 0.5, d), rng.uniform(0.05, 0.3, d)
    for sde in (jaxsde.VPSDE(), jaxsde.VESDE(sigma_max=50.0)):
        def score(x, t, sde=sde):
            alpha, sigma = sde.marginal(t)
            return -(x - alpha * m) / (alpha**2 * s**2 + sigma**2)

        def log_normal(x, t, sde=sde):
            alpha, sigma = sde.marginal(t)
            var = alpha**2 * s**2 + sigma**2
            return float(-0.5 * jnp.sum((x - alpha * m) ** 2 / var) - 0.5 * jnp.sum(jnp.log(2 * math.pi * var)))

        x = jnp.asarray(m + s * rng.standard_normal(d))
        res = log_likelihood(jax.random.PRNGKey(0), sde, score, x, rtol=1e-6, atol=1e-6)
        assert int(res.result) == results.SUCCESS
        corrected = float(res.delta_log_p) + log_normal(res.x_T, sde.T)
        assert abs(corrected - log_normal(x, sde.eps)) / d <= 1e-5


@pytest.mark.slow  # statistical: 96 Hutchinson draws; test_probes_fixed_by_key_and_given_probes stays fast
def test_hutchinson_unbiased_and_its_standard_error():
    """Over many probe draws at one point, the K-probe estimate averages to the exact value within
    2 standard errors, and its reported standard error matches its spread across draws."""
    sde = SDES["vp"]
    gm = _mixture(sde)
    x = gm.sample(jax.random.PRNGKey(5), 1)[0]
    score = gm.score(sde)
    exact = float(log_likelihood(jax.random.PRNGKey(0), sde, score, x).log_p)
    draws = 96
    xs = jnp.broadcast_to(x, (draws, *x.shape))
    est = jax.jit(lambda k: log_likelihood_batch(k, sde, score, xs, divergence="hutchinson", num_probes=8))(
        jax.random.PRNGKey(7))
    assert np.all(np.asarray(est.result) == results.SUCCESS)
    vals, se = np.asarray(est.log_p, np.float64), np.asarray(est.std_err, np.float64)
    spread = vals.std(ddof=1)
    assert abs(vals.mean() - exact) <= 2 * spread / math.sqrt(draws), (vals.mean(), exact, spread)
    # the per-draw standard error estimates the spread of one estimate (chi-square noise at K = 8)
    assert 0.7 <= np.sqrt(np.mean(se**2)) / spread <= 1.4
    assert spread > 0  # the estimate is stochastic, so the comparison above can fail
    one = log_likelihood(jax.random.PRNGKey(3), sde, score, x, divergence="hutchinson")
    assert np.isnan(float(one.std_err)) and np.isfinite(float(one.log_p))
    gauss = log_likelihood(jax.random.PRNGKey(3), sde, score, x, divergence="hutchinson", probe="gaussian",
                           num_probes=4)
    assert np.isfinite(float(gauss.std_err)) and float(gauss.std_err) > 0


def test_probes_fixed_by_key_and_given_probes():
    sde = SDES["vp"]
    gm = _mixture(sde)
    x = gm.sample(jax.random.PRNGKey(5), 1)[0]
    score = gm.score(sde)
    a = log_likelihood(jax.random.PRNGKey(3), sde, score, x, divergence="hutchinson", num_probes=2)
    b = log_likelihood(jax.random.PRNGKey(3), sde, score, x, divergence="hutchinson", num_probes=2)
    c = log_likelihood(jax.random.PRNGKey(4), sde, score, x, divergence="hutchinson", num_probes=2)
    assert float(a.log_p) == float(b.log_p) and float(a.log_p) != float(c.log_p)
    probes = jax.random.rademacher(jax.random.PRNGKey(3), (2, x.size), x.dtype).reshape(2, *x.shape)
    given = log_likelihood(jax.random.PRNGKey(99), sde, score, x, probes=probes)
    np.testing.assert_allclose(float(given.log_p), float(a.log_p), rtol=0, atol=1e-5)


def test_sample_does_not_depend_on_its_batch(mixture_runs):
    sde, gm, xs, res, _ = mixture_runs["vp"]
    score = gm.score(sde)
    kw = dict(divergence="hutchinson", num_probes=2)
    # two batches of 7 that share samples 3..6 (the offset traced: one program for both)
    run = jax.jit(lambda xs, offset: log_likelihood_batch(jax.random.PRNGKey(2), sde, score, xs, offset=offset, **kw))
    big, other = run(xs[:7], 0), run(xs[3:10], 3)
    one = log_likelihood(jax.random.fold_in(jax.random.PRNGKey(2), 4), sde, score, xs[4], **kw)
    np.testing.assert_allclose(np.asarray(other.log_p[:4]), np.asarray(big.log_p[3:]), rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(other.stats.nfe[:4]), np.asarray(big.stats.nfe[3:]))
    np.testing.assert_allclose(float(one.log_p), float(big.log_p[4]), rtol=1e-6, atol=1e-5)
    # every sample steps on its own: the step counts differ across the batch
    assert len(set(np.asarray(res.stats.nfe).tolist())) > 1


def test_unconverged_and_nonfinite_are_codes_not_numbers():
    sde = SDES["vp"]
    gm = _mixture(sde)
    x = gm.sample(jax.random.PRNGKey(5), 1)[0]
    short = log_likelihood(jax.random.PRNGKey(0), sde, gm.score(sde), x, max_steps=3)
    assert int(short.result) == results.MAX_STEPS_REACHED and np.isnan(float(short.log_p))
    assert int(short.stats.num_steps) == 3

    def broken(x, t):
        return jnp.where(t > 0.5, jnp.nan, 1.0) * gm.score(sde)(x, t)

    bad = log_likelihood(jax.random.PRNGKey(0), sde, broken, x)
    assert int(bad.result) == results.NONFINITE and np.isnan(float(bad.log_p))
    inside = jax.jit(lambda x: log_likelihood(jax.random.PRNGKey(0), sde, gm.score(sde), x))(x.at[0].set(jnp.nan))
    assert int(inside.result) == results.NONFINITE and np.isnan(float(inside.log_p))


def test_bad_input_names_the_fix():
    sde = SDES["vp"]
    gm = _mixture(sde)
    score = gm.score(sde)
    x = gm.sample(jax.random.PRNGKey(5), 1)[0]
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="num_probes must be an integer >= 1"):
        log_likelihood(key, sde, score, x, divergence="hutchinson", num_probes=0)
    with pytest.raises(ValueError, match="non-finite"):
        log_likelihood(key, sde, score, x.at[1].set(jnp.inf))
    with pytest.raises(ValueError, match="ONE sample"):
        log_likelihood(key, sde, score, jnp.zeros((3, 8)))
    with pytest.raises(ValueError, match="shaped like x"):
        log_likelihood(key, sde, lambda x, t: x[:4], x)
    with pytest.raises(ValueError, match="divergence must be one of"):
        log_likelihood(key, sde, score, x, divergence="trace")
    with pytest.raises(ValueError, match="divergence='hutchinson'"):
        log_likelihood(key, sde, score, x, exact_max_dim=4)
    with pytest.raises(ValueError, match=r"probes must have shape"):
        log_likelihood(key, sde, score, x, probes=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="t_start < t_end"):
        log_likelihood(key, sde, score, x, t_start=0.5, t_end=0.2)
    with pytest.raises(TypeError, match="float32 or float64"):
        log_likelihood(key, sde, score, x.astype(jnp.bfloat16))

    class NoPrior(jaxsde.VPSDE):
        prior_log_prob = None

    with pytest.raises(TypeError, match="no prior log-density"):
        log_likelihood(key, NoPrior(), score, x)
    with pytest.raises(ValueError, match="outside the data range"):
        evaluate_bits_per_dim(key, sde, score, np.full((2, 8), 1.5), levels=256)
    with pytest.raises(ValueError, match="pixels must be integers"):
        dequantize(key, jnp.asarray([0.5, 3.0]), data_range=(-1, 1), levels=256)
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        bits_per_dim(0.0, 8, data_range=(-1, 1), levels=1)


def test_bits_per_dim_conventions():
    # the uniform density on the data range has exactly log2(levels) bits/dim in any range
    for lo, hi in ((-1.0, 1.0), (0.0, 1.0), (0.0, 255.0)):
        d = 10
        bpd = float(bits_per_dim(-d * math.log(hi - lo), d, data_range=(lo, hi), levels=256))
        assert abs(bpd - 8.0) < 1e-6
    # score_sde's offset 7 - inverse_scaler(-1): 7 for centred data, 8 for [0, 1]
    assert abs(float(bits_per_dim(0.0, 3, data_range=(-1, 1))) - 7.0) < 1e-12
    assert abs(float(bits_per_dim(0.0, 3, data_range=(0, 1))) - 8.0) < 1e-12
    # quantize inverts the data scaling k / (levels - 1); dequantize fills each pixel's cell
    k = np.arange(17)
    x = -1.0 + 2.0 * k / 16
    np.testing.assert_array_equal(np.asarray(quantize(x, data_range=(-1, 1), levels=17)), k)
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    y = np.stack([np.asarray(dequantize(kk, k, data_range=(-1, 1), levels=17)) for kk in keys])
    cell = 2.0 / 17
    lower = -1.0 + cell * k
    assert np.all(y >= lower - 1e-6) and np.all(y < lower + cell + 1e-6)
    np.testing.assert_allclose(y.mean(0), lower + cell / 2, atol=cell * 0.15)


def test_evaluate_bits_per_dim_matches_per_sample():
    sde = SDES["vp"]
    gm = _mixture(sde)
    score = gm.score(sde)
    xs = np.clip(np.asarray(gm.sample(jax.random.PRNGKey(5), 5)), -1, 1)
    out = evaluate_bits_per_dim(jax.random.PRNGKey(1), sde, score, xs, levels=256, batch_size=3)
    assert out.num_failed == 0 and out.bits_per_dim.shape == (5,)
    key2 = jax.random.fold_in(jax.random.PRNGKey(1), 2)
    pix = quantize(xs[2], data_range=sde.data_range, levels=256)
    x2 = dequantize(jax.random.fold_in(key2, 0), pix, data_range=sde.data_range, levels=256)
    ll = log_likelihood(key2, sde, score, x2)
    np.testing.assert_allclose(out.bits_per_dim[2], float(bits_per_dim(ll.log_p, 8, data_range=(-1, 1))),
                               rtol=1e-5)
    assert abs(out.mean - out.bits_per_dim.mean()) < 1e-9 and out.std_err > 0


def test_agrees_with_k_diffusion_log_likelihood(x64):
    """The same VE Gaussian denoiser and the same Rademacher probe: jaxsde and k-diffusion 0.1.1 agree
    to their solvers' accuracy, and jaxsde's error is the smaller at equal tolerances."""
    torch = pytest.importorskip("torch")
    from k_diffusion_sampling import load

    kd = load()
    if kd is None:
        pytest.skip("k-diffusion is not installed")
    d = 6
    rng = np.random.default_rng(0)
    m, s = rng.uniform(-0.5, 0.5, d), rng.uniform(0.05, 0.3, d)
    # a non-diagonal Jacobian: a rotated anisotropic Gaussian
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = q @ np.diag(s**2) @ q.T
    sde = jaxsde.VESDE(sigma_min=0.01, sigma_max=50.0)

    def score(x, t):
        sigma = sde.sigma(t)
        return -jnp.linalg.solve(jnp.asarray(cov) + sigma**2 * jnp.eye(d), x - m)

    def denoiser(x, sigma):
        sig = sigma.reshape(-1, 1, 1).double()
        prec = torch.linalg.inv(torch.tensor(cov)[None] + sig**2 * torch.eye(d, dtype=torch.float64)[None])
        return x + sig[:, :, 0] ** 2 * -(prec @ (x - torch.tensor(m))[..., None])[..., 0]

    x = m + np.linalg.cholesky(cov) @ rng.standard_normal(d)
    xt = torch.tensor(x)[None]
    torch.manual_seed(3)
    v = torch.randint_like(xt, 2) * 2 - 1  # the probe k-diffusion draws first after this seed
    tol = 1e-6
    torch.manual_seed(3)
    theirs, info = kd.log_likelihood(denoiser, xt, float(sde.sigma(sde.eps)), sde.sigma_max, atol=tol, rtol=tol)
    ours = log_likelihood(jax.random.PRNGKey(0), sde, score, jnp.asarray(x), probes=jnp.asarray(v.numpy()),
                          rtol=tol, atol=tol)
    fine = log_likelihood(jax.random.PRNGKey(0), sde, score, jnp.asarray(x), probes=jnp.asarray(v.numpy()),
                          rtol=1e-10, atol=1e-10)
    assert int(ours.result) == results.SUCCESS and info["fevals"] > 0
    theirs, ours, fine = float(theirs[0]), float(ours.log_p), float(fine.log_p)
    assert abs(theirs - fine) <= 5e-4 and abs(ours - fine) <= 1e-4
    assert abs(ours - fine) <= abs(theirs - fine)
