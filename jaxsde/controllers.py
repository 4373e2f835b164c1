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

The fixed grid is a controller too: :class:`FixedGrid` proposes the grid's next time and
accepts every step (every fixed-step solver steps through one).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .grids import time_grid, validate_grid
from .settings import FINITE, NONNEGATIVE, POSITIVE, UNIT, Bound, Settings, check_static, is_traced, settings_class

Array = jax.Array

__all__ = ["Controller", "Decision", "ErrorNorm", "GottaGoFastController", "PIDController", "PIDState", "FixedGrid",
           "GridState", "check_controller"]


class Decision(NamedTuple):
    accepted: Array  # bool
    factor: Array  # next trial step = factor * the step just integrated (> 0)
    state: Any  # the controller's new memory


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
    """Raise ``TypeError`` unless ``controller`` is an adaptive :class:`Controller` (``owner``: who asks)."""
    if isinstance(controller, Controller):
        return
    if isinstance(controller, FixedGrid):
        raise TypeError(f"{owner}: controller=FixedGrid(...) is a fixed step schedule, not an adaptive controller; "
                        "use a fixed-grid solver (EulerMaruyama, DPMSolverPP, ...) with num_steps and grid instead")
    raise TypeError(f"{owner}: controller must be a jaxsde.controllers controller (PIDController, "
                    f"GottaGoFastController), got {type(controller).__name__}")


def _check_positive(owner: str, name: str, value, upper: float | None = None, closed: bool = True) -> None:
    if is_traced(value):  # checked in the program (jaxsde.settings.settings_valid)
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and upper is not None:
        ok = value <= upper if closed else value < upper
    if not ok:
        rng = "> 0" if upper is None else (f"in (0, {upper}]" if closed else f"in (0, {upper})")
        raise ValueError(f"{owner}: {name} must be a finite number {rng}, got {value!r}")


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

    def __post_init__(self):
        _check_positive("GottaGoFastController", "safety", self.safety, 1.0)
        _check_positive("GottaGoFastController", "exponent", self.exponent)
        _check_positive("GottaGoFastController", "nonfinite_shrink", self.nonfinite_shrink, 1.0, closed=False)

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
        _check_positive("ErrorNorm", "rtol", self.rtol)
        if self.atol is not None:
            _check_positive("ErrorNorm", "atol", self.atol)
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
    prev: Array  # error of the last accepted step (floored); < 0 before any attempt
    prev_prev: Array  # error of the accepted step before it


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
        for field in ("pcoeff", "icoeff", "dcoeff", "error_offset", "error_floor", "history_floor"):
            value = getattr(self, field)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"{name}: {field} must be a finite number, got {value!r}")
        for field in ("error_offset", "error_floor", "history_floor"):
            if getattr(self, field) < 0:
                raise ValueError(f"{name}: {field} must be >= 0, got {getattr(self, field)!r}")
        b1 = self.pcoeff + self.icoeff + self.dcoeff
        b2 = -(self.pcoeff + 2 * self.dcoeff)
        if not self.icoeff > 0 or abs(b2) > b1 or abs(self.dcoeff) > b1:
            raise ValueError(
                f"{name}: the coefficients (pcoeff, icoeff, dcoeff) = {(self.pcoeff, self.icoeff, self.dcoeff)} "
                "cannot converge: need icoeff > 0 and |pcoeff + 2 dcoeff|, |dcoeff| <= "
                "pcoeff + icoeff + dcoeff (e.g. I: (0, 1, 0); PI: (0.4, 0.3, 0); PID: (1/18, 1/9, 1/18))")
        _check_positive(name, "safety", self.safety, 1.0)
        if not (isinstance(self.factor_min, int | float) and isinstance(self.factor_max, int | float)
                and 0 < self.factor_min < 1 < self.factor_max):
            raise ValueError(f"{name}: need 0 < factor_min < 1 < factor_max, got "
                             f"{self.factor_min!r}, {self.factor_max!r}")
        if self.limiter not in LIMITERS:
            raise ValueError(f"{name}: limiter must be one of {LIMITERS}, got {self.limiter!r}")
        if self.accept_safety is not None:
            _check_positive(name, "accept_safety", self.accept_safety, 1.0)
        _check_positive(name, "reject_max", self.reject_max, 1.0)
        if self.history_init is not None:
            _check_positive(name, "history_init", self.history_init)

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


class GridState(NamedTuple):
    index: Array  # int32, number of steps taken
    grid: Array  # (num_steps + 1,) decreasing times


@controller_class
class FixedGrid(Settings):
    """The fixed-grid "controller": ``num_steps`` steps over a grid of :func:`jaxsde.time_grid`
    (``grid``: ``"uniform"``, ``"logsnr"``, ``"edm"`` or a sequence of ``num_steps + 1`` times);
    every step is accepted and the step count is known in advance. It takes no tolerance and no
    error estimate: adaptive-controller options have no meaning here."""

    num_steps: int
    grid: Any = "uniform"

    traced_settings = {"grid": FINITE}  # the times of a custom grid; a kind name is static

    def __post_init__(self):
        check_static("FixedGrid", "num_steps", self.num_steps)
        if not isinstance(self.num_steps, int) or isinstance(self.num_steps, bool) or self.num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")
        object.__setattr__(self, "grid", validate_grid(self.grid, self.num_steps))

    def time_span(self) -> tuple[float, float] | None:
        """``(t_start, t_end)`` of a custom grid (JAX scalars when its times are traced), else ``None``."""
        return (self.grid[0], self.grid[-1]) if isinstance(self.grid, tuple) else None

    def init(self, sde, t_start, t_end, dtype) -> GridState:
        grid = time_grid(sde, self.num_steps, self.grid, t_start, t_end, dtype=dtype)
        return GridState(jnp.zeros((), jnp.int32), grid)

    def time_after(self, state: GridState, steps: int = 1) -> Array:
        """Grid time ``steps`` steps after the current one (the end time once past it)."""
        return state.grid[jnp.minimum(state.index + steps, self.num_steps)]

    def advance(self, state: GridState) -> GridState:
        return GridState(jnp.minimum(state.index + 1, self.num_steps), state.grid)
