"""EDM's Heun sampler with optional stochastic churn (Karras et al., NeurIPS 2022, Algorithm 2), and
Heun in the SDE's own variables (diffusers' ``FlowMatchHeunDiscreteScheduler`` on a flow model)."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from ..prediction import Model
from ..settings import NONNEGATIVE, POSITIVE, Bound, is_traced, nonzero
from .base import FixedGridSolver, StepResult, solver_class
from .euler_maruyama import at_alpha_zero
from .exponential import alpha_zero_step, data_prediction, half_log_snr

VARIABLES = ("edm", "native")


@solver_class
class EDMHeun(FixedGridSolver):
    """Heun's method on the PF-ODE in EDM's scaled variables, with optional churn.

    EDM works with ``sigma_bar = sigma/alpha = e^{-lam}`` and ``x_bar = x/alpha``, where the PF-ODE
    reads ``dx_bar/dsigma_bar = (x_bar - D(x_bar; sigma_bar)) / sigma_bar`` and
    ``D = x0 = (x + sigma^2 score)/alpha``. Step ``i`` (grid times ``t_i``):

    1. churn: ``gamma = min(churn / num_steps, sqrt(2) - 1)`` if ``s_tmin <= sigma_bar_i <= s_tmax``
       else 0; ``sigma_hat = sigma_bar_i (1 + gamma)`` (capped at ``sigma_bar(T)``, so the score
       is never queried beyond ``T``), ``x_hat = x_bar_i + sqrt(sigma_hat^2 - sigma_bar_i^2) s_noise z``;
    2. Euler: ``d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat``,
       ``x_bar' = x_hat + (sigma_bar_{i+1} - sigma_hat) d``;
    3. Heun: ``d' = (x_bar' - D(x_bar'; sigma_bar_{i+1})) / sigma_bar_{i+1}``,
       ``x_bar_{i+1} = x_hat + (sigma_bar_{i+1} - sigma_hat) (d + d') / 2``.

    From ``alpha = 0`` (``t = 1`` on :class:`~jaxsde.FlowSDE`, ``sigma_bar = inf``, given a velocity
    or x0 :class:`~jaxsde.Prediction`) the first step is Heun in ``rho = 1/sigma_bar`` instead, finite
    there: the DDIM (Euler) predictor, then the trapezoid in ``rho`` with the data prediction at its
    end (:func:`~jaxsde.solvers.exponential.alpha_zero_step`; 2 evaluations, as every step).

    2 score evaluations per step: NFE = ``2 num_steps`` (+1 for the driver's final Tweedie step).
    EDM's own last step goes to ``sigma = 0`` with Euler only, which *is* the Tweedie step: EDM with
    ``N`` steps (``2N - 1`` NFE) = ``EDMHeun(N - 1)`` + ``denoise=True`` on the same sigmas (for
    EDM's churn scaling, pass ``churn = S_churn (N - 1) / N``). Deterministic and second order for
    ``churn = 0``; with churn, each step first noises exactly up to ``sigma_hat`` then integrates the
    PF-ODE down, so the marginals stay consistent (its weak error on a Gaussian target falls like
    ``num_steps^-2`` in ``tests/test_samplers.py``).

    Args:
      num_steps: number of steps (>= 1).
      churn: EDM's ``S_churn`` (>= 0; 0 = deterministic, default).
      s_tmin: churn only where ``s_tmin <= sigma_bar <= s_tmax`` (EDM's ``S_tmin``, in
        ``sigma/alpha`` units; default 0).
      s_tmax: the upper end of that range (EDM's ``S_tmax``; default infinity).
      s_noise: EDM's ``S_noise`` (> 0; e.g. 1.003 on ImageNet-64).
      grid: ``"edm"`` (default: Karras rho=7 in ``sigma/alpha``), ``"logsnr"``, ``"uniform"``, or times.
      variables: ``"edm"`` (default: the scheme above) or ``"native"``: Heun on the PF-ODE in the
        SDE's own state and time, ``dx/dt = v(x, t)`` (the velocity, read from the model's own
        output for a :class:`jaxsde.Prediction`, else ``f x - g^2 score / 2``):
        ``x' = x + (t_{i+1} - t_i) v(x, t_i)``, ``x_{i+1} = x + (t_{i+1} - t_i) (v(x, t_i) +
        v(x', t_{i+1})) / 2``. On :class:`~jaxsde.FlowSDE` that is diffusers'
        ``FlowMatchHeunDiscreteScheduler`` (Heun in ``(x, sigma)``; its ``K`` sigmas with the final
        Euler step to 0 = ``EDMHeun(K - 1, variables="native", grid=flow_grid(K, shift=...))`` and
        ``denoise=True``, ``2K - 1`` NFE), a different method from the EDM scheme (the two share
        the Euler predictor but average different slopes). It starts at ``alpha = 0`` (``t = 1`` on
        a flow) exactly, given a velocity or x0 :class:`~jaxsde.Prediction`. Deterministic only:
        ``churn`` must be 0.
    """

    num_steps: int = 18
    churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    grid: Any = "edm"
    variables: str = "edm"

    noise_setting = "churn"
    traced_settings = {"churn": NONNEGATIVE, "s_tmin": NONNEGATIVE, "s_tmax": Bound(0.0, infinite=True),
                       "s_noise": POSITIVE}

    def __post_init__(self):
        self._check_grid()
        if self.variables not in VARIABLES:
            raise ValueError(f"EDMHeun: variables must be one of {VARIABLES}, got {self.variables!r}")
        if self.variables == "native" and nonzero(self.churn):
            raise ValueError("EDMHeun: churn is EDM's noise in its scaled variables; variables='native' is the "
                             "deterministic Heun in (x, t): pass churn=0 (or variables='edm')")
        if not (is_traced(self.s_tmax) or is_traced(self.s_tmin)
                or (isinstance(self.s_tmax, int | float) and self.s_tmax > self.s_tmin)):
            raise ValueError(f"EDMHeun: s_tmax must be a number > s_tmin ({self.s_tmin}), got {self.s_tmax!r}")

    # the native Heun reads the velocity, finite at alpha = 0 from a velocity / x0 model; the EDM
    # scheme's step out of alpha = 0 (sigma_bar = inf) is Heun in rho (alpha_zero_step)
    starts_at_alpha_zero = True

    nfe_per_attempt = 2

    def step(self, sde, score, t, t_next, x, state, z) -> StepResult:
        if self.variables == "native":
            def velocity(y, s):
                return score.velocity(y, s) if isinstance(score, Model) else sde.velocity_from_score(y, s, score(y, s))

            dt = t_next - t
            v = velocity(x, t)
            v2 = velocity(x + dt * v, t_next)
            return StepResult(x + dt * (0.5 * (v + v2)), state, 2)
        alpha, _ = sde.marginal(t)
        alpha_n, _ = sde.marginal(t_next)
        sb = jnp.exp(-half_log_snr(sde, t))
        sb_n = jnp.exp(-half_log_snr(sde, t_next))
        xb = x / alpha
        if self.stochastic:
            gamma = jnp.where((sb >= self.s_tmin) & (sb <= self.s_tmax),
                              jnp.minimum(self.churn / self.num_steps, math.sqrt(2.0) - 1.0), 0.0)
            sb_max = jnp.maximum(jnp.exp(-half_log_snr(sde, jnp.asarray(sde.T, x.dtype))), sb)
            sb_hat = jnp.minimum(sb * (1.0 + gamma), sb_max)
            churned = sb_hat > sb
            t_hat = jnp.where(churned, sde.inverse_log_snr(-2.0 * jnp.log(sb_hat)), t).astype(x.dtype)
            xb = xb + jnp.sqrt(jnp.maximum(sb_hat**2 - sb**2, 0.0)) * self.s_noise * z[0]
            alpha_hat, _ = sde.marginal(t_hat)
        else:
            sb_hat, t_hat, alpha_hat = sb, t, alpha
        if not (sde.alpha_vanishes_at_T and isinstance(score, Model)):
            d = (xb - data_prediction(sde, score, alpha_hat * xb, t_hat)) / sb_hat
            xb_euler = xb + (sb_n - sb_hat) * d
            d2 = (xb_euler - data_prediction(sde, score, alpha_n * xb_euler, t_next)) / sb_n
            xb_next = xb + (sb_n - sb_hat) * 0.5 * (d + d2)
            return StepResult(alpha_n * xb_next, state, 2)
        # a flow: out of alpha = 0 (sigma_bar = inf) Heun in rho = 1 / sigma_bar (alpha_zero_step)
        origin = at_alpha_zero(sde, t)
        x0 = data_prediction(sde, score, jnp.where(origin, x, alpha_hat * xb), t_hat)
        xb_euler = xb + (sb_n - sb_hat) * ((xb - x0) / sb_hat)
        x_euler = jnp.where(origin, alpha_zero_step(sde, x, t, t_next, x0), alpha_n * xb_euler)
        x0_next = data_prediction(sde, score, x_euler, t_next)
        xb_next = xb + (sb_n - sb_hat) * 0.5 * ((xb - x0) / sb_hat + (xb_euler - x0_next) / sb_n)
        x_next = jnp.where(origin, alpha_zero_step(sde, x, t, t_next, x0, x0_next), alpha_n * xb_next)
        return StepResult(x_next, state, 2)
