"""Adaptive embedded Runge-Kutta on the probability-flow ODE, per sample, inside jit.

``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` integrated from ``t_start`` down to ``t_end``
with an explicit embedded pair and, by default, Hairer's PI step-size controller (as in DOPRI5;
:meth:`jaxsde.controllers.PIDController.hairer`):

* error norm: RMS of ``err / (atol + rtol * max(|x|, |x_new|))``; accept iff ``<= 1``;
* accepted: ``h <- h * clip(safety * E^(-a) * E_prev^(b), 1/5, 10)``, ``a = 1/k - 0.75 b``,
  ``b = 0.04``, ``k`` the error order + 1; rejected: the same without the ``E_prev`` term
  and never growing;
* first step: Hairer's initial-step heuristic (1 extra score evaluation, counted) unless
  ``h_init`` is given.

NFE is counted honestly: 1 for the initial derivative, 1 for the initial-step heuristic,
then ``stages - 1`` per attempt for FSAL pairs (the last stage of an accepted step is the
next step's first), whether the attempt is accepted or not. The final denoising step reads the
score from that last stage (:meth:`ProbabilityFlow.denoise`), so it costs no evaluation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..controllers import Controller, ErrorNorm, PIDController, check_controller
from ..prediction import Model
from ..settings import NONNEGATIVE, POSITIVE, UNIT, Bound, is_traced
from .base import AdaptiveSolver, SolverInit, StepResult, check_component, solver_class


class Tableau(NamedTuple):
    """Butcher tableau of an explicit embedded FSAL pair (lower-triangular ``a``)."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]  # propagated solution weights
    b_err: tuple[float, ...]  # b - b_hat (error weights)
    c: tuple[float, ...]
    order: int  # order of the propagated solution
    error_order: int  # order of the embedded estimate


def _tableau(a, b, b_hat, order, error_order):
    a = tuple(tuple(float(v) for v in row) for row in a)
    c = tuple(float(sum(row)) for row in a)
    return Tableau(a, tuple(map(float, b)), tuple(float(x - y) for x, y in zip(b, b_hat, strict=True)),
                   c, order, error_order)


# Dormand & Prince (1980), 5(4), FSAL.
DOPRI5 = _tableau(
    a=[
        [],
        [1 / 5],
        [3 / 40, 9 / 40],
        [44 / 45, -56 / 15, 32 / 9],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
        [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
    ],
    b=[35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
    b_hat=[5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40],
    order=5,
    error_order=4,
)

# Bogacki & Shampine (1989), 3(2), FSAL.
BOSH3 = _tableau(
    a=[[], [1 / 2], [0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
    b=[2 / 9, 1 / 3, 4 / 9, 0],
    b_hat=[7 / 24, 1 / 4, 1 / 3, 1 / 8],
    order=3,
    error_order=2,
)

TABLEAUS = {"dopri5": DOPRI5, "bosh3": BOSH3}


def rk_step(tableau: Tableau, fn, x, t, h, k1, unroll: bool = False):
    """One explicit RK step of ``dx/dt = fn(x, t)`` from ``t`` to ``t - h`` (time decreasing).

    ``k1 = fn(x, t)`` is given (FSAL). Returns ``(x_new, err, k_last)`` with ``k_last`` the
    derivative at the last stage, equal to ``fn(x_new, t - h)`` for FSAL tableaus.

    By default the stages run in a ``fori_loop`` over a ``(stages, *x.shape)`` buffer, so
    ``fn`` (the score network) is traced and compiled once, not once per stage (DOPRI5 would
    put six copies of the network in the program). ``unroll=True`` writes the stages out:
    longer compiles, but no stage buffer, faster when ``fn`` is cheap (an analytic score).
    """
    if unroll:
        ks = [k1]
        for i in range(1, len(tableau.c)):
            incr = sum(a * k for a, k in zip(tableau.a[i], ks, strict=False) if a != 0.0)
            ks.append(fn(x - h * incr, t - tableau.c[i] * h))
        x_new = x - h * sum(b * k for b, k in zip(tableau.b, ks, strict=True) if b != 0.0)
        err = h * sum(e * k for e, k in zip(tableau.b_err, ks, strict=True) if e != 0.0)
        return x_new, err, ks[-1]
    stages = len(tableau.c)
    a = np.zeros((stages, stages))
    for i, row in enumerate(tableau.a):
        a[i, :len(row)] = row
    a, c = jnp.asarray(a, x.dtype), jnp.asarray(tableau.c, x.dtype)
    b, b_err = jnp.asarray(tableau.b, x.dtype), jnp.asarray(tableau.b_err, x.dtype)
    ks = jnp.zeros((stages, *x.shape), x.dtype).at[0].set(k1)

    def stage(i, ks):
        incr = jnp.tensordot(a[i], ks, axes=1)
        return ks.at[i].set(fn(x - h * incr, t - c[i] * h))

    ks = jax.lax.fori_loop(1, stages, stage, ks)
    x_new = x - h * jnp.tensordot(b, ks, axes=1)
    err = h * jnp.tensordot(b_err, ks, axes=1)
    return x_new, err, ks[-1]


class PFState(NamedTuple):
    k1: jax.Array  # derivative at the current accepted (x, t)


@solver_class
class ProbabilityFlow(AdaptiveSolver):
    """Adaptive Runge-Kutta on the probability-flow ODE (deterministic; no noise).

    Args:
      rtol: relative tolerance (> 0); GGF's baseline used scipy RK45 at 1e-5.
      atol: absolute tolerance (> 0); GGF's baseline used 1e-5.
      method: ``"dopri5"`` (Dormand-Prince 5(4), default) or ``"bosh3"`` (Bogacki-Shampine 3(2)).
      h_init: first trial step; ``None`` uses Hairer's heuristic (+1 NFE).
      safety: step-size safety factor.
      pi_beta: the PI controller's ``beta`` (0 gives a plain I controller).
      factor_min: lower bound on the step-size change per attempt.
      factor_max: upper bound on the step-size change per attempt.
      min_step: a non-finite attempt that would shrink the step below this stops the
        sample with the ``NONFINITE`` code.
      tolerance: an :class:`~jaxsde.controllers.ErrorNorm` replacing ``rtol``/``atol``; ``None``
        builds Hairer's, ``ErrorNorm(rtol, atol, combine="sum")``: RMS of
        ``error / (atol + rtol max(|x|, |x_new|))``.
      controller: the step-size controller; ``None`` is Hairer's PI controller,
        ``PIDController.hairer(pi_beta, k, safety=..., factor_min=..., factor_max=...)`` with
        ``k`` = :attr:`error_order`; ``safety``/``pi_beta``/``factor_*`` then stay at their defaults.
      unroll_stages: write the RK stages out instead of looping over them (see
        :func:`rk_step`): the score is then compiled once per stage. ``benchmarks/vs_diffrax.py``
        has both rows: unrolled compiles 1.0-1.2x longer and runs 1.6-2.3x faster with a cheap
        analytic score (mixtures), 1.1x with a conv score net.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    method: str = "dopri5"
    h_init: float | None = None
    safety: float = 0.9
    pi_beta: float = 0.04
    factor_min: float = 0.2
    factor_max: float = 10.0
    min_step: float = 1e-7
    unroll_stages: bool = False

    controller: Controller | None = None
    tolerance: ErrorNorm | None = None

    noise_per_attempt = 0

    traced_settings = {"rtol": POSITIVE, "atol": POSITIVE, "h_init": POSITIVE, "safety": UNIT,
                       "pi_beta": NONNEGATIVE, "factor_min": Bound(0.0, 1.0, True, True),
                       "factor_max": Bound(1.0, low_open=True), "min_step": POSITIVE, "controller": None,
                       "tolerance": None}

    def __post_init__(self):
        if self.method not in TABLEAUS:
            raise ValueError(f"ProbabilityFlow: method must be one of {sorted(TABLEAUS)}, got {self.method!r}")
        names = ("safety", "pi_beta", "factor_min", "factor_max")
        if self.controller is None:
            bound = 1.0 / (1.75 * self.error_order)  # the integral coefficient 1 - 1.75 beta k stays > 0
            beta = self.pi_beta
            if not is_traced(beta) and not (isinstance(beta, int | float) and 0 <= beta < bound):
                raise ValueError(f"ProbabilityFlow: pi_beta must be in [0, {bound:.4g}) for method "
                                 f"{self.method!r}, got {self.pi_beta!r}")
            try:
                _ = self.default_rule  # builds (and so validates) the default rule
            except ValueError as err:
                raise ValueError(f"ProbabilityFlow: {str(err).split(': ', 1)[1]}") from None
        else:
            check_controller("ProbabilityFlow", self.controller)
            check_component("ProbabilityFlow", self, "controller", Controller, names)
        check_component("ProbabilityFlow", self, "tolerance", ErrorNorm, ("rtol", "atol"))

    @property
    def tableau(self) -> Tableau:
        return TABLEAUS[self.method]

    @property
    def error_order(self) -> float:
        """``k`` = the embedded estimate's order + 1 (5 for dopri5, 3 for bosh3)."""
        return float(self.tableau.error_order + 1)

    @property
    def default_rule(self) -> Controller:
        return PIDController.hairer(beta=self.pi_beta, order=self.tableau.error_order + 1, safety=self.safety,
                                    factor_min=self.factor_min, factor_max=self.factor_max)

    @property
    def nfe_per_attempt(self) -> int:
        return len(self.tableau.c) - 1

    def ode_rhs(self, sde, score):
        """The right-hand side ``fn(x, t)`` of the ODE this solver integrates (the PF drift): the
        model's velocity itself when the score has that channel (a :class:`jaxsde.prediction.Model`:
        finite at ``alpha = 0``, no ``f - g^2 s / 2`` cancellation near a flow's start)."""
        if isinstance(score, Model):
            return score.velocity
        return lambda x, t: sde.probability_flow_drift(x, t, score(x, t))

    reimpose_nfe = 1
    starts_at_alpha_zero = True  # with a Prediction the ODE's right-hand side is the (finite) velocity

    def reimpose(self, sde, score, x, t, state: PFState) -> PFState:
        """The FSAL derivative ``k1`` re-evaluated at the replaced state (1 score evaluation)."""
        return PFState(self.ode_rhs(sde, score)(x, t))

    def denoise(self, sde, score, x, t, state: PFState):
        """The Tweedie estimate from the score the FSAL stage ``k1 = f - g^2 score / 2`` holds at the
        current state: no evaluation (for a model with a data-prediction channel, ``x0`` from that
        velocity directly, exact at ``alpha = 0``)."""
        if isinstance(score, Model):
            return sde.x0_from_velocity(x, t, state.k1), 0
        return sde.tweedie(x, t, sde.score_from_probability_flow_drift(x, t, state.k1)), 0

    @property
    def default_norm(self) -> ErrorNorm:
        return ErrorNorm(self.rtol, self.atol, combine="sum", reduce="l2")

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        fn = self.ode_rhs(sde, score)
        span = t_start - t_end
        if self.h_init is not None:
            k1 = fn(x, t_start)
            h = jnp.minimum(jnp.asarray(self.h_init, x.dtype), span)
            return SolverInit(h=h, state=PFState(k1), nfe=1)
        # Hairer, Norsett & Wanner, "Solving ODEs I", II.4: starting step size.
        def first_guess(k1):
            d0, d1 = self.error_norm(sde, x, jnp.abs(x)), self.error_norm(sde, k1, jnp.abs(x))
            return jnp.minimum(jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1), span), d1

        def evaluate(i, ks):  # i = 0: k1 = fn(x, t_start); i = 1: the probe at t_start - h0
            h0 = jnp.where(i == 0, 0.0, first_guess(ks[0])[0])
            return ks.at[i].set(fn(x - h0 * ks[0], t_start - h0))

        # one traced call of fn for both evaluations (compile time, as in rk_step)
        k1, k_probe = jax.lax.fori_loop(0, 2, evaluate, jnp.zeros((2, *x.shape), x.dtype))
        h0, d1 = first_guess(k1)
        d2 = self.error_norm(sde, k_probe - k1, jnp.abs(x)) / h0
        big = jnp.maximum(d1, d2)
        h1 = jnp.where(big <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                       (0.01 / big) ** (1.0 / (self.tableau.error_order + 1)))
        h = jnp.minimum(jnp.minimum(100 * h0, h1), span).astype(x.dtype)
        return SolverInit(h=h, state=PFState(k1), nfe=2)

    def step(self, sde, score, t, t_next, x, state: PFState, z) -> StepResult:
        del z
        tab = self.tableau
        x_new, err, k_last = rk_step(tab, self.ode_rhs(sde, score), x, t, t - t_next, state.k1, self.unroll_stages)
        return StepResult(x=x_new, state=PFState(k_last), nfe=len(tab.c) - 1, error=err,
                          reference=jnp.maximum(jnp.abs(x), jnp.abs(x_new)), ok=jnp.all(jnp.isfinite(state.k1)))


__all__ = ["ProbabilityFlow", "Tableau", "DOPRI5", "BOSH3", "TABLEAUS", "rk_step"]
