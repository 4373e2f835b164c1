"""UniPC: agreement with diffusers' ``UniPCMultistepScheduler``, measured orders on exact Gaussian
laws (float64), NFE, bad input.

The diffusers comparison reuses the setting of ``tests/test_diffusers_agreement.py`` (its linear
DDPM table, the exact mixture noise prediction, the same float64 inputs), with diffusers'
coefficients computed in float64 (measured max relative error in the docstring of
:func:`test_unipc_matches_diffusers`).
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


def rel_err(got, ref) -> float:
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("order,k_steps,final,variant,corrector", [
    (2, 10, "sigma_min", "bh2", True),
    (3, 12, "zero", "bh2", True),
    (3, 9, "sigma_min", "bh1", False),
])
def test_unipc_matches_diffusers(order, k_steps, final, variant, corrector, x64):
    """``UniPCMultistepScheduler(solver_order, solver_type=variant, predict_x0=True,
    lower_order_final=True, final_sigmas_type=final, timestep_spacing="linspace")`` (its lower-order
    rule applies at any number of steps: ``lower_order_final="always"``); ``corrector=False`` is its
    ``disable_corrector`` = every step.

    * ``"sigma_min"``: ``UniPC(K, grid=diffusers_grid(timesteps, N))``, ``denoise=False``;
    * ``"zero"``: ``UniPC(K - 1, denoise_is_last_step=True)`` on the timesteps alone, ``denoise=True``.
    K NFE on both sides. (diffusers' ``"bh1"`` with ``"zero"`` gives NaN: ``B(h) = -h`` is infinite on its
    last step.) diffusers runs with its ``sigmas`` cast to float64 after ``set_timesteps`` (the same
    float32 table values, its coefficients then in float64): measured max relative error 4e-9 .. 1.3e-8;
    with its float32 internals 4e-8 .. 2e-7.
    """
    sched = schedulers.UniPCMultistepScheduler(
        num_train_timesteps=N_TRAIN, beta_schedule="linear", solver_order=order, prediction_type="epsilon",
        thresholding=False, predict_x0=True, solver_type=variant, lower_order_final=True,
        disable_corrector=[] if corrector else list(range(k_steps)), use_karras_sigmas=False,
        final_sigmas_type=final, timestep_spacing="linspace")
    sched.set_timesteps(k_steps)
    sched.sigmas = sched.sigmas.double()  # the same float32 table values, the coefficients in float64
    x_T, _ = draws(0, seed=2)
    model = torch_model(sched)
    x = torch.as_tensor(x_T)
    for n in sched.timesteps:
        x = sched.step(model(x, n), n, x).prev_sample
    zero = final == "zero"
    grid = diffusers_grid(sched.timesteps.numpy(), N_TRAIN, end_at_first_entry=not zero)
    solver = jaxsde.UniPC(len(grid) - 1, order=order, variant=variant, corrector=corrector,
                          lower_order_final="always", denoise_is_last_step=zero, grid=grid)
    got, nfe = jax_solve(sched, solver, x_T, denoise=zero)
    np.testing.assert_array_equal(nfe, k_steps)
    err = rel_err(got, x.numpy())
    print(f"UniPC-{order} {variant} {final}: max relative error {err:.1e}")
    assert err < REL_TOL


def test_effective_orders():
    """Warm-up and lower-order-final rules (the corrector of step i uses step i-1's order)."""
    assert [int(jaxsde.UniPC(6, order=3).effective_order(i)) for i in range(6)] == [1, 2, 3, 3, 2, 1]
    assert [int(jaxsde.UniPC(20, order=3).effective_order(i)) for i in (0, 1, 18, 19)] == [1, 2, 3, 3]
    always = jaxsde.UniPC(20, order=3, lower_order_final="always")
    assert [int(always.effective_order(i)) for i in (18, 19)] == [2, 1]
    zero = jaxsde.UniPC(11, order=3, lower_order_final="always", denoise_is_last_step=True)
    assert int(zero.effective_order(10)) == 2


# --- orders on exact Gaussian laws (float64, exact p_T start) ------------------------------------
VP, SUBVP, VE, DISC = jaxsde.VPSDE(), jaxsde.SubVPSDE(), jaxsde.VESDE(), jaxsde.DiscreteVPSDE.linear()
MU, S = 0.3, 0.2
ORDER_CASES = {
    # name: (sde, target, factory, ns, theoretical order); measured slopes in the comments
    "unipc-3-bh2-VP-edm": (VP, (MU, S), lambda n: jaxsde.UniPC(n, 3, grid="edm"), [32, 128], 4),  # 4.08
    "unipc-2-bh1-DDPM-logsnr": (DISC, (MU, S), lambda n: jaxsde.UniPC(n, 2, variant="bh1"), [32, 128], 3),  # 3.07
    "unipc-1-VE-edm": (VE, (0.5, 0.1), lambda n: jaxsde.UniPC(n, 1, grid="edm"), [32, 128], 2),  # 1.97
    # UniP alone (no corrector): the predictor's order (2.06)
    "unip-2-subVP-edm": (SUBVP, (MU, S), lambda n: jaxsde.UniPC(n, 2, corrector=False, grid="edm"), [64, 256], 2),
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_unipc_convergence_order(case, x64):
    sde, (mu, s), make, ns, order = ORDER_CASES[case]
    errs = w2_errors(sde, mu, s, make, ns)
    assert errs[1] < errs[0], errs
    assert abs(slope(ns, errs) - order) < 0.2, (slope(ns, errs), errs)


@pytest.mark.parametrize("make,match", [
    (lambda: jaxsde.UniPC(10, order=0), "order must be an integer in"),
    (lambda: jaxsde.UniPC(10, order=4), "order must be an integer in"),
    (lambda: jaxsde.UniPC(10, order=2.0), "order must be an integer in"),
    (lambda: jaxsde.UniPC(10, variant="bh3"), "variant must be one of"),
    (lambda: jaxsde.UniPC(2, order=3), "needs num_steps >= 3"),
    (lambda: jaxsde.UniPC(0), "num_steps must be an integer"),
    (lambda: jaxsde.UniPC(10, corrector=1), "corrector must be a bool"),
    (lambda: jaxsde.UniPC(10, lower_order_final="never"), "lower_order_final must be"),
    (lambda: jaxsde.UniPC(10, grid="cosine"), "grid"),
])
def test_unipc_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()
