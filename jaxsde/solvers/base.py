"""The solver interface the driver (:func:`jaxsde.solve`) runs.

A solver is a frozen, hashable dataclass (static configuration, registered as a leafless
pytree) with two pure functions, in the spirit of optax's ``init``/``update`` and
blackjax's ``init``/``step``:

* ``init(sde, score, x, t_start, t_end) -> SolverInit``: first trial step, solver state,
  and the score evaluations that cost;
* ``step(sde, score, x, t, h, state, z, t_end) -> StepOut``: ONE attempt from ``(x, t)``
  with trial step ``h > 0`` (time decreases to ``t - h``), consuming the standard normals
  ``z`` shaped ``(noise_per_attempt, *x.shape)`` (``None`` when ``noise_per_attempt == 0``).

The driver owns the loop, the keys, the statistics and the result codes; solvers never
see a PRNG key, so the same solver can be driven by fresh or by given noise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .. import results
from ..grids import time_grid, validate_grid

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


def solver_class(cls):
    """Decorator: frozen dataclass + static pytree registration."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    jax.tree_util.register_static(cls)
    return cls


class Solver:
    """Base class. Subclasses set ``noise_per_attempt`` and implement ``init``/``step``."""

    noise_per_attempt: int = 0
    adaptive: bool = False
    # True if ``step`` never returns a non-finite ``x`` from a finite one (it rejects non-finite
    # attempts itself); the driver then skips its own per-step finiteness check.
    keeps_finite: bool = False

    @property
    def nfe_per_attempt(self) -> int:
        """Score evaluations one loop iteration costs (for batch cost reports)."""
        raise NotImplementedError

    def time_span(self) -> tuple[float, float] | None:
        """``(t_start, t_end)`` fixed by the solver itself (a custom grid), else ``None``."""
        return None

    def max_attempts(self) -> int | None:
        """Exact number of attempts for fixed-step solvers, else ``None``."""
        return None

    def init(self, sde, score, x: Array, t_start: Array, t_end: Array) -> SolverInit:
        raise NotImplementedError

    def state_score(self, sde, x: Array, t: Array, state) -> Array | None:
        """The score at the current ``(x, t)`` if ``state`` already holds it (the final denoising
        step then costs no evaluation), else ``None``."""
        return None

    def attempt_end(self, state, t: Array, h: Array, t_end: Array) -> Array:
        """The time the next attempt from ``t`` with trial step ``h`` integrates to."""
        return jnp.where(h >= t - t_end, t_end, t - h)

    def step(self, sde, score, x, t, h, state, z, t_end) -> StepOut:
        raise NotImplementedError


class GridState(NamedTuple):
    index: Array  # int32, number of steps taken
    grid: Array  # (num_steps + 1,) decreasing times


class FixedGridSolver(Solver):
    """Shared machinery for solvers stepping over a fixed time grid (exact NFE in advance).

    Subclasses define ``num_steps``, ``grid`` and ``advance(sde, score, x, t, t_next, z)
    -> (x_next, nfe)``.
    """

    num_steps: int
    grid: Any

    def _check_grid(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")
        spec = validate_grid(self.grid, self.num_steps)
        object.__setattr__(self, "grid", spec)

    def time_span(self):
        if isinstance(self.grid, tuple):
            return self.grid[0], self.grid[-1]
        return None

    def max_attempts(self) -> int:
        return self.num_steps

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        grid = time_grid(sde, self.num_steps, self.grid, t_start, t_end, dtype=x.dtype)
        h = jnp.asarray(grid[0] - grid[1], x.dtype)
        return SolverInit(h=h, state=GridState(jnp.zeros((), jnp.int32), grid), nfe=0)

    def attempt_end(self, state: GridState, t, h, t_end):
        return state.grid[jnp.minimum(state.index + 1, self.num_steps)]

    def step(self, sde, score, x, t, h, state: GridState, z, t_end) -> StepOut:
        del h, t_end
        i = jnp.minimum(state.index + 1, self.num_steps)
        t_next = state.grid[i]
        x_next, nfe = self.advance_step(sde, score, x, t, t_next, z, state.index)
        h_next = t_next - state.grid[jnp.minimum(i + 1, self.num_steps)]
        return StepOut(
            x=x_next,
            t=t_next,
            h=h_next,
            state=GridState(i, state.grid),
            accepted=jnp.array(True),
            nfe=nfe,
            status=jnp.array(results.SUCCESS, jnp.int32),
        )

    def advance(self, sde, score, x, t, t_next, z):
        raise NotImplementedError

    def advance_step(self, sde, score, x, t, t_next, z, index):
        """``advance`` for step number ``index`` (override when a step depends on its index)."""
        del index
        return self.advance(sde, score, x, t, t_next, z)
