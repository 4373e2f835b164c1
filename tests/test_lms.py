"""LMS: k-diffusion 0.1.1's ``sample_lms`` on the same start, its scipy-integrated coefficients against
the closed form under jit, ODE orders on exact Gaussian laws (float64), validation."""

import jax
import jax.numpy as jnp
import k_diffusion_sampling
import numpy as np
import pytest
from test_samplers import SUBVP, VE, VP, slope, w2_errors

import jaxsde
from jaxsde.solvers.exponential import interpolation_weights

try:
    K_SAMPLING = k_diffusion_sampling.load()
except ImportError:  # torch or one of sampling.py's dependencies is missing
    K_SAMPLING = None
needs_k = pytest.mark.skipif(K_SAMPLING is None, reason="k-diffusion 0.1.1.post1 is not installed "
                                                        "(pip install --no-deps k-diffusion==0.1.1.post1)")
SDES = {"vp": VP, "subvp": SUBVP, "ve": VE, "discrete": jaxsde.DiscreteVPSDE.linear()}

# (sde, grid, order): every SDE and grid kind
AGREEMENT = [("vp", "edm", 4), ("subvp", "logsnr", 3), ("ve", "uniform", 4), ("discrete", "times", 4)]


@needs_k
@pytest.mark.parametrize("kind,grid,order", AGREEMENT)
def test_equals_k_diffusion(kind, grid, order, x64):
    """Sigmas of the grid without k-diffusion's trailing 0 (its last LMS step to sigma = 0 is not
    jaxsde's Tweedie step), ``denoise=False``. Max relative error measured: 8.8e-15; the claim is 1e-5."""
    got, ref, sol, reference = k_diffusion_sampling.fixed_grid_agreement(
        SDES[kind], lambda n, g: jaxsde.LMS(n, order=order, grid=g), grid, 10, "sample_lms", to_zero=False,
        order=order)
    assert int(sol.result) == 0
    assert int(sol.stats.nfe) == reference.calls == 10
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0)


@needs_k
@pytest.mark.parametrize("kind,grid,order", AGREEMENT)
def test_last_step_lms_equals_k_diffusion_to_sigma_zero(kind, grid, order, x64):
    """k-diffusion's sigmas with the trailing 0 (its last LMS step to sigma = 0) against
    ``last_step="lms"`` with ``denoise=True``: the same 11 evaluations and the same output. The claim
    is 1e-5 relative; the default last step (Tweedie) differs from it by far more."""
    got, ref, sol, reference = k_diffusion_sampling.fixed_grid_agreement(
        SDES[kind], lambda n, g: jaxsde.LMS(n, order=order, grid=g, last_step="lms"), grid, 10, "sample_lms",
        to_zero=True, order=order)
    assert int(sol.result) == 0
    assert int(sol.stats.nfe) == reference.calls == 11
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0)
    tweedie, _, _, _ = k_diffusion_sampling.fixed_grid_agreement(
        SDES[kind], lambda n, g: jaxsde.LMS(n, order=order, grid=g), grid, 10, "sample_lms", to_zero=True, order=order)
    assert np.max(np.abs(tweedie - ref)) > 100 * np.max(np.abs(got - ref))


@needs_k
def test_closed_form_coefficients_under_jit_equal_scipy_quadrature(x64):
    """``c_j = Delta int_0^1 l_j(v) dv`` from a traced sigma schedule, against k-diffusion's
    ``linear_multistep_coeff`` (``scipy.integrate.quad``) for every order and step."""
    sigmas = np.array([80.0, 31.0, 9.5, 3.1, 1.2, 0.4, 0.11, 0.02])

    def coeffs(s, i, order):  # s and i traced, order static
        delta = s[i + 1] - s[i]
        nodes = [(s[i - j] - s[i]) / delta for j in range(order)]
        return jnp.stack(interpolation_weights([delta / (k + 1) for k in range(order)], nodes))

    jitted = jax.jit(coeffs, static_argnums=2)
    for order in range(1, 5):
        for i in range(order - 1, len(sigmas) - 1):
            got = np.asarray(jitted(jnp.asarray(sigmas), i, order))
            ref = [K_SAMPLING.linear_multistep_coeff(order, sigmas, i, j) for j in range(order)]
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * abs(sigmas[i + 1] - sigmas[i]))


ORDER_CASES = {
    # name: (sde, factory, ns, order); measured slopes (float64, exact p_T start) in the comments
    "VP-4": (VP, lambda n: jaxsde.LMS(n), [128, 512], 4),  # 3.87 (3.48 at 32 -> 128: lower-order warm-up)
    "VE-4": (VE, lambda n: jaxsde.LMS(n), [128, 512], 4),  # 3.89
    "VP-2": (VP, lambda n: jaxsde.LMS(n, order=2), [32, 128], 2),  # 1.85
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_convergence_order(case, x64):
    """Order of the deterministic map on the PF-ODE (W2 of the exact output law, Karras grid)."""
    sde, make, ns, order = ORDER_CASES[case]
    errs = w2_errors(sde, make, ns)
    assert errs[1] < errs[0], errs
    assert abs(slope(ns, errs) - order) < 0.2, (slope(ns, errs), errs)


def test_counts():
    s = jaxsde.LMS(9, order=3)
    assert s.noise_per_attempt == 0 and s.max_attempts() == 9 and s.nfe_per_attempt == 1 and s.history_size == 3


@pytest.mark.parametrize("make,match", [
    (lambda: jaxsde.LMS(10, order=0), "order must be an integer in \\[1, 4\\]"),
    (lambda: jaxsde.LMS(10, order=5), "order must be an integer in \\[1, 4\\]"),
    (lambda: jaxsde.LMS(10, order=3.0), "order"),
    (lambda: jaxsde.LMS(3), "order 4 needs num_steps >= 4"),
    (lambda: jaxsde.LMS(1, order=2), "needs num_steps >= 2"),
    (lambda: jaxsde.LMS(0, order=1), "num_steps"),
    (lambda: jaxsde.LMS(10, grid="cosine"), "grid"),
    (lambda: jaxsde.LMS(10, last_step="zero"), "last_step must be"),
])
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
