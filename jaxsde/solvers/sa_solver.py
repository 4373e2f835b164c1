"""SA-Solver (Xue et al., NeurIPS 2023): stochastic Adams predictor-corrector in data prediction."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from ..settings import NONNEGATIVE, Bound, is_traced, nonzero
from .base import StepResult, solver_class
from .dpm_solver import LOWER_ORDER_FINAL_BELOW
from .exponential import (
    MultistepSolver,
    alpha_zero_step,
    check_int,
    combine,
    data_prediction,
    exp_remainder,
    exp_weights,
    push,
)


def sa_weights(order, h, nodes, tau2, rescale_order2: bool, corrector: bool) -> list:
    """Weights ``w_j`` of ``x_t = (sigma_t/sigma_s) e^{-tau^2 h} x_s + alpha_t sum_j w_j m_j + noise``.

    ``w_j = c int_0^h e^{-c (h - u)} l_j(u / h) du`` with ``c = 1 + tau^2`` and ``l_j`` the Lagrange
    basis on the first ``order`` (static or traced) ``nodes`` (in units of ``h`` from the step's
    start, newest first). With ``rescale_order2``, order-2 steps get the "rescaling trick" of the
    reference code:
    ``c [h^2/2 - (ch - 1 + e^{-ch})/c^2] (m_0 - m_1) / (lam_0 - lam_1)`` (predictor) and
    ``c [h/2 - (ch - 1 + e^{-ch})/(c^2 h)] (m_0 - m_1)`` (corrector), written as
    ``-R_3(ch) / (c h)`` times ``(m_0 - m_1)`` (divided by ``v_0 - v_1`` for the predictor) with
    ``R_3(z) = e^{-z} - 1 + z - z^2/2`` (no cancellation).
    """
    c = 1.0 + tau2
    w = [c * wj for wj in exp_weights(c, h, nodes, order)]
    if rescale_order2 and len(nodes) >= 2:
        extra = -exp_remainder(3, c * h) / (c * h)
        if not corrector:
            extra = extra / (nodes[0] - nodes[1])
        extra = jnp.where(order == 2, extra, 0.0)
        w = [w[0] + extra, w[1] - extra] + w[2:]
    return w


@solver_class
class SASolver(MultistepSolver):
    """SA-Solver: stochastic Adams-Bashforth predictor + Adams-Moulton corrector (PEC), 1 NFE per step.

    It integrates the variance-controlled reverse SDE
    ``dx = [f x - (1 + tau^2)/2 g^2 score] dt + tau g dw_bar``, which has the marginals of the
    forward SDE for every ``tau(t) >= 0`` (``tau = 0``: PF-ODE; ``tau = 1``: the reverse SDE). In
    the half log-SNR ``lam = log(alpha/sigma)``, with ``c = 1 + tau^2`` constant on a step
    ``s -> t``, ``h = lam_t - lam_s``, the data-prediction form is solved exactly except for the
    data prediction ``x0 = (x + sigma^2 score)/alpha``, which is replaced by its Lagrange
    interpolant in ``lam`` (B.2-B.4):

    ``x_t = (sigma_t/sigma_s) e^{-tau^2 h} x_s + alpha_t sum_j w_j x0_j + sigma_t sqrt(1 - e^{-2 tau^2 h}) xi``,
    ``w_j = c int_0^h e^{-c(h-u)} l_j(u) du``, computed in closed form in the shifted, scaled
    variable ``(lam - lam_s)/h`` (no cancellation between monomials of absolute ``lam``).

    Step ``i`` (from grid time ``t_i``; ``x`` the predicted state there):
      1. ``x0_i = x0(x, t_i)`` (the only score evaluation);
      2. corrector (``i > 0``): redo step ``i-1`` from the previous *corrected* state with
         nodes ``t_i, t_{i-1}, ...`` (``corrector_order`` of them, the new one included) and the
         same noise ``xi_{i-1}``;
      3. predictor from the corrected state with nodes ``t_i, t_{i-1}, ...``
         (``predictor_order``) and fresh noise ``xi_i``.
    The model output is stored at the uncorrected point (PEC), as in the reference code. The
    last step is not corrected (no evaluation after it). ``tau`` is evaluated at each step's
    source time (diffusers' convention).

    From ``alpha = 0`` (``t = 1`` on :class:`~jaxsde.FlowSDE`, given a velocity or x0
    :class:`~jaxsde.Prediction`), where ``h = inf``: the first step is
    :func:`~jaxsde.solvers.exponential.alpha_zero_step` (the exact step with ``x0`` held at that
    evaluation, with ``tau(t_0)``), its correction the same step with ``x0`` linear in
    ``rho = alpha/sigma`` between the two evaluations; the orders then count the evaluations at
    finite log-SNR.

    Orders (diffusers' schedule): predictor ``min(p, i + 1)``, corrector of step ``i - 1``
    ``min(c, i + 1)``; with ``lower_order_final`` and fewer than 15 steps also
    ``<= num_steps - i`` (predictor) and ``<= num_steps - i + 2`` (corrector). (diffusers lowers
    the final orders for any number of steps; its last step goes to ``sigma = 0``, ours to
    ``t_end > 0``.) With ``tau = 0`` the method is deterministic with order
    ``min(corrector_order, predictor_order + 1)`` (4 for the default 3/4, 3 for 2/3). With
    ``tau > 0`` only the data-prediction integral is approximated; on Gaussian targets the weak
    order is about 2 for orders >= 2 (1 for order-1 predictor or corrector). The convergence
    tests of ``tests/test_samplers.py`` check these orders.

    NFE = ``num_steps`` (+1 for the driver's final Tweedie step, ``denoise=True``).

    Following diffusers' ``SASolverScheduler`` (``algorithm_type="data_prediction"``, thresholding
    and Karras sigmas off) on a :class:`~jaxsde.DiscreteVPSDE`: grid = its timesteps ``n`` at
    ``t = (n + 1)/N`` plus the first table entry ``t = 1/N`` where it ends
    (:func:`~jaxsde.solvers.exponential.diffusers_grid`), ``denoise=False``; its
    ``predictor_order``/``corrector_order`` (defaults 2/2), ``rescale_order2=True`` (it applies the
    order-2 tweak whenever the order is 2), ``lower_order_final="always"``, and
    ``tau=`` :func:`diffusers_tau` ``(sde)`` for its default ``tau_func`` (1 on integer timesteps
    200..800, which is ``t`` in [0.201, 0.801], not ``tau_interval=(0.2, 0.8)``'s [0.2, 0.8]).
    The same standard normals drive both (its ``randn_tensor`` draw of step ``i`` = ``xi_i``).

    Args:
      num_steps: number of steps (>= 1).
      predictor_order: 1..4 (3: the recommendation for unconditional / small guidance; 2 for
        large guidance).
      corrector_order: 0..4 (0 = predictor only, "SA-Predictor"; default 4).
      tau: a number >= 0, or a callable ``tau(t) -> scalar`` (traceable). A number ``tau`` is
        used on ``tau_interval`` and 0 elsewhere.
      tau_interval: ``(lo, hi)`` fractions of ``sde.T`` where a numeric ``tau`` applies; default
        ``(0.2, 0.8)``, the recommended schedule (diffusers: ``tau = 1`` on training steps
        200..800 of 1000); ``None``: everywhere.
      rescale_order2: add the order-2 "rescaling trick" to order-2 steps
        (warm-up included). diffusers does this whenever the order is 2; the official repository
        only when sampling with few steps. Default ``False`` (plain exact coefficients).
      lower_order_final: ``True`` (lower the final orders below 15 steps, as DPM-Solver++),
        ``False``, or ``"always"`` (for any number of steps: diffusers' ``SASolverScheduler``).
      grid: ``"logsnr"`` (default), ``"uniform"``, ``"edm"``, or an array of times.
    """

    num_steps: int = 20
    predictor_order: int = 3
    corrector_order: int = 4
    tau: float | Callable = 1.0
    tau_interval: tuple[float, float] | None = (0.2, 0.8)
    rescale_order2: bool = False
    lower_order_final: bool | str = True
    grid: Any = "logsnr"

    # a number; a callable tau(t) is static. tau_interval's two fractions are leaves too.
    traced_settings = {"tau": NONNEGATIVE, "tau_interval": Bound(0.0, 1.0)}

    def __post_init__(self):
        self._check_grid()
        check_int("predictor_order", self.predictor_order, 1, 4, "SASolver")
        check_int("corrector_order", self.corrector_order, 0, 4, "SASolver")
        if self.tau_interval is not None:
            ok = isinstance(self.tau_interval, tuple | list) and len(self.tau_interval) == 2
            lo, hi = (self.tau_interval if ok else (None, None))
            if ok and (is_traced(lo) or is_traced(hi)):  # checked in the program (settings_valid)
                object.__setattr__(self, "tau_interval", (lo, hi))
            elif not (ok and all(isinstance(v, int | float) for v in (lo, hi)) and 0.0 <= lo < hi <= 1.0):
                raise ValueError(f"SASolver: tau_interval must be None or (lo, hi) with 0 <= lo < hi <= 1, "
                                 f"got {self.tau_interval!r}")
            else:
                object.__setattr__(self, "tau_interval", (float(lo), float(hi)))
        if not isinstance(self.rescale_order2, bool):
            raise ValueError(f"SASolver: rescale_order2 must be a bool, got {self.rescale_order2!r}")
        if not (isinstance(self.lower_order_final, bool) or self.lower_order_final == "always"):
            raise ValueError(f"SASolver: lower_order_final must be a bool or 'always', got {self.lower_order_final!r}")

    noise_setting = "tau"

    def derive(self):
        return {"stochastic": callable(self.tau) or nonzero(self.tau)}  # a tau(t) function always draws

    @property
    def history_size(self) -> int:
        return max(self.predictor_order, self.corrector_order, 1)

    def tau_at(self, sde, t):
        """``tau(t)`` (a traced scalar)."""
        if callable(self.tau):
            return jnp.asarray(self.tau(t), t.dtype)
        if self.tau_interval is None or not self.stochastic:
            return jnp.asarray(self.tau, t.dtype)
        lo, hi = self.tau_interval
        inside = (t >= lo * sde.T) & (t <= hi * sde.T)
        return jnp.where(inside, self.tau, 0.0).astype(t.dtype)

    def init_history(self, sde, x, grid, lam):
        hist = jnp.zeros((self.history_size, *x.shape), x.dtype)
        return hist, (x, jnp.zeros_like(x))  # (last corrected state, last noise)

    def _orders(self, i, state=None):
        p = jnp.minimum(self.predictor_order, i + 1)
        c = jnp.minimum(self.corrector_order, i + 1)
        if self.lower_order_final == "always" or (self.lower_order_final and self.num_steps < LOWER_ORDER_FINAL_BELOW):
            p = jnp.minimum(p, self.num_steps - i)
            c = jnp.minimum(c, self.num_steps - i + 2)
        if state is not None:  # from alpha = 0: the evaluations at finite log-SNR only
            p, c = self.capped(state, p), self.capped(state, c)
        return p, c

    exact_first_step = True  # the weights' h = inf at alpha = 0: the first step is alpha_zero_step
    starts_at_alpha_zero = True

    def _update(self, sde, x, t_s, t_t, h, w, hist, tau, xi):
        """``(sigma_t/sigma_s) e^{-tau^2 h} x + alpha_t sum_j w_j m_j + sigma_t sqrt(1 - e^{-2 tau^2 h}) xi``."""
        _, sigma_s = sde.marginal(t_s)
        alpha_t, sigma_t = sde.marginal(t_t)
        tau2 = tau**2
        out = sigma_t / sigma_s * jnp.exp(-tau2 * h) * x + alpha_t * combine(w, hist)
        if self.stochastic:
            out = out + sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * tau2 * h)) * xi
        return out

    def step(self, sde, score, t0, t1, x, state, z) -> StepResult:
        i = state.index
        grid = state.grid
        t = grid[i]
        t_next = grid[i + 1]
        x0 = data_prediction(sde, score, x, t)
        hist = push(state.hist, x0)
        last_x, last_xi = state.extra
        p_ord, c_ord = self._orders(i, state)

        if self.corrector_order > 0:  # redo step i-1 -> i with the new data prediction
            t_prev = grid[jnp.maximum(i - 1, 0)]
            lam_prev = self.node(state, -1)
            h_c = self.node(state, 0) - lam_prev
            nodes = [(self.node(state, -j) - lam_prev) / h_c for j in range(self.corrector_order)]
            tau_c = self.tau_at(sde, t_prev)
            w = sa_weights(c_ord, h_c, nodes, tau_c**2, self.rescale_order2, corrector=True)
            corrected = self._update(sde, last_x, t_prev, t, h_c, w, hist, tau_c, last_xi)
            if state.origin is not None:  # correcting the step out of alpha = 0: x0 linear in rho
                exact = alpha_zero_step(sde, last_x, t_prev, t, hist[1], hist[0], tau_c**2,
                                        last_xi if self.stochastic else None)
                corrected = jnp.where(state.origin & (i == 1), exact, corrected)
            x = jnp.where(i > 0, corrected, x)

        lam_s = self.node(state, 0)
        h = self.node(state, 1) - lam_s
        nodes = [(self.node(state, -j) - lam_s) / h for j in range(self.predictor_order)]
        tau_p = self.tau_at(sde, t)
        w = sa_weights(p_ord, h, nodes, tau_p**2, self.rescale_order2, corrector=False)
        xi = z[0] if z is not None else jnp.zeros_like(x)
        x_next = self._update(sde, x, t, t_next, h, w, hist, tau_p, xi)
        x_next = self.from_alpha_zero(sde, state, x, t, t_next, x0, x_next, tau2=tau_p**2,
                                      z=xi if self.stochastic else None)
        return StepResult(x_next, self.advanced(state, hist, (x, xi)), 1)


def ddim_eta_for_tau(tau: float, h: float) -> float:
    """The DDIM ``eta`` equal to an order-1 SA-Predictor step of size ``h`` (half log-SNR) with ``tau``:
    ``eta^2 = (1 - e^{-2 tau^2 h}) / (1 - e^{-2 h})``."""
    return math.sqrt(-math.expm1(-2.0 * tau**2 * h) / -math.expm1(-2.0 * h))


def diffusers_tau(sde, lo: int = 200, hi: int = 800, value: float = 1.0) -> Callable:
    """``tau(t)`` = ``value`` where the network timestep ``round(sde.timestep(t))`` lies in
    ``[lo, hi]``, else 0: diffusers' default SA-Solver ``tau_func`` (``1 if 200 <= t <= 800``) on a
    :class:`~jaxsde.DiscreteVPSDE` (``sde.timestep(t) = N t - 1``). Traceable, for ``SASolver(tau=...)``."""

    def tau(t):
        n = jnp.round(sde.timestep(t))
        return jnp.where((n >= lo) & (n <= hi), value, 0.0)

    return tau
