"""Adaptive DPM-Solver-12 / 23: embedded singlestep exponential integrators in half log-SNR.

Lu et al., "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
10 Steps" (NeurIPS 2022, arXiv:2206.00927), section 4.2 and appendix: the adaptive pair of
k-diffusion 0.1.1's ``DPMSolver.dpm_solver_adaptive``, run per sample.

Variables: ``lam = log(alpha / sigma)`` (half log-SNR, increasing toward the data), a step from
``lam_s`` to ``lam_t`` has ``h = lam_t - lam_s > 0``; ``xt = x / alpha`` is the state in the
"denoiser" scale (k-diffusion's ``x``, with ``sigma~ = sigma / alpha = e^(-lam)``).
Writing the probability-flow ODE as ``d v / d mu = e^mu f`` the two predictions are the same
equation, which is why one set of formulas serves both:

* ``prediction="noise"`` (DPM-Solver, as k-diffusion): ``v = x / alpha``, ``f = eps``, ``mu = -lam``;
* ``prediction="data"`` (DPM-Solver++): ``v = x / sigma``, ``f = x0``, ``mu = lam``.

With ``w(lam) = e^(-s lam)``, ``H = s h`` (``s = +1`` noise, ``-1`` data), ``phi(z) = (e^z - 1 - z)/z``:

* order 1: ``v_t = v_s - w(lam_t) expm1(H) f_s``
* order 2 (``r1``): ``u_1 = v_s - w(lam_s + r1 h) expm1(r1 H) f_s``,
  ``v_t = v_s - w(lam_t) expm1(H) f_s - w(lam_t) / (2 r1) expm1(H) (f_1 - f_s)``
* order 3 (``r1 = 1/3, r2 = 2/3``): ``u_2 = v_s - w(s_2) expm1(r2 H) f_s - w(s_2) (r2 / r1) phi(r2 H) (f_1 - f_s)``,
  ``v_t = v_s - w(lam_t) expm1(H) f_s - w(lam_t) / r2 phi(H) (f_2 - f_s)``.

One attempt of ``order=2`` takes the order-1 step as the low solution and the order-2 one as the
high; ``order=3`` the order-2 step with ``r1 = 1/3`` (its stage is shared) and the order-3 one.
The error ``xt_low - xt_high`` is scaled by ``max(atol, rtol * max(|xt_low|, |xt_prev|))``
(``xt_prev``: the last accepted low solution; the state at the start) and its RMS is the
controller's ``e``. The high solution is kept (local extrapolation). Cost: ``order`` score
evaluations per attempt, accepted or not.

Out of ``alpha = 0`` (``t = 1`` on :class:`~jaxsde.FlowSDE`, ``lam_s = -inf``; data prediction,
``eta = 0``), every step has an infinite half log-SNR length and the formulas' stages
``lam_s + r h`` all sit at ``-inf``: their limit is one Euler step with an error estimate of 0.
That step (the controller measures it in ``rho = e^lam = alpha / sigma``, see
:class:`~jaxsde.controllers.StepSizeController`) integrates ``v = x / sigma``, ``dv / drho = x0``
(the same ODE; ``x0`` is smooth in ``rho`` at ``rho = 0``) by the Runge-Kutta pair in ``rho`` with
the same stage fractions (``rho_r = r rho_t``): ``order=2``, Euler and the midpoint rule
(``v_t = v + rho_t f_1``); ``order=3``, the second-order rule ``v_t = v + rho_t (3 f_1 - f_0) / 2``
(``r1 = 1/3``, the low formula's exact limit) and Heun's third-order one (``u_2 = v + r2 rho_t
f_1``, ``v_t = v + rho_t (f_0 + 3 f_2) / 4``). The first reference is ``|xt_low|`` alone (the start
has no finite denoiser-scale value). The noise prediction (``v = x / alpha``) and ancestral noise
cannot start there (:meth:`AdaptiveDPMSolver.check_start` says so).

Ancestral noise (``eta > 0``), as k-diffusion: the deterministic step goes to
``sigma_down = sqrt(sigma~_t^2 - sigma_up^2)``, ``sigma_up = min(sigma~_t, eta sqrt(sigma~_t^2
(sigma~_s^2 - sigma~_t^2) / sigma~_s^2))``, and ``sigma_up * s_noise * z`` (in the denoiser scale)
is added on acceptance, reaching ``lam_t``; one normal draw per attempt.

A rejected attempt recomputes the score at the (unchanged) current state, as k-diffusion does:
under ``vmap`` a per-sample conditional evaluation is computed for every lane anyway, so
skipping it would lower the counted NFE without lowering the work. The multistep
:class:`~jaxsde.solvers.adaptive_multistep.AdaptiveMultistepSolver` spends one evaluation per
attempt and reuses every stored one across rejections.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..controllers import Controller, ErrorNorm, PIDController, check_controller
from ..settings import NONNEGATIVE, POSITIVE, check_static
from .base import AdaptiveSolver, SolverInit, StepResult, check_component, solver_class
from .exponential import data_prediction, exp_remainder, half_log_snr, noise_prediction

Array = jax.Array

__all__ = ["AdaptiveDPMSolver", "DPMState", "ancestral_step"]

PREDICTIONS = ("data", "noise")


class DPMState(NamedTuple):
    t_end: Array
    lam_end: Array  # half log-SNR of t_end
    x_prev: Array  # the last accepted low-order solution, in the denoiser scale x / alpha


def ancestral_step(sigma_from: Array, sigma_to: Array, eta: float) -> tuple[Array, Array]:
    """``(sigma_down, sigma_up)`` of an ancestral step between denoiser-scale noise levels."""
    if isinstance(eta, int | float) and not eta:
        return sigma_to, jnp.zeros_like(sigma_to)
    up = jnp.minimum(sigma_to, eta * jnp.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return jnp.sqrt(sigma_to**2 - up**2), up


def _phi(z: Array) -> Array:
    """``(e^z - 1 - z) / z`` without cancellation (``R_2(-z) / z``)."""
    return exp_remainder(2, -z) / z


@solver_class
class AdaptiveDPMSolver(AdaptiveSolver):
    """Adaptive DPM-Solver-12 (``order=2``) / DPM-Solver-23 (``order=3``), per sample.

    Args:
      order: 2 or 3, the high order of the embedded pair (``order`` score evaluations per attempt).
      rtol: relative tolerance (> 0).
      atol: absolute tolerance in the denoiser scale ``x / alpha``; ``None`` takes one 8-bit level
        of the SDE's data range (0.0078 for [-1, 1], k-diffusion's default), and ``rtol`` times half
        the data range where that is smaller (:class:`~jaxsde.controllers.ErrorNorm`).
      eta: ancestral noise (0: the probability-flow ODE; 1: a full ancestral step). ``>= 0``.
      s_noise: scale of the ancestral noise (k-diffusion's ``s_noise``), ``>= 0``.
      prediction: ``"data"`` (DPM-Solver++ formulas, default) or ``"noise"`` (DPM-Solver, k-diffusion).
      h_init: first trial step in half log-SNR units (> 0).
      tolerance: an :class:`~jaxsde.controllers.ErrorNorm` replacing ``rtol``/``atol``; ``None``
        builds k-diffusion's, ``ErrorNorm(rtol, atol, combine="max")`` with reference
        ``max(|xt_low|, |xt_prev|)``.
      controller: step-size controller; ``None`` is k-diffusion's I controller
        (``PIDController.k_diffusion()``: accept iff the arctan-limited factor is >= 0.81).
        The controller sees ``k = order`` (1.5 with ancestral noise), as k-diffusion's.
      min_step: a non-finite attempt whose shrunk step falls below this stops the sample
        with ``NONFINITE``.
      max_step: the longest step in half log-SNR (``None``: unbounded; see
        :class:`~jaxsde.controllers.StepSizeController`): an embedded pair can accept a step that
        jumps across the band where a sample chooses its mode, both halves in the same wrong one.

    Units: the step ``h`` is in half log-SNR; ``x`` in the model's data space; the final
    denoising step of the driver (``denoise=True``) costs one more evaluation.
    """

    order: int = 3
    rtol: float = 0.05
    atol: float | None = None
    eta: float = 0.0
    s_noise: float = 1.0
    prediction: str = "data"
    h_init: float = 0.05
    controller: Controller | None = None
    min_step: float = 1e-7
    max_step: float | None = None
    tolerance: ErrorNorm | None = None

    # steps in half log-SNR; the next trial step grows from the trial step, as k-diffusion's pid.h
    # (kept as the controller set it even where the end clipped it)
    step_variable = "log_snr"
    grow_from = "trial"

    noise_setting = "eta"
    traced_settings = {"rtol": POSITIVE, "atol": POSITIVE, "eta": NONNEGATIVE, "s_noise": NONNEGATIVE,
                       "h_init": POSITIVE, "min_step": POSITIVE, "max_step": POSITIVE, "controller": None,
                       "tolerance": None}

    def __post_init__(self):
        name = "AdaptiveDPMSolver"
        check_static(name, "order", self.order)
        if self.order not in (2, 3) or isinstance(self.order, bool):
            raise ValueError(f"{name}: order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {self.order!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"{name}: prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.controller is not None:
            check_controller(name, self.controller)
        check_component(name, self, "tolerance", ErrorNorm, ("rtol", "atol"))

    @property
    def nfe_per_attempt(self) -> int:
        return self.order

    @property
    def error_order(self) -> float:
        return 1.5 if self.stochastic else float(self.order)

    @property
    def default_rule(self) -> Controller:
        return PIDController.k_diffusion()

    @property
    def default_norm(self) -> ErrorNorm:
        return ErrorNorm(self.rtol, self.atol, combine="max")

    @property
    def starts_at_alpha_zero(self) -> bool:  # type: ignore[override]
        # data prediction, ODE: the first step out of alpha = 0 is the embedded pair in rho (module docstring)
        return self.prediction == "data" and not self.stochastic

    def check_start(self, sde, score, t_start: float) -> None:
        """:meth:`~jaxsde.solvers.base.Solver.check_start`, naming what to change: out of ``alpha = 0``
        only the data-prediction ODE (``prediction="data"``, ``eta = 0``) steps exactly."""
        if sde.alpha_vanishes_at(t_start) and not self.starts_at_alpha_zero:
            why = ("prediction='noise' integrates x / alpha, infinite there" if self.prediction == "noise" else
                   "the ancestral split of a step out of sigma / alpha = inf is not error-controlled")
            raise ValueError(f"AdaptiveDPMSolver cannot start where alpha = 0 (t_start = {t_start} on "
                             f"{type(sde).__name__}): {why}; use prediction='data', eta=0 (the probability-flow "
                             f"ODE), or start it later (t_start = 1 - 1e-3)")
        super().check_start(sde, score, t_start)

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        alpha, _ = sde.marginal(t_start)
        # where alpha = 0 the start has no denoiser-scale value: the first reference is |xt_low| alone
        x_prev = jnp.where(alpha > 0, x / jnp.where(alpha > 0, alpha, 1.0), 0.0).astype(x.dtype)
        return SolverInit(state=DPMState(t_end, half_log_snr(sde, t_end).astype(x.dtype), x_prev), nfe=0)

    @staticmethod
    def _time(sde, lam, state: DPMState):
        """The time of half log-SNR ``lam`` (exactly ``t_end`` at the end)."""
        return jnp.where(lam >= state.lam_end, state.t_end, sde.inverse_log_snr(2.0 * lam)).astype(state.t_end.dtype)

    def step(self, sde, score, t, t_next, x, state: DPMState, z) -> StepResult:
        sign = 1.0 if self.prediction == "noise" else -1.0
        lam_s = half_log_snr(sde, t).astype(x.dtype)
        lam_t = half_log_snr(sde, t_next).astype(x.dtype)
        sigma_s, sigma_t = jnp.exp(-lam_s), jnp.exp(-lam_t)  # denoiser-scale noise levels
        down, up = ancestral_step(sigma_s, sigma_t, self.eta if self.stochastic else 0)
        lam_d = jnp.minimum(state.lam_end, -jnp.log(down)) if self.stochastic else lam_t
        if self.stochastic:
            up = jnp.sqrt(sigma_t**2 - jnp.exp(-2.0 * lam_d))
        # out of alpha = 0 (lam_s = -inf, data prediction): the pair in rho = e^lam (module docstring)
        origin = jnp.isneginf(lam_s)
        step = jnp.where(origin, 1.0, lam_d - lam_s)
        big_h = jnp.where(origin, -jnp.inf, sign * step)  # expm1(-inf) = -1: rho_t - rho_s = rho_t

        def weight(lam):  # w(lam) = e^(-sign lam)
            return jnp.exp(-sign * lam)

        def scale(time):  # v = x / scale
            alpha, sigma = sde.marginal(time)
            return alpha if self.prediction == "noise" else sigma

        def model(v, lam, time):  # f at the state v of half log-SNR lam
            x_here = scale(time) * v
            if self.prediction == "noise":
                return noise_prediction(sde, score, x_here, time)
            return data_prediction(sde, score, x_here, time)  # the model's exact x0 channel, if it has one

        v = x / scale(t)
        f0 = model(v, lam_s, t)
        first = v - weight(lam_d) * jnp.expm1(big_h) * f0

        def stage(r, extra=None):
            lam_r = jnp.where(origin, lam_d + jnp.log(r), lam_s + r * step)  # rho_r = r rho_t out of alpha = 0
            time_r = sde.inverse_log_snr(2.0 * lam_r).astype(t.dtype)
            u = v - weight(lam_r) * jnp.expm1(r * big_h) * f0
            if extra is not None:
                u = u - extra(lam_r)
            return model(u, lam_r, time_r)

        if self.order == 2:
            f1 = stage(0.5)
            low = first
            high = first - weight(lam_d) / (2 * 0.5) * jnp.expm1(big_h) * (f1 - f0)
            nfe = 2
        else:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            f1 = stage(r1)
            low = first - weight(lam_d) / (2 * r1) * jnp.expm1(big_h) * (f1 - f0)
            # out of alpha = 0, Heun's third-order pair in rho: u_2 = v + r2 rho_t f_1,
            # v_t = v + rho_t (f_0 + 3 f_2) / 4 (the lambda formulas' limits are first order there)
            safe_h = jnp.where(origin, -1.0, big_h)
            phi_stage = jnp.where(origin, -r1 / r2, _phi(r2 * safe_h))
            c_high = jnp.where(origin, -0.75 * r2, _phi(safe_h))
            f2 = stage(r2, lambda lam_r: weight(lam_r) * (r2 / r1) * phi_stage * (f1 - f0))
            high = first - weight(lam_d) / r2 * c_high * (f2 - f0)
            nfe = 3

        t_d = self._time(sde, lam_d, state)
        to_denoiser = jnp.exp(-lam_d) if self.prediction == "data" else 1.0  # v -> x / alpha at lam_d
        low_d, high_d = low * to_denoiser, high * to_denoiser

        if self.stochastic:
            x_new = sde.marginal(t_next)[0] * (high_d + up * self.s_noise * z[0])
        else:
            x_new = scale(t_d) * high
        return StepResult(x=x_new, state=state._replace(x_prev=low_d), nfe=nfe, error=low_d - high_d,
                          reference=jnp.maximum(jnp.abs(low_d), jnp.abs(state.x_prev)), ok=jnp.all(jnp.isfinite(f0)))
