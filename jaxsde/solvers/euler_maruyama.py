"""Euler-Maruyama on the reverse-time SDE (the fixed-step baseline)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .base import FixedGridSolver, StepResult, solver_class


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
    (``g`` depends on ``t`` only). Weak order 1.
    """

    num_steps: int = 1000
    grid: Any = "uniform"

    noise_per_attempt = 1

    def __post_init__(self):
        self._check_grid()

    @property
    def nfe_per_attempt(self) -> int:
        return 1

    def step(self, sde, score, t, t_next, x, state, z) -> StepResult:
        h = t - t_next
        drift = sde.reverse_drift(x, t, score(x, t))
        return StepResult(x - h * drift + sde.diffusion(t) * jnp.sqrt(h) * z[0], state, 1)
