"""EulerAncestral: k-diffusion 0.1.1's ``sample_euler_ancestral`` on the same start and noise, DDIM(eta)
equivalence, weak order 1 on exact Gaussian laws (float64), validation."""

import jax
import jax.numpy as jnp
import k_diffusion_sampling
import numpy as np
import pytest
from test_samplers import SUBVP, TARGETS, VE, VP, run, slope, w2_errors

import jaxsde
from jaxsde.testing import exact

try:
    HAVE_K = k_diffusion_sampling.load() is not None
except ImportError:  # torch or one of sampling.py's dependencies is missing
    HAVE_K = False
needs_k = pytest.mark.skipif(not HAVE_K, reason="k-diffusion 0.1.1.post1 is not installed "
                                                "(pip install --no-deps k-diffusion==0.1.1.post1)")
SDES = {"vp": VP, "subvp": SUBVP, "ve": VE, "discrete": jaxsde.DiscreteVPSDE.linear()}

# (sde, grid, eta): every SDE and grid kind; eta > 1 hits the cap sigma_up = sigma'
AGREEMENT = [("vp", "edm", 1.0), ("subvp", "uniform", 0.5), ("ve", "times", 1.5), ("discrete", "logsnr", 0.0)]


@needs_k
@pytest.mark.parametrize("kind,grid,eta", AGREEMENT)
def test_equals_k_diffusion_on_the_same_noise(kind, grid, eta, x64):
    """Max relative error measured: 1.4e-9 with ``eta = 1.5`` (at the cap, DDIM's weight
    ``sqrt(max(1 - eta_k^2 q, 0))`` of a rounded zero), below 1e-15 otherwise; the claim is 1e-5."""
    got, ref, sol, reference = k_diffusion_sampling.fixed_grid_agreement(
        SDES[kind], lambda n, g: jaxsde.EulerAncestral(n, eta=eta, grid=g), grid, 10, "sample_euler_ancestral",
        eta=eta)
    assert int(sol.result) == 0
    assert int(sol.stats.nfe) == reference.calls == 11  # 10 steps + k-diffusion's step to sigma = 0 / Tweedie
    assert reference.noise_calls == (10 if eta > 0 else 0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0)


def test_equals_ddim_for_eta_up_to_one(x64):
    """``eta <= 1``: DDIM(eta) on the same grid and noise (``eta = 1`` here, ``0.5`` and ``0`` through
    the k-diffusion cases)."""
    n, eta = 12, 1.0
    x_T = jax.random.normal(jax.random.PRNGKey(1), (4,), jnp.float64)
    z = jax.random.normal(jax.random.PRNGKey(2), (n, 1, 4), jnp.float64) if eta > 0 else None
    ea, ddim = jaxsde.EulerAncestral(n, eta=eta), jaxsde.DDIM(n, eta=eta, grid="edm")
    np.testing.assert_allclose(run(VP, ea, x_T, z), run(VP, ddim, x_T, z), rtol=1e-12, atol=1e-13)


def test_noise_capped_above_eta_one(x64):
    """``eta > 1``: the added noise is ``min(sigma', eta sigma' sqrt(q))``, so a huge ``eta`` gives
    ``x' = alpha' x0(x, t) + sigma' z`` (k-diffusion's ``sigma_down = 0``)."""
    sde, t, t1 = VP, 0.7, 0.4
    x = jax.random.normal(jax.random.PRNGKey(3), (4,), jnp.float64)
    z = jax.random.normal(jax.random.PRNGKey(4), (1, 1, 4), jnp.float64)
    out = run(sde, jaxsde.EulerAncestral(1, eta=1e6, grid=(t, t1)), x, z, denoise=False)
    score = exact.gaussian_score(sde, *TARGETS[sde])
    x0 = sde.tweedie(x, jnp.asarray(t), score(x, jnp.asarray(t)))
    alpha, sigma = sde.marginal(jnp.asarray(t1))
    np.testing.assert_allclose(out, alpha * x0 + sigma * z[0, 0], rtol=1e-12, atol=1e-13)


ORDER_CASES = {
    # name: (sde, factory, ns); measured weak slopes (float64, exact p_T start) in the comments
    "VP-edm": (VP, lambda n: jaxsde.EulerAncestral(n), [64, 256]),  # 0.95
    "subVP-logsnr-eta0.5": (SUBVP, lambda n: jaxsde.EulerAncestral(n, eta=0.5, grid="logsnr"), [64, 256]),  # 0.96
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_weak_order_one(case, x64):
    sde, make, ns = ORDER_CASES[case]
    errs = w2_errors(sde, make, ns)
    assert errs[1] < errs[0], errs
    assert abs(slope(ns, errs) - 1.0) < 0.2, (slope(ns, errs), errs)


def test_noise_and_nfe_counts():
    assert jaxsde.EulerAncestral(4).noise_per_attempt == 1
    assert jaxsde.EulerAncestral(4, eta=0.0).noise_per_attempt == 0
    s = jaxsde.EulerAncestral(7)
    assert s.max_attempts() == 7 and s.nfe_per_attempt == 1


@pytest.mark.parametrize("make,match", [
    (lambda: jaxsde.EulerAncestral(0), "num_steps"),
    (lambda: jaxsde.EulerAncestral(10, eta=-1.0), "eta must be a finite number >= 0"),
    (lambda: jaxsde.EulerAncestral(10, eta=float("inf")), "eta"),
    (lambda: jaxsde.EulerAncestral(10, eta="1"), "eta"),
    (lambda: jaxsde.EulerAncestral(2, grid=(1.0, 0.5)), "grid"),
])
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
