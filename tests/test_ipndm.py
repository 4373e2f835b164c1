"""iPNDM: agreement with an independent float64 NumPy reference of the published formula, measured
orders on exact Gaussian laws (float64), NFE, bad input.

Reference: k-diffusion's ``sample_ipndm`` is not in k-diffusion 0.1.1 (the version the tests
install), so :func:`ipndm_reference` writes out the published iPNDM (Zhang & Chen, DEIS paper,
"improved PNDM"; the loop of k-diffusion's later ``sample_ipndm``) in NumPy: in EDM/k-diffusion
variables ``xbar = x/alpha``, ``rho = sigma/alpha``, ``d_i = (xbar_i - D(xbar_i, rho_i))/rho_i``,
``xbar_{i+1} = xbar_i + (rho_{i+1} - rho_i) * AB_q(d_i, d_{i-1}, ..)`` with the equal-step
Adams-Bashforth combinations of order ``q = min(order, i + 1)``. Its denoiser ``D`` is the exact
posterior mean of a 1-D Gaussian mixture, written in NumPy independently of jaxsde's targets.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from exact_orders import slope, w2_errors

import jaxsde
from jaxsde.testing.targets import GaussianMixture

REL_TOL = 1e-5  # the claim; measured at most 4.2e-14 (both float64)
WEIGHTS, MEANS, SCALES = np.array([0.3, 0.7]), np.array([-0.5, 0.4]), np.array([0.1, 0.25])


def mixture_denoiser(xbar, rho):
    """E[x0 | x0 + rho z = xbar] for x0 ~ sum_k w_k N(m_k, s_k^2) (NumPy, float64, any shape of xbar)."""
    var = SCALES**2 + rho**2
    logp = np.log(WEIGHTS) - 0.5 * np.log(var) - 0.5 * (xbar[..., None] - MEANS) ** 2 / var
    r = np.exp(logp - logp.max(-1, keepdims=True))
    r /= r.sum(-1, keepdims=True)
    return np.sum(r * (MEANS + SCALES**2 / var * (xbar[..., None] - MEANS)), axis=-1)


def ipndm_reference(xbar, rhos, max_order):
    """The published iPNDM loop (see the module docstring) from ``rhos[0]`` to ``rhos[-1]``."""
    ab = {1: (1,), 2: (3, -1), 3: (23, -16, 5), 4: (55, -59, 37, -9)}
    denominators = {1: 1, 2: 2, 3: 12, 4: 24}
    past = []  # previous d's, newest first
    for i in range(len(rhos) - 1):
        d = (xbar - mixture_denoiser(xbar, rhos[i])) / rhos[i]
        q = min(max_order, i + 1)
        ds = [d] + past
        xbar = xbar + (rhos[i + 1] - rhos[i]) * sum(c * ds[j] for j, c in enumerate(ab[q])) / denominators[q]
        past = ([d] + past)[: max_order - 1]
    return xbar


@pytest.mark.parametrize("sde_name,grid,order,n", [
    ("VP", "edm", 4, 10), ("DDPM", "times", 3, 12),
])
def test_ipndm_matches_reference(sde_name, grid, order, n, x64):
    """jaxsde's IPNDM (VP form ``x = alpha xbar``) equals the NumPy reference on the same grid."""
    sde = {"VP": jaxsde.VPSDE(), "DDPM": jaxsde.DiscreteVPSDE.linear()}[sde_name]
    if grid == "times":  # diffusers-style integer timesteps 999, 916, ... mapped to t = (k + 1) / N
        grid = tuple(float(v) for v in (np.round(np.linspace(999, 0, n + 1)) + 1) / 1000)
    solver = jaxsde.IPNDM(n, order=order, grid=grid)
    times = np.asarray(jaxsde.time_grid(sde, n, grid, dtype=jnp.float64))
    alphas, sigmas = (np.asarray(v) for v in sde.marginal(jnp.asarray(times)))
    mix = GaussianMixture.create(jnp.asarray(WEIGHTS), jnp.asarray(MEANS)[:, None], jnp.asarray(SCALES))
    x_T = sde.prior_std * jax.random.normal(jax.random.PRNGKey(7), (6, 1), jnp.float64)
    sol = jax.jit(jax.vmap(lambda x: jaxsde.solve(jax.random.PRNGKey(0), sde, mix.score(sde), solver, x,
                                                  denoise=False)))(x_T)
    np.testing.assert_array_equal(sol.result, 0)
    np.testing.assert_array_equal(sol.stats.nfe, n)
    got = np.asarray(sol.x)[:, 0] / alphas[-1]
    ref = ipndm_reference(np.asarray(x_T)[:, 0] / alphas[0], sigmas / alphas, order)
    err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    print(f"IPNDM-{order} {sde_name}: max relative error {err:.1e}")
    assert err < REL_TOL


# --- orders on exact Gaussian laws (float64, exact p_{t_start} start) ----------------------------
VP, SUBVP, VE = jaxsde.VPSDE(), jaxsde.SubVPSDE(), jaxsde.VESDE()
MU, S = 0.3, 0.2


def ve_sigma_uniform(n, sigma_hi, sigma_lo):
    """VE times whose sigma (= rho) is uniform from ``sigma_hi`` to ``sigma_lo``: AB's own equal steps."""
    sig = np.linspace(sigma_hi, sigma_lo, n + 1)
    return tuple(float(v) for v in np.log(sig / VE.sigma_min) / math.log(VE.sigma_max / VE.sigma_min))


ORDER_CASES = {
    # name: (sde, target, factory, ns, theoretical order)
    # equal steps in rho: Adams-Bashforth's own order (see IPNDM's docstring for the warm-up term)
    "ipndm-4-VE-rho-uniform": (VE, (0.5, 0.1), lambda n: jaxsde.IPNDM(n, 4, grid=ve_sigma_uniform(n, 2.0, 0.1)),
                               [256, 1024], 4),  # 3.90
    "ipndm-3-VE-rho-uniform": (VE, (0.5, 0.1), lambda n: jaxsde.IPNDM(n, 3, grid=ve_sigma_uniform(n, 1.0, 0.05)),
                               [64, 256], 3),  # 2.97
    # any other grid: constant coefficients on unequal steps, a local error O(du^3): order 2
    "ipndm-4-VP-edm": (VP, (MU, S), lambda n: jaxsde.IPNDM(n, 4), [128, 512], 2),  # 2.01
    "ipndm-2-subVP-logsnr": (SUBVP, (MU, S), lambda n: jaxsde.IPNDM(n, 2, grid="logsnr"), [64, 256], 2),  # 1.99
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_ipndm_convergence_order(case, x64):
    sde, (mu, s), make, ns, order = ORDER_CASES[case]
    errs = w2_errors(sde, mu, s, make, ns)
    assert errs[1] < errs[0], errs
    assert abs(slope(ns, errs) - order) < 0.2, (slope(ns, errs), errs)


@pytest.mark.parametrize("make,match", [
    (lambda: jaxsde.IPNDM(10, order=0), "order must be an integer in"),
    (lambda: jaxsde.IPNDM(10, order=5), "order must be an integer in"),
    (lambda: jaxsde.IPNDM(10, order=True), "order must be an integer in"),
    (lambda: jaxsde.IPNDM(3, order=4), "needs num_steps >= 4"),
    (lambda: jaxsde.IPNDM(10, grid="cosine"), "grid"),
])
def test_ipndm_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()
