"""Euler-Maruyama on the reverse-time SDE (the fixed-step baseline), and the exact step out of
``alpha = 0`` that the solvers stepping the reverse SDE in time share."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..prediction import Model
from .base import FixedGridSolver, StepResult, solver_class

Array = jax.Array


def score_and_data(sde, score, x: Array, t: Array) -> tuple[Array, Array | None]:
    """``(score(x, t), x0)`` from one model evaluation, for a solver stepping the reverse SDE in time.

    ``x0`` (the data prediction) is given only where the solver may have to step out of
    ``alpha = 0``: a model with its own data channel (a :class:`jaxsde.prediction.Model`) on an
    SDE whose ``alpha(T) = 0`` (a flow). The score is then ``(alpha x0 - x) / sigma^2`` from that
    same evaluation (``-x`` at ``alpha = 0``); otherwise ``x0`` is ``None`` and the score is the
    model's own (static choice)."""
    if isinstance(score, Model) and sde.alpha_vanishes_at_T:
        x0 = score.x0(x, t)
        alpha, sigma = sde.marginal(t)
        return (alpha * x0 - x) / sigma**2, x0
    return score(x, t), None


def posterior_step(sde, x: Array, x0: Array, t: Array, t_next: Array) -> tuple[Array, Array]:
    """``(mean, std)`` of the reverse SDE's exact solution from ``t`` to ``t_next < t`` with the data
    prediction held at ``x0``: ``mean = r x + (alpha' - alpha r) x0``, ``r = (sigma'/sigma)
    e^{-h}``, ``std = sigma' sqrt(1 - e^{-2h})``, ``h`` the step in half log-SNR (the DDPM
    posterior; SDE-DPM-Solver++'s first-order step; :class:`~jaxsde.DDIM` with ``eta = 1``). Finite
    where ``alpha(t) = 0`` (``h = inf``): ``mean = alpha' x0``, ``std = sigma'``, the exact step out
    of pure noise. This is how the time-stepping reverse-SDE solvers (Euler-Maruyama, reverse
    diffusion / PC, Gotta Go Fast) take a step from ``alpha = 0``, where their drift
    ``f x - g^2 score`` is infinite (``~ x / (1 - t)`` on a flow); after it, ``h <= 1 - t`` keeps
    their explicit steps stable (the linear part's factor ``1 - h / (1 - t)`` stays in ``[0, 1]``)."""
    alpha, sigma = sde.marginal(t)
    alpha_n, sigma_n = sde.marginal(t_next)
    h = 0.5 * (sde.log_snr(t_next) - sde.log_snr(t))
    decay = jnp.exp(-h)
    r = sigma_n / sigma * decay
    return r * x + (alpha_n - alpha * r) * x0, sigma_n * jnp.sqrt(-jnp.expm1(-2.0 * h))


def at_alpha_zero(sde, t: Array) -> Array:
    """Whether ``alpha(t) = 0`` (traced ``t``)."""
    return sde.marginal(t)[0] == 0


@solver_class
class EulerMaruyama(FixedGridSolver):
    """Euler-Maruyama on ``dx = [f - g^2 score] dt + g dw_bar`` from ``t_start`` down to ``t_end``.

    One step from ``t`` to ``t - h``: ``x <- x - h (f(x,t) - g(t)^2 s(x,t)) + g(t) sqrt(h) z``
    with ``h`` the true grid spacing (not ``1/N``). 1 score evaluation per step, so with the
    final denoising step NFE = ``num_steps + 1``, known in advance.

    Args:
      num_steps: number of steps (>= 1).
      grid: ``"uniform"`` (in t, default), ``"logsnr"``, ``"edm"``, or an array of
        ``num_steps + 1`` decreasing times.

    Strong order 0.5 in general; 1.0 here because the noise of these SDEs is additive
    (``g`` depends on ``t`` only). Weak order 1. From ``alpha = 0`` (``t = 1`` on a flow, given
    a :class:`jaxsde.Prediction`) the first step is :func:`posterior_step`, exact there.
    """

    num_steps: int = 1000
    grid: Any = "uniform"

    noise_per_attempt = 1
    nfe_per_attempt = 1
    starts_at_alpha_zero = True  # the step out of alpha = 0 is the exact posterior_step

    def step(self, sde, score, t, t_next, x, state, z) -> StepResult:
        h = t - t_next
        s, x0 = score_and_data(sde, score, x, t)
        x_new = x - h * sde.reverse_drift(x, t, s) + sde.diffusion(t) * jnp.sqrt(h) * z[0]
        if x0 is not None:
            mean, std = posterior_step(sde, x, x0, t, t_next)
            x_new = jnp.where(at_alpha_zero(sde, t), mean + std * z[0], x_new)
        return StepResult(x_new, state, 1)
