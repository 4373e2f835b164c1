"""DPMSolverPPSDE (DPM-Solver++ 2M / 3M SDE): k-diffusion 0.1.1's ``sample_dpmpp_2m_sde`` /
``sample_dpmpp_3m_sde`` on the same start and noise, equivalences with DPMSolverPP and SA-Solver,
weak orders on exact Gaussian laws (float64), validation."""

import math

import jax
import jax.numpy as jnp
import k_diffusion_sampling
import numpy as np
import pytest
from test_samplers import SUBVP, VE, VP, run, slope, w2_errors

import jaxsde

try:
    HAVE_K = k_diffusion_sampling.load() is not None
except ImportError:  # torch or one of sampling.py's dependencies is missing
    HAVE_K = False
needs_k = pytest.mark.skipif(not HAVE_K, reason="k-diffusion 0.1.1.post1 is not installed "
                                                "(pip install --no-deps k-diffusion==0.1.1.post1)")
SDES = {"vp": VP, "subvp": SUBVP, "ve": VE, "discrete": jaxsde.DiscreteVPSDE.linear()}

# (sde, grid, order, solver_type, eta): every SDE, every grid kind, both orders and types
AGREEMENT = [
    ("vp", "logsnr", 2, "midpoint", 1.0),
    ("subvp", "uniform", 3, "midpoint", 1.0),
    ("ve", "edm", 2, "taylor", 0.5),
    ("discrete", "times", 3, "midpoint", 0.0),
]


@needs_k
@pytest.mark.parametrize("kind,grid,order,solver_type,eta", AGREEMENT)
def test_equals_k_diffusion_on_the_same_noise(kind, grid, order, solver_type, eta, x64):
    """Max relative error measured (elementwise): 1.0e-13; the claim is 1e-5."""
    name = {2: "sample_dpmpp_2m_sde", 3: "sample_dpmpp_3m_sde"}[order]
    kwargs = {"eta": eta}
    if order == 2:
        kwargs["solver_type"] = {"midpoint": "midpoint", "taylor": "heun"}[solver_type]
    got, ref, sol, reference = k_diffusion_sampling.fixed_grid_agreement(
        SDES[kind], lambda n, g: jaxsde.DPMSolverPPSDE(n, order, eta=eta, solver_type=solver_type, grid=g),
        grid, 10, name, **kwargs)
    assert int(sol.result) == 0
    assert int(sol.stats.nfe) == reference.calls == 11  # 10 steps + k-diffusion's step to sigma = 0 / Tweedie
    assert reference.noise_calls == (10 if eta > 0 else 0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0)


def test_taylor_is_sa_predictor(x64):
    """``"taylor"`` = SA-Solver predictor-only with ``tau = sqrt(eta)`` everywhere, same noise, on a
    non-uniform grid (order 3, its order-1 and order-2 warm-up steps included)."""
    n, eta, order = 12, 0.7, 3
    x_T = jax.random.normal(jax.random.PRNGKey(4), (4,), jnp.float64)
    z = jax.random.normal(jax.random.PRNGKey(5), (n, 1, 4), jnp.float64)
    sde_solver = jaxsde.DPMSolverPPSDE(n, order, eta=eta, solver_type="taylor", grid="edm")
    sa = jaxsde.SASolver(n, order, 0, tau=math.sqrt(eta), tau_interval=None, lower_order_final=False, grid="edm")
    np.testing.assert_allclose(run(VP, sde_solver, x_T, z), run(VP, sa, x_T, z), rtol=1e-10, atol=1e-12)


def test_eta0_is_dpm_solver_pp(x64):
    """``eta = 0``: deterministic multistep DPM-Solver++ 2M (no lower-order final steps)."""
    order, solver_type = 2, "midpoint"
    x_T = jax.random.normal(jax.random.PRNGKey(6), (4,), jnp.float64)
    ode = jaxsde.DPMSolverPPSDE(10, order, eta=0.0, solver_type=solver_type)
    ref = jaxsde.DPMSolverPP(10, order, solver_type=solver_type, lower_order_final=False)
    assert ode.noise_per_attempt == 0
    np.testing.assert_allclose(run(VE, ode, x_T), run(VE, ref, x_T), rtol=1e-10, atol=1e-12)


ORDER_CASES = {
    # name: (sde, factory, ns, order); measured slopes (float64, exact p_T start) in the comments
    "2M-SDE": (VP, lambda n: jaxsde.DPMSolverPPSDE(n, 2), [32, 128], 2),  # 1.94 (weak)
    "2M-SDE-heun-VE": (VE, lambda n: jaxsde.DPMSolverPPSDE(n, 2, solver_type="taylor"), [32, 128], 2),  # 2.03
    "3M-SDE": (VP, lambda n: jaxsde.DPMSolverPPSDE(n, 3, grid="edm"), [64, 256], 2),  # 1.96 (weak)
    "3M-SDE-taylor": (VP, lambda n: jaxsde.DPMSolverPPSDE(n, 3, solver_type="taylor"), [64, 256], 2),  # 2.08
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_convergence_order(case, x64):
    """W2 of the exact output law against the ideal one: weak order 2 for ``eta = 1`` (2M and 3M,
    either type: the interpolation of ``x0`` along the Brownian path limits 3M to 2). With ``eta = 0`` it
    is :class:`~jaxsde.DPMSolverPP` (``test_eta0_is_dpm_solver_pp``), whose ODE orders
    ``tests/test_samplers.py`` measures."""
    sde, make, ns, order = ORDER_CASES[case]
    errs = w2_errors(sde, make, ns)
    assert errs[1] < errs[0], errs
    assert abs(slope(ns, errs) - order) < 0.2, (slope(ns, errs), errs)


def test_noise_and_nfe_counts():
    assert jaxsde.DPMSolverPPSDE(4).noise_per_attempt == 1
    assert jaxsde.DPMSolverPPSDE(4, eta=0.0).noise_per_attempt == 0
    s = jaxsde.DPMSolverPPSDE(7, order=3)
    assert s.max_attempts() == 7 and s.nfe_per_attempt == 1 and s.history_size == 3


@pytest.mark.parametrize("make,match", [
    (lambda: jaxsde.DPMSolverPPSDE(10, order=1), "order must be an integer in \\[2, 3\\]"),
    (lambda: jaxsde.DPMSolverPPSDE(10, order=4), "order must be an integer in \\[2, 3\\]"),
    (lambda: jaxsde.DPMSolverPPSDE(10, order=2.0), "order"),
    (lambda: jaxsde.DPMSolverPPSDE(2, order=3), "needs num_steps >= 3"),
    (lambda: jaxsde.DPMSolverPPSDE(1, order=2), "needs num_steps >= 2"),
    (lambda: jaxsde.DPMSolverPPSDE(0), "num_steps"),
    (lambda: jaxsde.DPMSolverPPSDE(10, eta=-0.5), "eta must be a finite number >= 0"),
    (lambda: jaxsde.DPMSolverPPSDE(10, eta=float("nan")), "eta"),
    (lambda: jaxsde.DPMSolverPPSDE(10, solver_type="heun"), "solver_type"),
    (lambda: jaxsde.DPMSolverPPSDE(10, grid="cosine"), "grid"),
])
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_2m_sde_equals_diffusers_sde_dpmsolver_pp(x64):
    """diffusers' ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2,
    solver_type="midpoint", lower_order_final=False, final_sigmas_type="sigma_min")`` with our normals as
    its ``variance_noise``: ``DPMSolverPPSDE(K, 2, eta=1)`` on ``diffusers_grid`` of its timesteps,
    ``denoise=False`` (set-up of ``tests/test_diffusers_agreement.py``; diffusers computes in float32:
    tolerance 2e-6 there)."""
    pytest.importorskip("diffusers")
    import test_diffusers_agreement as agreement
    import torch

    k_steps = 10
    sched = agreement.schedulers.DPMSolverMultistepScheduler(
        num_train_timesteps=agreement.N_TRAIN, beta_schedule="linear", solver_order=2, prediction_type="epsilon",
        thresholding=False, algorithm_type="sde-dpmsolver++", solver_type="midpoint", lower_order_final=False,
        euler_at_final=False, use_karras_sigmas=False, final_sigmas_type="sigma_min", timestep_spacing="linspace",
        lambda_min_clipped=-float("inf"))
    sched.set_timesteps(k_steps)
    x_T, z = agreement.draws(k_steps, seed=2)
    model = agreement.torch_model(sched)
    x = torch.as_tensor(x_T)
    for i, n in enumerate(sched.timesteps):
        x = sched.step(model(x, n), n, x, variance_noise=torch.as_tensor(z[i])).prev_sample
    grid = jaxsde.solvers.diffusers_grid(sched.timesteps.numpy(), agreement.N_TRAIN)
    got, nfe = agreement.jax_solve(sched, jaxsde.DPMSolverPPSDE(k_steps, 2, grid=grid), x_T,
                                   np.swapaxes(z, 0, 1)[:, :, None])
    np.testing.assert_array_equal(nfe, k_steps)
    agreement.report(got, x)
