"""DEIS: agreement with diffusers' ``DEISMultistepScheduler``, measured orders on exact Gaussian
laws (float64), NFE, bad input.

The diffusers comparison reuses the setting of ``tests/test_diffusers_agreement.py`` (its linear
DDPM table, the exact mixture noise prediction, the same float64 inputs), with diffusers'
coefficients computed in float64 (see :func:`test_deis_matches_diffusers`).
"""

import numpy as np
import pytest
from exact_orders import slope, w2_errors
from test_diffusers_agreement import N_TRAIN, draws, jax_solve, torch_model

import jaxsde
from jaxsde.solvers.exponential import diffusers_grid

torch = pytest.importorskip("torch")
schedulers = pytest.importorskip("diffusers.schedulers")

REL_TOL = 1e-5  # the claim: relative to the output's scale (max |x|), float64 on our side


@pytest.mark.parametrize("order,k_steps", [(2, 10), (3, 20)])
def test_deis_matches_diffusers(order, k_steps, x64):
    """``DEISMultistepScheduler(solver_order, algorithm_type="deis", solver_type="logrho",
    lower_order_final=True, timestep_spacing="linspace")``, K timesteps, last step to the first table
    entry: ``DEIS(K, order, grid=diffusers_grid(timesteps, N))``, ``denoise=False``; same lower-order
    rule (K < 15: order 1 last, <= 2 before). K NFE on both sides. diffusers runs with its ``sigmas``
    cast to float64 after ``set_timesteps`` (the same float32 table values): measured max relative
    error 1.6e-8 (K = 10), 1.5e-7 (K = 20). With its float32 internals the differences of its
    third-order ``ind_fn`` antiderivatives cancel: 2.2e-5 at K = 20."""
    sched = schedulers.DEISMultistepScheduler(
        num_train_timesteps=N_TRAIN, beta_schedule="linear", solver_order=order, prediction_type="epsilon",
        thresholding=False, algorithm_type="deis", solver_type="logrho", lower_order_final=True,
        use_karras_sigmas=False, timestep_spacing="linspace")
    sched.set_timesteps(k_steps)
    sched.sigmas = sched.sigmas.double()  # the same float32 table values, the coefficients in float64
    x_T, _ = draws(0, seed=3)
    model = torch_model(sched)
    x = torch.as_tensor(x_T)
    for n in sched.timesteps:
        x = sched.step(model(x, n), n, x).prev_sample
    grid = diffusers_grid(sched.timesteps.numpy(), N_TRAIN)
    got, nfe = jax_solve(sched, jaxsde.DEIS(k_steps, order=order, grid=grid), x_T)
    np.testing.assert_array_equal(nfe, k_steps)
    ref = x.numpy()
    err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    print(f"DEIS-{order} K={k_steps}: max relative error {err:.1e}")
    assert err < REL_TOL


# --- orders on exact Gaussian laws (float64, exact p_T start) ------------------------------------
VP, SUBVP, VE, DISC = jaxsde.VPSDE(), jaxsde.SubVPSDE(), jaxsde.VESDE(), jaxsde.DiscreteVPSDE.linear()
MU, S = 0.3, 0.2
ORDER_CASES = {
    # name: (sde, target, factory, ns, theoretical order)
    "deis-3-DDPM-edm": (DISC, (MU, S), lambda n: jaxsde.DEIS(n, 3, grid="edm"), [128, 512], 3),  # 2.94
    "deis-2-VE-edm": (VE, (0.5, 0.1), lambda n: jaxsde.DEIS(n, 2, grid="edm"), [32, 128], 2),  # 2.02
    "deis-2-subVP-logsnr": (SUBVP, (MU, S), lambda n: jaxsde.DEIS(n, 2), [64, 256], 2),  # 1.97
    "deis-1-VP-uniform": (VP, (MU, S), lambda n: jaxsde.DEIS(n, 1, grid="uniform"), [64, 256], 1),  # 0.97
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_deis_convergence_order(case, x64):
    sde, (mu, s), make, ns, order = ORDER_CASES[case]
    errs = w2_errors(sde, mu, s, make, ns)
    assert errs[1] < errs[0], errs
    assert abs(slope(ns, errs) - order) < 0.2, (slope(ns, errs), errs)


@pytest.mark.parametrize("make,match", [
    (lambda: jaxsde.DEIS(10, order=0), "order must be an integer in"),
    (lambda: jaxsde.DEIS(10, order=4), "order must be an integer in"),
    (lambda: jaxsde.DEIS(10, order="3"), "order must be an integer in"),
    (lambda: jaxsde.DEIS(2, order=3), "needs num_steps >= 3"),
    (lambda: jaxsde.DEIS(10, lower_order_final=1), "lower_order_final must be"),
    (lambda: jaxsde.DEIS(10, grid=[1.0, 0.5]), "grid"),
])
def test_deis_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()
