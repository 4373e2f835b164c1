"""The solve loop: ``solve`` (one sample, ``lax.while_loop``) and ``sample`` (vmap over keys).

``solve`` is pure: jit-able, vmap-able, no host callbacks. It is not jitted internally:
wrap your pipeline in ``jax.jit``; the SDE and solver are static (hashable) configuration,
the score function may close over traced network parameters, and a new key or new
parameters of the same shapes reuse the compiled program.

Randomness: attempt ``k`` of a solve draws its normals from ``fold_in(key, k)`` (one draw per
attempt, shared by the attempt's stages). ``sample`` gives sample ``i`` the key
``fold_in(key, i)``, split into a prior key (for ``x_T``) and a solve key, so sample ``i``
never depends on ``n`` or on its batch-mates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import results
from .noise import BrownianTreeNoise, FreshNoise, sample_keys
from .prediction import Model, prepare_model
from .progress import ProgressReporter
from .sde import SDE, ScoreFn
from .settings import is_traced, settings_valid
from .solution import BatchSummary, Solution, Stats
from .solvers.base import Solver

Array = jax.Array

__all__ = ["Stats", "Solution", "BatchSummary", "Problem", "LoopState", "solve", "solve_batch", "sample",
           "summarize", "sample_keys", "prepare", "bind", "init", "step", "step_active", "step_with_aux", "done",
           "finalize", "finalize_with_aux", "check_conditions", "first_condition"]


class LoopState(NamedTuple):
    """One sample's loop state. With ``check_finite``, :func:`step` commits an attempt only if its
    state is finite: a non-finite one latches ``failed`` and leaves ``x``, ``t`` and the solver
    state at the last finite state (so ``x`` is always finite). Adaptive solvers then stop
    (:func:`done`); fixed-grid ones run to the grid's end without committing, so their loop
    predicate stays free of data (see :func:`done`)."""

    x: Array
    t: Array
    solver_state: Any
    controller_state: Any  # the step controller's (jaxsde.controllers): the next step's size, a grid index
    stats: Stats
    result: Array
    failed: Array  # bool: an attempt produced non-finite values (latched; checked only if check_finite)
    noise_memory: Any = ()  # a noise source's memory (jaxsde.noise.BrownianMemoryNoise); () for the others


def _check_types(sde: SDE, score: ScoreFn, solver: Solver, x_T: Any) -> None:
    """The checks that must run before any attribute of the arguments is read."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a jaxsde SDE (VPSDE, SubVPSDE, VESDE, ...), got {type(sde).__name__}")
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a jaxsde solver object (e.g. GottaGoFast(rtol=0.05)), "
                        f"got {type(solver).__name__}")
    if not callable(score):
        raise TypeError("score must be a callable score(x, t) -> array shaped like x (or score(x, t, cond) "
                        "with cond=)")
    dtype = getattr(x_T, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"x_T must be a floating-point array, got {dtype if dtype is not None else type(x_T).__name__}")
    if jnp.dtype(dtype).itemsize < 4:
        raise TypeError(
            f"x_T has dtype {dtype}: the solver state (x, t, step sizes, coefficients) must be float32 or "
            f"float64; a 16-bit time grid repeats times and mis-sizes steps. Keep the state in float32 and "
            f"run the network in low precision: score = jaxsde.mixed_precision(score, jnp.{dtype})"
        )


def _static_time(name: str, value: Any) -> float:
    """A start or end time as a Python float: they are static (they shape the compiled program)."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be a static Python float, got a traced value; pass it as a "
                        f"constant (or mark it static in jax.jit)")
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}") from None


def _check_noise(noise: Any, solver: Solver, t_start: Any, t_end: Any) -> None:
    """A finite noise source must serve every attempt of a fixed grid; a Brownian tree must span the
    solve."""
    if isinstance(noise, BrownianTreeNoise) and not (is_traced(t_start) or is_traced(t_end)) and not (
            noise.t0 <= t_end and t_start <= noise.t1):
        raise ValueError(f"BrownianTreeNoise spans [{noise.t0}, {noise.t1}], the solve runs over [{t_end}, {t_start}]: "
                         f"pass BrownianTreeNoise(t0=..., t1=...) containing it")
    available, needed = getattr(noise, "num_attempts", None), solver.max_attempts()
    if solver.noise_per_attempt and available is not None and needed is not None and available < needed:
        raise ValueError(
            f"the noise source has {available} attempts of noise, the solver's fixed grid takes {needed}; "
            f"give GivenNoise.z a leading axis of at least {needed}"
        )


def _validate(sde: SDE, score: ScoreFn, solver: Solver, x_T: Array, t_start, t_end, max_steps, cond=None):
    traced = is_traced(t_start) or is_traced(t_end)  # the end points of a traced custom grid
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        if not is_traced(value) and not (isinstance(value, int | float) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite Python float, got {value!r}")
    if not traced and not 0.0 < t_end < sde.T:
        raise ValueError(f"t_end must lie in (0, T) = (0, {sde.T}), got {t_end}")
    if not traced and not t_end < t_start <= sde.T:
        raise ValueError(f"t_start must lie in (t_end, T] = ({t_end}, {sde.T}], got {t_start}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    call = "score(x, t)" if cond is None else "score(x, t, cond)"
    args = (x_T, jnp.asarray(t_start, x_T.dtype)) + (() if cond is None else (cond,))
    try:
        out = jax.eval_shape(score, *args)
    except TypeError as err:
        if cond is None:
            raise TypeError(f"calling score(x, t) failed: {err}. A score that takes a condition, "
                            f"score(x, t, cond), needs cond= (one condition per sample)") from err
        raise TypeError(f"calling score(x, t, cond) failed: {err}. With cond= the score must take the "
                        f"sample's condition as its third argument") from err
    if not hasattr(out, "shape") or out.shape != x_T.shape:
        found = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"{call} must return an array shaped like x (one sample, no batch axis): "
            f"x_T has shape {x_T.shape}, the score returned {found}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{call} must return a floating-point array, got dtype {out.dtype}")
    return out.dtype


def _in_state_dtype(score: ScoreFn, dtype) -> ScoreFn:
    """``score`` with its output cast to the state's dtype (a network computing in bf16/f16)."""

    def cast(x: Array, t: Array, *cond: Any) -> Array:
        return score(x, t, *cond).astype(dtype)

    return cast


def _condition_leaves(cond: Any, where: str) -> list:
    leaves = jax.tree_util.tree_leaves(cond)
    if not leaves:
        raise ValueError(f"cond{where} has no arrays; pass None for an unconditional score")
    return leaves


def check_conditions(cond: Any, n: int) -> None:
    """Check that every leaf of a batch of conditions has a leading axis of length ``n``."""
    for leaf in _condition_leaves(cond, ""):
        shape = getattr(leaf, "shape", None)
        if shape is None:
            raise TypeError(f"cond must be a pytree of arrays with a leading batch axis, got a leaf of type "
                            f"{type(leaf).__name__}")
        if len(shape) == 0 or shape[0] != n:
            raise ValueError(f"cond must carry one condition per sample: a leading axis of length {n} on every "
                             f"leaf, got a leaf of shape {tuple(shape)} (for one shared condition, repeat it: "
                             f"jnp.repeat(c[None], {n}, axis=0))")


def first_condition(cond: Any) -> Any:
    """Row 0 of a batch of conditions (one sample's condition), or None."""
    return None if cond is None else jax.tree_util.tree_map(lambda a: a[0], cond)


class Problem(NamedTuple):
    """One sample's static configuration, resolved and validated by :func:`prepare`.

    The per-sample pieces :func:`init` / :func:`step` / :func:`done` / :func:`finalize` are
    pure functions of a ``Problem`` and a :class:`LoopState`; :func:`solve` is
    ``finalize(while_loop(not done, step, init(x_T)))`` and :func:`jaxsde.generate` runs the
    same pieces over a fixed number of slots, refilling a slot as soon as its sample is done.
    """

    sde: SDE
    score: ScoreFn
    solver: Solver
    shape: tuple[int, ...]
    dtype: Any
    t_start: float | Array  # a JAX scalar only for a custom grid whose times are traced
    t_end: float | Array
    max_steps: int
    denoise: bool
    noise: Any
    check_finite: bool = True
    # True: ``score`` is ``score(x, t, cond)`` and each sample's condition is still to be bound
    # (:func:`bind`); init/step/finalize take bound (unconditional) problems only.
    conditional: bool = False


def bind(p: Problem, cond: Any) -> Problem:
    """The problem of ONE sample whose condition is ``cond``: ``p.score`` becomes
    ``score(x, t) = p.score(x, t, cond)``. Unconditional problems (``cond`` None) are returned as
    they are. Call it per sample, inside ``vmap`` for a batch of conditions."""
    if not p.conditional:
        if cond is not None:
            raise ValueError("cond given to a problem prepared without cond=")
        return p
    if cond is None:
        raise ValueError("this problem was prepared with cond=: bind each sample's condition")
    score = p.score
    if hasattr(score, "bind_condition"):  # a score object with structure a solver reads (MultilevelScore)
        return p._replace(score=score.bind_condition(cond), conditional=False)

    def bound(x: Array, t: Array) -> Array:
        return score(x, t, cond)

    return p._replace(score=bound, conditional=False)


def _check_bound(p: Problem) -> None:
    if p.conditional:
        raise TypeError("the problem's score takes a condition: bind each sample's condition first "
                        "(jaxsde.driver.bind(problem, cond))")


def prepare(
    sde: SDE,
    score: ScoreFn,
    solver: Solver,
    x_T: Any,
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    denoise: bool = True,
    max_steps: int | None = None,
    noise: Any = None,
    check_finite: bool = True,
    cond: Any = None,
) -> Problem:
    """Resolve defaults and validate (see :func:`solve`); ``x_T`` may be a ``jax.ShapeDtypeStruct``.

    ``cond`` (optional): ONE sample's condition (a pytree of arrays or ``jax.ShapeDtypeStruct``),
    used only to check ``score(x, t, cond)``; the problem is then conditional and each sample's
    condition is attached by :func:`bind`."""
    _check_types(sde, score, solver, x_T)
    score = prepare_model(sde, score)  # a Prediction: the score with the model's exact x0 channel
    if cond is not None:
        _condition_leaves(cond, " (one sample's condition)")
    span = solver.time_span()
    default_start, default_end = span if span is not None else (sde.T, sde.eps)
    # A custom grid whose times are traced (a solver passed into jit, optimize_grid) spans its own
    # traced end points; t_start / t_end given with it are taken as they are (nothing to compare).
    traced_span = span is not None and any(is_traced(v) for v in span)
    t_start = default_start if t_start is None and traced_span else _static_time(
        "t_start", default_start if t_start is None else t_start)
    t_end = default_end if t_end is None and traced_span else _static_time(
        "t_end", default_end if t_end is None else t_end)
    score_dtype = _validate(sde, score, solver, x_T, t_start, t_end, max_steps, cond)
    if span is not None and not traced_span and (t_start, t_end) != (span[0], span[1]):
        raise ValueError(f"the solver's custom grid spans {span}; t_start/t_end {(t_start, t_end)} disagree")
    fixed = solver.max_attempts()
    if max_steps is None:
        max_steps = fixed if fixed is not None else 10_000
    noise = FreshNoise() if noise is None else noise
    _check_noise(noise, solver, t_start, t_end)
    if not is_traced(t_start):
        solver.check_start(sde, score, t_start)
    if score_dtype != x_T.dtype:
        score = score.with_dtype(x_T.dtype) if isinstance(score, Model) else _in_state_dtype(score, x_T.dtype)
    return Problem(sde, score, solver, tuple(x_T.shape), x_T.dtype, t_start, t_end, max_steps, denoise, noise,
                   bool(check_finite), cond is not None)


def init(p: Problem, x_T: Array, t_start: Array | None = None) -> LoopState:
    """The loop state of a sample starting from ``x_T`` at ``p.t_start`` (may evaluate the score).

    ``t_start`` (optional) is ``p.t_start`` as an array: :func:`solve_batch` passes it with a batch
    axis, so the batch's times are vectors in every program (as in :func:`jaxsde.generate`'s
    slots) and XLA rounds their coefficients the same way in both. The solver's own ``init``
    sees the static times (constants), so a fixed grid is one array shared by the whole batch
    rather than a per-sample copy carried through the loop.
    """
    _check_bound(p)
    dtype = p.dtype
    t0 = jnp.asarray(p.t_start if t_start is None else t_start, dtype)
    t_start_c, t_end_c = jnp.asarray(p.t_start, dtype), jnp.asarray(p.t_end, dtype)
    first = p.solver.init(p.sde, p.score, x_T, t_start_c, t_end_c)
    controller_state = p.solver.step_controller.init(p.sde, t_start_c, t_end_c, dtype, first.h)
    zero = jnp.zeros((), jnp.int32)
    valid = settings_valid(p.solver)  # traced settings: checked here, a result code (never a silent default)
    result = results.SUCCESS if valid is None else jnp.where(valid, results.SUCCESS, results.INVALID_SETTING)
    return LoopState(
        x=x_T,
        t=t0,
        solver_state=first.state,
        controller_state=controller_state,
        stats=Stats(nfe=zero + first.nfe, num_accepted=zero, num_rejected=zero, num_steps=zero, noise_dropped=zero),
        result=jnp.asarray(result, jnp.int32),
        failed=jnp.array(False),
        noise_memory=_noise_memory(p),
    )


def done(p: Problem, s: LoopState) -> Array:
    """True once the sample reached ``t_end``, failed (a solver code or non-finite values), or ran
    ``max_steps`` attempts."""
    fixed = p.solver.max_attempts()
    if fixed is not None:
        # A fixed grid ends on its step count, failed samples included (the batch runs to the end
        # anyway): a predicate that read per-sample data would make vmap select every carried
        # array each step (measured +15% per EM step at d=3072).
        return ~((s.stats.num_steps < min(p.max_steps, fixed)) & (s.result == results.SUCCESS))
    running = (s.t > jnp.asarray(p.t_end, p.dtype)) & (s.result == results.SUCCESS) & (s.stats.num_steps < p.max_steps)
    if p.check_finite:  # adaptive: stop at the failure (a NaN error estimate would shrink h to max_steps)
        running = running & ~s.failed
    return ~running


def _remembers(p: Problem) -> bool:
    """Static: the solver draws noise from a source with memory (see :mod:`jaxsde.noise`)."""
    return bool(p.solver.noise_per_attempt) and hasattr(p.noise, "init_memory")


def _noise_memory(p: Problem) -> Any:
    """A fresh memory of the noise source where it keeps one (:func:`_remembers`), else ``()``."""
    return p.noise.init_memory((p.solver.noise_per_attempt, *p.shape), p.dtype) if _remembers(p) else ()


def step(p: Problem, key: Array, s: LoopState) -> LoopState:
    """One attempt (one loop iteration) of a sample whose solve key is ``key``.

    The only code that advances a sample: it draws the attempt's noise, runs the solver's step,
    applies the non-finite rule (see :class:`LoopState`) and commits or keeps the state."""
    _check_bound(p)
    t_end_arr = jnp.asarray(p.t_end, p.dtype)
    solver, controller = p.solver, p.solver.step_controller
    adaptive = solver.adaptive

    def predict(t1):
        return solver.predict_error(p.sde, s.t, t1, s.x, s.solver_state)

    t1, controller_state = controller.propose(p.sde, s.t, t_end_arr, s.controller_state, predict)
    z = w1 = None
    remembers = _remembers(p)
    if remembers:
        z, w1 = p.noise.draw_with_memory(s.noise_memory, key, s.stats.num_steps, s.t, t1,
                                         (solver.noise_per_attempt, *p.shape), p.dtype)
    elif solver.noise_per_attempt:
        z = p.noise.draw(key, s.stats.num_steps, s.t, t1, (solver.noise_per_attempt, *p.shape), p.dtype)
    out = solver.step(p.sde, p.score, s.t, t1, s.x, s.solver_state, z)
    verdict = controller.adapt(p.sde, s.t, t1, out.x, out.error, out.reference, jnp.asarray(out.ok),
                               controller_state)
    if adaptive:  # a rejected step keeps x and the solver state (the controller already rejects non-finite ones)
        out = out._replace(x=jnp.where(verdict.accepted, out.x, s.x),
                           state=jax.tree_util.tree_map(lambda new, old: jnp.where(verdict.accepted, new, old),
                                                        out.state, s.solver_state))
    # a sample that already stopped (a code from an earlier attempt or from init) commits nothing
    # and keeps its code: a fixed grid's loop runs its static trip count (see _run)
    status = jnp.where(s.result == results.SUCCESS, verdict.status, s.result)
    available = getattr(p.noise, "num_attempts", None) if solver.noise_per_attempt else None
    if available is not None:  # past the end of a GivenNoise: stop, commit nothing (never a clamped reuse)
        status = jnp.where((s.stats.num_steps >= available) & (status == results.SUCCESS), results.NOISE_EXHAUSTED,
                           status)
    ok = status == results.SUCCESS
    failed = s.failed
    if p.check_finite and not adaptive:
        # The barrier materialises out.x once: without it the check is a second consumer of
        # out.x, and XLA (CPU) fuses and recomputes the whole step, noise draw included, inside
        # the reduction (measured: +30% FLOPs, EM d=3072).
        x_new = jax.lax.optimization_barrier(out.x)
        out = out._replace(x=x_new)
        failed = failed | ~jnp.all(jnp.isfinite(x_new))
        ok = ok & ~failed  # commit nothing from the failing attempt on
    accepted = verdict.accepted & ok
    stats = Stats(
        nfe=s.stats.nfe + out.nfe,
        num_accepted=s.stats.num_accepted + accepted.astype(jnp.int32),
        num_rejected=s.stats.num_rejected + (ok & ~accepted).astype(jnp.int32),
        num_steps=s.stats.num_steps + 1,
        noise_dropped=s.stats.noise_dropped,  # the noise memory counts it; finalize copies it here
    )

    def keep(new, old):  # a failed attempt keeps the old state; pass-through leaves need no select
        return new if new is old else jnp.where(ok, new, old)

    return LoopState(
        x=keep(out.x, s.x),
        t=keep(verdict.t, s.t),
        solver_state=jax.tree_util.tree_map(keep, out.state, s.solver_state),
        controller_state=jax.tree_util.tree_map(keep, verdict.state, s.controller_state),
        stats=stats,
        result=status,
        failed=failed,
        noise_memory=(jax.tree_util.tree_map(keep, p.noise.remember(s.noise_memory, t1, w1, accepted), s.noise_memory)
                      if remembers else s.noise_memory),
    )


def step_active(p: Problem, keys: Array, s: LoopState, active: Array, noise: Any = None,
                cond: Any = None) -> tuple[LoopState, Array]:
    """:func:`step` of a batch of samples (leading axis of ``keys``, ``s`` and ``active``) where
    only the ``active`` ones advance; the others keep their state bitwise. ``noise`` (optional): a
    per-sample noise source with a leading batch axis, replacing ``p.noise``. ``cond``: the
    samples' conditions (leading batch axis) of a conditional problem, else None.

    Returns ``(state, computed)``: ``computed`` (int32, per sample) is the score evaluations the
    vmapped step computed in each row, inactive rows included (what the batch paid for)."""

    def one(k, si, nz, c):
        return step(bind(p if nz is None else p._replace(noise=nz), c), k, si)

    new = jax.vmap(one)(keys, s, noise, cond)
    computed = new.stats.nfe - s.stats.nfe
    return jax.tree_util.tree_map(lambda a, b: jnp.where(_per_sample(active, a), a, b), new, s), computed


def _per_sample(mask: Array, a: Array) -> Array:
    return mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))


def _recording(score_aux: Callable, auxs: list) -> ScoreFn:
    """A score that calls ``score_aux(j, x, t) -> (score, aux)`` for its ``j``-th evaluation and
    appends ``aux`` to ``auxs`` (at trace time: one entry per evaluation in the traced program)."""

    def score(x: Array, t: Array) -> Array:
        value, aux = score_aux(len(auxs), x, t)
        auxs.append(aux)
        return value

    return score


def step_with_aux(p: Problem, key: Array, s: LoopState, score_aux: Callable) -> tuple[LoopState, tuple]:
    """:func:`step` whose score also returns auxiliary data: ``score_aux(j, x, t) -> (score, aux)``
    is called for the attempt's ``j``-th score evaluation; returns ``(state, auxs)``, ``auxs`` a
    tuple over the evaluations (for fixed-grid solvers whose score reads and writes per-step data,
    e.g. the sparse editing caches). ``p.score`` is not called."""
    auxs: list = []
    s = step(p._replace(score=_recording(score_aux, auxs)), key, s)
    return s, tuple(auxs)


def finalize(p: Problem, s: LoopState) -> Solution:
    """The :class:`Solution` of a finished loop state (result code; the denoising step if ``p.denoise``)."""
    _check_bound(p)
    t_end_arr = jnp.asarray(p.t_end, p.dtype)
    x, t, stats = s.x, s.t, s.stats  # with check_finite, the last finite state (see LoopState)
    finite = ~s.failed if p.check_finite else jnp.all(jnp.isfinite(s.x))
    result = jnp.where(finite | (s.result != results.SUCCESS), s.result, results.NONFINITE)
    fixed = p.solver.max_attempts()
    short = (stats.num_steps < fixed) if fixed is not None else (t > t_end_arr)  # stopped before the end
    result = jnp.where((result == results.SUCCESS) & short, results.MAX_STEPS_REACHED, result)
    result = result.astype(jnp.int32)
    nfe = stats.nfe
    if p.denoise:  # only a sample that reached t_end: a failed one keeps its raw state at sol.t
        denoised, spent = p.solver.denoise(p.sde, p.score, x, t, s.solver_state)
        reached = result == results.SUCCESS
        bad = ~jnp.all(jnp.isfinite(denoised))
        result = jnp.where(reached & bad, results.NONFINITE, result).astype(jnp.int32)
        apply = reached & ~bad
        x = jnp.where(apply, denoised, x)
        nfe = nfe + reached.astype(nfe.dtype) * spent
    dropped = s.noise_memory.dropped if _remembers(p) else stats.noise_dropped
    return Solution(x=x, t=t, stats=stats._replace(nfe=nfe, noise_dropped=dropped), result=result)


def finalize_with_aux(p: Problem, s: LoopState, score_aux: Callable) -> tuple[Solution, tuple]:
    """:func:`finalize` with ``score_aux(j, x, t) -> (score, aux)`` as the score of the final
    denoising step (see :func:`step_with_aux`); returns ``(solution, auxs)``."""
    auxs: list = []
    return finalize(p._replace(score=_recording(score_aux, auxs)), s), tuple(auxs)


def solve(
    key: Array,
    sde: SDE,
    score: ScoreFn,
    solver: Solver,
    x_T: Array,
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    denoise: bool = True,
    max_steps: int | None = None,
    noise: Any = None,
    check_finite: bool = True,
    cond: Any = None,
) -> Solution:
    """Integrate ONE sample of the reverse-time process from ``t_start`` down to ``t_end``.

    Args:
      key: PRNG key of this sample's noise (unused by deterministic solvers).
      sde: the forward SDE (e.g. ``VPSDE()``).
      score: ``score(x, t)`` for one sample (no batch axis), ``t`` a scalar; with ``cond``,
        ``score(x, t, cond)``. It may return a lower-precision float than ``x`` (a network in
        bfloat16 or float16): the driver casts it to ``x``'s dtype (see
        :func:`jaxsde.mixed_precision`).
      solver: e.g. ``GottaGoFast(rtol=0.05)``, ``EulerMaruyama(1000)``.
      x_T: the starting state at ``t_start``, shaped like one sample; float32 or float64 (it
        sets the dtype of the whole solver state; 16-bit states are refused).
      t_start: start time, default ``sde.T`` (or a custom grid's first time).
      t_end: end time in ``(0, T)``, default ``sde.eps`` (or a custom grid's last time).
      denoise: apply the final Tweedie step ``x <- (x + sigma^2 s(x, t_end)) / alpha`` to a
        sample that reached ``t_end`` (1 more score evaluation, counted in ``nfe``; none for
        ``ProbabilityFlow``, whose last RK stage already evaluated the score there). A sample
        that stopped early (any code but ``SUCCESS``) is returned undenoised, at ``sol.t``, and
        the evaluation is not counted.
      max_steps: cap on loop iterations (attempts); default 10_000 for adaptive solvers,
        the exact step count for fixed-step solvers. Reaching it gives
        ``results.MAX_STEPS_REACHED``.
      noise: a noise source (``noise.FreshNoise()`` by default, or ``noise.GivenNoise(z)``). A
        ``GivenNoise`` shorter than a fixed grid is refused; an adaptive solve that uses it up
        stops with ``results.NOISE_EXHAUSTED``.
      check_finite: check the state for non-finite values after every step (default): a failed
        sample returns its last finite state, at ``t``, with ``results.NONFINITE``; adaptive
        solvers stop it there, fixed-grid solvers let it run to the grid's end like the rest of
        its batch (its ``nfe``/``num_steps`` count that work, ``num_accepted`` only the steps
        up to the returned state). ``False`` checks the final state only: a failed sample still
        gets ``results.NONFINITE``, but its ``x`` is not finite; it saves one reduction and one
        select of the state per step. Solvers that reject non-finite attempts themselves (GGF,
        ProbabilityFlow, every adaptive solver: its controller rejects non-finite steps) need no check.
      cond: this sample's condition (any pytree of arrays, e.g. an int32 class label), passed
        as the score's third argument at every evaluation; ``None`` (default) for a score
        ``score(x, t)``. Guided scores (:mod:`jaxsde.guidance`) take it the same way.

    Returns:
      A :class:`Solution`. Failures never raise inside jit; non-finite values give
      ``results.NONFINITE`` (``x`` is then the last finite state, at ``t``).
    """
    x_T = jnp.asarray(x_T)
    p = prepare(sde, score, solver, x_T, t_start=t_start, t_end=t_end, denoise=denoise, max_steps=max_steps,
                noise=noise, check_finite=check_finite, cond=cond)
    return _run(bind(p, cond), key, x_T)


def _run(p: Problem, key: Array, x_T: Array, t_start: Array | None = None) -> Solution:
    fixed = p.solver.max_attempts()
    if fixed is not None:
        # A fixed grid: a loop of static trip count (a scan), so reverse-mode differentiation goes
        # through the solve (jax.grad with respect to traced settings or grid times); a sample that
        # stops early commits nothing more (see step), as the while loop's predicate would stop it.
        state = jax.lax.fori_loop(0, min(p.max_steps, fixed), lambda i, s: step(p, key, s), init(p, x_T, t_start))
    else:
        state = jax.lax.while_loop(lambda s: ~done(p, s), lambda s: step(p, key, s), init(p, x_T, t_start))
    return finalize(p, state)


def solve_batch(
    keys: Array,
    sde: SDE,
    score: ScoreFn,
    solver: Solver,
    x_T: Array,
    *,
    noise: Any = None,
    cond: Any = None,
    **solve_kwargs: Any,
) -> Solution:
    """:func:`solve` for a batch: ``keys`` ``(n, ...)``, ``x_T`` ``(n, *shape)``, ``noise`` and
    ``cond`` (the samples' conditions) with a leading axis ``n`` (or ``None``); other arguments as
    for :func:`solve`.

    Equal to ``vmap(solve)`` up to float rounding; it holds the batch's times as vectors, as
    :func:`jaxsde.generate`'s slots do, so XLA rounds the time coefficients the same way in both
    (sample ``i`` then matches ``generate``'s bitwise on well-conditioned grids).
    """
    x_T = jnp.asarray(x_T)
    if cond is not None:
        check_conditions(cond, x_T.shape[0])
    one_noise = None if noise is None else jax.tree_util.tree_map(lambda a: a[0], noise)
    p = prepare(sde, score, solver, jax.ShapeDtypeStruct(x_T.shape[1:], x_T.dtype), noise=one_noise,
                cond=first_condition(cond), **solve_kwargs)
    t_start = jnp.full((x_T.shape[0],), p.t_start, p.dtype)

    def one(k, x, nz, t0, c):
        return _run(bind(p if nz is None else p._replace(noise=nz), c), k, x, t0)

    return jax.vmap(one)(keys, x_T, noise, t_start, cond)


def sample(
    key: Array,
    sde: SDE,
    score: ScoreFn,
    solver: Solver,
    shape: tuple[int, ...],
    n: int,
    *,
    dtype=jnp.float32,
    noise: Any = None,
    offset: int | Array = 0,
    progress: Any = None,
    progress_every: int = 64,
    cond: Any = None,
    **solve_kwargs: Any,
) -> Solution:
    """Draw ``n`` samples: sample ``i`` uses ``fold_in(key, i)``, its ``x_T`` from the prior.

    ``x_T`` is ``sde.prior_sample``, the law at ``T``, whatever ``t_start`` or the first time of the
    solver's grid: to start below ``T`` from another law (e.g. k-diffusion's ``sigma_max * z``,
    ``t z`` on :class:`~jaxsde.FlowSDE`), draw ``x_T`` yourself and call :func:`solve_batch`.

    ``shape`` is one sample's shape. ``offset`` (may be traced) returns samples
    ``offset .. offset + n - 1`` of the same sequence, so a large job can run in chunks.
    ``noise`` (optional) must carry a leading axis of
    length ``n``. ``cond`` (optional): the samples' conditions, a pytree whose leaves carry a
    leading axis of length ``n`` (row ``i`` goes with the ``i``-th returned sample; the score is
    then ``score(x, t, cond)``); sample ``i`` with condition ``c`` is the same whatever its
    batch-mates. Other keyword arguments go to :func:`solve`. Every field of the returned
    :class:`Solution` has a leading axis of length ``n``; :func:`summarize` reports the loop
    iterations the batch actually ran next to the per-sample NFE.

    ``progress`` (off by default, no effect on the results): ``True`` for a tqdm bar or a
    callable receiving ``{"done", "total", "iterations", "paid_nfe"}``, called from inside the
    compiled loop every ``progress_every`` iterations (throttled to ~4 calls a second). The
    batch then runs as one loop over the vmapped step (what ``vmap`` of ``solve``'s loop does).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    shape = tuple(int(s) for s in shape)
    _check_types(sde, score, solver, jax.ShapeDtypeStruct(shape, dtype))
    prior_keys, solve_keys = sample_keys(key, n, offset)
    x_T = jax.vmap(lambda k: sde.prior_sample(k, shape, dtype))(prior_keys)

    if cond is not None:
        check_conditions(cond, n)
    if progress:
        one_noise = None if noise is None else jax.tree_util.tree_map(lambda a: a[0], noise)
        return _sample_with_progress(solve_keys, x_T, noise, cond, progress, progress_every,
                                     prepare(sde, score, solver, x_T[0], noise=one_noise, cond=first_condition(cond),
                                             **solve_kwargs))

    return solve_batch(solve_keys, sde, score, solver, x_T, noise=noise, cond=cond, **solve_kwargs)


def _sample_with_progress(keys, x_T, noise, cond, progress, every, p: Problem) -> Solution:
    """``vmap(solve)`` written out (one loop of :func:`step_active`) with a host callback in it."""
    n = x_T.shape[0]
    reporter = ProgressReporter(progress, n)

    def finished(s):
        return jax.vmap(lambda s: done(p, s))(s)

    def body(c):
        s, it, paid = c
        new, computed = step_active(p, keys, s, ~finished(s), noise, cond)
        c = (new, it + 1, paid + jnp.sum(computed))
        jax.lax.cond((c[1] % max(int(every), 1)) == 0,
                     lambda: jax.debug.callback(reporter, 0, jnp.sum(finished(c[0])), c[1], c[2]), lambda: None)
        return c

    zero = jnp.zeros((), jnp.int32)
    s, it, paid = jax.lax.while_loop(lambda c: jnp.any(~finished(c[0])), body,
                                     (jax.vmap(lambda x, c: init(bind(p, c), x))(x_T, cond), zero, zero))
    jax.debug.callback(partial(reporter, final=True), 0, jnp.int32(n), it, paid)
    return jax.vmap(lambda s, c: finalize(bind(p, c), s))(s, cond)


def summarize(result: Any) -> Any:
    """Host-side summary of a batched result: ``result.summary()``; a :class:`BatchSummary` for a
    :class:`Solution` from :func:`sample`, a ``GenerateSummary`` for :func:`jaxsde.generate`'s output."""
    if not hasattr(result, "summary"):
        raise TypeError(f"summarize takes a Solution or Generated result, got {type(result).__name__}")
    return result.summary()
