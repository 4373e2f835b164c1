"""Time grids learned for one solver and one score: few-step sampling on an optimized discretization.

At 5-10 score evaluations the placement of the steps matters as much as the solver. Given a
deterministic fixed-grid solver with ``K`` steps, a score and a batch of prior draws ``x_T``,
:func:`optimize_grid` finds the ``K + 1`` times (end points fixed) that minimize the mean squared
distance between the solver's samples and accurate solutions of the probability-flow ODE from the
same draws (the *teacher*), by gradient descent through the solve itself. This is the objective of
"Learning to Discretize Denoising Diffusion ODEs" (Tong et al., 2024; LD3) without its slack
term; a custom grid's times are traced settings of the solver (pytree leaves), so the gradient is
exact reverse-mode differentiation of the very program :func:`jaxsde.solve` runs (a fixed grid's
loop has a static trip count).

Parametrization: the grid's half log-SNR increments are a softmax of ``K`` free parameters times
the total log-SNR span, so every candidate is strictly decreasing with exact end points; it
starts from the solver's own grid. The objective is robust by default (``log(1 + d / c)`` per
draw, ``c`` the median distance on the starting grid): a draw the few-step solver sends to
another mode than the teacher would otherwise dominate it. Adam (optax) on the full batch; the
grid with the lowest training objective is returned (and, with ``validation=``, its loss on held-out draws next to the
starting grid's, which is what says whether the optimization generalizes).

The result's ``times`` are Python floats for the solver's ``grid=`` argument::

    opt = jaxsde.optimize_grid(sde, score, jaxsde.UniPC(4), x_T)        # x_T: (n, *shape)
    solver = jaxsde.UniPC(4, grid=opt.times)                            # then solve / sample
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import driver
from .sde import SDE, ScoreFn
from .solution import Solution
from .solvers.base import FixedGridSolver
from .solvers.probability_flow import ProbabilityFlow

Array = jax.Array

__all__ = ["GridOptimization", "optimize_grid", "solve_on_grid", "grid_from_params", "grid_params", "teacher_samples"]


class GridOptimization(NamedTuple):
    """What :func:`optimize_grid` returns.

    ``times``: the optimized grid, ``num_steps + 1`` decreasing floats (the solver's ``grid=``);
    ``initial_times``: the solver's own grid it started from. Losses are the mean over draws of
    the distance (default: mean squared difference per dimension) between the solver's and the
    teacher's final samples (after the final denoising step when ``denoise``), whatever the
    objective: ``loss``/``initial_loss`` on the training draws,
    ``validation_loss``/``initial_validation_loss`` on the held-out ones (NaN without
    ``validation=``); ``history``: the objective (robust or plain, see :func:`optimize_grid`)
    per iteration. ``teacher_nfe``: the mean
    score evaluations per teacher sample; ``student_nfe``: the solver's per sample (one
    training iteration costs ``student_nfe`` forward evaluations per training draw, plus their
    reverse-mode derivatives).

    What the optimization clipped or fell back on (none of it raises): ``nonfinite_gradients``, the
    gradient entries that were non-finite and set to 0 before the Adam update, summed over the
    iterations; ``scale_fallback``, True when the robust objective's scale (the median distance on the
    starting grid) was not a positive finite number and 1.0 was used instead; ``failed_solves``, the
    student solves of training draws whose result code was not success, summed over the iterations;
    ``final_failed_solves``, those on the returned grid (training and validation draws). A failed
    solve's distance is that of its last finite state, so the losses alone do not show it."""

    times: tuple[float, ...]
    initial_times: tuple[float, ...]
    loss: float
    initial_loss: float
    validation_loss: float
    initial_validation_loss: float
    history: np.ndarray
    teacher_nfe: float
    student_nfe: int
    nonfinite_gradients: int
    scale_fallback: bool
    failed_solves: int
    final_failed_solves: int


def grid_params(sde: SDE, times: Array) -> Array:
    """The ``num_steps`` free parameters (log of the log-SNR increments) of a decreasing grid."""
    lam = sde.log_snr(jnp.asarray(times))
    return jnp.log(jnp.diff(lam))


def grid_from_params(sde: SDE, params: Array, t_start: Array, t_end: Array) -> Array:
    """The grid whose log-SNR increments are ``softmax(params)`` of the span from ``t_start`` to
    ``t_end``: strictly decreasing times, end points exact (the inverse of :func:`grid_params`)."""
    dtype = params.dtype
    lam0 = sde.log_snr(jnp.asarray(t_start, dtype))
    lam1 = sde.log_snr(jnp.asarray(t_end, dtype))
    frac = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(jax.nn.softmax(params))])
    times = sde.inverse_log_snr(lam0 + frac * (lam1 - lam0)).astype(dtype)
    return times.at[0].set(t_start).at[-1].set(t_end)


def solve_on_grid(sde: SDE, score: ScoreFn, solver: FixedGridSolver, times: Array, x_T: Array, *,
                  denoise: bool = True, key: Array | None = None) -> Solution:
    """:func:`jaxsde.solve` of ONE sample with ``solver`` on the grid ``times``
    (``solver.num_steps + 1`` decreasing times, an array that may be traced) instead of its own:
    ``solve(key, sde, score, dataclasses.replace(solver, grid=tuple(times)), x_T)``. The grid's times
    are traced settings, so one compiled program serves every grid and the result is differentiable
    with respect to ``times``; the solve spans ``times[0]`` to ``times[-1]``. ``key``: the sample's
    noise key (stochastic solvers; default ``PRNGKey(0)``)."""
    if not isinstance(solver, FixedGridSolver):
        raise TypeError(f"solve_on_grid needs a fixed-grid solver, got {type(solver).__name__}")
    x_T = jnp.asarray(x_T)
    times = jnp.asarray(times, x_T.dtype)
    if times.shape != (solver.num_steps + 1,):
        raise ValueError(f"times must hold num_steps + 1 = {solver.num_steps + 1} values, got shape {times.shape}")
    key = jax.random.PRNGKey(0) if key is None else key
    on_grid = dataclasses.replace(solver, grid=tuple(times[i] for i in range(solver.num_steps + 1)))
    return driver.solve(key, sde, score, on_grid, x_T, denoise=denoise)


def teacher_samples(sde: SDE, score: ScoreFn, x_T: Array, *, tolerance: float = 1e-5, denoise: bool = True,
                    batch_size: int = 256) -> tuple[Array, float]:
    """Accurate probability-flow ODE solutions from the draws ``x_T`` ``(n, *shape)``
    (:class:`~jaxsde.ProbabilityFlow` at ``rtol = atol = tolerance``, then the final denoising
    step when ``denoise``): ``(samples, mean NFE per sample)``. Raises if any solve failed."""
    solver = ProbabilityFlow(rtol=tolerance, atol=tolerance)
    keys = jax.random.split(jax.random.PRNGKey(0), x_T.shape[0])  # unused: the ODE draws no noise

    @jax.jit
    def chunk(k, x):
        return driver.solve_batch(k, sde, score, solver, x, denoise=denoise)

    xs, nfes, bad = [], [], 0
    for start in range(0, x_T.shape[0], batch_size):
        sol = chunk(keys[start:start + batch_size], x_T[start:start + batch_size])
        xs.append(sol.x)
        nfes.append(np.asarray(sol.stats.nfe))
        bad += int(np.sum(np.asarray(sol.result) != 0))
    if bad:
        raise RuntimeError(f"{bad} of {x_T.shape[0]} teacher solves failed (result codes != 0); raise the "
                           f"tolerance or check the score for non-finite values")
    return jnp.concatenate(xs), float(np.concatenate(nfes).mean())


def _check(solver: Any, x_T: Any, teacher: Any, iterations: int, learning_rate: float) -> None:
    if not isinstance(solver, FixedGridSolver):
        raise TypeError(f"optimize_grid needs a fixed-grid solver (DDIM, DPMSolverPP, UniPC, DEIS, IPNDM, LMS, "
                        f"EDMHeun, ...), got {type(solver).__name__}")
    if solver.noise_per_attempt:
        raise ValueError(f"optimize_grid matches the probability-flow ODE's solutions, so it needs a deterministic "
                         f"solver; {type(solver).__name__} draws noise each step (use its deterministic setting, "
                         f"e.g. eta=0, or another solver)")
    if getattr(x_T, "ndim", 0) < 2:
        raise ValueError("x_T must be a batch of prior draws shaped (n, *sample_shape) with n >= 1")
    if teacher is not None and tuple(teacher.shape) != tuple(x_T.shape):
        raise ValueError(f"teacher must be shaped like x_T {tuple(x_T.shape)}, got {tuple(teacher.shape)}")
    if not (isinstance(iterations, int) and iterations >= 1):
        raise ValueError(f"iterations must be an integer >= 1 (the number of Adam updates), got {iterations!r}")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate!r}")


def optimize_grid(
    sde: SDE,
    score: ScoreFn,
    solver: FixedGridSolver,
    x_T: Array,
    *,
    teacher: Array | None = None,
    validation: tuple[Array, Array] | Array | None = None,
    iterations: int = 200,
    learning_rate: float = 0.05,
    denoise: bool = True,
    distance: Callable[[Array, Array], Array] | None = None,
    robust: bool = True,
    teacher_tolerance: float = 1e-5,
) -> GridOptimization:
    """Learn the time grid of ``solver`` for ``score`` (see the module docstring).

    Args:
      sde: the forward SDE, as for :func:`jaxsde.solve`.
      score: a one-sample score ``score(x, t)``, as for :func:`jaxsde.solve`.
      solver: a deterministic fixed-grid solver; its ``num_steps`` and options are kept, its grid
        is the starting point.
      x_T: training draws from the prior, ``(n, *shape)`` (e.g. ``sde.prior_sample``).
      teacher: the target samples from ``x_T`` (same shape); default: :func:`teacher_samples`.
      validation: held-out draws ``x_T`` or ``(x_T, teacher)``; the losses of the starting and the
        optimized grid on them are reported.
      iterations: Adam iterations on the full training batch (at least 1).
      learning_rate: Adam's step size (on the log of the log-SNR increments).
      denoise: compare after the driver's final denoising step (as ``solve(denoise=True)``).
      distance: ``distance(x, y) -> scalar >= 0`` for one pair of samples; default the mean squared
        difference per dimension.
      robust: minimize ``mean(log(1 + d_i / c))`` over the per-sample distances ``d_i``, ``c`` their
        median on the starting grid, instead of ``mean(d_i)``. A draw the few-step solver sends
        to another mode than the teacher has a distance thousands of times the median; in the
        plain mean it dominates the gradient, and the grid is fitted to that one draw.
      teacher_tolerance: the teacher's ODE tolerance.

    Returns:
      a :class:`GridOptimization`; ``solver`` rebuilt with ``grid=result.times`` samples on the
      optimized grid.
    """
    _check(solver, x_T, teacher, iterations, learning_rate)
    x_T = jnp.asarray(x_T)
    p = driver.prepare(sde, score, solver, jax.ShapeDtypeStruct(x_T.shape[1:], x_T.dtype), denoise=denoise)
    dtype = p.dtype
    distance = distance or (lambda a, b: jnp.mean((a - b) ** 2))
    if teacher is None:
        teacher, teacher_nfe = teacher_samples(sde, score, x_T, tolerance=teacher_tolerance, denoise=denoise)
    else:
        teacher_nfe = float("nan")
    start = p.solver.schedule.init(sde, jnp.asarray(p.t_start, dtype), jnp.asarray(p.t_end, dtype), dtype).grid

    def distances(times: Array, xs: Array, targets: Array) -> tuple[Array, Array]:
        """Per-draw distances to the targets and the number of failed student solves."""
        sol = jax.vmap(lambda x: solve_on_grid(sde, score, solver, times, x, denoise=denoise))(xs)
        return jax.vmap(distance)(sol.x, targets), jnp.sum(sol.result != 0)

    def loss_on(times: Array, xs: Array, targets: Array) -> tuple[Array, Array]:
        d, failed = distances(times, xs, targets)
        return jnp.mean(d), failed

    # The robust objective's scale: the median per-sample distance on the starting grid.
    scale = float(jnp.median(jax.jit(distances)(start, x_T, teacher)[0])) if robust else 1.0
    scale_fallback = not (scale > 0 and math.isfinite(scale))
    if scale_fallback:
        scale = 1.0

    def objective(params: Array, xs: Array, targets: Array) -> tuple[Array, Array]:
        d, failed = distances(grid_from_params(sde, params, p.t_start, p.t_end), xs, targets)
        return (jnp.mean(jnp.log1p(d / scale)) if robust else jnp.mean(d)), failed

    import optax  # imported here: `import jaxsde` does not load optax

    opt = optax.adam(learning_rate)
    params = grid_params(sde, start).astype(dtype)

    @jax.jit
    def update(params, opt_state):
        (value, failed), grad = jax.value_and_grad(objective, has_aux=True)(params, x_T, teacher)
        finite = jnp.isfinite(grad)
        grad = jnp.where(finite, grad, 0.0)
        updates, opt_state = opt.update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, failed, jnp.sum(~finite)

    opt_state = opt.init(params)
    history = []
    failed_solves = nonfinite_gradients = 0
    value_at = jax.jit(lambda params: objective(params, x_T, teacher)[0])
    best, best_value = params, float(value_at(params))
    for _ in range(iterations):
        new, opt_state, value, failed, nonfinite = update(params, opt_state)
        value = float(value)  # the objective at ``params`` (before this update)
        history.append(value)
        failed_solves += int(failed)
        nonfinite_gradients += int(nonfinite)
        if math.isfinite(value) and value < best_value:
            best, best_value = params, value
        params = new
    final = float(value_at(params))
    if math.isfinite(final) and final < best_value:
        best, best_value = params, final
    times = grid_from_params(sde, best, p.t_start, p.t_end)
    evaluate = jax.jit(loss_on)
    (best_loss, final_failed), (initial_loss, _) = evaluate(times, x_T, teacher), evaluate(start, x_T, teacher)

    val_loss = initial_val_loss = float("nan")
    if validation is not None:
        xv, tv = validation if isinstance(validation, tuple) else (validation, None)
        xv = jnp.asarray(xv, dtype)
        if tv is None:
            tv, _ = teacher_samples(sde, score, xv, tolerance=teacher_tolerance, denoise=denoise)
        (val_loss, val_failed), (initial_val_loss, _) = evaluate(times, xv, tv), evaluate(start, xv, tv)
        final_failed += val_failed
    nfe = solve_on_grid(sde, score, solver, start, x_T[0], denoise=denoise).stats.nfe
    return GridOptimization(
        times=tuple(float(t) for t in np.asarray(times, np.float64)),
        initial_times=tuple(float(t) for t in np.asarray(start, np.float64)),
        loss=float(best_loss), initial_loss=float(initial_loss), validation_loss=float(val_loss),
        initial_validation_loss=float(initial_val_loss), history=np.asarray(history), teacher_nfe=teacher_nfe,
        student_nfe=int(nfe), nonfinite_gradients=nonfinite_gradients, scale_fallback=scale_fallback,
        failed_solves=failed_solves, final_failed_solves=int(final_failed))
