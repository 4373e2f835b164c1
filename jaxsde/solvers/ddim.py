"""DDIM (Song, Meng & Ermon, ICLR 2021) for any SDE of :mod:`jaxsde.sde`, deterministic or stochastic."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..settings import NONNEGATIVE
from .base import FixedGridSolver, StepResult, solver_class
from .exponential import data_prediction, half_log_snr

Array = jax.Array


def ddim_step(sde, x, x0, t, t_next, eta, z):
    """One DDIM step from ``t`` to ``t_next < t`` given the data prediction ``x0`` at ``(x, t)``.

    With ``h = lam(t_next) - lam(t)`` (half log-SNR) and ``q = 1 - e^{-2h}``:
    ``x' = r x + (alpha' - alpha r) x0 + eta sigma' sqrt(q) z``,
    ``r = (sigma'/sigma) sqrt(max(1 - eta^2 q, 0))``. ``z`` is ignored when ``eta`` is the number 0;
    ``eta`` may also be a traced array (a per-step value, as :class:`~jaxsde.EulerAncestral` uses).
    """
    alpha, sigma = sde.marginal(t)
    alpha_n, sigma_n = sde.marginal(t_next)
    if isinstance(eta, int | float) and eta == 0:
        r = sigma_n / sigma
        return r * x + (alpha_n - alpha * r) * x0
    h = half_log_snr(sde, t_next) - half_log_snr(sde, t)
    q = -jnp.expm1(-2.0 * h)
    r = sigma_n / sigma * jnp.sqrt(jnp.maximum(1.0 - eta**2 * q, 0.0))
    return r * x + (alpha_n - alpha * r) * x0 + eta * sigma_n * jnp.sqrt(q) * z


@solver_class
class DDIM(FixedGridSolver):
    """Denoising diffusion implicit model sampler, written with the SDE's ``alpha, sigma``.

    One step from ``t`` to ``t' < t``, lambda form, valid for VP, sub-VP and VE):
    ``x0 = (x + sigma^2 s(x, t)) / alpha``, ``eps = -sigma s(x, t)``, then
    ``x' = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z`` with ``c = eta sigma' sqrt(1 - e^{-2h})``,
    ``h = lam(t') - lam(t)`` the step in half log-SNR ``lam = log(alpha/sigma)``. Under VP this is
    exactly DDIM's Eq. 12 with ``s_t(eta)``; ``c`` is the DDPM posterior standard deviation times
    ``eta`` for every linear SDE.

    * ``eta = 0``: deterministic DDIM = DPM-Solver(++)-1 = the exponential-Euler step of the
      PF-ODE (first order); no noise consumed.
    * ``eta = 1``: ancestral sampling (DDPM posterior) on the grid; ``0 < eta < 1`` interpolates.
    * ``eta > 1`` is accepted (SA-Solver's ``tau > 1`` corresponds to it): the weight of ``eps``
      is clamped at 0 where ``eta^2 (1 - e^{-2h}) > 1``.

    1 score evaluation per step: NFE = ``num_steps`` (+1 for the driver's final Tweedie step,
    ``denoise=True``; DDIM's usual last step to ``t = 0`` returns ``x0``, which is that Tweedie
    step, so ``denoise=True`` is the standard convention).

    Same as diffusers' ``DDIMScheduler`` (``prediction_type="epsilon"``, ``clip_sample=False``,
    thresholding off, ``timestep_spacing="trailing"`` so that its ``prev_timestep = n - N // K``
    is the next timestep) on a :class:`~jaxsde.DiscreteVPSDE` with the same table and noise
    (its ``variance_noise`` of step k = our normal of attempt k), grid
    :func:`~jaxsde.solvers.exponential.diffusers_grid` of its timesteps:
    ``set_alpha_to_one=False`` ends at the first table entry (``denoise=False``);
    ``set_alpha_to_one=True`` ends at ``abar = 1``, which is our Tweedie step at its last timestep
    (grid without the end entry, ``denoise=True``). ``tests/test_diffusers_agreement.py``.

    Args:
      num_steps: number of steps (>= 1).
      eta: stochasticity (>= 0; default 0, deterministic). A traced setting (a pytree leaf): every
        ``eta > 0`` shares one compiled program; ``eta = 0`` exactly is the deterministic one.
      grid: ``"uniform"`` (in t, default), ``"logsnr"``, ``"edm"``, or an array of times.
    """

    num_steps: int = 50
    eta: float = 0.0
    grid: Any = "uniform"

    noise_setting = "eta"
    traced_settings = {"eta": NONNEGATIVE}

    starts_at_alpha_zero = True  # the first step from lambda = -inf is its exact limit (order 1)

    nfe_per_attempt = 1

    def step(self, sde, score, t, t_next, x, state, z) -> StepResult:
        x0 = data_prediction(sde, score, x, t)
        if not self.stochastic:
            return StepResult(ddim_step(sde, x, x0, t, t_next, 0, None), state, 1)
        return StepResult(ddim_step(sde, x, x0, t, t_next, self.step_eta(sde, t, t_next), z[0]), state, 1)

    def step_eta(self, sde, t: Array, t_next: Array) -> Array | float:
        """The ``eta`` of the step from ``t`` to ``t_next`` (here the setting itself)."""
        del sde, t, t_next
        return self.eta
