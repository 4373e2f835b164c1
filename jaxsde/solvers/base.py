"""The solver interface the driver (:func:`jaxsde.solve`) runs: one contract for every solver.

A solver is a frozen dataclass registered as a pytree whose float settings (tolerances, ``eta``,
``tau``, step-size controller coefficients: each class's ``traced_settings``) are leaves and whose
structure (orders, numbers of steps, methods) is static (:mod:`jaxsde.settings`). It is the
maths of one step; the step policy is its controller's (:mod:`jaxsde.controllers`), as in
diffrax. The parts a solver implements (a missing required one is refused at construction):

* ``init(sde, score, x, t_start, t_end) -> SolverInit``: the solver's state at the start (e.g.
  a multistep history), the score evaluations that cost, and optionally a proposed first step;
* ``step(sde, score, t0, t1, x, state, z) -> StepResult``: ONE step from ``(x, t0)`` to ``t1 < t0``
  (chosen by the controller), consuming the standard normals ``z`` shaped ``(noise_per_attempt,
  *x.shape)`` (``None`` when ``noise_per_attempt == 0``); adaptive solvers return their raw error
  estimate and the magnitudes the relative tolerance refers to;
* ``step_controller``: the controller that owns time and tolerance: a
  :class:`~jaxsde.controllers.FixedGrid` or a :class:`~jaxsde.controllers.StepSizeController`;
* ``nfe_per_attempt`` / ``noise_per_attempt`` / ``error_order``: what one step costs and draws,
  and the order of its error estimate (declared values);
* optional: ``denoise`` (the final denoising step), ``reimpose`` (refresh the state after an
  outside change of ``x``), ``predict_error`` (an error estimate known before the step's
  evaluation).

The driver owns the loop, the keys, the statistics and the result codes; solvers never
see a PRNG key, so the same solver can be driven by fresh or by given noise. Fixed-grid and
multistep solvers are the same kind of object: :class:`FixedGridSolver` and
:class:`AdaptiveSolver` are shared machinery (fields, controller, validation), not other contracts.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from ..controllers import Controller, ErrorNorm, FixedGrid, StepSizeController
from ..prediction import Model
from ..settings import GRID_TIMES, Settings, check_static, is_traced, nonzero, settings_class

Array = jax.Array


class SolverInit(NamedTuple):
    state: Any  # solver-specific pytree
    nfe: int | Array  # score evaluations spent by init
    h: Array | None = None  # a proposed first trial step (the controller's h_init, if set, wins)


class StepResult(NamedTuple):
    """What one :meth:`Solver.step` computes (the maths; acceptance is the controller's)."""

    x: Array  # the state at t1
    state: Any  # solver state to carry on if the step is accepted
    nfe: int | Array  # score evaluations spent by this step
    error: Array | None = None  # the raw error estimate, shaped like x (adaptive solvers)
    reference: Array | None = None  # the magnitudes the relative tolerance refers to (>= 0)
    ok: Array | bool = True  # False if the step's start is unusable (non-finite score there): NONFINITE


solver_class = settings_class  # frozen dataclass; float settings are pytree leaves (jaxsde.settings)


def required(fn):
    """Mark a base class's placeholder for a part of the solver contract that a concrete solver
    must implement; a solver that leaves one unimplemented is refused at construction."""
    fn.__isabstractmethod__ = True
    return fn


class Solver(Settings):
    """The one solver contract (see the module docstring); the fields named in ``traced_settings``
    are pytree leaves (see :mod:`jaxsde.settings`)."""

    # the setting whose value 0 means "draws no noise" (eta, tau, churn): :meth:`derive` records
    # ``stochastic`` from the value the solver is built with (static structure; see jaxsde.settings)
    noise_setting: str | None = None
    # score evaluations :meth:`reimpose` costs
    reimpose_nfe: int = 0
    # the order of the error estimate plus one (the ``k`` of step-size rules); None without one
    error_order: float | None = None

    def missing_hooks(self) -> list[str]:
        """The parts of the solver contract this solver's class leaves unimplemented."""
        cls = type(self)
        return sorted(name for name in dir(cls) if getattr(getattr(cls, name, None), "__isabstractmethod__", False))

    def check_contract(self) -> None:
        missing = self.missing_hooks()
        if missing:
            raise TypeError(f"{type(self).__name__} does not implement {', '.join(missing)}: a solver defines them "
                            f"(see jaxsde.solvers.base for what each returns)")

    def derive(self) -> dict[str, Any]:
        if self.noise_setting is None:
            return {}
        return {"stochastic": nonzero(getattr(self, self.noise_setting))}

    # --- declared costs ---------------------------------------------------------------------------
    @property
    def noise_per_attempt(self) -> int:
        """Standard normal draws (each shaped like ``x``) one step consumes: 1 when the solver's
        ``noise_setting`` is nonzero, else 0; solvers with another count override it."""
        return 1 if self.__dict__.get("stochastic", False) else 0

    @property
    @required
    def nfe_per_attempt(self) -> int:
        """Score evaluations one loop iteration costs (for batch cost reports)."""
        raise NotImplementedError

    # --- the controller ---------------------------------------------------------------------------
    @property
    @required
    def step_controller(self) -> FixedGrid | StepSizeController:
        """The controller that owns time and tolerance (:mod:`jaxsde.controllers`)."""
        raise NotImplementedError

    @property
    def adaptive(self) -> bool:
        """True if the controller is adaptive (steps can be rejected)."""
        return isinstance(self.step_controller, StepSizeController)

    def time_span(self) -> tuple[float, float] | None:
        """``(t_start, t_end)`` fixed by the solver itself (a custom grid), else ``None``."""
        controller = self.step_controller
        return controller.time_span() if isinstance(controller, FixedGrid) else None

    def max_attempts(self) -> int | None:
        """Exact number of steps for fixed-grid solvers, else ``None``."""
        controller = self.step_controller
        return controller.num_steps if isinstance(controller, FixedGrid) else None

    # --- the maths --------------------------------------------------------------------------------
    @required
    def init(self, sde, score, x: Array, t_start: Array, t_end: Array) -> SolverInit:
        raise NotImplementedError

    @required
    def step(self, sde, score, t0: Array, t1: Array, x: Array, state, z) -> StepResult:
        raise NotImplementedError

    def denoise(self, sde, score, x: Array, t: Array, state) -> tuple[Array, int]:
        """The driver's final denoising step (``denoise=True``) from ``x`` at ``t = t_end`` given the
        solver's final ``state``: ``(data estimate, score evaluations spent)``. Default: the Tweedie
        estimate ``(x + sigma^2 score) / alpha`` (one evaluation); a solver whose state holds the
        score there spends none, a multistep method may extrapolate instead."""
        del state
        if isinstance(score, Model):  # the model's exact data-prediction channel
            return score.x0(x, t), 1
        return sde.tweedie(x, t, score(x, t)), 1

    # True if the solver steps exactly out of a start where alpha = 0 (t_start = T on a flow:
    # lambda = -inf, infinite drift); the others refuse that start (:meth:`check_start`)
    starts_at_alpha_zero: bool = False

    def check_start(self, sde, score, t_start: float) -> None:
        """Refuse (``ValueError``) a start the solver cannot take: where ``alpha(t_start) = 0``
        (``t_start = 1`` on :class:`~jaxsde.FlowSDE`) the score has lost the data (``x0`` is
        ``0/0`` from it), so the model must come with its data prediction (a
        :class:`jaxsde.Prediction`), and the solver must handle ``lambda = -inf`` exactly
        (``starts_at_alpha_zero``). Called by the driver with the static ``t_start``."""
        if not sde.alpha_vanishes_at(t_start):
            return
        if not isinstance(score, Model):
            raise ValueError(
                f"alpha(t_start) = 0 at t_start = {t_start} on {type(sde).__name__}: a score cannot give the data "
                f"estimate there (x0 = (x + sigma^2 score) / alpha is 0/0). Pass the model's own prediction, "
                f"jaxsde.Prediction(v, 'velocity') (or 'x0'), which is exact there")
        if not self.starts_at_alpha_zero:
            raise ValueError(
                f"{type(self).__name__} cannot start where alpha = 0 (t_start = {t_start} on {type(sde).__name__}: "
                f"lambda = -inf, the reverse drift is infinite); start it later (t_start = 1 - 1e-3) or use a "
                f"solver that starts at alpha = 0 exactly (DDIM, DPMSolverPP, UniPC, ...)")

    def reimpose(self, sde, score, x: Array, t: Array, state) -> Any:
        """The solver state after something outside the solver replaced the accepted state by
        ``x`` at ``t`` (e.g. :class:`jaxsde.editing.Inpainting` re-imposing known pixels), at a
        cost of ``reimpose_nfe`` score evaluations. Default: ``state`` unchanged, for solvers
        whose state holds nothing computed at the current ``x`` that later steps reuse."""
        return state

    def predict_error(self, sde, t0: Array, t1: Array, x: Array, state) -> tuple[Array, Array] | None:
        """``(error, reference)`` of a step ``t0 -> t1`` when its error estimate is known before the
        step's score evaluation (from the accepted past only), else ``None`` (static): the
        :class:`~jaxsde.controllers.StepSizeController` then shrinks the trial step first."""
        return None


class AdaptiveSolver(Solver):
    """Shared machinery of the adaptive solvers (not another contract): the
    :class:`~jaxsde.controllers.StepSizeController` built from the solver's ``rtol`` / ``atol`` /
    ``h_init`` / ``min_step`` fields, its optional ``controller`` (the step-size rule) and
    ``tolerance`` (an :class:`~jaxsde.controllers.ErrorNorm`), in the step variable and with the
    last-step clamp the method publishes (class attributes ``step_variable``, ``last_step``,
    ``grow_from``). Subclasses give ``default_rule`` and ``default_norm``."""

    step_variable: str = "time"
    last_step: str = "clip"
    grow_from: str = "integrated"
    min_step: float = 1e-7

    @property
    @required
    def default_rule(self) -> Controller:
        """The method's published step-size rule (used when ``controller`` is None)."""
        raise NotImplementedError

    @property
    @required
    def default_norm(self) -> ErrorNorm:
        """The method's published tolerance convention (used when ``tolerance`` is None)."""
        raise NotImplementedError

    @property
    def error_norm(self) -> ErrorNorm:
        """The tolerance in force (the solver's ``tolerance`` if given, else :attr:`default_norm`)."""
        tolerance = getattr(self, "tolerance", None)
        return self.default_norm if tolerance is None else tolerance

    @property
    def step_controller(self) -> StepSizeController:
        rule = getattr(self, "controller", None)
        return StepSizeController(rule=self.default_rule if rule is None else rule, norm=self.error_norm,
                                  error_order=self.error_order, h_init=getattr(self, "h_init", None),
                                  variable=self.step_variable, last_step=self.last_step, grow_from=self.grow_from,
                                  min_step=self.min_step, max_step=getattr(self, "max_step", None))


class FixedGridSolver(Solver):
    """Shared machinery of the solvers stepping over a fixed time grid (not another contract): the
    ``num_steps`` / ``grid`` fields and their :class:`~jaxsde.controllers.FixedGrid` controller. A
    custom grid's times are traced settings (pytree leaves, like diffrax's ``StepTo``): one compiled
    program serves every grid of the same length, and ``jax.grad`` of a solve with respect to them
    is exact (:func:`jaxsde.optimize_grid`). The default state is empty (``()``)."""

    num_steps: int
    grid: Any

    traced_settings = {"grid": GRID_TIMES}

    def __post_init__(self):
        self._check_grid()

    def _check_grid(self) -> None:
        check_static(type(self).__name__, "num_steps", self.num_steps)
        object.__setattr__(self, "grid", FixedGrid(self.num_steps, self.grid).grid)

    @property
    def schedule(self) -> FixedGrid:
        return FixedGrid(self.num_steps, self.grid)

    @property
    def step_controller(self) -> FixedGrid:
        return self.schedule

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        del sde, score, x, t_start, t_end
        return SolverInit(state=(), nfe=0)

def _forwarded(name: str) -> property:
    """A read-only property returning the inner solver's ``name``."""
    return property(lambda self: getattr(self.solver, name), doc=f"The inner solver's ``{name}``.")


class WrappedSolver(Solver):
    """A solver that wraps another (``self.solver``) and forwards every part of the contract to it
    unless it overrides that part: a wrapper changes what it means to change and drops nothing.

    Every public attribute and method of :class:`Solver` is forwarded here (a test checks that
    none is missing), and any other attribute (e.g. ``num_steps``, ``error_order``) falls through to
    the inner solver. A wrapper whose state adds to the inner solver's overrides
    :meth:`inner_state` / :meth:`with_inner_state` (how the inner state sits in its own), and the
    forwarded hooks that take or return a state map it through them. Subclasses are settings
    classes (:func:`solver_class`) with a ``solver`` field; ``solver`` is a pytree child, so the
    inner solver's traced settings stay traced.
    """

    solver: Solver

    # --- how the inner state sits in the wrapper's state (identity by default) ------------------
    def inner_state(self, state: Any) -> Any:
        """The inner solver's state inside the wrapper's ``state``."""
        return state

    def with_inner_state(self, state: Any, inner: Any) -> Any:
        """The wrapper's ``state`` with the inner solver's state replaced by ``inner``."""
        del state
        return inner

    # --- the forwarded contract -------------------------------------------------------------------
    noise_per_attempt = _forwarded("noise_per_attempt")
    nfe_per_attempt = _forwarded("nfe_per_attempt")
    reimpose_nfe = _forwarded("reimpose_nfe")
    error_order = _forwarded("error_order")
    starts_at_alpha_zero = _forwarded("starts_at_alpha_zero")
    step_controller = _forwarded("step_controller")

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        return self.solver.init(sde, score, x, t_start, t_end)

    def step(self, sde, score, t0, t1, x, state, z) -> StepResult:
        return self.solver.step(sde, score, t0, t1, x, state, z)

    def denoise(self, sde, score, x, t, state):
        return self.solver.denoise(sde, score, x, t, self.inner_state(state))

    def reimpose(self, sde, score, x, t, state):
        return self.with_inner_state(state, self.solver.reimpose(sde, score, x, t, self.inner_state(state)))

    def predict_error(self, sde, t0, t1, x, state):
        return self.solver.predict_error(sde, t0, t1, x, self.inner_state(state))

    def check_start(self, sde, score, t_start):
        return self.solver.check_start(sde, score, t_start)

    def __getattr__(self, name: str):
        # only reached when normal lookup fails: the inner solver's own settings and properties
        if name == "solver" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.solver, name)


def check_component(owner: str, solver: Any, name: str, kind: type, fields: tuple[str, ...]) -> None:
    """Validate ``getattr(solver, name)``, an optional component (a controller, a tolerance) that
    replaces the default one the solver builds from its ``fields``: ``None`` or an instance of
    ``kind``; when given, every one of ``fields`` must keep its default (set them on the component)."""
    component = getattr(solver, name)
    if component is None:
        return
    if not isinstance(component, kind):
        raise TypeError(f"{owner}: {name} must be a {kind.__module__}.{kind.__name__}, got {type(component).__name__}")
    defaults = type(solver).__dataclass_fields__
    changed = [f for f in fields if is_traced(getattr(solver, f)) or getattr(solver, f) != defaults[f].default]
    if changed:
        raise ValueError(f"{owner}: {', '.join(changed)} configure the default {name}; with {name}= given, set "
                         f"them on that {kind.__name__} instead")
