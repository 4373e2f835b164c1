"""DPM-Solver++ (Lu et al., 2022): data-prediction exponential integrators of the PF-ODE."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .base import StepResult, solver_class
from .exponential import (
    MultistepSolver,
    check_int,
    combine,
    data_prediction,
    exp_remainder,
    exp_remainders,
    half_log_snr,
    push,
    select_weights,
)

SOLVER_TYPES = ("midpoint", "taylor")
LOWER_ORDER_FINAL_BELOW = 15  # diffusers: lower orders in the last steps only for < 15 steps


def _phis(h):
    """DPM-Solver++'s ``phi_1 = e^{-h} - 1``, ``phi_2 = phi_1/h + 1``, ``phi_3 = phi_2/h - 1/2``, cancellation-free."""
    r1, r2, r3 = exp_remainders(3, h)
    return r1, r2 / h, r3 / h**2


def multistep_weights(order: int, phis, r0, r1, solver_type: str) -> list:
    """Weights ``w`` with ``x_t = (sigma_t/sigma_s) x_s + alpha_t sum_j w_j m_j`` (``m_0`` newest).

    ``phis = (phi_1, phi_2, phi_3)`` at ``h``; ``r0 = h_0 / h``, ``r1 = h_1 / h`` are the previous
    two steps relative to this one.
    ``"midpoint"`` reproduces the reference formulas (dpm-solver ``solver_type="dpmsolver"``,
    diffusers ``"midpoint"``); ``"taylor"`` uses the exact Taylor coefficients (diffusers'
    ``"heun"`` at order 2).
    """
    p1, p2, p3 = phis
    if order == 1:
        return [-p1]
    if order == 2:
        if solver_type == "midpoint":
            return [-p1 * (1.0 + 0.5 / r0), 0.5 * p1 / r0]
        return [-p1 + p2 / r0, -p2 / r0]
    # order 3: D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1, D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1),
    # D2 = (D1_0 - D1_1)/(r0+r1);  x_t = ... - alpha phi_1 m0 + alpha phi_2 D1 - alpha k phi_3 D2
    # with k = 1 in the reference code and k = 2 for the exact Taylor term (D2 ~ h^2 x0'' / 2).
    d10 = [1.0 / r0, -1.0 / r0, 0.0]
    d11 = [0.0, 1.0 / r1, -1.0 / r1]
    diff = [a - b for a, b in zip(d10, d11, strict=True)]
    d1 = [a + r0 / (r0 + r1) * b for a, b in zip(d10, diff, strict=True)]
    d2 = [b / (r0 + r1) for b in diff]
    k = 1.0 if solver_type == "midpoint" else 2.0
    return [(-p1 if j == 0 else 0.0) + p2 * d1[j] - k * p3 * d2[j] for j in range(3)]


@solver_class
class DPMSolverPP(MultistepSolver):
    """DPM-Solver++ on the probability-flow ODE (deterministic), multistep or singlestep.

    Data-prediction exponential integrator E.1) in the half log-SNR
    ``lam = log(alpha/sigma)``, with ``x0 = (x + sigma^2 score)/alpha``; ``h = lam_t - lam_s``.

    Multistep (``multistep=True``, 1 score evaluation per step; "2M"/"3M"): the step from
    ``t_i`` uses the data predictions at ``t_i, t_{i-1}, t_{i-2}``. Warm-up: step ``i`` (from 0)
    uses order ``min(order, i + 1)``; with ``lower_order_final`` and fewer than 15 steps, the
    last step uses order 1 and the one before at most 2 (diffusers' rule).

    Following diffusers' ``DPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``,
    ``solver_type="midpoint"``, ``use_karras_sigmas=False``, thresholding off) on a discrete
    schedule (:class:`~jaxsde.DiscreteVPSDE`): pass its timesteps ``n`` as the grid
    ``t = (n + 1) / N`` (:func:`~jaxsde.solvers.exponential.diffusers_grid`).

    * ``final_sigmas_type="sigma_min"``: its last step goes to the first table entry; append
      ``t = 1/N`` (``sde.eps``) to the grid and solve with ``denoise=False``. Same NFE, same
      lower-order rule as here.
    * ``final_sigmas_type="zero"`` (its default): its last step goes to ``sigma = 0`` with a
      first-order step, which returns the data prediction at the last timestep, i.e. the
      driver's Tweedie step. Use the timesteps alone as the grid (``num_steps = K - 1`` for ``K``
      timesteps), ``denoise=True``, and ``denoise_is_last_step=True``: the lower-order rule then
      counts the Tweedie step as the schedule's last step (applies when ``num_steps + 1 < 15``;
      the last solver step gets order <= 2).

    Singlestep (``multistep=False``, ``order`` evaluations per step; "2S" with ``r1 = 1/2``,
    "3S" with ``r1, r2 = 1/3, 2/3``): intermediate points at ``lam_s + r h``.

    ``solver_type``: ``"midpoint"`` (default) reproduces the reference implementations
    (``dpm_solver_pytorch`` / diffusers) coefficient for coefficient; ``"taylor"`` uses the
    Taylor-expansion coefficients (2M: ``+ alpha phi_2 D1``; 3M: ``- 2 alpha phi_3 D2``).
    Note the reference 3M's ``- alpha phi_3 D2`` is half the Taylor term (``D2 ~ h^2 x0''/2``),
    which leaves an O(h^3) local error: global order 2 on a Gaussian target, vs 3 for
    ``"taylor"`` (see ``tests/test_samplers.py``). Multistep ``"taylor"`` equals the exact
    exponential weights of the Lagrange interpolant in ``lam`` (= ``SASolver`` predictor-only with
    ``tau = 0``).

    NFE = ``num_steps`` (multistep) or ``order * num_steps`` (singlestep), +1 for the driver's
    final Tweedie step. The solve ends at ``t_end`` (``sde.eps``) with ``x``; ``denoise=True``
    then returns ``x0(x, eps)`` (dpm-solver's ``denoise_to_zero=True``); ``denoise=False`` is its
    default ``denoise_to_zero=False``.

    Args:
      num_steps: number of steps (>= 1).
      order: 1, 2 or 3 (order 1 = DDIM with ``eta = 0``).
      multistep: multistep (default) or singlestep.
      solver_type: ``"midpoint"`` or ``"taylor"`` (orders 2 and 3).
      lower_order_final: multistep only, see above.
      denoise_is_last_step: multistep only: count the final Tweedie step (``denoise=True``) as
        the last step of the schedule in the ``lower_order_final`` rule (diffusers'
        ``final_sigmas_type="zero"``). Default ``False``.
      grid: ``"logsnr"`` (default, DPM-Solver's choice), ``"uniform"``, ``"edm"``, or times.
    """

    num_steps: int = 20
    order: int = 2
    multistep: bool = True
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    denoise_is_last_step: bool = False
    grid: Any = "logsnr"

    noise_per_attempt = 0

    @property
    def starts_at_alpha_zero(self) -> bool:  # type: ignore[override]
        # multistep: the first step from lambda = -inf is its exact limit (order 1, r0 = inf drops
        # the node there); singlestep's intermediate points lam_s + r h are not defined there
        return self.multistep

    def __post_init__(self):
        self._check_grid()
        check_int("order", self.order, 1, 3, "DPMSolverPP")
        if self.solver_type not in SOLVER_TYPES:
            raise ValueError(f"DPMSolverPP: solver_type must be one of {SOLVER_TYPES}, got {self.solver_type!r}")
        for name in ("multistep", "lower_order_final", "denoise_is_last_step"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DPMSolverPP: {name} must be a bool, got {getattr(self, name)!r}")

    @property
    def nfe_per_attempt(self) -> int:
        return 1 if self.multistep else self.order

    @property
    def history_size(self) -> int:
        return self.order if self.multistep else 1

    # --- multistep -----------------------------------------------------------------------------
    def effective_order(self, i):
        """Order used by multistep step ``i`` (traced ``i``)."""
        q = jnp.minimum(self.order, i + 1)
        total = self.num_steps + (1 if self.denoise_is_last_step else 0)
        if self.lower_order_final and total < LOWER_ORDER_FINAL_BELOW:
            q = jnp.minimum(q, total - i)
        return q

    def step(self, sde, score, t0, t1, x, state, z) -> StepResult:
        i = state.index
        if not self.multistep:
            x_next = self._singlestep(sde, score, x, state.grid[i], state.grid[i + 1])
            return StepResult(x_next, self.advanced(state, state.hist, None), self.order)
        t, t_next = state.grid[i], state.grid[i + 1]
        hist = push(state.hist, data_prediction(sde, score, x, t))
        lam_s, lam_t = self.node(state, 0), self.node(state, 1)
        h = lam_t - lam_s
        r0 = (lam_s - self.node(state, -1)) / h if self.order > 1 else None
        r1 = (self.node(state, -1) - self.node(state, -2)) / h if self.order > 2 else None
        phis = _phis(h)
        cands = [multistep_weights(q, phis, r0, r1, self.solver_type) for q in range(1, self.order + 1)]
        w = select_weights(self.effective_order(i), cands, self.order)
        _, sigma = sde.marginal(t)
        alpha_n, sigma_n = sde.marginal(t_next)
        return StepResult(sigma_n / sigma * x + alpha_n * combine(w, hist), self.advanced(state, hist, None), 1)

    # --- singlestep ----------------------------------------------------------------------------
    def _singlestep(self, sde, score, x, t, t_next):
        lam_s = half_log_snr(sde, t)
        h = half_log_snr(sde, t_next) - lam_s
        _, sigma_s = sde.marginal(t)
        m0 = data_prediction(sde, score, x, t)

        def point(r):  # time, alpha, sigma at lam_s + r h
            tr = sde.inverse_log_snr(2.0 * (lam_s + r * h)) if r != 1.0 else t_next
            a, s = sde.marginal(tr)
            return tr, a, s

        t_n, alpha_t, sigma_t = point(1.0)
        p1, p2, p3 = _phis(h)
        if self.order == 1:
            return sigma_t / sigma_s * x - alpha_t * p1 * m0
        if self.order == 2:
            r1 = 0.5
            t1, a1, s1 = point(r1)
            u = s1 / sigma_s * x - a1 * exp_remainder(1, r1 * h) * m0
            m1 = data_prediction(sde, score, u, t1)
            if self.solver_type == "midpoint":
                out = sigma_t / sigma_s * x - alpha_t * p1 * m0 - 0.5 / r1 * alpha_t * p1 * (m1 - m0)
            else:
                out = sigma_t / sigma_s * x - alpha_t * p1 * m0 + alpha_t * p2 / r1 * (m1 - m0)
            return out
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        t1, a1, s1 = point(r1)
        t2, a2, s2 = point(r2)
        u1 = s1 / sigma_s * x - a1 * exp_remainder(1, r1 * h) * m0
        m1 = data_prediction(sde, score, u1, t1)
        phi_22 = exp_remainder(2, r2 * h) / (r2 * h)
        u2 = s2 / sigma_s * x - a2 * exp_remainder(1, r2 * h) * m0 + r2 / r1 * a2 * phi_22 * (m1 - m0)
        m2 = data_prediction(sde, score, u2, t2)
        if self.solver_type == "midpoint":
            out = sigma_t / sigma_s * x - alpha_t * p1 * m0 + 1.0 / r2 * alpha_t * p2 * (m2 - m0)
        else:
            d10, d11 = (m1 - m0) / r1, (m2 - m0) / r2
            d1 = (r2 * d10 - r1 * d11) / (r2 - r1)
            d2 = 2.0 * (d11 - d10) / (r2 - r1)
            out = sigma_t / sigma_s * x - alpha_t * p1 * m0 + alpha_t * p2 * d1 - alpha_t * p3 * d2
        return out
