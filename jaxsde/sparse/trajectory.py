"""Fixed-grid trajectories whose score calls read and write per-step data, on the driver's
step and finalize (:func:`jaxsde.driver.step_with_aux`): a ``lax.scan``
(:func:`run_fixed_grid`, traceable) or an eager Python loop of jitted, donating step programs
(:func:`run_fixed_grid_loop`, kept between calls in a :class:`StepPrograms`), and the
conversions between their per-step cache layouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import driver
from .net import SparseUNet

__all__ = ["run_fixed_grid", "run_fixed_grid_loop", "StepPrograms", "cache_bytes", "stack_step_caches",
           "unstack_step_caches"]


def cache_bytes(cache) -> int:
    """Bytes held by one step's cache (layer outputs and statistics)."""
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(cache)))


def _placeholder_score(x, t):
    """Stands in for the per-step score at validation (shape and dtype only)."""
    return jnp.zeros_like(x)


def _no_score(x, t):
    raise TypeError("the solver's init evaluated the score; not supported by the sparse trajectories")


def _problem(solver, sde, x_start, t_start, t_end) -> driver.Problem:
    """The driver's problem for a fixed-grid run from ``x_start`` at ``t_start`` (no per-step
    finiteness check: the caches are per step, and a failed sample's code comes from the end)."""
    from ..solvers.base import FixedGridSolver

    if not isinstance(solver, FixedGridSolver):
        raise TypeError(f"sparse editing needs a fixed-grid solver (DDIM, EulerMaruyama, ...), got "
                        f"{type(solver).__name__}: the per-step cache is indexed by grid step")
    shape = jax.ShapeDtypeStruct(x_start.shape, x_start.dtype)
    return driver.prepare(sde, _placeholder_score, solver, shape, t_start=float(t_start), t_end=float(t_end),
                          check_finite=False)


def _init(p: driver.Problem, x_start) -> driver.LoopState:
    return driver.init(p._replace(score=_no_score), x_start)


def _step_fn(p: driver.Problem, score_call):
    """One grid step ``(state, xs_k, key, args) -> (state, auxs)`` on :func:`jaxsde.driver.step_with_aux`;
    ``score_call(args, xs_k, j, x, t)``; ``auxs``: the score calls' aux, a tuple."""

    def body(state, xs_k, key, args):
        return driver.step_with_aux(p, key, state, lambda j, x, t: score_call(args, xs_k, j, x, t))

    return body


def _last_fn(p: driver.Problem, score_call):
    """The final denoising step ``(state, final, args) -> (x, auxs)`` on
    :func:`jaxsde.driver.finalize_with_aux` (``auxs``: the one evaluation's aux, a 1-tuple)."""

    def last(state, final, args):
        sol, auxs = driver.finalize_with_aux(p, state, lambda j, x, t: score_call(args, final, j, x, t))
        return sol.x, auxs

    return last


def run_fixed_grid(key, sde, solver, x_start, t_start: float, t_end: float, score_call, xs=None):
    """Run a fixed-grid solver like :func:`jaxsde.solve` (fresh noise from ``key``, final
    Tweedie step), as a ``lax.scan`` of the driver's step whose step ``k`` sees ``xs[k]``.

    ``score_call(xs_k, j, x, t) -> (score, aux)`` is called for the ``j``-th score evaluation
    of step ``k`` (``xs_k = None`` when ``xs`` is None); the ``aux`` of every call is returned,
    stacked over steps: ``(x_final, auxs, aux_final)`` with ``auxs`` a tuple over ``j`` and
    ``aux_final`` the final denoising call's (with ``xs_final``, the last element of ``xs``'s
    tuple ``(per_step, final)``). The steps are :func:`jaxsde.driver.step` (noise, commit) and
    the end is :func:`jaxsde.driver.finalize` (denoising), so the result equals ``solve``'s.
    """
    p = _problem(solver, sde, x_start, t_start, t_end)
    per_step, final = (None, None) if xs is None else xs
    body = _step_fn(p, lambda _, *a: score_call(*a))
    state, auxs = lax.scan(lambda c, xs_k: body(c, xs_k, key, None), _init(p, x_start), per_step,
                           length=solver.num_steps)
    x, (aux_final,) = _last_fn(p, lambda _, *a: score_call(*a))(state, final, None)
    return x, auxs, aux_final


class StepPrograms:
    """The jitted programs of :func:`run_fixed_grid_loop`, kept by the caller between calls.

    Create one and pass it to every call that should reuse compiled steps (e.g.
    ``sparse_sdedit(..., programs=programs)`` in an editing session); the programs are stored
    under a key that determines them; the oldest of more than ``max_entries`` are dropped.

    Args:
        max_entries: how many compiled programs to keep.
    """

    def __init__(self, max_entries: int = 16):
        self.max_entries = max_entries
        self._programs: dict = {}

    def __len__(self) -> int:
        return len(self._programs)

    def get(self, key, build):
        """The programs stored under ``key``, built by ``build()`` (and stored) if there are none."""
        fns = self._programs.get(key)
        if fns is None:
            fns = build()
            while len(self._programs) >= self.max_entries:
                self._programs.pop(next(iter(self._programs)))
            self._programs[key] = fns
        return fns


def run_fixed_grid_loop(key, sde, solver, x_start, t_start: float, t_end: float, score_call, xs=None, *,
                        args=None, before=None, after=None, programs: StepPrograms | None = None,
                        programs_key=None):
    """:func:`run_fixed_grid` as a Python loop over the grid: one jitted program per step, whose
    per-step input ``xs[0][k]`` (``xs = (per_step, final)``, ``per_step`` a list over steps of
    tuples over score calls) is *donated*; returns ``(x_final, auxs, aux_final)`` with ``auxs`` a
    list over steps of tuples over calls. ``score_call(args, xs_k, j, x, t) -> (score, aux)``
    (``args``: a pytree of arrays, the same for every step: parameters, plan). ``before(args, xs_k)
    -> saved`` (jitted, not donating) runs before each step and ``after(args, auxs_k, saved) ->
    auxs_k`` (jitted, ``auxs_k`` donated) after it. ``programs``: a :class:`StepPrograms` that
    keeps the jitted programs for the next call, under ``programs_key`` (hashable; it must determine
    ``sde``, ``solver``, ``t_end``, ``score_call``, ``before`` and ``after``); None: compiled for
    this call only. Eager only (``x_start`` concrete); the same values as :func:`run_fixed_grid`
    up to XLA's fusion choices (float rounding)."""
    p = _problem(solver, sde, x_start, t_start, t_end)
    state = _init(p, x_start)
    per_step, final = (None, None) if xs is None else xs

    def build():
        return (jax.jit(_step_fn(p, score_call), donate_argnums=1),
                jax.jit(_last_fn(p, score_call), donate_argnums=1),
                None if before is None else jax.jit(before),
                None if after is None else jax.jit(after, donate_argnums=1))

    if programs is not None and programs_key is None:
        raise ValueError("programs= needs programs_key=: a hashable key that determines the step programs")
    # the programs read the problem's shape, dtype and t_end (not t_start: it enters through the state)
    full_key = (programs_key, p.shape, str(p.dtype), p.t_end)
    step, last, before, after = build() if programs is None else programs.get(full_key, build)
    auxs = []
    for k in range(solver.num_steps):
        xs_k = None if per_step is None else per_step[k]
        saved = None if before is None else before(args, xs_k)
        state, aux = step(state, xs_k, key, args)
        auxs.append(aux if after is None else after(args, aux, saved))
    saved = None if before is None else before(args, final)
    x, aux_final = last(state, final, args)
    return x, auxs, (aux_final if after is None else after(args, aux_final, saved))[0]


def stack_step_caches(per_step):
    """The Python loop's layout (a list over steps of tuples over calls of padded caches) -> the
    ``lax.scan`` layout (a tuple over calls of unpadded caches stacked over steps)."""
    unpadded = [tuple(SparseUNet.unpad_cache(c) for c in step) for step in per_step]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *unpadded)


def unstack_step_caches(per_step, steps):
    """The inverse of :func:`stack_step_caches`."""
    pad = jax.jit(lambda c, k: tuple(SparseUNet.pad_cache(jax.tree_util.tree_map(lambda a: a[k], d)) for d in c))
    return [pad(per_step, jnp.int32(k)) for k in range(steps)]
