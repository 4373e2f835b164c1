"""Forward SDEs of score-based models (Song et al., 2021) and their reverse-time forms.

Conventions shared by every SDE here:

* Time runs forward from 0 (data) to ``T`` (prior); samplers integrate backwards from ``T``
  to ``eps`` (a small positive time where the score is still well defined).
* The SDEs are linear in ``x``: ``x_t = alpha(t) * x_0 + sigma(t) * noise`` (``marginal``).
* ``drift(x, t)`` and ``diffusion(t)`` give ``dx = f(x, t) dt + g(t) dw``; ``g`` is a scalar,
  so the noise is additive.
* ``log_snr(t) = log(alpha^2 / sigma^2)`` is strictly decreasing in ``t``;
  ``inverse_log_snr`` inverts it (exponential-integrator samplers and log-SNR grids use it).
* A score function ``score(x, t)`` maps ONE sample (no batch axis) and a scalar time to an
  array shaped like ``x``.

The classes are frozen dataclasses registered as static pytrees: hashable, usable as
closed-over constants or ``static_argnums`` inside ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "ScoreFn"]


class SDE:
    """Interface and shared formulas; subclasses define the schedule."""

    T: float = 1.0
    eps: float
    data_range: tuple[float, float]

    # --- schedule, defined by subclasses -------------------------------------------------
    def drift(self, x: Array, t: ArrayLike) -> Array:
        """Forward drift ``f(x, t)``, shaped like ``x``."""
        raise NotImplementedError

    def diffusion(self, t: ArrayLike) -> Array:
        """Forward diffusion ``g(t)`` (a scalar)."""
        raise NotImplementedError

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        """``(alpha(t), sigma(t))`` with ``x_t = alpha * x_0 + sigma * noise``."""
        raise NotImplementedError

    def log_snr(self, t: ArrayLike) -> Array:
        """``lambda(t) = log(alpha^2 / sigma^2)``, strictly decreasing in ``t``."""
        alpha, sigma = self.marginal(t)
        return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

    def inverse_log_snr(self, lam: ArrayLike) -> Array:
        """The time ``t`` at which ``log_snr(t) == lam``."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, prior_std^2 I)`` at time ``T``."""
        return 1.0

    # --- derived quantities --------------------------------------------------------------
    def prior_sample(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """One draw from the prior, shaped ``shape`` (no implicit batch axis)."""
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def reverse_drift(self, x: Array, t: ArrayLike, score: Array) -> Array:
        """Drift of the reverse-time SDE in forward-time form: ``f - g^2 * score``.

        The reverse SDE reads ``dx = [f - g^2 s] dt + g dw_bar`` with ``dt < 0``.
        """
        return self.drift(x, t) - self.diffusion(t) ** 2 * score

    def probability_flow_drift(self, x: Array, t: ArrayLike, score: Array) -> Array:
        """Right-hand side of the probability-flow ODE: ``f - g^2 * score / 2``."""
        return self.drift(x, t) - 0.5 * self.diffusion(t) ** 2 * score

    def tweedie(self, x: Array, t: ArrayLike, score: Array) -> Array:
        """Posterior mean ``E[x_0 | x_t = x] = (x + sigma^2 score) / alpha`` (Tweedie)."""
        alpha, sigma = self.marginal(t)
        return (x + sigma**2 * score) / alpha

    def transition(self, t_from: ArrayLike, t_to: ArrayLike) -> tuple[Array, Array]:
        """Forward transition ``x_{t_to} = a * x_{t_from} + b * noise`` for ``t_to > t_from``.

        Returns ``(a, b)``; exact because the SDE is linear with scalar coefficients.
        """
        a_from, s_from = self.marginal(t_from)
        a_to, s_to = self.marginal(t_to)
        a = a_to / a_from
        b2 = jnp.maximum(s_to**2 - (a * s_from) ** 2, 0.0)
        return a, jnp.sqrt(b2)

    @property
    def default_atol(self) -> float:
        """One 8-bit level of the data range (0.0078 for [-1, 1], 0.0039 for [0, 1])."""
        lo, hi = self.data_range
        return round((hi - lo) / 256.0, 4)


def _frozen(cls):
    """Frozen, hashable dataclass registered as a static (leafless) pytree."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    jax.tree_util.register_static(cls)
    return cls


def _check_positive(**kw: float) -> None:
    for name, value in kw.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite positive number, got {value!r}")


@_frozen
class VPSDE(SDE):
    """Variance-preserving SDE (DDPM in continuous time).

    ``beta(t) = beta_min + t (beta_max - beta_min)``, ``f = -beta x / 2``, ``g = sqrt(beta)``,
    ``alpha = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2)``, ``sigma^2 = 1 - alpha^2``.
    Data in [-1, 1]; prior N(0, I); ``eps = 1e-3``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    eps: float = 1e-3
    data_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self):
        _check_positive(beta_min=self.beta_min, beta_max=self.beta_max, T=self.T, eps=self.eps)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max ({self.beta_max}) must be >= beta_min ({self.beta_min})")
        if not self.eps < self.T:
            raise ValueError(f"eps ({self.eps}) must be smaller than T ({self.T})")

    def beta(self, t: ArrayLike) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t: ArrayLike) -> Array:
        t = jnp.asarray(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift(self, x: Array, t: ArrayLike) -> Array:
        return -0.5 * self.beta(t) * x

    def diffusion(self, t: ArrayLike) -> Array:
        return jnp.sqrt(self.beta(t))

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        log_alpha = self._log_alpha(t)
        return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))

    def log_snr(self, t: ArrayLike) -> Array:
        log_alpha = self._log_alpha(t)
        return 2.0 * log_alpha - jnp.log(-jnp.expm1(2.0 * log_alpha))

    def _t_from_log_alpha(self, log_alpha: Array) -> Array:
        # Positive root of (db/4) t^2 + (b0/2) t + log_alpha = 0, in the cancellation-free form.
        m = -log_alpha
        half_b0 = 0.5 * self.beta_min
        return 2.0 * m / (half_b0 + jnp.sqrt(half_b0**2 + (self.beta_max - self.beta_min) * m))

    def inverse_log_snr(self, lam: ArrayLike) -> Array:
        lam = jnp.asarray(lam)
        # alpha^2 = sigmoid(lam)  =>  log alpha = -softplus(-lam) / 2
        return self._t_from_log_alpha(-0.5 * jax.nn.softplus(-lam))


@_frozen
class SubVPSDE(VPSDE):
    """Sub-VP SDE: VP's drift and mean, ``sigma = 1 - alpha^2`` (no square root, on purpose),
    ``g^2 = beta(t) (1 - exp(-2 beta_min t - (beta_max - beta_min) t^2))``.
    Data in [-1, 1]; prior N(0, I); ``eps = 1e-3``.
    """

    def diffusion(self, t: ArrayLike) -> Array:
        t = jnp.asarray(t)
        return jnp.sqrt(self.beta(t) * -jnp.expm1(4.0 * self._log_alpha(t)))

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        log_alpha = self._log_alpha(t)
        return jnp.exp(log_alpha), -jnp.expm1(2.0 * log_alpha)

    def log_snr(self, t: ArrayLike) -> Array:
        log_alpha = self._log_alpha(t)
        return 2.0 * log_alpha - 2.0 * jnp.log(-jnp.expm1(2.0 * log_alpha))

    def inverse_log_snr(self, lam: ArrayLike) -> Array:
        lam = jnp.asarray(lam)
        # u = alpha^2 solves u / (1 - u)^2 = e^lam; the root in (0, 1), written with e^-lam.
        e = jnp.exp(-lam)
        u = 2.0 / (2.0 + e + jnp.sqrt(e * (4.0 + e)))
        return self._t_from_log_alpha(0.5 * jnp.log(u))


@_frozen
class VESDE(SDE):
    """Variance-exploding SDE (SMLD / NCSN in continuous time).

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``f = 0``,
    ``g = sigma(t) sqrt(2 log(sigma_max / sigma_min))``, ``alpha = 1``.
    Data in [0, 1]; prior N(0, sigma_max^2 I) (the score_sde convention); ``eps = 1e-5``.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    eps: float = 1e-5
    data_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        _check_positive(sigma_min=self.sigma_min, sigma_max=self.sigma_max, T=self.T, eps=self.eps)
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"sigma_max ({self.sigma_max}) must exceed sigma_min ({self.sigma_min})")
        if not self.eps < self.T:
            raise ValueError(f"eps ({self.eps}) must be smaller than T ({self.T})")

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: ArrayLike) -> Array:
        return self.sigma_min * jnp.exp(jnp.asarray(t) * self._log_ratio)

    def drift(self, x: Array, t: ArrayLike) -> Array:
        return jnp.zeros_like(x)

    def diffusion(self, t: ArrayLike) -> Array:
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        sigma = self.sigma(t)
        return jnp.ones_like(sigma), sigma

    def log_snr(self, t: ArrayLike) -> Array:
        return -2.0 * (math.log(self.sigma_min) + jnp.asarray(t) * self._log_ratio)

    def inverse_log_snr(self, lam: ArrayLike) -> Array:
        return (-0.5 * jnp.asarray(lam) - math.log(self.sigma_min)) / self._log_ratio

    @property
    def prior_std(self) -> float:
        return self.sigma_max
