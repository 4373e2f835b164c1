"""Adaptive multistep exponential integrator: an Adams predictor-corrector pair in half log-SNR.

One score evaluation per attempt, accepted or not, and the error estimate comes from the stored
evaluations: the explicit (Adams-Bashforth) and the implicit-form (Adams-Moulton, evaluated at
the predictor: PEC) exponential integrators of the same step form an embedded pair. The
formulas are those of DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095) and UniPC (Zhao et al.
2023, arXiv:2302.04867) for ``tau = 0`` and of SA-Solver (Xue et al. 2023, arXiv:2309.05019) for
``tau > 0``, on a variable step: the interpolation nodes are wherever the accepted steps fell.

Variables as :mod:`jaxsde.solvers.exponential`: ``lam = log(alpha / sigma)``; a step from
``lam_s`` to ``lam_t = lam_s + h``; ``x0_j`` the data predictions stored at the last accepted
nodes ``lam_j`` (newest first, ``x0_0`` at ``lam_s``). With ``c = 1 + tau^2``:

* predictor (order ``q = min(order, accepted steps + 1)``, the nodes ``lam_0 .. lam_{q-1}``):
  ``x~_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s + alpha_t sum_j w_j x0_j + sigma_t sqrt(1 - e^{-2 tau^2 h}) z``;
* one evaluation ``x0_t = x0(x~_t, t)``;
* corrector (order ``q + 1``, the nodes ``lam_t, lam_0 .. lam_{q-1}``) with the same ``z``:
  ``x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s + alpha_t sum_j w'_j x0_j + sigma_t sqrt(1 - e^{-2 tau^2 h}) z``;

``w_j = c int_0^h e^{-c (h - u)} l_j(u / h) du`` (:func:`~jaxsde.solvers.sa_solver.sa_weights`).
The noise cancels in ``x_t - x~_t``: the error is that of the drift's quadrature. Both it and the
tolerance are measured at the step's end, in the denoiser scale of ``t``: the error
``(x_t - x~_t) / alpha_t`` against ``max(atol, rtol * max(|x_t|, |x_s|) / alpha_t)``, RMS over the
sample's elements (for ``alpha = 1`` this is k-diffusion's mixed tolerance; dividing ``x_s`` by its
own ``alpha_s`` instead would loosen a long step out of the noisy regime by ``alpha_t / alpha_s``,
and a step across the data's transition, where the denoiser stops contracting errors, would pass
unchecked). The corrected ``x_t`` is kept (local extrapolation) and ``x0_t`` is stored for the
next steps.

Out of ``alpha = 0`` (``t = 1`` on :class:`~jaxsde.FlowSDE`: ``lam_s = -inf``, an infinite step in
half log-SNR; the controller measures it in ``rho = e^lam = alpha / sigma``, see
:class:`~jaxsde.controllers.StepSizeController`), the step is the same integral written in ``rho``
(``int_{-inf}^{lam_t} c e^{-c (lam_t - lam)} x0 dlam = int_0^1 c s^{c - 1} x0(s rho_t) ds``), in
which ``x0`` is smooth at ``rho = 0``: the predictor holds ``x0`` at its value there (the exact
limit of the order-1 formula: ``x~_t = (sigma_t / sigma_s) x_s + alpha_t x0_0`` for ``tau = 0``,
DDIM; for ``tau > 0`` the state is forgotten, ``x~_t = alpha_t x0_0 + sigma_t z``), the corrector
interpolates it linearly in ``rho``, ``(x0_0 + c x0_t) / (c + 1)`` (the trapezoidal rule in ``rho``
for ``tau = 0``). The node at ``lam = -inf`` then stays in the history with Lagrange weight 0 (the
limit: the interpolation uses the finite nodes) until it drops out.

``tau = 0`` integrates the probability-flow ODE; ``tau = 1`` the reverse-time SDE
``dx = [f x - g^2 score] dt + g dw_bar`` (any ``tau >= 0`` has the forward marginals); its linear
part and noise are exact, so only the data prediction is approximated. A rejected attempt
redraws ``z`` for the shorter step (as Gotta Go Fast and ancestral samplers do).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..controllers import Controller, ErrorNorm, PIDController, check_controller
from ..settings import NONNEGATIVE, POSITIVE, Bound, check_static
from .base import AdaptiveSolver, SolverInit, StepResult, check_component, solver_class
from .exponential import combine, data_prediction, half_log_snr, push
from .sa_solver import sa_weights

Array = jax.Array

__all__ = ["AdaptiveMultistepSolver", "MultistepState"]


class MultistepState(NamedTuple):
    lam: Array  # half log-SNR of the current accepted state
    hist: Array  # (order, *x.shape) data predictions at the last accepted nodes, newest first
    hist_lam: Array  # (order,) their half log-SNR
    count: Array  # int32: how many entries of hist are real (1 .. order)


@solver_class
class AdaptiveMultistepSolver(AdaptiveSolver):
    """Adaptive exponential Adams predictor-corrector (data prediction), one NFE per attempt, per sample.

    Args:
      order: predictor order, 1..3 (the corrector is one higher); the order grows from 1 as
        accepted steps fill the history.
      rtol: relative tolerance (> 0).
      atol: absolute tolerance in the denoiser scale ``x / alpha``; ``None`` takes one 8-bit level
        of the SDE's data range (0.0078 for [-1, 1]), and ``rtol`` times half the data range where
        that is smaller (:class:`~jaxsde.controllers.ErrorNorm`).
      tau: noise of the variance-controlled reverse SDE (0: the probability-flow ODE; 1: the
        reverse-time SDE). ``>= 0``.
      h_init: first trial step in half log-SNR units (> 0).
      tolerance: an :class:`~jaxsde.controllers.ErrorNorm` replacing ``rtol``/``atol``; ``None``
        builds ``ErrorNorm(rtol, atol, combine="max")``.
      controller: step-size controller; ``None`` is an I controller (``PIDController(safety=0.9,
        factor_min=0.2, factor_max=factor_max)``). It sees ``k = order + 1`` for ``tau = 0`` and
        ``1.5`` otherwise (the drift quadrature along a Brownian path is only Hölder-1/2 smooth).
      factor_max: the default controller's largest step growth (multistep pairs lose accuracy
        when neighbouring steps differ by large ratios). Ignored with a custom controller.
      min_step: a non-finite attempt whose shrunk step falls below this stops the sample with
        ``NONFINITE``.
      max_step: the longest step in half log-SNR (``None``: unbounded; see
        :class:`~jaxsde.controllers.StepSizeController`): an embedded pair can accept a step that
        jumps across the band where a sample chooses its mode, both halves in the same wrong one.

    Cost: one score evaluation at the start, then one per attempt (rejected ones included); the
    driver's final denoising step (``denoise=True``) costs one more.
    """

    order: int = 2
    rtol: float = 0.05
    atol: float | None = None
    tau: float = 0.0
    h_init: float = 0.05
    controller: Controller | None = None
    factor_max: float = 2.0
    min_step: float = 1e-7
    max_step: float | None = None
    tolerance: ErrorNorm | None = None

    # steps in half log-SNR; the last step snaps to the end when within 1.1 trial steps (no sliver
    # of a last step, whose history nodes would sit at huge multiples of it)
    step_variable = "log_snr"
    last_step = "snap"

    noise_setting = "tau"
    traced_settings = {"rtol": POSITIVE, "atol": POSITIVE, "tau": NONNEGATIVE, "h_init": POSITIVE,
                       "factor_max": Bound(1.0, low_open=True), "min_step": POSITIVE, "max_step": POSITIVE,
                       "controller": None, "tolerance": None}

    def __post_init__(self):
        name = "AdaptiveMultistepSolver"
        check_static(name, "order", self.order)
        if not (isinstance(self.order, int) and not isinstance(self.order, bool) and 1 <= self.order <= 3):
            raise ValueError(f"{name}: order must be an integer in [1, 3] (the predictor's), got {self.order!r}")
        if self.controller is not None:
            check_controller(name, self.controller)
        check_component(name, self, "tolerance", ErrorNorm, ("rtol", "atol"))

    nfe_per_attempt = 1

    @property
    def history_size(self) -> int:
        """Stored evaluations: ``order`` (``tau = 0``), ``order + 1`` (``tau > 0``, for the explicit pair)."""
        return self.order + 1 if self.stochastic else self.order

    @property
    def error_order(self) -> float:
        return 1.5 if self.stochastic else float(self.order + 1)

    @property
    def default_rule(self) -> Controller:
        return PIDController(safety=0.9, factor_min=0.2, factor_max=self.factor_max)

    @property
    def default_norm(self) -> ErrorNorm:
        return ErrorNorm(self.rtol, self.atol, combine="max")

    # out of alpha = 0 the first step is the rho pair (module docstring); tau >= 0
    starts_at_alpha_zero = True

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        lam0 = half_log_snr(sde, t_start).astype(x.dtype)
        hist = jnp.zeros((self.history_size, *x.shape), x.dtype).at[0].set(data_prediction(sde, score, x, t_start))
        hist_lam = jnp.full((self.history_size,), lam0, x.dtype)
        return SolverInit(state=MultistepState(lam0, hist, hist_lam, jnp.ones((), jnp.int32)), nfe=1)

    @staticmethod
    def _usable(state: MultistepState) -> Array:
        """The entries of the history the interpolation uses: the real ones (``count``) less the
        node at ``alpha = 0`` (``lam = -inf``, the start of a flow; always the oldest), whose
        Lagrange weight's limit is 0: the polynomial on the finite nodes."""
        origin = jnp.any(jnp.isneginf(state.hist_lam) & (jnp.arange(state.hist_lam.shape[0]) < state.count))
        return state.count - origin.astype(state.count.dtype)

    def _nodes(self, state: MultistepState, step):
        """History nodes in units of the step from ``lam_s``; entries not yet filled (or at
        ``lam = -inf``) get distinct dummy nodes (2, 3, ...) so the masked interpolation weights stay finite."""
        usable = self._usable(state)
        return [jnp.where(j < usable, (state.hist_lam[j] - state.lam) / step, 2.0 + j)
                for j in range(self.history_size)]

    @staticmethod
    def _step(state: MultistepState, lam_t):
        """``(origin, h)``: whether the step starts where ``alpha = 0`` (``lam_s = -inf``), and its
        half log-SNR length (1 as a placeholder out of ``alpha = 0``, where the step is the rho pair)."""
        origin = jnp.isneginf(state.lam)
        return origin, jnp.where(origin, 1.0, lam_t - state.lam).astype(lam_t.dtype)

    def _history_error(self, step, nodes, tau2, state: MultistepState):
        """``tau > 0``: the explicit pair on the history alone (orders ``m`` and ``m - 1``,
        ``m = min(order + 1, count)``; 0 before two evaluations exist: the attempt then uses the PEC
        pair), in the denoiser scale of the step's end (its reference is ``|x_d|``,
        ``x_d = x_s / alpha_t``): known before the step's noise is drawn, so acceptance never
        selects on it (no bias from rejecting unlucky draws)."""
        m = jnp.minimum(self._usable(state), self.history_size)
        w_hi = sa_weights(m, step, nodes, tau2, False, False)
        w_lo = sa_weights(jnp.maximum(m - 1, 1), step, nodes, tau2, False, False)
        diff = combine([a - b for a, b in zip(w_hi, w_lo, strict=True)], state.hist)
        return jnp.where(m >= 2, diff, 0.0)

    def predict_error(self, sde, t, t_next, x, state: MultistepState):
        if not self.stochastic:
            return None
        _, step = self._step(state, half_log_snr(sde, t_next).astype(x.dtype))
        tau2 = jnp.asarray(self.tau, x.dtype) ** 2
        alpha_t = sde.marginal(t_next)[0]
        return self._history_error(step, self._nodes(state, step), tau2, state), jnp.abs(x / alpha_t)

    def step(self, sde, score, t, t_next, x, state: MultistepState, z) -> StepResult:
        lam_t = half_log_snr(sde, t_next).astype(x.dtype)
        origin, step = self._step(state, lam_t)
        sigma_s = sde.marginal(t)[1]
        alpha_t, sigma_t = sde.marginal(t_next)
        x_d = x / alpha_t  # the current state in the denoiser scale of the step's end
        tau2 = jnp.asarray(self.tau, x.dtype) ** 2
        size = self.history_size
        usable = self._usable(state)
        q = jnp.minimum(usable, self.order)
        nodes = self._nodes(state, step)
        decay = jnp.exp(-tau2 * step)
        if self.stochastic:  # out of alpha = 0 (h = inf): the state is forgotten, the noise has variance 1
            decay = jnp.where(origin, jnp.where(tau2 > 0, 0.0, 1.0), decay)
        base = sigma_t / sigma_s * decay * x
        if self.stochastic:
            spread = jnp.where(origin, jnp.where(tau2 > 0, 1.0, 0.0), jnp.sqrt(-jnp.expm1(-2.0 * tau2 * step)))
            base = base + sigma_t * spread * z[0]
        w_pred = sa_weights(q, step, nodes[:self.order], tau2, False, False)
        # out of alpha = 0: x0 linear in rho = alpha / sigma over [0, rho_t] (module docstring)
        c = 1.0 + tau2
        w_pred = [jnp.where(origin, 1.0 if j == 0 else 0.0, w) for j, w in enumerate(w_pred)]
        x_pred = base + alpha_t * combine(w_pred, state.hist)
        x0_new = data_prediction(sde, score, x_pred, t_next)
        w_corr = sa_weights(q + 1, step, [jnp.ones_like(step)] + nodes[:self.order], tau2, False, True)
        w_corr = [jnp.where(origin, c / (c + 1.0) if j == 0 else (1.0 / (c + 1.0) if j == 1 else 0.0), w)
                  for j, w in enumerate(w_corr)]
        x_corr = base + alpha_t * (w_corr[0] * x0_new + combine(w_corr[1:], state.hist))
        corr_d = x_corr / alpha_t

        pec = corr_d - x_pred / alpha_t
        if self.stochastic:  # the first step (one evaluation stored) has no history pair: the PEC pair
            error = jnp.where(usable >= 2, self._history_error(step, nodes, tau2, state), pec)
            reference = jnp.abs(x_d)
        else:
            error, reference = pec, jnp.maximum(jnp.abs(corr_d), jnp.abs(x_d))
        new = MultistepState(
            lam=lam_t,
            hist=push(state.hist, x0_new),
            hist_lam=push(state.hist_lam, lam_t),
            count=jnp.minimum(state.count + 1, size),
        )
        return StepResult(x=x_corr, state=new, nfe=1, error=error, reference=reference,
                          ok=jnp.all(jnp.isfinite(state.hist[0])))
