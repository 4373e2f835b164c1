"""DPM-Solver++ SDE (Lu et al., 2022): multistep data-prediction exponential integrators of the reverse SDE."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ..settings import NONNEGATIVE
from .base import StepResult, solver_class
from .dpm_solver import SOLVER_TYPES, multistep_weights
from .exponential import (
    MultistepSolver,
    check_int,
    combine,
    data_prediction,
    exp_remainders,
    push,
    select_weights,
)


@solver_class
class DPMSolverPPSDE(MultistepSolver):
    """DPM-Solver++(2M) SDE and (3M) SDE: stochastic multistep DPM-Solver++, 1 score evaluation per step.

    It integrates the variance-controlled reverse SDE whose marginals are the forward SDE's,
    ``dx = [f x - (1 + eta)/2 g^2 score] dt + sqrt(eta) g dw_bar`` (``eta = 0``: the PF-ODE;
    ``eta = 1``: the reverse SDE). In the half log-SNR ``lam = log(alpha/sigma)``, a step
    ``s -> t`` with ``h = lam_t - lam_s > 0`` and ``c = 1 + eta`` is

    ``x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t sum_j w_j x0_j + sigma_t sqrt(1 - e^{-2 eta h}) z``,

    exact except for the data prediction ``x0 = (x + sigma^2 score)/alpha`` along the step, which
    is replaced by its interpolant through the stored ``x0`` at ``t_i, t_{i-1}, ...``: the weights
    are DPM-Solver++'s multistep ones (:func:`~jaxsde.solvers.dpm_solver.multistep_weights`) with
    ``phi_k`` evaluated at ``c h`` instead of ``h``. ``z``: one standard normal draw per step
    (``noise_per_attempt = 1``; none when ``eta == 0``).

    Step ``i`` (from 0) uses order ``min(order, i + 1)``. ``solver_type``:

    * ``"midpoint"`` (default): k-diffusion 0.1.1's ``sample_dpmpp_2m_sde`` (``solver_type="midpoint"``)
      for ``order=2`` and ``sample_dpmpp_3m_sde`` for ``order=3``, coefficient for coefficient:
      2M ``(1 - e^{-ch}) (1 + 1/(2 r)) x0_0 - (1 - e^{-ch})/(2 r) x0_1`` with ``r = h_{i-1}/h``; 3M
      ``- phi_3 D2`` (half the Taylor term, as the deterministic reference 3M, so second order in
      the ODE limit) and, as ``sample_dpmpp_3m_sde`` does, its order-2 warm-up step in the
      ``"taylor"`` form. diffusers' ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++",
      solver_order=2)`` is the ``order=2``, ``eta=1`` case (its ``solver_type="heun"`` is ``"taylor"``
      here): with ``lower_order_final=False``, ``final_sigmas_type="sigma_min"``, the grid
      :func:`~jaxsde.solvers.exponential.diffusers_grid` of its timesteps, ``denoise=False`` and our
      normals as its ``variance_noise``, the two agree (float32 inside diffusers). Its third-order SDE
      update (diffusers 0.42.1) is not k-diffusion's: the ``D2`` coefficient reads
      ``(1 - e^{-2h} - 2h)/(2h)^2 - 0.5`` where ``-phi_3`` is ``... + 0.5``.
    * ``"taylor"``: the exact exponential weights of the interpolant
      (k-diffusion's ``solver_type="heun"`` at order 2; ``- 2 phi_3 D2`` at order 3). Equal to
      :class:`~jaxsde.SASolver` predictor-only with ``tau = sqrt(eta)`` everywhere.

    The sampler's final step to ``sigma = 0`` in k-diffusion (``sigmas`` ending in 0) returns the
    data prediction, which is the driver's final Tweedie step (``denoise=True``): with sigmas
    ``sigma(t_i)/alpha(t_i)`` of this solver's grid followed by 0, its ``x / alpha`` start and the
    noise of step ``i`` from its ``noise_sampler``, k-diffusion's output equals this solver's
    (``tests/test_dpm_solver_sde.py``).

    Weak order on Gaussian targets (exact output laws, ``tests/test_dpm_solver_sde.py``): 2 for
    both orders and types with ``eta = 1``; in the ODE limit ``eta = 0`` the orders of
    :class:`~jaxsde.DPMSolverPP` (``"taylor"`` 3M: 3).

    NFE = ``num_steps`` (+1 for the driver's final Tweedie step, ``denoise=True``).

    Args:
      num_steps: number of steps (``>= order``).
      order: 2 ("2M SDE") or 3 ("3M SDE").
      eta: stochasticity (>= 0; default 1, the reverse SDE); k-diffusion's ``eta`` (``= tau^2`` of
        SA-Solver).
      solver_type: ``"midpoint"`` (k-diffusion's formulas, default) or ``"taylor"`` (exact weights).
      grid: ``"logsnr"`` (default), ``"uniform"``, ``"edm"``, or an array of times.
    """

    num_steps: int = 20
    order: int = 2
    eta: float = 1.0
    solver_type: str = "midpoint"
    grid: Any = "logsnr"

    noise_setting = "eta"
    traced_settings = {"eta": NONNEGATIVE}

    starts_at_alpha_zero = True  # the first step from lambda = -inf is its exact limit (order 1)

    def __post_init__(self):
        self._check_grid()
        check_int("order", self.order, 2, 3, "DPMSolverPPSDE")
        if self.solver_type not in SOLVER_TYPES:
            raise ValueError(f"DPMSolverPPSDE: solver_type must be one of {SOLVER_TYPES}, got {self.solver_type!r}")
        if self.num_steps < self.order:
            raise ValueError(f"DPMSolverPPSDE: order {self.order} needs num_steps >= {self.order} (the first "
                             f"{self.order - 1} steps warm up at lower orders), got num_steps={self.num_steps}")


    def step(self, sde, score, t0, t1, x, state, z) -> StepResult:
        i = state.index
        t, t_next = state.grid[i], state.grid[i + 1]
        hist = push(state.hist, data_prediction(sde, score, x, t))
        lam_s = self.node(state, 0)
        h = self.node(state, 1) - lam_s
        ch = (1.0 + self.eta) * h
        rem1, rem2, rem3 = exp_remainders(3, ch)
        phis = (rem1, rem2 / ch, rem3 / ch**2)  # DPM-Solver++'s phi_1, phi_2, phi_3 at c h
        r0 = (lam_s - self.node(state, -1)) / h
        r1 = (self.node(state, -1) - self.node(state, -2)) / h if self.order > 2 else None
        warmup_type = "taylor" if self.order == 3 else self.solver_type  # sample_dpmpp_3m_sde's order-2 step
        cands = [multistep_weights(1, phis, r0, r1, self.solver_type),
                 multistep_weights(2, phis, r0, r1, warmup_type)]
        if self.order == 3:
            cands.append(multistep_weights(3, phis, r0, r1, self.solver_type))
        w = select_weights(jnp.minimum(self.order, i + 1), cands, self.order)
        _, sigma = sde.marginal(t)
        alpha_n, sigma_n = sde.marginal(t_next)
        x_next = sigma_n / sigma * jnp.exp(-self.eta * h) * x + alpha_n * combine(w, hist)
        if self.stochastic:
            x_next = x_next + sigma_n * jnp.sqrt(-jnp.expm1(-2.0 * self.eta * h)) * z[0]
        return StepResult(x_next, self.advanced(state, hist, None), 1)
