"""The solver interface the driver (:func:`jaxsde.solve`) runs.

A solver is a frozen dataclass registered as a pytree whose float settings (tolerances, ``eta``,
``tau``, step-size controller coefficients: each class's ``traced_settings``) are leaves and whose
structure (orders, numbers of steps, methods) is static (:mod:`jaxsde.settings`), with two pure
functions, in the spirit of optax's ``init``/``update`` and
blackjax's ``init``/``step``:

* ``init(sde, score, x, t_start, t_end) -> SolverInit``: first trial step, solver state,
  and the score evaluations that cost;
* ``step(sde, score, x, t, h, state, z, t_end) -> StepOut``: ONE attempt from ``(x, t)``
  with trial step ``h > 0`` (time decreases to ``t - h``), consuming the standard normals
  ``z`` shaped ``(noise_per_attempt, *x.shape)`` (``None`` when ``noise_per_attempt == 0``).

The driver owns the loop, the keys, the statistics and the result codes; solvers never
see a PRNG key, so the same solver can be driven by fresh or by given noise.

Adaptive solvers (:class:`AdaptiveSolver`) split ``step`` into the maths (``attempt``: a
proposal and its scaled error norm) and the policy (a step-size controller of
:mod:`jaxsde.controllers` deciding acceptance and the next step); fixed-grid solvers
(:class:`FixedGridSolver`) walk a :class:`~jaxsde.controllers.FixedGrid`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .. import results
from ..controllers import ErrorNorm, FixedGrid, GridState
from ..settings import FINITE, Settings, check_static, is_traced, nonzero, settings_class

Array = jax.Array


class SolverInit(NamedTuple):
    h: Array  # first trial step (> 0); ignored by fixed-grid solvers
    state: Any  # solver-specific pytree
    nfe: int | Array  # score evaluations spent by init


class StepOut(NamedTuple):
    x: Array  # state after the attempt (unchanged when rejected)
    t: Array  # time after the attempt (unchanged when rejected)
    h: Array  # next trial step
    state: Any
    accepted: Array  # bool
    nfe: int | Array  # score evaluations spent by this attempt
    status: Array  # int32 result code of this attempt (results.SUCCESS if fine)


solver_class = settings_class  # frozen dataclass; float settings are pytree leaves (jaxsde.settings)


def required(fn):
    """Mark a base class's placeholder for a part of the solver contract that a concrete solver
    must implement; a solver that leaves one unimplemented is refused at construction."""
    fn.__isabstractmethod__ = True
    return fn


class Solver(Settings):
    """Base class. Subclasses set ``noise_per_attempt`` and implement ``init``/``step``; the fields
    named in ``traced_settings`` are pytree leaves (see :mod:`jaxsde.settings`)."""

    # the setting whose value 0 means "draws no noise" (eta, tau, churn): :meth:`derive` records
    # ``stochastic`` from the value the solver is built with (static structure; see jaxsde.settings)
    noise_setting: str | None = None
    adaptive: bool = False
    # True if ``step`` never returns a non-finite ``x`` from a finite one (it rejects non-finite
    # attempts itself); the driver then skips its own per-step finiteness check.
    keeps_finite: bool = False

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

    @property
    def noise_per_attempt(self) -> int:
        """Standard normal draws (each shaped like ``x``) one attempt consumes: 1 when the solver's
        ``noise_setting`` is nonzero, else 0; solvers with another count override it."""
        return 1 if self.__dict__.get("stochastic", False) else 0

    @property
    @required
    def nfe_per_attempt(self) -> int:
        """Score evaluations one loop iteration costs (for batch cost reports)."""
        raise NotImplementedError

    def time_span(self) -> tuple[float, float] | None:
        """``(t_start, t_end)`` fixed by the solver itself (a custom grid), else ``None``."""
        return None

    def max_attempts(self) -> int | None:
        """Exact number of attempts for fixed-step solvers, else ``None``."""
        return None

    @required
    def init(self, sde, score, x: Array, t_start: Array, t_end: Array) -> SolverInit:
        raise NotImplementedError

    def state_score(self, sde, x: Array, t: Array, state) -> Array | None:
        """The score at the current ``(x, t)`` if ``state`` already holds it (the final denoising
        step then costs no evaluation), else ``None``."""
        return None

    def denoising_step(self, sde, x: Array, t: Array, score: Array, state) -> Array:
        """The driver's final denoising step (``denoise=True``) from ``x`` at ``t = t_end``, given the
        score ``score`` there and the solver's final ``state``: the data estimate. Default: the
        Tweedie estimate ``(x + sigma^2 score) / alpha``; a multistep method may extrapolate instead."""
        del state
        return sde.tweedie(x, t, score)

    # score evaluations :meth:`reimpose` costs
    reimpose_nfe: int = 0

    def reimpose(self, sde, score, x: Array, t: Array, state) -> Any:
        """The solver state after something outside the solver replaced the accepted state by
        ``x`` at ``t`` (e.g. :class:`jaxsde.editing.Inpainting` re-imposing known pixels), at a
        cost of ``reimpose_nfe`` score evaluations. Default: ``state`` unchanged, for solvers
        whose state holds nothing computed at the current ``x`` that later steps reuse."""
        return state

    def attempt_end(self, sde, state, t: Array, h: Array, t_end: Array) -> Array:
        """The time the next attempt from ``t`` with trial step ``h`` integrates to."""
        return jnp.where(h >= t - t_end, t_end, t - h)

    @required
    def step(self, sde, score, x, t, h, state, z, t_end) -> StepOut:
        raise NotImplementedError


class Attempt(NamedTuple):
    """What an :class:`AdaptiveSolver` attempt computes (the maths; the decision is the controller's)."""

    x: Array  # proposal at the attempt's end, in the driver's variable
    t: Array  # the attempt's end time
    error: Array  # the raw error estimate (difference of the embedded solutions), shaped like x
    reference: Array  # the magnitudes the relative tolerance refers to, shaped like x (>= 0)
    state: Any  # solver state to carry on if the attempt is accepted
    nfe: int | Array  # score evaluations spent by this attempt
    ok: Array  # bool: False if the attempt's start is unusable (non-finite score there): NONFINITE
    h: Array  # the step the attempt integrated, in the solver's step variable


class AdaptiveState(NamedTuple):
    solver: Any  # the solver's own state
    controller: Any  # the step-size controller's memory


class AdaptiveSolver(Solver):
    """An adaptive solver: ``attempt`` (the maths) plus a step-size controller (the policy).

    Subclasses implement ``start`` (first trial step and solver state), ``attempt`` and
    ``error_order`` (the exponent denominator ``k`` the controller uses), and resolve their
    controller in ``step_controller`` and their tolerance in ``error_norm`` (an
    :class:`~jaxsde.controllers.ErrorNorm`: the one convention turning an attempt's raw error
    estimate into the scaled error ``e``). :meth:`step` runs the attempt, asks the controller, keeps
    or discards the proposal and sets the next trial step ``min(factor * h, remaining)``, so the
    last step lands exactly on the end. A non-finite attempt is rejected and the step shrunk; a
    sample whose step would then fall below ``min_step`` stops with ``NONFINITE``.

    Step sizes are in the solver's step variable: time by default (``remaining`` returns
    ``t - t_end``); solvers stepping in another variable (half log-SNR) override ``remaining``.
    """

    adaptive = True
    keeps_finite = True  # non-finite attempts are rejected (x stays at the last accepted state)
    clamps_step = True  # the next trial step is min(factor * h, remaining); False: factor * h (the attempt clamps)
    min_step: float = 1e-7

    @property
    @required
    def step_controller(self):
        raise NotImplementedError

    @property
    @required
    def error_order(self) -> float:
        raise NotImplementedError

    @property
    @required
    def error_norm(self) -> ErrorNorm:
        """The tolerance in force (the solver's ``tolerance`` if given, else built from its ``rtol`` /
        ``atol`` with the method's published convention)."""
        raise NotImplementedError

    def scaled_error(self, sde, error: Array, reference: Array) -> Array:
        """The scaled error ``e`` of a raw ``error`` estimate against ``reference`` (see :attr:`error_norm`)."""
        return self.error_norm(sde, error, reference)

    @required
    def start(self, sde, score, x: Array, t_start: Array, t_end: Array) -> SolverInit:
        raise NotImplementedError

    @required
    def attempt(self, sde, score, x, t, h, state, z, t_end) -> Attempt:
        raise NotImplementedError

    def predicted_error(self, sde, x: Array, t: Array, h: Array, state, t_end: Array) -> tuple[Array, Array] | None:
        """``(error, reference)`` of a trial step ``h`` when its error estimate is known before the
        step's score evaluation (from the accepted past only), else ``None``. :meth:`step` then shrinks the trial
        step until the controller accepts it (at most ``presteps`` rounds, no evaluation spent;
        each round shrinks by at most ``1 / prestep_factor_min``: a trial step many times the
        history's spacing extrapolates, its predicted error is far from asymptotic in ``h``, and a
        controller without factor limits would overshoot)."""
        return None

    presteps: int = 3
    prestep_factor_min: float = 0.2

    def remaining(self, state, t: Array, t_end: Array) -> Array:
        """What is left to integrate after ``t``, in step units (``state``: the solver's own)."""
        return t - t_end

    def target_time(self, sde, state, t: Array, h: Array, t_end: Array) -> Array:
        """The time an attempt from ``t`` with trial step ``h`` integrates to (``state``: the solver's own)."""
        return Solver.attempt_end(self, sde, state, t, h, t_end)

    def attempt_end(self, sde, state: AdaptiveState, t, h, t_end):
        return self.target_time(sde, state.solver, t, h, t_end)

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        first = self.start(sde, score, x, t_start, t_end)
        return first._replace(state=AdaptiveState(first.state, self.step_controller.init(x.dtype)))

    def step(self, sde, score, x, t, h, state: AdaptiveState, z, t_end) -> StepOut:
        for _ in range(self.presteps):
            estimate = self.predicted_error(sde, x, t, h, state.solver, t_end)
            if estimate is None:
                break
            predicted = self.scaled_error(sde, *estimate)
            early = self.step_controller.decide(state.controller, predicted, self.error_order)
            shrink = jnp.maximum(early.factor, self.prestep_factor_min)
            h = jnp.where(early.accepted | ~jnp.isfinite(predicted), h, h * shrink).astype(h.dtype)
        a = self.attempt(sde, score, x, t, h, state.solver, z, t_end)
        error = self.scaled_error(sde, a.error, a.reference)
        finite = jnp.isfinite(error) & jnp.all(jnp.isfinite(a.x))
        decision = self.step_controller.decide(state.controller, jnp.where(finite, error, jnp.inf),
                                               self.error_order)
        accepted = a.ok & decision.accepted
        t_new = jnp.where(accepted, a.t, t)
        solver_state = jax.tree_util.tree_map(lambda new, old: jnp.where(accepted, new, old), a.state, state.solver)
        left = jnp.maximum(self.remaining(solver_state, t_new, t_end), 0.0)
        proposed = a.h * decision.factor
        proposed = jnp.where(jnp.isfinite(proposed), proposed, left)  # e = 0 under an unbounded rule
        h_new = jnp.where(left > 0, jnp.minimum(left, proposed) if self.clamps_step else proposed, 0.0)
        stuck = ~finite & (h_new < self.min_step)
        return StepOut(
            x=jnp.where(accepted, a.x, x),
            t=t_new,
            h=h_new.astype(h.dtype),
            state=AdaptiveState(solver_state, decision.state),
            accepted=accepted,
            nfe=a.nfe,
            status=jnp.where(a.ok & ~stuck, results.SUCCESS, results.NONFINITE).astype(jnp.int32),
        )


class FixedGridSolver(Solver):
    """Shared machinery for solvers stepping over a fixed time grid (exact NFE in advance).

    Subclasses define ``num_steps``, ``grid`` and ``advance(sde, score, x, t, t_next, z)
    -> (x_next, nfe)``; the grid is walked by the :class:`~jaxsde.controllers.FixedGrid`
    controller (:attr:`schedule`). A custom grid's times are traced settings (pytree leaves, like
    diffrax's ``StepTo``): one compiled program serves every grid of the same length, and
    ``jax.grad`` of a solve with respect to them is exact (:func:`jaxsde.optimize_grid`).
    """

    num_steps: int
    grid: Any

    traced_settings = {"grid": FINITE}

    def _check_grid(self) -> None:
        check_static(type(self).__name__, "num_steps", self.num_steps)
        object.__setattr__(self, "grid", FixedGrid(self.num_steps, self.grid).grid)

    @property
    def schedule(self) -> FixedGrid:
        return FixedGrid(self.num_steps, self.grid)

    def time_span(self):
        return self.schedule.time_span()

    def max_attempts(self) -> int:
        return self.num_steps

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        del score
        grid = self.schedule.init(sde, t_start, t_end, x.dtype).grid
        return SolverInit(h=jnp.asarray(grid[0] - grid[1], x.dtype), state=self.grid_state(sde, x, grid), nfe=0)

    def missing_hooks(self) -> list[str]:
        cls = type(self)
        needs_advance = cls.step is FixedGridSolver.step and cls.advance_step is FixedGridSolver.advance_step
        return [name for name in super().missing_hooks() if name != "advance" or needs_advance]

    def grid_state(self, sde, x: Array, grid: Array) -> Any:
        """The solver state at the start of the ``num_steps + 1`` decreasing times ``grid`` (dtype
        ``x.dtype``). Subclasses that derive more state from the grid override this."""
        del sde
        return GridState(jnp.zeros((), jnp.int32), grid)

    def attempt_end(self, sde, state: GridState, t, h, t_end):
        return self.schedule.time_after(state)

    def step(self, sde, score, x, t, h, state: GridState, z, t_end) -> StepOut:
        del h, t_end
        schedule = self.schedule
        t_next = schedule.time_after(state)
        x_next, nfe = self.advance_step(sde, score, x, t, t_next, z, state.index)
        new = schedule.advance(state)
        return StepOut(
            x=x_next,
            t=t_next,
            h=t_next - schedule.time_after(new),
            state=new,
            accepted=jnp.array(True),
            nfe=nfe,
            status=jnp.array(results.SUCCESS, jnp.int32),
        )

    @required
    def advance(self, sde, score, x, t, t_next, z):
        raise NotImplementedError

    def advance_step(self, sde, score, x, t, t_next, z, index):
        """``advance`` for step number ``index`` (override when a step depends on its index)."""
        del index
        return self.advance(sde, score, x, t, t_next, z)


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
    adaptive = _forwarded("adaptive")
    keeps_finite = _forwarded("keeps_finite")
    reimpose_nfe = _forwarded("reimpose_nfe")
    nfe_per_attempt = _forwarded("nfe_per_attempt")

    def time_span(self):
        return self.solver.time_span()

    def max_attempts(self):
        return self.solver.max_attempts()

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        return self.solver.init(sde, score, x, t_start, t_end)

    def step(self, sde, score, x, t, h, state, z, t_end) -> StepOut:
        return self.solver.step(sde, score, x, t, h, state, z, t_end)

    def state_score(self, sde, x, t, state):
        return self.solver.state_score(sde, x, t, self.inner_state(state))

    def denoising_step(self, sde, x, t, score, state):
        return self.solver.denoising_step(sde, x, t, score, self.inner_state(state))

    def reimpose(self, sde, score, x, t, state):
        return self.with_inner_state(state, self.solver.reimpose(sde, score, x, t, self.inner_state(state)))

    def attempt_end(self, sde, state, t, h, t_end):
        return self.solver.attempt_end(sde, self.inner_state(state), t, h, t_end)

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
