"""Multilevel Euler-Maruyama (ML-EM; Jacot, arXiv 2603.24594, 2026).

Euler-Maruyama whose score is an unbiased random-level telescoping estimate over score
functions ``s_1, ..., s_L`` of increasing accuracy and cost (the finest, ``s_L``, is the model
being sampled):

    s_hat(x, t) = sum_l  B_l / p_l  (s_l(x, t) - s_{l-1}(x, t)),    s_0 = 0,  B_l ~ Bernoulli(p_l),

with ``p_1 = 1``; ``E[s_hat] = s_L``. A step evaluates level ``l`` only if ``B_l`` or ``B_{l+1}``
is drawn, so the expected cost per step is ``sum_l P(B_l or B_{l+1}) c_l`` instead of ``c_L``; the
price is extra variance ``sum_l (1/p_l - 1) |s_l - s_{l-1}|^2`` per unit drift, which acts like
extra diffusion and vanishes with the step size. The probabilities that minimise
variance x cost are ``p_l ∝ e_l / sqrt(c_l)`` with ``e_l = |s_l - s_{l-1}|`` (RMS) and ``c_l``
the level's cost (:func:`optimal_probabilities`; Paing & Jacot Prop. 3).

The level coins are **shared by every sample** of a step: they depend only on
``(coin_seed, step index)``, never on the sample's key. Each sample's law is still exact (the
estimator is unbiased for every sample), sample ``i`` still does not depend on its batch, and
a whole batch can skip a level together: :func:`jaxsde.sample_multilevel` runs a batch with
``lax.cond`` on the shared coins, so an undrawn level costs nothing. Under ``jaxsde.sample``
(a vmapped per-sample loop) the coins become batched and XLA evaluates every level and
selects, giving identical samples but no saving; use :func:`jaxsde.sample_multilevel` for speed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..prediction import Prediction, to_x0
from ..settings import UNIT, is_traced
from .base import FixedGridSolver, SolverInit, StepResult, solver_class
from .euler_maruyama import at_alpha_zero, posterior_step

Array = jax.Array


class MultilevelScore:
    """Score functions of increasing accuracy and cost, coarsest first, finest last.

    Callable as the finest level (``score(x, t) == levels[-1](x, t)``), so everything that
    takes a score function (validation, the final denoising step, other solvers) sees the
    model being sampled. ``costs`` (optional, any unit) are the levels' evaluation costs,
    used for cost reports in units of the finest level.

    A level may be a :class:`jaxsde.Prediction` (e.g. the velocity of a flow model):
    :class:`MultilevelEM` then telescopes the levels' data predictions (exact at ``alpha = 0``
    from velocity and x0 models, so a flow starts at ``t = 1``) and steps with the score they give.
    """

    def __init__(self, levels: Sequence[Callable], costs: Sequence[float] | None = None):
        levels = tuple(levels)
        if len(levels) < 1 or not all(callable(f) for f in levels):
            raise ValueError("levels must be a non-empty sequence of score functions score(x, t)")
        if costs is not None:
            costs = tuple(float(c) for c in costs)
            if len(costs) != len(levels) or not all(np.isfinite(c) and c > 0 for c in costs):
                raise ValueError(f"costs must hold {len(levels)} positive numbers (one per level), got {costs}")
        self.levels = levels
        self.costs = costs

    def __call__(self, x: Array, t: Array, *cond) -> Array:
        return self.levels[-1](x, t, *cond)

    def bind_condition(self, cond) -> MultilevelScore:
        """The levels of conditional scores ``level(x, t, cond)`` with ``cond`` fixed (one
        sample's condition; see :func:`jaxsde.driver.bind`)."""
        return MultilevelScore([Prediction(_Bound(f.fn, cond), f.kind) if isinstance(f, Prediction) else _Bound(f, cond)
                                for f in self.levels], self.costs)

    @property
    def predicts(self) -> bool:
        """True if a level is a :class:`jaxsde.Prediction` (static)."""
        return any(isinstance(f, Prediction) for f in self.levels)

    def __len__(self) -> int:
        return len(self.levels)


class _Bound:
    """``f(x, t, cond)`` with ``cond`` fixed."""

    def __init__(self, f: Callable, cond):
        self.f, self.cond = f, cond

    def __call__(self, x: Array, t: Array) -> Array:
        return self.f(x, t, self.cond)


def optimal_probabilities(costs: Sequence[float], errors: Sequence[float], scale: float = 1.0) -> tuple[float, ...]:
    """Level probabilities ``p_1 = 1``, ``p_l = min(1, scale * (e_l / e_2) * sqrt(c_2 / c_l))`` for ``l >= 2``.

    ``errors[l]`` is the RMS size of the level difference ``s_l - s_{l-1}`` (``errors[0]`` is
    unused), ``costs[l]`` the level's cost. ``p_l ∝ e_l / sqrt(c_l)`` minimises variance x cost;
    ``scale`` (= ``p_2``) trades cost for variance.
    """
    costs, errors = np.asarray(costs, float), np.asarray(errors, float)
    if costs.shape != errors.shape or costs.ndim != 1 or len(costs) < 1:
        raise ValueError("costs and errors must be 1-D sequences of the same length (one entry per level)")
    if len(costs) == 1:
        return (1.0,)
    p = scale * (errors[1:] / errors[1]) * np.sqrt(costs[1] / costs[1:])
    return (1.0, *(float(min(1.0, v)) for v in p))


@solver_class
class MultilevelEM(FixedGridSolver):
    """Euler-Maruyama with the multilevel score estimate (see the module docstring).

    Needs a :class:`MultilevelScore` as the score. One step from ``t`` to ``t - h``:
    ``x <- x - h (f(x, t) - g(t)^2 s_hat(x, t)) + g(t) sqrt(h) z``; the final denoising step
    uses the finest level. ``Stats.nfe`` counts level evaluations of any size; the cost in
    units of the finest level is :func:`multilevel_cost`.

    Args:
      num_steps: number of steps (>= 1).
      probabilities: ``p_l`` per level, ``p_1 = 1``, each in (0, 1]; all ones is plain EM on
        the finest level (every level evaluated). Default: the finest level only.
      coin_seed: seed of the shared level coins (step ``k`` uses ``fold_in(PRNGKey(seed), k)``).
      grid: ``"uniform"``, ``"logsnr"``, ``"edm"`` or an array of ``num_steps + 1`` times.
    """

    num_steps: int = 1000
    probabilities: tuple[float, ...] = (1.0,)
    coin_seed: int = 0
    grid: Any = "uniform"

    noise_per_attempt = 1

    # the level probabilities are leaves (their number is structure); p_1 = 1 is checked on the host
    traced_settings = {"probabilities": UNIT}

    def __post_init__(self):
        self._check_grid()
        p = tuple(self.probabilities)
        if any(is_traced(v) for v in p):  # checked in the program (jaxsde.settings.settings_valid)
            object.__setattr__(self, "probabilities", p)
            return
        p = tuple(float(v) for v in p)
        if len(p) < 1 or p[0] != 1.0 or not all(0.0 < v <= 1.0 for v in p):
            raise ValueError(f"probabilities must start with 1.0 and lie in (0, 1], got {self.probabilities!r}")
        object.__setattr__(self, "probabilities", p)
        if not isinstance(self.coin_seed, int):
            raise ValueError(f"coin_seed must be an int, got {self.coin_seed!r}")

    @property
    def nfe_per_attempt(self) -> int:
        return len(self.probabilities)

    # --- the shared coins --------------------------------------------------------------------
    def coins(self, index: Array) -> Array:
        """Boolean ``(L,)``: which level differences step ``index`` uses (``coins[0]`` is True)."""
        u = jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(self.coin_seed), index),
                               (len(self.probabilities),))
        return u < jnp.asarray(self.probabilities)

    def needed(self, coins: Array) -> Array:
        """Boolean ``(L,)``: which levels a step with these coins evaluates."""
        return coins | jnp.concatenate([coins[1:], jnp.zeros((1,), bool)])

    def estimate(self, values: Sequence[Array], coins: Array) -> Array:
        """The telescoping estimate from the level values (undrawn levels may hold anything finite)."""
        p = self.probabilities
        total = jnp.zeros_like(values[0])
        previous = jnp.zeros_like(values[0])
        for level, value in enumerate(values):
            weight = jnp.where(coins[level], 1.0 / p[level], 0.0).astype(value.dtype)
            total = total + weight * (value - previous)
            previous = value
        return total

    # --- the solver interface ----------------------------------------------------------------
    def check_score(self, score) -> MultilevelScore:
        """``score`` if it is a :class:`MultilevelScore` with one level per probability, else a clear error."""
        if not isinstance(score, MultilevelScore):
            raise TypeError("MultilevelEM needs a jaxsde.MultilevelScore (the levels' score functions) as the score")
        if len(score) != len(self.probabilities):
            raise ValueError(f"MultilevelEM has {len(self.probabilities)} level probabilities but the score has "
                             f"{len(score)} levels")
        return score

    # out of alpha = 0 (a flow's t = 1, levels that are velocity or x0 Predictions): the exact
    # posterior step from the telescoped data prediction (check_start refuses other levels there)
    starts_at_alpha_zero = True

    def check_start(self, sde, score, t_start: float) -> None:
        """Where ``alpha(t_start) = 0`` every level must be a velocity or x0
        :class:`jaxsde.Prediction` (exact there); a score or eps level is refused."""
        if not sde.alpha_vanishes_at(t_start):
            return
        levels = self.check_score(score).levels
        if not all(isinstance(f, Prediction) and f.kind in ("velocity", "x0") for f in levels):
            raise ValueError(
                f"alpha(t_start) = 0 at t_start = {t_start} on {type(sde).__name__}: a score cannot give the data "
                f"estimate there (x0 = (x + sigma^2 score) / alpha is 0/0). Give every level of the MultilevelScore "
                f"as the model's own prediction, jaxsde.Prediction(v, 'velocity') (or 'x0'), which is exact there")

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        del sde, x, t_start, t_end
        self.check_score(score)
        return SolverInit(state=jnp.zeros((), jnp.int32), nfe=0)  # the step's index (its coins)

    def score_estimate(self, levels: Sequence[Callable], x: Array, t: Array, index: Array) -> tuple[Array, Array]:
        """``(s_hat, evaluations)`` at step ``index``: each level drawn by the shared coins is evaluated
        once under ``lax.cond`` (``levels`` may be per-sample or batched functions of ``(x, t)``)."""
        coins = self.coins(index)
        need = self.needed(coins)
        values = [jax.lax.cond(need[level], lambda f=f: f(x, t), lambda: jnp.zeros_like(x))
                  for level, f in enumerate(levels)]
        return self.estimate(values, coins), jnp.sum(need.astype(jnp.int32))

    def em_update(self, sde, x: Array, t: Array, t_next: Array, s_hat: Array, z: Array) -> Array:
        dt = t - t_next
        return x - dt * sde.reverse_drift(x, t, s_hat) + sde.diffusion(t) * jnp.sqrt(dt) * z

    def step(self, sde, score, t, t_next, x, index, z) -> StepResult:
        score = self.check_score(score)
        if not score.predicts:
            s_hat, evaluations = self.score_estimate(score.levels, x, t, index)
            return StepResult(self.em_update(sde, x, t, t_next, s_hat, z[0]), index + 1, evaluations)
        # Prediction levels: telescope the data predictions (affine in the score at fixed (x, t), so
        # the score of x0_hat is the telescoped score); out of alpha = 0 the exact posterior step
        x0_hat, evaluations = self.score_estimate(_data_levels(sde, score.levels), x, t, index)
        alpha, sigma = sde.marginal(t)
        x_new = self.em_update(sde, x, t, t_next, (alpha * x0_hat - x) / sigma**2, z[0])
        mean, std = posterior_step(sde, x, x0_hat, t, t_next)
        return StepResult(jnp.where(at_alpha_zero(sde, t), mean + std * z[0], x_new), index + 1, evaluations)

    def denoise(self, sde, score, x, t, state):
        """The final denoising step from the finest level (its data prediction for a Prediction)."""
        finest = self.check_score(score).levels[-1]
        if isinstance(finest, Prediction):
            return to_x0(sde, finest)(x, t), 1
        return super().denoise(sde, finest, x, t, state)


def _data_levels(sde, levels: Sequence[Callable]) -> list[Callable]:
    """Each level's data prediction ``x0(x, t)`` (a plain level is a score: Tweedie)."""
    return [to_x0(sde, f) for f in levels]


def multilevel_cost(solver: MultilevelEM, costs: Sequence[float], denoise: bool = True) -> float:
    """Cost of one sample in units of one evaluation of the finest level (the coins are
    shared, so every sample of a run costs the same): ``sum_steps sum_{needed l} c_l / c_L``
    (+ 1 for the final denoising step)."""
    costs = np.asarray(costs, float)
    need = np.asarray(jax.vmap(lambda k: solver.needed(solver.coins(k)))(jnp.arange(solver.num_steps)))
    return float((need * costs).sum() / costs[-1] + (1.0 if denoise else 0.0))
