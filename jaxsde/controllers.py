"""Step-size controllers: the step policy of adaptive solvers, apart from their maths.

An adaptive solver's attempt (:class:`jaxsde.solvers.base.AdaptiveSolver`) integrates one trial
step and reports a raw error estimate; the tolerance, an :class:`ErrorNorm` (one convention for
every solver), scales it into the *scaled error* ``e`` (``e <= 1`` means within tolerance;
``inf`` when the attempt produced non-finite values). A controller turns ``e`` into a decision,
as diffrax's step-size controllers and optax's transformations do, with pure functions:

* ``init(dtype) -> state``: the controller's memory (a pytree of arrays);
* ``decide(state, error, order) -> Decision(accepted, factor, state)``: accept the attempt or not,
  and the factor by which the step that was integrated is multiplied to give the next trial step.

``order`` is the exponent denominator ``k`` the solver reports (the local order of its error
estimate plus one, e.g. 5 for Dormand-Prince 5(4), 3 for DPM-Solver-23). Step sizes are in the
solver's own step variable (time for GGF and the PF-ODE, half log-SNR for the exponential
integrators): every controller here is multiplicative, so units never enter. The solver clamps
the next step to what is left of the interval.

Controllers:

* :class:`GottaGoFastController`: the rule of Jolicoeur-Martineau et al. (2021),
  ``accept iff e <= 1``, ``factor = safety * e^(-exponent)`` (no clipping).
* :class:`PIDController`: Söderlind's PID form (as diffrax's ``PIDController`` and k-diffusion's
  ``PIDStepSizeController``), ``factor = L(safety * e_n^(-b1) e_{n-1}^(-b2) e_{n-2}^(-b3))`` with
  ``b1 = (p + i + d) / k``, ``b2 = -(p + 2 d) / k``, ``b3 = d / k`` over the errors of the current
  attempt and the last two accepted steps; ``L`` is a clip to ``[factor_min, factor_max]``
  or Söderlind's arctangent limiter ``1 + atan(f - 1)``. Presets: :meth:`PIDController.hairer`
  (the PI controller of DOPRI5 codes, :class:`~jaxsde.ProbabilityFlow`'s default) and
  :meth:`PIDController.k_diffusion` (``sample_dpm_adaptive``'s).

The controller owns time and tolerance (diffrax's split of solver and step-size controller):
the driver asks it for the end ``t1`` of the next step, the solver integrates from ``t0`` to
``t1`` and returns its raw error estimate, and the controller decides acceptance and the next
``t1``. Two controllers share that interface (``init`` / ``propose`` / ``adapt``):

* :class:`StepSizeController`: adaptive steps in its own step variable (``"time"`` or half
  log-SNR ``"log_snr"``), with a rule (:class:`GottaGoFastController`, :class:`PIDController`),
  a tolerance (:class:`ErrorNorm`), the first trial step and the clamp of the last step;
* :class:`FixedGrid`: the grid's next time, every step accepted (like diffrax's ``StepTo``: a
  custom grid's times are pytree leaves).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import results
from .grids import time_grid, validate_grid
from .settings import (
    FINITE,
    GRID_TIMES,
    NONNEGATIVE,
    POSITIVE,
    UNIT,
    Bound,
    Settings,
    check_static,
    is_traced,
    settings_class,
)

Array = jax.Array

__all__ = ["Controller", "Decision", "ErrorNorm", "GottaGoFastController", "PIDController", "PIDState", "FixedGrid",
           "GridState", "StepSizeController", "StepState", "Adapted", "check_controller"]


class Decision(NamedTuple):
    """A step-size rule's decision on one scaled error.

    Attributes:
        accepted: bool, keep the step.
        factor: the next trial step is ``factor`` times the step just integrated (> 0).
        state: the rule's new memory.
    """

    accepted: Array
    factor: Array
    state: Any


controller_class = settings_class  # frozen dataclass; float settings are pytree leaves (jaxsde.settings)


class Controller(Settings):
    """Base class of adaptive step-size controllers (see the module docstring). Float settings are
    pytree leaves (:mod:`jaxsde.settings`): a controller passed to a jitted function is one program
    for every value of its coefficients."""

    def init(self, dtype) -> Any:
        return ()

    def decide(self, state: Any, error: Array, order: float) -> Decision:
        raise NotImplementedError


def check_controller(owner: str, controller) -> None:
    """Raise ``TypeError`` unless ``controller`` is an adaptive step-size rule (a :class:`Controller`).

    Args:
        owner: who asks (named in the message).
        controller: the object to check.
    """
    if isinstance(controller, Controller):
        return
    if isinstance(controller, FixedGrid):
        raise TypeError(f"{owner}: controller=FixedGrid(...) is a fixed step schedule, not an adaptive controller; "
                        "use a fixed-grid solver (EulerMaruyama, DPMSolverPP, ...) with num_steps and grid instead")
    raise TypeError(f"{owner}: controller must be a jaxsde.controllers controller (PIDController, "
                    f"GottaGoFastController), got {type(controller).__name__}")


@controller_class
class GottaGoFastController(Controller):
    """The step rule of "Gotta Go Fast": accept iff ``e <= 1``; next step ``safety * h * e^(-exponent)``.

    Args:
      safety: ``theta`` in (0, 1].
      exponent: ``r`` (> 0), used as it is (not divided by the solver's order: the paper's rule).
      nonfinite_shrink: step factor after a non-finite attempt, in (0, 1).
    """

    safety: float = 0.9
    exponent: float = 0.9
    nonfinite_shrink: float = 0.25

    traced_settings = {"safety": UNIT, "exponent": POSITIVE, "nonfinite_shrink": Bound(0.0, 1.0, True, True)}

    def decide(self, state, error, order) -> Decision:
        del order
        finite = jnp.isfinite(error)
        factor = jnp.where(finite, self.safety * error ** (-self.exponent), self.nonfinite_shrink)
        return Decision(finite & (error <= 1.0), factor, state)


COMBINES = ("max", "sum")
REDUCTIONS = ("l2", "l2_unscaled", "linf")


@controller_class
class ErrorNorm(Settings):
    """The tolerance: turns an attempt's raw error estimate into the scaled error ``e`` a controller
    reads (``e <= 1``: within tolerance). One convention for every adaptive solver:

    ``scale = max(atol, rtol * reference)`` (``combine="max"``: Gotta Go Fast, k-diffusion) or
    ``scale = atol + rtol * reference`` (``combine="sum"``: Hairer's DOPRI codes, diffrax), and
    ``e = RMS(error / scale)`` (``reduce="l2"``, the scaled l2 norm), its l2 norm without the
    ``1/sqrt(n)`` (``"l2_unscaled"``) or its max (``"linf"``). ``error`` and ``reference`` are arrays
    shaped like one sample: the solver's error estimate (the difference of its two embedded
    solutions) and the magnitudes the relative tolerance refers to (e.g. ``max(|x'|, |x'_prev|)``).

    Args:
      rtol: relative tolerance (> 0).
      atol: absolute tolerance (> 0), in the units of the solver's error estimate (the model's data
        space, or the denoiser scale ``x / alpha`` for the log-SNR solvers). ``None`` (default) ties
        it to ``rtol``: ``atol = min(sde.default_atol, rtol * (hi - lo) / 2)`` for the SDE's data
        range ``(lo, hi)``: one 8-bit level of the data range (the published defaults, e.g. 0.0078 on
        [-1, 1]) wherever ``rtol`` is at least that level, and ``rtol`` times half the range below it,
        so that lowering ``rtol`` alone keeps lowering the error (a fixed floor would make every
        ``rtol`` under ``atol / |x|`` a no-op).
      combine: ``"max"`` or ``"sum"`` (above).
      reduce: ``"l2"``, ``"l2_unscaled"`` or ``"linf"`` (above).

    ``rtol`` and ``atol`` are traced settings (pytree leaves).
    """

    rtol: float = 0.05
    atol: float | None = None
    combine: str = "max"
    reduce: str = "l2"

    traced_settings = {"rtol": POSITIVE, "atol": POSITIVE}

    def __post_init__(self):
        if self.combine not in COMBINES:
            raise ValueError(f"ErrorNorm: combine must be one of {COMBINES}, got {self.combine!r}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"ErrorNorm: reduce must be one of {REDUCTIONS}, got {self.reduce!r}")

    def absolute(self, sde) -> Any:
        """The absolute tolerance in force for ``sde`` (``atol``, or the default relation above)."""
        if self.atol is not None:
            return self.atol
        lo, hi = sde.data_range
        return jnp.minimum(sde.default_atol, self.rtol * (0.5 * (hi - lo)))

    def scale(self, sde, reference: Array) -> Array:
        """``max(atol, rtol * reference)`` or ``atol + rtol * reference``, elementwise."""
        atol = self.absolute(sde)
        if self.combine == "max":
            return jnp.maximum(atol, self.rtol * reference)
        return atol + self.rtol * reference

    def __call__(self, sde, error: Array, reference: Array) -> Array:
        """The scaled error ``e`` (a scalar) of ``error`` against ``reference`` (see the class docstring)."""
        r = error / self.scale(sde, reference)
        if self.reduce == "l2":
            return jnp.sqrt(jnp.mean(jnp.square(r)))
        if self.reduce == "l2_unscaled":
            return jnp.sqrt(jnp.sum(jnp.square(r)))
        return jnp.max(jnp.abs(r))


class PIDState(NamedTuple):
    """The memory of a :class:`PIDController`.

    Attributes:
        prev: the scaled error of the last accepted step (floored); < 0 before any attempt.
        prev_prev: the scaled error of the accepted step before it.
    """

    prev: Array
    prev_prev: Array


LIMITERS = ("clip", "atan")


@controller_class
class PIDController(Controller):
    """Söderlind's PID step-size controller (see the module docstring for the formula).

    Args:
      pcoeff: proportional coefficient. The three coefficients follow diffrax's convention: an
        I controller is ``(pcoeff, icoeff, dcoeff) = (0, 1, 0)``; the usual PI choices are
        ``(0.4, 0.3, 0)`` for low orders and ``(0.3, 0.4, 0)``; PID ``(1/18, 1/9, 1/18)``.
        ``|b2|, |b3| <= b1`` (the exponents of the module docstring) is required for the recursion
        to settle.
      icoeff: integral coefficient (> 0).
      dcoeff: derivative coefficient.
      safety: multiplies the PID product, in (0, 1].
      factor_min: lower bound on the step change per attempt (``0 < factor_min < 1``).
      factor_max: upper bound on the step change per attempt (``factor_max > 1``).
      limiter: ``"clip"`` (clip to the bounds) or ``"atan"`` (``1 + atan(f - 1)`` first, then the
        bounds: Söderlind and Wang's smooth limiter, as in k-diffusion).
      accept_safety: ``None`` accepts iff ``e <= 1``; a number in (0, 1] accepts iff the limited
        factor is ``>= accept_safety`` (k-diffusion's rule, 0.81).
      reject_uses_history: on a rejected attempt, keep the last accepted errors in the product
        (k-diffusion, diffrax); ``False`` uses ``e_n`` alone (Hairer's PI codes).
      reject_max: the largest factor after a rejection (1: never grow, Hairer's choice).
      error_offset: added to ``e`` before use (k-diffusion: ``1e-8``).
      error_floor: ``e`` is floored here before its power is taken (division by zero).
      history_init: the errors assumed before the first accepted step; ``None`` takes the first
        attempt's error (k-diffusion).
      history_floor: accepted errors are floored here before they are remembered (Hairer: 1e-4).
    """

    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    limiter: str = "clip"
    accept_safety: float | None = None
    reject_uses_history: bool = True
    reject_max: float = 1.0
    error_offset: float = 0.0
    error_floor: float = 1e-10
    history_init: float | None = 1.0
    history_floor: float = 0.0

    traced_settings = {"pcoeff": FINITE, "icoeff": POSITIVE, "dcoeff": FINITE, "safety": UNIT,
                       "factor_min": Bound(0.0, 1.0, True, True), "factor_max": Bound(1.0, low_open=True),
                       "accept_safety": UNIT, "reject_max": UNIT, "error_offset": NONNEGATIVE,
                       "error_floor": NONNEGATIVE, "history_init": POSITIVE, "history_floor": NONNEGATIVE}

    def __post_init__(self):
        if any(is_traced(getattr(self, f)) for f in self.traced_settings):
            return  # built inside a transformation: checked in the program (jaxsde.settings.settings_valid)
        name = "PIDController"
        b1 = self.pcoeff + self.icoeff + self.dcoeff
        b2 = -(self.pcoeff + 2 * self.dcoeff)
        if not self.icoeff > 0 or abs(b2) > b1 or abs(self.dcoeff) > b1:
            raise ValueError(
                f"{name}: the coefficients (pcoeff, icoeff, dcoeff) = {(self.pcoeff, self.icoeff, self.dcoeff)} "
                "cannot converge: need icoeff > 0 and |pcoeff + 2 dcoeff|, |dcoeff| <= "
                "pcoeff + icoeff + dcoeff (e.g. I: (0, 1, 0); PI: (0.4, 0.3, 0); PID: (1/18, 1/9, 1/18))")
        if self.limiter not in LIMITERS:
            raise ValueError(f"{name}: limiter must be one of {LIMITERS}, got {self.limiter!r}")

    @classmethod
    def hairer(cls, beta: float = 0.04, order: int = 5, **kwargs) -> PIDController:
        """Hairer's PI controller (DOPRI5): ``h <- h * clip(safety e^(-(1/k - 0.75 beta)) e_prev^beta)``
        after an accepted step, ``clip(safety e^(-(1/k - 0.75 beta)), factor_min, 1)`` after a
        rejection, ``e_prev`` floored at 1e-4 and starting there. ``order`` is the ``k`` it is
        written for (the coefficients are in units of ``1/k``)."""
        defaults = dict(pcoeff=beta * order, icoeff=1.0 - 1.75 * beta * order, reject_uses_history=False,
                        history_init=1e-4, history_floor=1e-4)
        return cls(**{**defaults, **kwargs})

    @classmethod
    def k_diffusion(cls, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                    accept_safety: float = 0.81) -> PIDController:
        """k-diffusion 0.1.1's ``PIDStepSizeController``: no safety factor, the arctangent limiter,
        accept iff the factor is ``>= accept_safety``, ``e + 1e-8``, history from the first attempt."""
        return cls(pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff, safety=1.0, factor_min=1e-3, factor_max=1e3,
                   limiter="atan", accept_safety=accept_safety, reject_uses_history=True, reject_max=1.0,
                   error_offset=1e-8, error_floor=0.0, history_init=None)

    def init(self, dtype) -> PIDState:
        start = -1.0 if self.history_init is None else self.history_init
        return PIDState(jnp.asarray(start, dtype), jnp.asarray(start, dtype))

    def decide(self, state: PIDState, error, order) -> Decision:
        finite = jnp.isfinite(error)
        offset = self.error_offset
        e = jnp.maximum(error + offset, self.error_floor) if is_traced(offset) or offset else \
            jnp.maximum(error, self.error_floor)
        e = jnp.where(finite, e, 1.0)
        fresh = state.prev < 0  # no history yet (history_init=None): the first error stands in
        prev = jnp.where(fresh, e, state.prev)
        prev_prev = jnp.where(fresh, e, state.prev_prev)
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / order
        b2 = -(self.pcoeff + 2 * self.dcoeff) / order
        b3 = self.dcoeff / order

        def limit(f, upper):
            if self.limiter == "atan":
                f = 1.0 + jnp.arctan(f - 1.0)
            return jnp.clip(f, self.factor_min, upper)

        current = self.safety * e ** (-b1)
        with_history = current
        if is_traced(b2) or b2 != 0:
            with_history = with_history * prev ** (-b2)
        if is_traced(b3) or b3 != 0:
            with_history = with_history * prev_prev ** (-b3)
        grow = limit(with_history, self.factor_max)
        if self.accept_safety is None:
            accepted = finite & (error <= 1.0)
        else:
            accepted = finite & (grow >= self.accept_safety)
        rejected_raw = with_history if self.reject_uses_history else current
        if self.reject_uses_history and self.accept_safety is None:
            # the history may push a rejected step's factor to >= 1 (a deterministic attempt would
            # then repeat forever); never above the current error's own factor (< 1 for e > 1)
            rejected_raw = jnp.minimum(rejected_raw, current)
        shrink = limit(rejected_raw, self.reject_max)
        factor = jnp.where(accepted, grow, jnp.where(finite, shrink, self.factor_min))
        remembered = jnp.maximum(e, self.history_floor)
        new = PIDState(
            prev=jnp.where(accepted, remembered, prev),
            prev_prev=jnp.where(accepted, prev, prev_prev),
        )
        return Decision(accepted, factor, new)


class Adapted(NamedTuple):
    """A controller's verdict on one step (:meth:`StepSizeController.adapt`, :meth:`FixedGrid.adapt`).

    Attributes:
        accepted: bool, keep the step's ``x`` and solver state.
        t: the time of the state kept (``t1`` if accepted, else ``t0``).
        state: the controller's new state.
        status: int32 result code (``results.SUCCESS``, or ``NONFINITE`` for a sample that cannot go on).
    """

    accepted: Array
    t: Array
    state: Any
    status: Array


class StepState(NamedTuple):
    """The state of a :class:`StepSizeController`: positions in its step variable.

    Attributes:
        u: position of the accepted state (the step variable increases toward ``t_end``).
        u_end: position of ``t_end``.
        h: the next trial step (> 0) in the step variable.
        rule: the rule's memory (e.g. :class:`PIDState`).
    """

    u: Array
    u_end: Array
    h: Array
    rule: Any


STEP_VARIABLES = ("time", "log_snr")
LAST_STEPS = ("clip", "snap")
GROWTH_BASES = ("integrated", "trial")


@controller_class
class StepSizeController(Settings):
    """The adaptive controller: owns time and tolerance for an adaptive solver.

    Steps are taken in the step variable ``u``: ``u = -t`` (``variable="time"``) or the half
    log-SNR ``u = log(alpha_t / sigma_t)`` (``"log_snr"``), both increasing toward ``t_end``. From
    the accepted position ``u`` with trial step ``h`` the next step ends at ``u1 = min(u + h,
    u_end)`` (``last_step="clip"``) or at ``u_end`` as soon as ``u_end - u <= 1.1 h``
    (``"snap"``: no sliver of a last step, for multistep pairs whose history nodes would sit at
    large multiples of it); ``t1`` is the time of ``u1``, exactly ``t_end`` at the end.

    After the solver's step, ``e = norm(sde, error, reference)`` (``inf`` if the step or its
    estimate is not finite), ``rule.decide(e, error_order)`` accepts or not, and the next trial
    step is ``factor`` times the step just integrated (``grow_from="integrated"``, the usual
    choice) or the trial step (``"trial"``: k-diffusion's ``pid.h``, which keeps the controller's
    step even when the end clipped it). A non-finite step is rejected and shrunk; once the
    shrunk step falls below ``min_step`` the sample stops with ``results.NONFINITE``.

    Out of ``alpha = 0`` (``t = 1`` on :class:`~jaxsde.FlowSDE`: ``u = -inf`` in half log-SNR) the
    first step is measured in ``rho = e^u = alpha / sigma`` (from ``rho = 0``): it ends at
    ``u1 = log(h)``, rejections shrink that rho-step, and once accepted the next trial step is the
    half log-SNR step covering the rho-step the rule proposes (``log1p(factor h / e^{u1})``). The
    solvers' steps out of ``alpha = 0`` are integrated in rho too (the data prediction is smooth in
    rho there, not in half log-SNR). On VP and VE SDEs (``alpha > 0``) nothing changes.

    Args:
      rule: the step-size rule (:class:`GottaGoFastController`, :class:`PIDController`).
      norm: the tolerance, an :class:`ErrorNorm`.
      error_order: the exponent denominator ``k`` the rule uses (the solver's declared value).
      h_init: the first trial step in the step variable's units; ``None`` takes the solver's own
        proposal (e.g. Hairer's initial-step heuristic of :class:`~jaxsde.ProbabilityFlow`).
      variable: ``"time"`` or ``"log_snr"``.
      last_step: ``"clip"`` or ``"snap"`` (above).
      grow_from: ``"integrated"`` or ``"trial"`` (above).
      min_step: the smallest step a non-finite attempt may shrink to (step-variable units).
      presteps: for solvers whose error estimate is known before their step's score evaluation
        (:meth:`~jaxsde.solvers.base.Solver.predict_error`): rounds of shrinking the trial step
        until the rule accepts the predicted error (no evaluation spent), each by at most
        ``1 / prestep_factor_min`` (a trial step many times the history's spacing extrapolates:
        its predicted error is far from asymptotic in ``h``).
      prestep_factor_min: the smallest shrink factor of one such round (above).
      max_step: the longest step in the step variable's units (``None``: unbounded). An embedded
        pair can agree on a step that jumps across the band where a sample chooses between modes
        (both halves land in the same wrong one), which the error estimate cannot see; a cap on
        the step in half log-SNR prevents it. Not applied to the rho-step out of ``alpha = 0``.

    ``rule``, ``norm``, ``h_init``, ``min_step``, ``prestep_factor_min`` and ``max_step`` are traced
    settings (pytree leaves).
    """

    rule: Controller
    norm: ErrorNorm
    error_order: float
    h_init: float | None = None
    variable: str = "time"
    last_step: str = "clip"
    grow_from: str = "integrated"
    min_step: float = 1e-7
    presteps: int = 3
    prestep_factor_min: float = 0.2
    max_step: float | None = None

    traced_settings = {"rule": None, "norm": None, "h_init": POSITIVE, "min_step": NONNEGATIVE,
                       "prestep_factor_min": UNIT, "max_step": POSITIVE}

    def __post_init__(self):
        check_controller("StepSizeController", self.rule)
        if not isinstance(self.norm, ErrorNorm):
            raise TypeError(f"StepSizeController: norm must be a jaxsde.controllers.ErrorNorm, got "
                            f"{type(self.norm).__name__}")
        for name, value, allowed in (("variable", self.variable, STEP_VARIABLES),
                                     ("last_step", self.last_step, LAST_STEPS),
                                     ("grow_from", self.grow_from, GROWTH_BASES)):
            if value not in allowed:
                raise ValueError(f"StepSizeController: {name} must be one of {allowed}, got {value!r}")
        check_static("StepSizeController", "error_order", self.error_order)
        check_static("StepSizeController", "presteps", self.presteps)

    # --- the step variable ----------------------------------------------------------------------
    def position(self, sde, t: Array) -> Array:
        """``u(t)``: ``-t`` or the half log-SNR."""
        return -t if self.variable == "time" else 0.5 * sde.log_snr(t)

    def time_at(self, sde, u: Array, state: StepState, t_end: Array) -> Array:
        """The time of position ``u`` (exactly ``t_end`` at ``u_end``, so the loop stops there)."""
        t = -u if self.variable == "time" else sde.inverse_log_snr(2.0 * u)
        return jnp.where(u >= state.u_end, t_end, t).astype(t_end.dtype)

    def _end(self, state: StepState) -> Array:
        """``u1``: the end of a step from ``state.u`` with trial step ``state.h`` (at most ``max_step``)."""
        step = state.h if self.max_step is None else jnp.minimum(state.h, self.max_step)
        if self.last_step == "snap":
            u1 = jnp.where(state.u_end - state.u <= 1.1 * step, state.u_end, state.u + step)
        else:
            u1 = jnp.minimum(state.u_end, state.u + step)
        if self.variable != "log_snr":
            return u1
        # out of alpha = 0 (u = -inf): the step is measured in rho = e^u = alpha / sigma (see _at_origin)
        origin = _at_origin(state.u)
        h = jnp.where(origin, state.h, 1.0)
        rho_end = jnp.exp(jnp.where(origin, state.u_end, 0.0))
        if self.last_step == "snap":
            first = jnp.where(rho_end <= 1.1 * h, state.u_end, jnp.log(h))
        else:
            first = jnp.minimum(state.u_end, jnp.log(h))
        return jnp.where(origin, first, u1)

    def _from_origin(self, state: StepState, u1: Array, accepted: Array, factor: Array, proposed: Array) -> Array:
        """The next trial step after an attempt out of ``alpha = 0`` (``state.u = -inf``), where
        the step is measured in ``rho = e^u`` (the step from ``rho = 0`` to ``rho_1 = e^{u1}``):
        rejected, the rho-step times the rule's factor; accepted, the half log-SNR step from
        ``u1`` covering that same rho-step, ``log1p(factor * base / rho_1)`` (``base``: the rho-step
        integrated, ``rho_1``, or the trial one, per ``grow_from``). ``proposed`` elsewhere."""
        origin = _at_origin(state.u)
        rho1 = jnp.exp(jnp.where(origin, u1, 0.0))
        base = rho1 if self.grow_from == "integrated" else jnp.where(origin, state.h, 1.0)
        rho_step = base * factor
        return jnp.where(origin, jnp.where(accepted, jnp.log1p(rho_step / rho1), rho_step), proposed)

    # --- the driver's interface -----------------------------------------------------------------
    def init(self, sde, t_start: Array, t_end: Array, dtype, proposal: Array | None = None) -> StepState:
        """The state at ``t_start``; the first trial step is ``h_init`` or else the solver's ``proposal``."""
        h = proposal if self.h_init is None else self.h_init
        if h is None:
            raise ValueError("StepSizeController: h_init is None and the solver proposed no first step")
        return StepState(self.position(sde, t_start).astype(dtype), self.position(sde, t_end).astype(dtype),
                         jnp.asarray(h, dtype), self.rule.init(dtype))

    def propose(self, sde, t: Array, t_end: Array, state: StepState, predict=None) -> tuple[Array, StepState]:
        """``(t1, state)``: the end of the next step from the accepted time ``t``. ``predict(t1)``
        (optional) returns the solver's ``(error, reference)`` of a step to ``t1`` known before
        its evaluation, or ``None``; the trial step is shrunk until the rule accepts it."""
        del t
        if predict is not None:
            h = state.h
            for _ in range(self.presteps):
                trial = state._replace(h=h)
                estimate = predict(self.time_at(sde, self._end(trial), trial, t_end))
                if estimate is None:
                    break
                predicted = self.norm(sde, *estimate)
                early = self.rule.decide(state.rule, predicted, self.error_order)
                shrink = jnp.maximum(early.factor, self.prestep_factor_min)
                h = jnp.where(early.accepted | ~jnp.isfinite(predicted), h, h * shrink).astype(h.dtype)
            state = state._replace(h=h)
        return self.time_at(sde, self._end(state), state, t_end), state

    def adapt(self, sde, t0: Array, t1: Array, x1: Array, error: Array, reference: Array, ok: Array,
              state: StepState) -> Adapted:
        """Accept or reject the step ``t0 -> t1`` (proposal ``x1``, raw ``error`` estimate against
        ``reference``; ``ok`` False if the solver found its start unusable) and set the next trial step."""
        e = self.norm(sde, error, reference)
        finite = jnp.isfinite(e) & jnp.all(jnp.isfinite(x1))
        decision = self.rule.decide(state.rule, jnp.where(finite, e, jnp.inf), self.error_order)
        accepted = ok & decision.accepted
        u1 = self._end(state)
        base = u1 - state.u if self.grow_from == "integrated" else state.h
        u = jnp.where(accepted, u1, state.u)
        left = jnp.maximum(state.u_end - u, 0.0)
        proposed = base * decision.factor
        if self.variable == "log_snr":
            proposed = self._from_origin(state, u1, accepted, decision.factor, proposed)
        proposed = jnp.where(jnp.isfinite(proposed), proposed, left)  # e = 0 under an unbounded rule
        h = jnp.where(left > 0, proposed, 0.0).astype(state.h.dtype)
        stuck = ~finite & (jnp.minimum(h, left) < self.min_step)
        status = jnp.where(ok & ~stuck, results.SUCCESS, results.NONFINITE).astype(jnp.int32)
        return Adapted(accepted, jnp.where(accepted, t1, t0), StepState(u, state.u_end, h, decision.state), status)


def _at_origin(u: Array) -> Array:
    """True where the half log-SNR position ``u`` is ``-inf``: the state sits where ``alpha = 0``
    (``t = 1`` on :class:`~jaxsde.FlowSDE`), from which no step has a finite length in half
    log-SNR. A ``"log_snr"`` :class:`StepSizeController` measures that one step in
    ``rho = e^u = alpha / sigma`` instead (0 there; the variable in which the data prediction is
    smooth at ``alpha = 0``): the step ends at ``u1 = log(h)`` (``h`` the trial step, now in rho:
    the first trial step ``h_init`` is a rho-step), and after it the steps are in half log-SNR
    again. Never true on a VP or VE SDE (``alpha > 0``), whose steps are unchanged."""
    return jnp.isneginf(u)


class GridState(NamedTuple):
    """The state of a :class:`FixedGrid`.

    Attributes:
        index: int32, the number of steps taken.
        grid: the ``num_steps + 1`` decreasing times.
    """

    index: Array
    grid: Array


@controller_class
class FixedGrid(Settings):
    """The fixed-grid controller: ``num_steps`` steps over a grid of :func:`jaxsde.time_grid`
    (``grid``: ``"uniform"``, ``"logsnr"``, ``"edm"`` or a sequence of ``num_steps + 1`` times);
    every step is accepted and the step count is known in advance. It takes no tolerance and no
    error estimate: adaptive-controller options have no meaning here.

    Args:
        num_steps: the number of steps (>= 1, static).
        grid: a grid kind (static) or the ``num_steps + 1`` decreasing times of a custom grid
            (traced settings: pytree leaves).
    """

    num_steps: int
    grid: Any = "uniform"

    traced_settings = {"grid": GRID_TIMES}  # the times of a custom grid; a kind name is static

    def __post_init__(self):
        check_static("FixedGrid", "num_steps", self.num_steps)
        if not isinstance(self.num_steps, int) or isinstance(self.num_steps, bool) or self.num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")
        object.__setattr__(self, "grid", validate_grid(self.grid, self.num_steps))

    def time_span(self) -> tuple[float, float] | None:
        """``(t_start, t_end)`` of a custom grid (JAX scalars when its times are traced), else ``None``."""
        return (self.grid[0], self.grid[-1]) if isinstance(self.grid, tuple) else None

    def times(self, sde, t_start, t_end, dtype) -> Array:
        """The ``num_steps + 1`` decreasing times of the grid from ``t_start`` to ``t_end``."""
        return time_grid(sde, self.num_steps, self.grid, t_start, t_end, dtype=dtype)

    def init(self, sde, t_start, t_end, dtype, proposal: Array | None = None) -> GridState:
        del proposal
        return GridState(jnp.zeros((), jnp.int32), self.times(sde, t_start, t_end, dtype))

    def time_after(self, state: GridState, steps: int = 1) -> Array:
        """Grid time ``steps`` steps after the current one (the end time once past it)."""
        return state.grid[jnp.minimum(state.index + steps, self.num_steps)]

    def advance(self, state: GridState) -> GridState:
        return GridState(jnp.minimum(state.index + 1, self.num_steps), state.grid)

    def propose(self, sde, t: Array, t_end: Array, state: GridState, predict=None) -> tuple[Array, GridState]:
        del sde, t, t_end, predict
        return self.time_after(state), state

    def adapt(self, sde, t0, t1, x1, error, reference, ok, state: GridState) -> Adapted:
        del sde, t0, x1, error, reference, ok
        return Adapted(jnp.array(True), t1, self.advance(state), jnp.array(results.SUCCESS, jnp.int32))
