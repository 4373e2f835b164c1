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
* The velocity ``v = dx_t/dt = alpha'(t) x_0 + sigma'(t) noise`` along the path (what a
  flow-matching model predicts) converts to and from the score and the data estimate through
  ``alpha, sigma``, their time derivatives (:meth:`SDE.marginal_derivatives`) and
  ``D = alpha sigma' - sigma alpha' = -alpha sigma lambda'/2 > 0``: ``x0 = (sigma' x - sigma v) / D``,
  ``score = (alpha' x - alpha v) / (sigma D)`` (:meth:`SDE.x0_from_velocity`,
  :meth:`SDE.score_from_velocity`), exact where ``alpha = 0``.
* :class:`GaussianPathSDE` is a schedule given by ``(alpha, sigma)`` alone, ``alpha`` allowed to
  reach 0 at ``T`` (flow matching); :class:`FlowSDE` is its linear path ``alpha = 1 - t``,
  ``sigma = t``.

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

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "DiscreteVPSDE", "GaussianPathSDE", "FlowSDE", "ScoreFn"]


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

    def prior_log_prob(self, x: Array) -> Array:
        """``log N(x; 0, prior_std^2 I)`` in nats, summed over every element of ``x`` (a scalar).

        The prior stands in for the true ``p_T`` (for VP, ``N(alpha_T x_0, sigma_T^2)`` mixed over
        the data); likelihoods through the probability-flow ODE inherit that mismatch.

        Args:
            x: one point (any shape), at time ``T``.

        Returns:
            The log-density, a scalar of ``x``'s dtype.
        """
        x = jnp.asarray(x)
        std = jnp.asarray(self.prior_std, x.dtype)
        return -0.5 * jnp.sum(jnp.square(x / std)) - x.size * (jnp.log(std) + 0.5 * math.log(2.0 * math.pi))

    def reverse_drift(self, x: Array, t: ArrayLike, score: Array) -> Array:
        """Drift of the reverse-time SDE in forward-time form: ``f - g^2 * score``.

        The reverse SDE reads ``dx = [f - g^2 s] dt + g dw_bar`` with ``dt < 0``.
        """
        return self.drift(x, t) - self.diffusion(t) ** 2 * score

    def probability_flow_drift(self, x: Array, t: ArrayLike, score: Array) -> Array:
        """Right-hand side of the probability-flow ODE: ``f - g^2 * score / 2``."""
        return self.drift(x, t) - 0.5 * self.diffusion(t) ** 2 * score

    def score_from_probability_flow_drift(self, x: Array, t: ArrayLike, v: Array) -> Array:
        """The score that gives probability-flow drift ``v`` at ``(x, t)``: ``(f - v) / (g^2 / 2)``."""
        return (self.drift(x, t) - v) / (0.5 * self.diffusion(t) ** 2)

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

    # --- velocity (flow-matching) conversions --------------------------------------------
    def marginal_derivatives(self, t: ArrayLike) -> tuple[Array, Array]:
        """``(alpha'(t), sigma'(t))``, the time derivatives of :meth:`marginal` (by forward-mode
        autodiff unless a subclass has closed forms), shaped like ``t``."""
        t = jnp.asarray(t, jnp.result_type(t, float))
        _, tangents = jax.jvp(self.marginal, (t,), (jnp.ones_like(t),))
        return tangents

    def velocity_determinant(self, t: ArrayLike) -> Array:
        """``D = alpha sigma' - sigma alpha'`` (``= -alpha sigma lambda'/2``, positive where the
        log-SNR strictly decreases; ``D = 1`` on the linear path), the denominator of the
        velocity conversions."""
        alpha, sigma = self.marginal(t)
        dalpha, dsigma = self.marginal_derivatives(t)
        return alpha * dsigma - sigma * dalpha

    def x0_from_velocity(self, x: Array, t: ArrayLike, v: Array) -> Array:
        """The data estimate ``x0 = (sigma' x - sigma v) / D`` of velocity ``v`` at ``(x, t)``.

        Exact (no division by ``alpha``) where ``alpha = 0``; ``x - t v`` on :class:`FlowSDE`."""
        _, sigma = self.marginal(t)
        _, dsigma = self.marginal_derivatives(t)
        return (dsigma * x - sigma * v) / self.velocity_determinant(t)

    def eps_from_velocity(self, x: Array, t: ArrayLike, v: Array) -> Array:
        """The noise estimate ``eps = (alpha v - alpha' x) / D``; ``x + (1 - t) v`` on :class:`FlowSDE`."""
        alpha, _ = self.marginal(t)
        dalpha, _ = self.marginal_derivatives(t)
        return (alpha * v - dalpha * x) / self.velocity_determinant(t)

    def score_from_velocity(self, x: Array, t: ArrayLike, v: Array) -> Array:
        """The score ``(alpha' x - alpha v) / (sigma D)`` of velocity ``v``: finite where
        ``alpha = 0`` (there it is ``alpha' x / D``, ``-x`` on :class:`FlowSDE`, whatever ``v``;
        the score at ``alpha = 0`` has lost the data), infinite where ``sigma = 0``."""
        alpha, sigma = self.marginal(t)
        dalpha, _ = self.marginal_derivatives(t)
        return (dalpha * x - alpha * v) / (sigma * self.velocity_determinant(t))

    def velocity_from_score(self, x: Array, t: ArrayLike, score: Array) -> Array:
        """The velocity ``(alpha' x - sigma D score) / alpha`` (the probability-flow drift
        ``f x - g^2 score / 2``) of a score. Not defined where ``alpha = 0`` (``0/0``: the score
        there does not determine the velocity); use :meth:`velocity_from_x0` or a velocity model."""
        alpha, sigma = self.marginal(t)
        dalpha, _ = self.marginal_derivatives(t)
        return (dalpha * x - sigma * self.velocity_determinant(t) * score) / alpha

    def velocity_from_x0(self, x: Array, t: ArrayLike, x0: Array) -> Array:
        """The velocity ``(sigma' x - D x0) / sigma`` of a data estimate ``x0``: exact where
        ``alpha = 0`` (``x - x0`` on :class:`FlowSDE` at ``t = 1``), infinite where ``sigma = 0``."""
        _, sigma = self.marginal(t)
        _, dsigma = self.marginal_derivatives(t)
        return (dsigma * x - self.velocity_determinant(t) * x0) / sigma

    def alpha_vanishes_at(self, t: float) -> bool:
        """True if ``alpha(t) = 0`` (static ``t``; e.g. ``t = 1`` on :class:`FlowSDE`): there
        ``lambda = -inf`` and the score has lost the data."""
        with jax.ensure_compile_time_eval():
            return float(self.marginal(jnp.asarray(float(t)))[0]) == 0.0

    @property
    def alpha_vanishes_at_T(self) -> bool:
        """True if ``alpha(T) = 0`` (a flow's start): solvers then handle a step from ``T`` exactly."""
        return self.alpha_vanishes_at(self.T)

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

    Args:
        beta_min: ``beta(0)``.
        beta_max: ``beta(1)``.
        T: the end of the forward process (where sampling starts).
        eps: the smallest time (where sampling stops, before the final denoising step).
        data_range: the ``(low, high)`` range of the data, e.g. for clipping and plots.
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

    Args:
        beta_min: ``beta(0)``.
        beta_max: ``beta(1)``.
        T: the end of the forward process (where sampling starts).
        eps: the smallest time (where sampling stops, before the final denoising step).
        data_range: the ``(low, high)`` range of the data, e.g. for clipping and plots.
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

    Args:
        sigma_min: the noise scale at ``t = 0``.
        sigma_max: the noise scale at ``t = 1`` (the prior's standard deviation).
        T: the end of the forward process (where sampling starts).
        eps: the smallest time (where sampling stops, before the final denoising step).
        data_range: the ``(low, high)`` range of the data, e.g. for clipping and plots.
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


@_frozen
class DiscreteVPSDE(SDE):
    """VP SDE defined by a discrete ``alphas_cumprod`` table, as DDPM/diffusers models are trained.

    Table entry ``n = 0 .. N-1`` (``N = num_train_timesteps``) is the marginal at the network's
    integer timestep ``n``; in jaxsde time it sits at ``t_n = (n + 1) / N``, so ``T = 1`` is the
    last entry, ``eps = 1 / N`` the first, and ``t = 0`` would be clean data. Between entries the
    log-SNR ``lambda = log(abar / (1 - abar))`` is interpolated linearly in ``t``; hence
    ``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``,
    ``beta(t) = -sigmoid(-lambda) dlambda/dt`` (piecewise constant slope), ``f = -beta x / 2``,
    ``g = sqrt(beta)``. ``timestep(t) = N t - 1`` is the (fractional) label the network takes.
    Build with :meth:`from_alphas_cumprod`, :meth:`from_betas` or :meth:`linear` (DDPM's
    1e-4..0.02 over 1000 steps, google/ddpm-cifar10-32). Data in [-1, 1]; prior N(0, I).

    Args:
        log_snr_table: ``log(abar_n / (1 - abar_n))`` for ``n = 0 .. N-1``; the constructors
            above fill it.
        T: the end of the forward process, the table's last entry.
        data_range: the ``(low, high)`` range of the data, e.g. for clipping and plots.
    """

    log_snr_table: tuple[float, ...] = ()
    T: float = 1.0
    data_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self):
        table = self.log_snr_table
        if len(table) < 2:
            raise ValueError(f"the alphas_cumprod table needs at least 2 entries, got {len(table)}")
        if not all(math.isfinite(v) for v in table) or any(b >= a for a, b in zip(table, table[1:], strict=False)):
            raise ValueError("alphas_cumprod must be finite, strictly decreasing and inside (0, 1)")

    # --- construction --------------------------------------------------------------------
    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod) -> DiscreteVPSDE:
        """From the table ``abar_n`` (length N, strictly decreasing, inside (0, 1))."""
        import numpy as np

        abar = np.asarray(alphas_cumprod, dtype=np.float64).reshape(-1)
        if abar.size < 2 or not np.all((abar > 0) & (abar < 1)):
            raise ValueError("alphas_cumprod must hold at least 2 values, each strictly inside (0, 1)")
        return cls(log_snr_table=tuple(float(v) for v in np.log(abar) - np.log1p(-abar)))

    @classmethod
    def from_betas(cls, betas) -> DiscreteVPSDE:
        """From per-step ``beta_n``: ``abar_n = prod_{m <= n} (1 - beta_m)``."""
        import numpy as np

        betas = np.asarray(betas, dtype=np.float64).reshape(-1)
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must lie strictly inside (0, 1)")
        return cls.from_alphas_cumprod(np.exp(np.cumsum(np.log1p(-betas))))

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000) -> DiscreteVPSDE:
        """DDPM's linear schedule (diffusers ``beta_schedule="linear"``; betas in float32, as diffusers)."""
        import numpy as np

        return cls.from_betas(np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32))

    # --- schedule ------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return len(self.log_snr_table)

    @property
    def eps(self) -> float:  # the first table entry
        return 1.0 / self.num_train_timesteps

    @property
    def alphas_cumprod(self) -> Array:
        return jax.nn.sigmoid(jnp.asarray(self.log_snr_table))

    def timestep(self, t: ArrayLike) -> Array:
        """The network's timestep label ``N t - 1`` (integer on the table's points)."""
        return self.num_train_timesteps * jnp.asarray(t) - 1.0

    def log_snr(self, t: ArrayLike) -> Array:
        table = jnp.asarray(self.log_snr_table, dtype=jnp.result_type(t, float))
        return jnp.interp(self.timestep(t), jnp.arange(table.shape[0], dtype=table.dtype), table)

    def _dlog_snr_dt(self, t: ArrayLike) -> Array:
        table = jnp.asarray(self.log_snr_table, dtype=jnp.result_type(t, float))
        n = self.num_train_timesteps
        idx = jnp.clip(jnp.floor(self.timestep(t)).astype(jnp.int32), 0, n - 2)
        return (table[idx + 1] - table[idx]) * n

    def beta(self, t: ArrayLike) -> Array:
        return -jax.nn.sigmoid(-self.log_snr(t)) * self._dlog_snr_dt(t)

    def drift(self, x: Array, t: ArrayLike) -> Array:
        return -0.5 * self.beta(t) * x

    def diffusion(self, t: ArrayLike) -> Array:
        return jnp.sqrt(self.beta(t))

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        lam = self.log_snr(t)
        return jnp.exp(-0.5 * jax.nn.softplus(-lam)), jnp.exp(-0.5 * jax.nn.softplus(lam))

    def inverse_log_snr(self, lam: ArrayLike) -> Array:
        lam = jnp.asarray(lam)
        table = jnp.asarray(self.log_snr_table, dtype=jnp.result_type(lam, float))
        steps = jnp.arange(table.shape[0], dtype=table.dtype)
        return (jnp.interp(lam, table[::-1], steps[::-1]) + 1.0) / self.num_train_timesteps


@_frozen
class GaussianPathSDE(SDE):
    """A forward SDE given by its Gaussian path ``x_t = alpha(t) x_0 + sigma(t) noise`` alone.

    Subclasses define :meth:`marginal` (``alpha`` decreasing, ``sigma`` increasing, ``alpha``
    may reach 0 at ``T``); everything else follows:

    * ``f = alpha'/alpha``, ``g^2 = d sigma^2/dt - 2 f sigma^2 = 2 sigma D / alpha`` with
      ``D = alpha sigma' - sigma alpha'`` (:meth:`~SDE.velocity_determinant`); derivatives by
      forward-mode autodiff unless :meth:`marginal_derivatives` is overridden;
    * ``log_snr = 2 (log alpha - log sigma)`` (``-inf`` where ``alpha = 0``) and
      :meth:`inverse_log_snr` by bisection in ``t`` (override it with a closed form when there
      is one);
    * prior ``N(0, I)`` (exact when ``alpha(T) = 0`` and ``sigma(T) = 1``), data in ``[-1, 1]``,
      ``T = 1``, ``eps = 1e-3``.

    At ``alpha = 0`` (``t = T`` for a flow) the score-based quantities are singular: ``drift``
    and ``diffusion`` are infinite, :meth:`~SDE.tweedie` and :meth:`~SDE.velocity_from_score`
    are ``0/0``. The velocity-based ones are exact there: :meth:`~SDE.x0_from_velocity`,
    :meth:`~SDE.eps_from_velocity`, :meth:`~SDE.score_from_velocity`,
    :meth:`~SDE.velocity_from_x0`, and :meth:`score_from_probability_flow_drift` (the
    probability-flow drift IS the velocity).

    A subclass is made a frozen dataclass and a static pytree automatically; a cosine
    interpolant is::

        class CosinePath(GaussianPathSDE):
            def marginal(self, t):
                t = jnp.asarray(t)  # sin(pi/2 (1 - t)), not cos(pi/2 t): exactly 0 at t = 1
                return jnp.sin(0.5 * jnp.pi * (1.0 - t)), jnp.sin(0.5 * jnp.pi * t)

    Args:
        T: the end of the path (the prior's time).
        eps: the smallest time (where sampling stops, before the final denoising step).
        data_range: the ``(low, high)`` range of the data, e.g. for clipping and plots.
    """

    T: float = 1.0
    eps: float = 1e-3
    data_range: tuple[float, float] = (-1.0, 1.0)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True)(cls)
        jax.tree_util.register_static(cls)

    def __post_init__(self):
        _check_positive(T=self.T, eps=self.eps)
        if not self.eps < self.T:
            raise ValueError(f"eps ({self.eps}) must be smaller than T ({self.T})")
        if type(self) is GaussianPathSDE:
            raise TypeError("GaussianPathSDE is abstract: subclass it and define marginal(t) -> (alpha, sigma)")
        with jax.ensure_compile_time_eval():
            (a_eps, s_eps), (a_end, s_end) = self.marginal(self.eps), self.marginal(self.T)
        vals = [float(v) for v in (a_eps, s_eps, a_end, s_end)]
        if not all(math.isfinite(v) for v in vals) or not (vals[0] > 0 and vals[1] > 0 and vals[2] >= 0
                                                           and vals[3] > 0):
            raise ValueError(f"{type(self).__name__}: marginal must give alpha > 0 and sigma > 0 at eps and "
                             f"alpha >= 0, sigma > 0 at T; got (alpha, sigma) = ({vals[0]}, {vals[1]}) at eps, "
                             f"({vals[2]}, {vals[3]}) at T")

    def drift(self, x: Array, t: ArrayLike) -> Array:
        """``f x = alpha'/alpha x`` (``-inf * x`` where ``alpha = 0``)."""
        alpha, _ = self.marginal(t)
        dalpha, _ = self.marginal_derivatives(t)
        return dalpha / alpha * x

    def diffusion(self, t: ArrayLike) -> Array:
        """``g = sqrt(2 sigma D / alpha)`` (``inf`` where ``alpha = 0``)."""
        alpha, sigma = self.marginal(t)
        return jnp.sqrt(2.0 * sigma * self.velocity_determinant(t) / alpha)

    def inverse_log_snr(self, lam: ArrayLike) -> Array:
        """The ``t`` in ``[0, T]`` with ``log_snr(t) = lam``, by bisection (monotone, robust to
        infinite end values): accurate to the last bit of ``t``'s dtype; ``lam = -inf`` gives
        ``T``, ``lam = +inf`` gives 0 (values beyond the schedule's range clamp to ``[0, T]``);
        NaN stays NaN."""
        lam = jnp.asarray(lam)
        dtype = jnp.result_type(lam, float)
        lam = lam.astype(dtype)
        lo, hi = jnp.zeros_like(lam), jnp.full_like(lam, self.T)
        iters = 64 if dtype == jnp.float64 else 40

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # log_snr decreases: the root lies right of mid
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
        t = jnp.where(jnp.isposinf(lam), 0.0, jnp.where(jnp.isneginf(lam), self.T, 0.5 * (lo + hi)))
        return jnp.where(jnp.isnan(lam), lam, t)

    def score_from_probability_flow_drift(self, x: Array, t: ArrayLike, v: Array) -> Array:
        """The probability-flow drift is the velocity: :meth:`~SDE.score_from_velocity` (finite
        where ``alpha = 0``)."""
        return self.score_from_velocity(x, t, v)


class FlowSDE(GaussianPathSDE):
    """The linear (rectified-flow) path: ``alpha = 1 - t``, ``sigma = t``, ``T = 1``.

    What flow-matching models (SD3, Flux, SiT) are trained on; their network predicts the
    velocity ``v = dx_t/dt = noise - x_0``. Closed forms: ``alpha' = -1``, ``sigma' = 1``,
    ``D = 1``, ``f = -1/(1 - t)``, ``g^2 = 2 t / (1 - t)``,
    ``lambda = 2 (log1p(-t) - log t)``, ``t = sigmoid(-lambda / 2)``; ``x0 = x - t v``,
    ``score = -(x + (1 - t) v) / t``. The prior ``N(0, I)`` is exact at ``T = 1``, where
    ``lambda = -inf``, ``f`` and ``g`` are infinite and ``tweedie`` is ``0/0`` (see
    :class:`GaussianPathSDE`). Data in ``[-1, 1]``; ``eps = 1e-3`` (``sigma = 1e-3``).

    The SD3/Flux time shift is not part of the SDE: it warps the time grid
    (:func:`jaxsde.flow.flow_grid`, :func:`jaxsde.flow.time_shift`), so the network always sees
    the actual ``t``.

    Args:
        T: must be 1.
        eps: the smallest time (where sampling stops, before the final denoising step).
        data_range: the ``(low, high)`` range of the data, e.g. for clipping and plots.

    Raises:
        ValueError: ``T`` is not 1.
    """

    def __post_init__(self):
        if self.T != 1.0:
            raise ValueError(f"FlowSDE has T = 1 (alpha = 1 - t reaches 0 there), got T={self.T}")
        super().__post_init__()

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = jnp.asarray(t)
        return 1.0 - t, t

    def marginal_derivatives(self, t: ArrayLike) -> tuple[Array, Array]:
        t = jnp.asarray(t, jnp.result_type(t, float))
        return -jnp.ones_like(t), jnp.ones_like(t)

    def velocity_determinant(self, t: ArrayLike) -> Array:
        return jnp.ones_like(jnp.asarray(t, jnp.result_type(t, float)))

    def drift(self, x: Array, t: ArrayLike) -> Array:
        return -x / (1.0 - jnp.asarray(t))

    def diffusion(self, t: ArrayLike) -> Array:
        t = jnp.asarray(t)
        return jnp.sqrt(2.0 * t / (1.0 - t))

    def log_snr(self, t: ArrayLike) -> Array:
        t = jnp.asarray(t)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def inverse_log_snr(self, lam: ArrayLike) -> Array:
        return jax.nn.sigmoid(-0.5 * jnp.asarray(lam))
