"""Diffrax as the independent numerical reference.

Expresses a jaxsde SDE + score as diffrax terms and solves them with ``diffrax.diffeqsolve``,
returning the same :class:`jaxsde.Solution` as :func:`jaxsde.solve`, so results, NFE and
failures compare one to one.

* both are integrated forward in the reversed time ``tau = t_start - t`` (from 0 to
  ``t_start - t_end``): reverse SDE ``dx = -[f - g^2 s](t_start - tau) dtau + g dW(tau)`` as
  ``MultiTerm(ODETerm, ControlTerm(diag(g), W))``, PF-ODE ``dx/dtau = -[f - g^2 s / 2]``.
  (diffrax can also integrate with ``t0 > t1``, but its ShARK solver returns wrong results that
  way while the forward-time form is correct; ``benchmarks/findings.py`` shows it, see
  ``benchmarks/results/findings.md``.)
* the Brownian path is a ``diffrax.VirtualBrownianTree`` in ``tau``; give the same path to
  jaxsde with :func:`jaxsde_noise` to drive both with identical noise.

NFE is computed from each diffrax solver's stages (checked against a counting score in the
tests): Euler 1 per step, Heun 2, ShARK 2, SEA 1, Tsit5/Dopri5/Dopri8 FSAL ``stages - 1`` per
step plus 1; every step counts, accepted or rejected; +1 for the final denoising step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax as dfx
import jax
import jax.numpy as jnp
import lineax as lx

from .. import results
from ..driver import Solution, Stats, sample_keys
from ..noise import BrownianNoise
from ..sde import SDE, ScoreFn

__all__ = [
    "reverse_sde_terms",
    "probability_flow_term",
    "brownian_path",
    "diffrax_solve",
    "diffrax_sample",
    "nfe_per_step",
    "jaxsde_noise",
    "ReflectedPath",
]

# (evaluations per step, evaluations once at the start)
_STAGES: dict[type, tuple[int, int]] = {
    dfx.Euler: (1, 0),
    dfx.Heun: (2, 0),
    dfx.ShARK: (2, 0),
    dfx.SEA: (1, 0),
    dfx.Tsit5: (6, 1),
    dfx.Dopri5: (6, 1),
    dfx.Dopri8: (13, 1),
    dfx.Bosh3: (3, 1),
}


def nfe_per_step(solver: dfx.AbstractSolver) -> tuple[int, int]:
    """``(per_step, once)`` score evaluations of a diffrax solver (KeyError if unknown)."""
    for cls, cost in _STAGES.items():
        if type(solver) is cls:
            return cost
    raise KeyError(f"no NFE count known for diffrax solver {type(solver).__name__}; add it to _STAGES")


def reverse_sde_terms(sde: SDE, score: ScoreFn, path: dfx.AbstractBrownianPath, t_start: float) -> dfx.MultiTerm:
    """Diffrax terms of the reverse-time SDE in ``tau = t_start - t`` (additive noise)."""

    def drift(tau, y, args):
        t = t_start - tau
        return -sde.reverse_drift(y, t, score(y, t))

    def diffusion(tau, y, args):
        return lx.DiagonalLinearOperator(sde.diffusion(t_start - tau) * jnp.ones_like(y))

    return dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, path))


def probability_flow_term(sde: SDE, score: ScoreFn, t_start: float) -> dfx.ODETerm:
    """Diffrax term of the probability-flow ODE in ``tau = t_start - t``."""

    def field(tau, y, args):
        t = t_start - tau
        return -sde.probability_flow_drift(y, t, score(y, t))

    return dfx.ODETerm(field)


def brownian_path(key: jax.Array, sde: SDE, shape: tuple[int, ...], *, t_start: float | None = None,
                  t_end: float | None = None, tol: float = 1e-4, dtype=jnp.float32,
                  levy_area: type = dfx.SpaceTimeLevyArea) -> dfx.VirtualBrownianTree:
    """A ``VirtualBrownianTree`` in ``tau`` on ``[0, t_start - t_end]`` for one sample.

    Increments over the same interval are reproducible, so rejected adaptive steps see
    consistent noise (diffrax's requirement for adaptive SDE solves).
    """
    t_start = sde.T if t_start is None else t_start
    t_end = sde.eps if t_end is None else t_end
    return dfx.VirtualBrownianTree(0.0, t_start - t_end, tol=tol, shape=jax.ShapeDtypeStruct(shape, dtype), key=key,
                                   levy_area=levy_area)


class ReflectedPath(NamedTuple):
    """A path in ``tau = t_start - t`` seen in the original time ``t``:
    ``evaluate(a, b) = W(t_start - b) - W(t_start - a)`` for ``a < b``, so that
    ``-evaluate(t_next, t)`` (what :class:`jaxsde.BrownianNoise` uses) is the increment
    ``W(tau_next) - W(tau)`` diffrax's step over ``[tau, tau_next]`` consumes."""

    path: Any
    t_start: float

    def evaluate(self, a, b):
        return -self.path.evaluate(self.t_start - b, self.t_start - a)


def jaxsde_noise(path: dfx.AbstractBrownianPath, t_start: float) -> BrownianNoise:
    """The noise source that makes jaxsde's steps consume ``path``'s increments exactly as
    :func:`diffrax_solve` does (for fixed-step solvers on the same grid)."""
    return BrownianNoise(ReflectedPath(path, t_start))


def diffrax_solve(
    key: jax.Array,
    sde: SDE,
    score: ScoreFn,
    x_T: jax.Array,
    solver: dfx.AbstractSolver,
    *,
    ode: bool = False,
    controller: dfx.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    ts: jax.Array | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    denoise: bool = True,
    max_steps: int = 16_384,
    path: dfx.AbstractBrownianPath | None = None,
    brownian_tol: float = 1e-4,
    adjoint: dfx.AbstractAdjoint | None = None,
) -> Solution:
    """Solve ONE sample with diffrax; the counterpart of :func:`jaxsde.solve`.

    Args:
      key: key of the Brownian path (ignored when ``ode`` or when ``path`` is given).
      solver: a diffrax solver, e.g. ``diffrax.Euler()``, ``diffrax.ShARK()``, ``diffrax.Tsit5()``.
      ode: solve the probability-flow ODE instead of the reverse SDE.
      controller: diffrax step-size controller; default ``ConstantStepSize`` (fixed steps).
      dt0: first step size (positive, time units); ``None`` lets an adaptive controller choose.
      ts: optional fixed grid of decreasing times (uses ``StepTo``); overrides ``dt0``.
      path: Brownian path in ``tau`` (:func:`brownian_path`); give jaxsde the same one with
        :func:`jaxsde_noise` to compare on identical noise.
      adjoint: diffrax adjoint; ``None`` keeps diffrax's default (``RecursiveCheckpointAdjoint``).
        For pure sampling ``diffrax.ForwardMode()`` runs a plain while loop (and is required
        with ``UnsafeBrownianPath``).

    Returns:
      :class:`jaxsde.Solution` with ``stats.nfe`` computed from the solver's stages.
    """
    t_start = float(sde.T if t_start is None else t_start)
    t_end = float(sde.eps if t_end is None else t_end)
    if ts is not None:
        controller = dfx.StepTo(ts=t_start - jnp.asarray(ts))
        dt0 = None
    elif controller is None:
        controller = dfx.ConstantStepSize()
    if dt0 is not None:
        dt0 = abs(dt0)
    if ode:
        terms = probability_flow_term(sde, score, t_start)
    else:
        if path is None:
            path = brownian_path(key, sde, x_T.shape, t_start=t_start, t_end=t_end, tol=brownian_tol, dtype=x_T.dtype)
        terms = reverse_sde_terms(sde, score, path, t_start)
    sol = dfx.diffeqsolve(terms, solver, 0.0, t_start - t_end, dt0, x_T, stepsize_controller=controller,
                          max_steps=max_steps, throw=False, saveat=dfx.SaveAt(t1=True),
                          **({} if adjoint is None else {"adjoint": adjoint}))
    x = sol.ys[0]
    t = jnp.asarray(t_start - sol.ts[0], x.dtype)
    per_step, once = nfe_per_step(solver)
    steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
    nfe = once + per_step * steps
    ok = sol.result == dfx.RESULTS.successful
    maxed = sol.result == dfx.RESULTS.max_steps_reached
    code = jnp.where(ok, results.SUCCESS, jnp.where(maxed, results.MAX_STEPS_REACHED, results.NONFINITE))
    code = jnp.where(ok & ~jnp.all(jnp.isfinite(x)), results.NONFINITE, code).astype(jnp.int32)
    if denoise:
        x = sde.tweedie(x, t, score(x, t))
        nfe = nfe + 1
    stats = Stats(nfe=jnp.asarray(nfe, jnp.int32), num_accepted=jnp.asarray(sol.stats["num_accepted_steps"], jnp.int32),
                  num_rejected=jnp.asarray(sol.stats["num_rejected_steps"], jnp.int32), num_steps=steps,
                  noise_dropped=jnp.zeros((), jnp.int32))
    return Solution(x=x, t=t, stats=stats, result=code)


def diffrax_sample(
    key: jax.Array,
    sde: SDE,
    score: ScoreFn,
    solver: dfx.AbstractSolver,
    shape: tuple[int, ...],
    n: int,
    *,
    dtype=jnp.float32,
    **kwargs: Any,
) -> Solution:
    """``n`` samples with diffrax under ``vmap``, with jaxsde's key scheme: sample ``i`` starts
    from the same ``x_T`` as ``jaxsde.sample(key, ...)``'s sample ``i``; its Brownian path uses
    that sample's solve key."""
    prior_keys, solve_keys = sample_keys(key, n)
    x_T = jax.vmap(lambda k: sde.prior_sample(k, tuple(shape), dtype))(prior_keys)
    one: Callable = lambda k, x: diffrax_solve(k, sde, score, x, solver, **kwargs)  # noqa: E731
    return jax.vmap(one)(solve_keys, x_T)
