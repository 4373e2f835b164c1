"""Reverse-diffusion predictor and the Langevin predictor-corrector (Song et al., 2021)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ..sde import VPSDE
from ..settings import POSITIVE
from .base import FixedGridSolver, StepResult, solver_class
from .euler_maruyama import at_alpha_zero, posterior_step, score_and_data


def _reverse_diffusion(sde, score, x, t, t_next, z):
    """score_sde's reverse-diffusion predictor on an arbitrary grid.

    With the exact forward transition ``x_t = a x_s + b noise`` (``s = t_next < t``):
    ``x_mean = x - (a - 1) x + b^2 s(x, t)``, ``x = x_mean + b z``. On score_sde's uniform
    grids this is its DDPM-style (VP) / SMLD-style (VE) discretisation. Out of ``alpha = 0`` (a
    flow's ``t = 1``, ``a = 0``) it is :func:`~jaxsde.solvers.euler_maruyama.posterior_step`.
    """
    a, b = sde.transition(t_next, t)
    s, x0 = score_and_data(sde, score, x, t)
    x_new = x - (a - 1.0) * x + b**2 * s + b * z
    if x0 is None:
        return x_new
    mean, std = posterior_step(sde, x, x0, t, t_next)  # out of alpha = 0 (a = 0 there): exact
    return jnp.where(at_alpha_zero(sde, t), mean + std * z, x_new)


def _langevin_alpha(sde, t, t_next):
    # score_sde uses the discrete alpha_i = 1 - beta_i for VP-type SDEs, 1 otherwise.
    if isinstance(sde, VPSDE):
        a, _ = sde.transition(t_next, t)
        return a**2
    return jnp.ones_like(t)


def _l2(v):
    return jnp.sqrt(jnp.sum(jnp.square(v)))


@solver_class
class ReverseDiffusion(FixedGridSolver):
    """Reverse-diffusion predictor alone: 1 NFE per step, NFE = ``num_steps + 1``.

    Args:
      num_steps: number of steps (>= 1).
      grid: as for :class:`EulerMaruyama`.
    """

    num_steps: int = 1000
    grid: Any = "uniform"

    noise_per_attempt = 1
    nfe_per_attempt = 1
    starts_at_alpha_zero = True  # its step out of alpha = 0 is the exact posterior step

    def step(self, sde, score, t, t_next, x, state, z) -> StepResult:
        return StepResult(_reverse_diffusion(sde, score, x, t, t_next, z[0]), state, 1)


@solver_class
class PredictorCorrector(FixedGridSolver):
    """Langevin corrector then reverse-diffusion predictor at every grid time.

    Corrector (``corrector_steps`` times at time ``t``):
    ``eps = 2 alpha (snr ||z|| / ||s||)^2``, ``x <- x + eps s + sqrt(2 eps) z``, with
    ``alpha = a^2`` (the VP transition's discrete alpha) for VP/sub-VP and 1 for VE.
    The norms are **per sample** (score_sde averages them over the batch, which makes a
    sample depend on its batch-mates; here sample i depends on its own key only).

    NFE = ``num_steps * (corrector_steps + 1) + 1`` (1999 for score_sde's N=1000 setting
    corresponds to ``num_steps=999, corrector_steps=1``).

    Args:
      num_steps: number of predictor steps (>= 1).
      snr: Langevin signal-to-noise ratio: 0.16 (score_sde CIFAR-10 VE); the GGF authors
        found 0.01 best for VP.
      corrector_steps: Langevin steps per grid time (>= 0).
      grid: as for :class:`EulerMaruyama`.
    """

    num_steps: int = 1000
    snr: float = 0.16
    corrector_steps: int = 1
    grid: Any = "uniform"

    traced_settings = {"snr": POSITIVE}
    # the predictor's step out of alpha = 0 is exact; the corrector's Langevin steps at alpha = 0
    # read the score there, -x (the prior's), finite
    starts_at_alpha_zero = True

    def __post_init__(self):
        self._check_grid()
        if not (isinstance(self.corrector_steps, int) and self.corrector_steps >= 0):
            raise ValueError(f"corrector_steps must be an integer >= 0, got {self.corrector_steps!r}")

    @property
    def noise_per_attempt(self) -> int:  # type: ignore[override]
        return self.corrector_steps + 1

    nfe_per_attempt = noise_per_attempt  # one score evaluation per draw

    def step(self, sde, score, t, t_next, x, state, z) -> StepResult:
        alpha = _langevin_alpha(sde, t, t_next)
        for k in range(self.corrector_steps):
            s = score(x, t)
            step = 2.0 * alpha * (self.snr * _l2(z[k]) / _l2(s)) ** 2
            x = x + step * s + jnp.sqrt(2.0 * step) * z[k]
        x = _reverse_diffusion(sde, score, x, t, t_next, z[self.corrector_steps])
        return StepResult(x, state, self.corrector_steps + 1)
