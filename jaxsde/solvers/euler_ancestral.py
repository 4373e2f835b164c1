"""Euler ancestral sampling (k-diffusion's ``sample_euler_ancestral``) for any SDE of :mod:`jaxsde.sde`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .base import solver_class
from .ddim import DDIM
from .exponential import half_log_snr

Array = jax.Array


@solver_class
class EulerAncestral(DDIM):
    """Euler ancestral sampler: an Euler step of the probability-flow ODE down to ``sigma_down``, then
    fresh noise up to the next noise level.

    In k-diffusion's variables (``x~ = x / alpha``, ``s = sigma / alpha``) the step ``s -> s'`` of
    ``sample_euler_ancestral`` is ``sigma_up = min(s', eta s' sqrt(1 - s'^2/s^2))``,
    ``sigma_down = sqrt(s'^2 - sigma_up^2)``, ``x~' = x0 + (sigma_down/s)(x~ - x0) + sigma_up z`` with
    ``x0 = (x + sigma^2 score)/alpha``. Multiplied by ``alpha'`` this is :class:`~jaxsde.DDIM`'s step
    with ``eta_k = min(eta, 1/sqrt(q))``, ``q = 1 - e^{-2h}`` (``h`` the step in half log-SNR):
    for ``eta <= 1`` exactly ``DDIM(eta)`` on the same grid and noise; for ``eta > 1`` the
    noise is capped at ``sigma'`` (DDIM clamps the deterministic weight only). ``eta = 1`` is
    ancestral sampling from the DDPM posterior; ``eta = 0`` the Euler step in sigma (= DDIM
    with ``eta = 0``, first order). Weak order 1 (``tests/test_euler_ancestral.py``).

    ``z``: one standard normal draw per step (``noise_per_attempt = 1``; none when ``eta == 0``),
    k-diffusion's ``noise_sampler(sigma, sigma_next)`` of that step. k-diffusion's last step to
    ``sigma = 0`` (``sigmas`` ending in 0) returns the data prediction without noise: the driver's
    final Tweedie step (``denoise=True``). With sigmas ``sigma(t_i)/alpha(t_i)`` of this solver's
    grid followed by 0 and the same normals its output equals this solver's
    (``tests/test_euler_ancestral.py``). diffusers' ``EulerAncestralDiscreteScheduler`` writes the
    same ``eta = 1`` step (not tested here).

    NFE = ``num_steps`` (+1 for the driver's final Tweedie step, ``denoise=True``).

    Args:
      num_steps: number of steps (>= 1).
      eta: stochasticity (>= 0; default 1).
      grid: ``"edm"`` (Karras, default), ``"uniform"``, ``"logsnr"``, or an array of times.
    """

    num_steps: int = 50
    eta: float = 1.0
    grid: Any = "edm"

    def step_eta(self, sde, t: Array, t_next: Array) -> Array:
        """``min(eta, 1 / sqrt(q))``: ``sigma_up = min(sigma', eta sigma' sqrt(q))``, ``q = 1 - e^{-2h}``."""
        q = -jnp.expm1(-2.0 * (half_log_snr(sde, t_next) - half_log_snr(sde, t)))
        return jnp.minimum(self.eta, jnp.sqrt(1.0 / q))
