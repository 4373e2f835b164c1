"""Batched multilevel Euler-Maruyama: a batch that skips the levels its shared coins leave out.

:class:`~jaxsde.MultilevelEM`'s level coins depend only on the step index, so a whole batch
draws the same coins. :func:`sample_multilevel` evaluates each drawn level once on the whole
batch under ``lax.cond`` on the step's coin, then advances every sample with the driver's own
:func:`~jaxsde.driver.step` (the noise draw, the non-finite rule) and
:func:`~jaxsde.driver.finalize` (the final denoising step), given those level values; so the
samples are ``jaxsde.sample``'s, and an undrawn level costs nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import driver
from .noise import sample_keys
from .prediction import Prediction
from .solution import Solution
from .solvers.multilevel import MultilevelEM, MultilevelScore

Array = jax.Array

__all__ = ["sample_multilevel"]


def _given(values: tuple[Array, ...], like: MultilevelScore) -> MultilevelScore:
    """Levels that return precomputed values (one sample's) whatever ``(x, t)`` they are asked at,
    of the kinds of ``like``'s levels (a :class:`~jaxsde.Prediction` level stays one)."""
    fixed = [lambda x, t, v=v: v for v in values]
    return MultilevelScore([Prediction(g, f.kind) if isinstance(f, Prediction) else g
                            for g, f in zip(fixed, like.levels, strict=True)])


def sample_multilevel(key: Array, sde, score: MultilevelScore, solver: MultilevelEM, shape: tuple[int, ...], n: int,
                      *, dtype=jnp.float32, offset: int | Array = 0, denoise: bool = True) -> Solution:
    """``jaxsde.sample`` for :class:`~jaxsde.MultilevelEM`, with the batch skipping undrawn levels.

    Runs the ``n`` samples as one batch through a ``lax.scan`` over the grid's steps; each level
    is evaluated on the whole batch under ``lax.cond`` on the step's shared coin, so the wall
    time follows the expected cost. Returns ``jaxsde.sample(key, sde, score, solver, shape, n,
    offset=offset, denoise=denoise)``'s :class:`~jaxsde.Solution` (same keys, priors, noise and
    failure rule; equal up to float rounding). Jit it like ``sample``.

    Args:
        key: the run's PRNG key (sample ``i`` uses ``fold_in(key, offset + i)``).
        sde: the forward SDE.
        score: the :class:`~jaxsde.MultilevelScore` of the levels.
        solver: a :class:`~jaxsde.MultilevelEM`.
        shape: one sample's shape.
        n: the number of samples (static).
        dtype: the samples' dtype.
        offset: the index of the first sample (may be traced).
        denoise: finish with the final denoising (Tweedie) step.

    Returns:
        A :class:`~jaxsde.Solution` with a leading axis ``n`` on every field.
    """
    if not isinstance(solver, MultilevelEM):
        raise TypeError(f"sample_multilevel needs a MultilevelEM solver, got {type(solver).__name__}")
    solver.check_score(score)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    shape = tuple(int(s) for s in shape)
    p = driver.prepare(sde, score, solver, jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)), denoise=denoise)
    prior_keys, solve_keys = sample_keys(key, n, offset)
    x_T = jax.vmap(lambda k: sde.prior_sample(k, shape, p.dtype))(prior_keys)
    t_start = jnp.full((n,), p.t_start, p.dtype)  # vectors, as solve_batch holds them (same rounding)
    state = jax.vmap(lambda x, t0: driver.init(p, x, t0))(x_T, t_start)
    batched_levels = [jax.vmap(f) for f in score.levels]

    def body(s, k):
        need = solver.needed(solver.coins(k))
        values = tuple(jax.lax.cond(need[level], lambda f=f: f(s.x, s.t), lambda: jnp.zeros_like(s.x))
                       for level, f in enumerate(batched_levels))

        def one(key, si, vals):
            return driver.step(p._replace(score=_given(vals, score)), key, si)

        return jax.vmap(one)(solve_keys, s, values), None

    state, _ = jax.lax.scan(body, state, jnp.arange(solver.num_steps))
    return jax.vmap(lambda s: driver.finalize(p, s))(state)
