"""Exact targets: Gaussian mixtures with closed-form marginals and scores.

:class:`GaussianMixture` has isotropic components; :class:`LowRankMixture` (below) has
components concentrated near their own low-rank subspaces, an image-like, stiff target.

For data ``p_0 = sum_k w_k N(mu_k, s_k^2 I)`` and any linear SDE of :mod:`jaxsde.sde`
(``x_t = alpha(t) x_0 + sigma(t) noise``) the time-``t`` marginal is again a mixture,

    p_t(x) = sum_k w_k N(x; alpha mu_k, C_k I),        C_k(t) = alpha^2 s_k^2 + sigma^2,

so ``log p_t`` and the score ``grad log p_t(x) = -sum_k r_k(x) (x - alpha mu_k) / C_k`` are exact,
with responsibilities ``r = softmax_k(log w_k - d/2 log C_k - |x - alpha mu_k|^2 / (2 C_k))``.
Everything is O(K d) per sample (no d x d matrices), uses logsumexp/softmax for stability, is
jit/vmap friendly, and computes in the floating dtype of ``x`` (float32 in -> float32 out;
float64 under ``jax.enable_x64``).

Flow targets: with ``(alpha', sigma')`` the time derivatives of the path
(:meth:`jaxsde.sde.SDE.marginal_derivatives`), the posterior mean of the data and the velocity
(the probability-flow drift, ``dx_t/dt`` in expectation) are, per component,

    x0hat_k = mu_k + (alpha s_k^2 / C_k)(x - alpha mu_k),    epshat_k = (sigma / C_k)(x - alpha mu_k),
    v_k = alpha' x0hat_k + sigma' epshat_k,

averaged with the responsibilities ``r_k``. No division by ``alpha``: at ``alpha = 0`` (a flow's
``t = 1``) ``r_k = w_k``, ``x0hat = sum_k w_k mu_k`` (the data mean) and ``v = alpha' E[x_0] +
sigma' x / sigma`` (``x - E[x_0]`` on the linear path) exactly (:meth:`GaussianMixture.velocity`,
:meth:`GaussianMixture.posterior_mean`, the same for :class:`LowRankMixture`).

Conventions: a sample has shape ``mixture.shape`` (e.g. ``(2,)`` or ``(32, 32, 3)``), batches
are ``(n, *shape)``; ``d = mixture.dim`` is the flattened size; times are scalars.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike

from jaxsde.sde import SDE, ScoreFn

Array = jax.Array

__all__ = ["GaussianMixture", "LowRankMixture", "gaussian"]

# Batched evaluations build (chunk, K, d) temporaries; keep them under this many entries
# (8M float32 = 32 MB), e.g. chunks of 260 samples for K = 10 at d = 3072.
_CHUNK_ENTRIES = 8_000_000


def _float_dtype(x: Array) -> jnp.dtype:
    dtype = jnp.result_type(x)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


@struct.dataclass
class GaussianMixture:
    """Mixture ``sum_k weights[k] N(means[k], scales[k]^2 I)`` of isotropic Gaussians.

    A pytree (flax ``struct.dataclass``) whose leaves are the three arrays, so it can be passed
    through ``jax.jit``/``vmap``. Build it with :meth:`create` (validates, normalises weights) or
    the constructors :meth:`random`, :meth:`ring`, :meth:`gaussian`.

    Attributes:
      weights: ``(K,)`` mixture weights, non-negative, summing to 1.
      means: ``(K, *shape)`` component means in data space (``t = 0``).
      scales: ``(K,)`` per-component standard deviation ``s_k`` (same in every coordinate).
    """

    weights: Array
    means: Array
    scales: Array

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        weights: ArrayLike | None,
        means: ArrayLike,
        scales: ArrayLike,
        dtype: jnp.dtype | None = None,
    ) -> GaussianMixture:
        """Validated mixture. ``weights=None`` means uniform; weights are renormalised to sum
        to 1; a scalar ``scales`` is broadcast to ``(K,)``. ``means`` must be ``(K, *shape)``
        with ``len(shape) >= 1``. ``dtype`` defaults to float32 (float64 if ``means`` is
        float64 and x64 is enabled)."""
        means = jnp.asarray(means, dtype=dtype)
        if not jnp.issubdtype(means.dtype, jnp.floating):
            means = means.astype(jnp.result_type(float))
        dtype = means.dtype
        if means.ndim < 2:
            raise ValueError(f"means must be (K, *shape) with a non-empty shape, got {means.shape}")
        k = means.shape[0]
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (k,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"weights must be {k} finite non-negative numbers, got {w}")
        s = np.broadcast_to(np.asarray(scales, dtype=np.float64), (k,))
        if np.any(s <= 0) or not np.isfinite(s).all():
            raise ValueError(f"scales must be finite and positive, got {s}")
        return cls(
            weights=jnp.asarray(w / w.sum(), dtype),
            means=means,
            scales=jnp.asarray(s, dtype),
        )

    @classmethod
    def gaussian(cls, mean: ArrayLike, scale: float | ArrayLike) -> GaussianMixture:
        """Single Gaussian ``N(mean, scale^2 I)`` as a one-component mixture; ``mean`` has the
        sample shape."""
        return cls.create(None, jnp.asarray(mean)[None], jnp.reshape(jnp.asarray(scale), (1,)))

    @classmethod
    def random(
        cls,
        key: Array,
        num_modes: int,
        shape: Sequence[int],
        spread: float = 0.7,
        scale: float = 0.05,
        data_range: tuple[float, float] = (-1.0, 1.0),
        weights: ArrayLike | None = None,
        dtype: jnp.dtype = jnp.float32,
    ) -> GaussianMixture:
        """Well-separated random mixture inside ``data_range``.

        Each mean coordinate lies in ``center +- spread * (hi - lo) / 2`` (``center`` the middle
        of ``data_range``); the ``num_modes`` means are picked from ``32 * num_modes`` uniform
        candidates by farthest-point (max-min distance) selection, so they are spread out even
        in 2-D. All components have standard deviation ``scale`` (data units); ``weights=None``
        gives uniform weights. Runs eagerly (not inside ``jit``).
        """
        shape = tuple(int(s) for s in shape)
        if num_modes < 1 or not shape:
            raise ValueError("need num_modes >= 1 and a non-empty sample shape")
        if not 0.0 < spread <= 1.0:
            raise ValueError(f"spread must be in (0, 1], got {spread}")
        lo, hi = data_range
        center, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        d = math.prod(shape)
        cand = np.asarray(
            jax.random.uniform(key, (32 * num_modes, d), minval=-1.0, maxval=1.0), np.float64
        )
        chosen = [0]
        min_d2 = np.sum((cand - cand[0]) ** 2, axis=1)
        for _ in range(num_modes - 1):
            i = int(np.argmax(min_d2))
            chosen.append(i)
            min_d2 = np.minimum(min_d2, np.sum((cand - cand[i]) ** 2, axis=1))
        means = center + spread * half * cand[chosen]
        return cls.create(weights, means.reshape((num_modes, *shape)), scale, dtype)

    @classmethod
    def ring(
        cls,
        num_modes: int = 8,
        shape: Sequence[int] = (2,),
        radius: float = 0.6,
        scale: float = 0.05,
        key: Array | None = None,
        *,
        jitter: float = 0.05,
        center: float = 0.0,
        weights: ArrayLike | None = None,
        dtype: jnp.dtype = jnp.float32,
    ) -> GaussianMixture:
        """Modes on a circle: flattened coordinates 0 and 1 of mean ``k`` are
        ``center + radius * (cos, sin)(2 pi k / K)``, so a scatter of coordinates (0, 1) shows
        every mode. Remaining coordinates are ``center`` plus ``jitter * U(-1, 1)`` (drawn with
        ``key``; exactly ``center`` when ``key`` is None). ``scale`` is every component's std.
        """
        shape = tuple(int(s) for s in shape)
        d = math.prod(shape)
        if d < 2:
            raise ValueError(f"ring needs at least 2 coordinates, got shape {shape}")
        angles = 2.0 * np.pi * np.arange(num_modes) / num_modes
        means = np.zeros((num_modes, d))
        if key is not None and d > 2:
            means[:, 2:] = jitter * np.asarray(
                jax.random.uniform(key, (num_modes, d - 2), minval=-1.0, maxval=1.0)
            )
        means[:, 0] = radius * np.cos(angles)
        means[:, 1] = radius * np.sin(angles)
        means += center
        return cls.create(weights, means.reshape((num_modes, *shape)), scale, dtype)

    # --- shapes ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.means.shape[1:])

    @property
    def dim(self) -> int:
        """Flattened sample size ``d``."""
        return math.prod(self.shape)

    @property
    def num_modes(self) -> int:
        """Number of components ``K``."""
        return self.means.shape[0]

    # --- internals ---------------------------------------------------------------------------
    def _params(self, dtype) -> tuple[Array, Array, Array]:
        return (
            self.weights.astype(dtype),
            self.means.reshape(self.num_modes, -1).astype(dtype),
            self.scales.astype(dtype),
        )

    def _alpha_sigma(self, sde: SDE | None, t: ArrayLike | None, dtype) -> tuple[Array, Array]:
        if sde is None:  # data space, t = 0
            return jnp.ones((), dtype), jnp.zeros((), dtype)
        alpha, sigma = sde.marginal(sde.eps if t is None else t)
        return jnp.asarray(alpha).astype(dtype), jnp.asarray(sigma).astype(dtype)

    def _batched(self, fn, x: Array) -> Array:
        """Apply a one-sample function to ``x`` with a leading batch axis, in chunks."""
        n = x.shape[0]
        chunk = max(1, _CHUNK_ENTRIES // (self.num_modes * self.dim))
        if n <= chunk:
            return jax.vmap(fn)(x)
        return jax.lax.map(fn, x, batch_size=chunk)

    def _is_batch(self, x: Array) -> bool:
        nd = len(self.shape)
        if x.ndim not in (nd, nd + 1) or x.shape[x.ndim - nd :] != self.shape:
            raise ValueError(f"expected shape {self.shape} or (n, *{self.shape}), got {x.shape}")
        return x.ndim == nd + 1

    def _logits(self, xf: Array, alpha: Array, sigma: Array) -> tuple[Array, Array, Array]:
        """For one flattened sample: (component log densities without the 2 pi term (K,),
        x - alpha mu (K, d), C (K,))."""
        w, mu, s = self._params(xf.dtype)
        c = alpha**2 * s**2 + sigma**2
        diff = xf[None, :] - alpha * mu
        sq = jnp.sum(diff**2, axis=-1)
        logits = jnp.log(w) - 0.5 * xf.shape[0] * jnp.log(c) - 0.5 * sq / c
        return logits, diff, c

    # --- densities and scores ----------------------------------------------------------------
    @jax.jit
    def log_prob(self, sde: SDE | None, x: ArrayLike, t: ArrayLike | None = None) -> Array:
        """Exact ``log p_t(x)``. ``x`` is one sample (``shape``) -> scalar, or a batch
        ``(n, *shape)`` -> ``(n,)``. ``sde=None`` gives the data density ``p_0``; with an SDE,
        ``t=None`` means ``sde.eps``."""
        x = jnp.asarray(x)
        dtype = _float_dtype(x)
        x = x.astype(dtype)
        alpha, sigma = self._alpha_sigma(sde, t, dtype)
        log_2pi = 0.5 * self.dim * math.log(2.0 * math.pi)

        def one(xi):
            logits, _, _ = self._logits(xi.reshape(-1), alpha, sigma)
            return jax.nn.logsumexp(logits) - log_2pi

        return self._batched(one, x) if self._is_batch(x) else one(x)

    @jax.jit
    def responsibilities(self, sde: SDE | None, x: ArrayLike, t: ArrayLike | None = None) -> Array:
        """Posterior component probabilities ``r_k(x)`` under ``p_t``: ``(K,)`` for one sample,
        ``(n, K)`` for a batch. ``sde=None`` uses the data law; ``t=None`` means ``sde.eps``."""
        x = jnp.asarray(x)
        dtype = _float_dtype(x)
        x = x.astype(dtype)
        alpha, sigma = self._alpha_sigma(sde, t, dtype)

        def one(xi):
            return jax.nn.softmax(self._logits(xi.reshape(-1), alpha, sigma)[0])

        return self._batched(one, x) if self._is_batch(x) else one(x)

    @jax.jit
    def assign_modes(
        self, x: ArrayLike, sde: SDE | None = None, t: ArrayLike | None = None
    ) -> Array:
        """Most likely component (int32) of each sample of a batch ``(n, *shape)`` -> ``(n,)``.

        Default (``sde=None``): data-space component densities ``N(mu_k, s_k^2 I)``, the right
        choice for final samples. With an SDE, the components of ``p_t`` (``t=None``: ``eps``).
        """
        x = jnp.asarray(x)
        dtype = _float_dtype(x)
        x = x.astype(dtype)
        alpha, sigma = self._alpha_sigma(sde, t, dtype)
        if not self._is_batch(x):
            raise ValueError(f"assign_modes expects a batch (n, *{self.shape}), got {x.shape}")

        def one(xi):
            return jnp.argmax(self._logits(xi.reshape(-1), alpha, sigma)[0]).astype(jnp.int32)

        return self._batched(one, x)

    def score(self, sde: SDE) -> ScoreFn:
        """Exact score function ``score(x, t) = grad_x log p_t(x)`` for ONE sample (``x`` shaped
        ``shape``, ``t`` a scalar); jit/vmap/grad friendly, output dtype = ``x`` dtype."""

        def score_fn(x: Array, t: ArrayLike) -> Array:
            x = jnp.asarray(x)
            dtype = _float_dtype(x)
            alpha, sigma = self._alpha_sigma(sde, t, dtype)
            logits, diff, c = self._logits(x.reshape(-1).astype(dtype), alpha, sigma)
            coef = jax.nn.softmax(logits) / c
            return (-(coef @ diff)).reshape(x.shape)

        return score_fn

    def _posterior(self, sde: SDE, x: Array, t: ArrayLike) -> tuple[Array, Array, tuple[Array, Array]]:
        """For one sample: ``(x0hat, epshat, (alpha', sigma'))``, flattened, in ``x``'s dtype."""
        dtype = _float_dtype(x)
        xf = x.reshape(-1).astype(dtype)
        alpha, sigma = self._alpha_sigma(sde, t, dtype)
        logits, diff, c = self._logits(xf, alpha, sigma)
        _, mu, s = self._params(dtype)
        r = jax.nn.softmax(logits)
        x0hat = r @ mu + ((r * alpha * s**2 / c) @ diff)
        epshat = (r * sigma / c) @ diff
        dalpha, dsigma = (jnp.asarray(d).astype(dtype) for d in sde.marginal_derivatives(jnp.asarray(t, dtype)))
        return x0hat, epshat, (dalpha, dsigma)

    def posterior_mean(self, sde: SDE) -> ScoreFn:
        """Exact ``E[x_0 | x_t = x]`` (the ideal ``"x0"`` prediction) ``x0(x, t)`` for ONE sample
        (``x`` shaped ``shape``, ``t`` a scalar); finite wherever ``sigma > 0`` or
        ``alpha > 0``, the data mean at ``alpha = 0``. jit/vmap/grad friendly, ``x``'s dtype."""

        def x0_fn(x: Array, t: ArrayLike) -> Array:
            x = jnp.asarray(x)
            return self._posterior(sde, x, t)[0].reshape(x.shape)

        return x0_fn

    def velocity(self, sde: SDE) -> ScoreFn:
        """Exact velocity ``v(x, t) = E[alpha' x_0 + sigma' noise | x_t = x]`` (the probability-flow
        drift; the ideal ``"velocity"`` prediction, ``E[noise - x_0 | x]`` on ``FlowSDE``) for ONE
        sample; finite at ``alpha = 0`` (``x - E[x_0]`` at ``t = 1`` on ``FlowSDE``). ``x``'s
        dtype."""

        def v_fn(x: Array, t: ArrayLike) -> Array:
            x = jnp.asarray(x)
            x0hat, epshat, (dalpha, dsigma) = self._posterior(sde, x, t)
            return (dalpha * x0hat + dsigma * epshat).reshape(x.shape)

        return v_fn

    # --- sampling ----------------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnames=("n", "dtype"))
    def sample_with_labels(
        self, key: Array, n: int, dtype: jnp.dtype | None = None
    ) -> tuple[Array, Array]:
        """Exact data samples ``(n, *shape)`` and their component labels ``(n,)`` (int32)."""
        dtype = self.means.dtype if dtype is None else dtype
        k_idx, k_noise = jax.random.split(key)
        idx = jax.random.categorical(k_idx, jnp.log(self.weights), shape=(n,)).astype(jnp.int32)
        noise = jax.random.normal(k_noise, (n, *self.shape), dtype)
        scales = self.scales.astype(dtype)[idx].reshape((n,) + (1,) * len(self.shape))
        return self.means.astype(dtype)[idx] + scales * noise, idx

    def sample(self, key: Array, n: int, dtype: jnp.dtype | None = None) -> Array:
        """``n`` exact data samples (``t = 0``), shape ``(n, *shape)``."""
        return self.sample_with_labels(key, n, dtype)[0]

    @functools.partial(jax.jit, static_argnames=("n", "dtype"))
    def marginal_sample(
        self, key: Array, sde: SDE, t: ArrayLike, n: int, dtype: jnp.dtype | None = None
    ) -> Array:
        """``n`` exact samples of ``p_t``: ``alpha x_0 + sigma noise``, shape ``(n, *shape)``."""
        dtype = self.means.dtype if dtype is None else dtype
        k0, k1 = jax.random.split(key)
        x0 = self.sample(k0, n, dtype)
        alpha, sigma = self._alpha_sigma(sde, t, dtype)
        return alpha * x0 + sigma * jax.random.normal(k1, x0.shape, dtype)

    @functools.partial(jax.jit, static_argnames=("n", "denoise", "dtype"))
    def ideal_sample(
        self, key: Array, sde: SDE, n: int, denoise: bool = True, dtype: jnp.dtype | None = None
    ) -> Array:
        """The law a perfect sampler (exact score, no discretisation error) returns.

        Exact samples of ``p_eps`` (``t = sde.eps``), then, if ``denoise``, the final Tweedie step
        ``x <- (x + sigma^2 score(x, eps)) / alpha`` with the exact score. ``(n, *shape)``.
        """
        x = self.marginal_sample(key, sde, sde.eps, n, dtype)
        if not denoise:
            return x
        score_fn = self.score(sde)
        t = sde.eps
        return self._batched(lambda xi: sde.tweedie(xi, t, score_fn(xi, t)).astype(xi.dtype), x)

    @functools.partial(jax.jit, static_argnames=("denoise",))
    def ideal_mode_means(self, sde: SDE, denoise: bool = True) -> Array:
        """Per-mode mean ``(K, *shape)`` of :meth:`ideal_sample` (single-component approximation):
        ``mu_k`` with denoising, ``alpha(eps) mu_k`` without."""
        if denoise:
            return self.means
        alpha, _ = self._alpha_sigma(sde, sde.eps, self.means.dtype)
        return alpha * self.means

    @functools.partial(jax.jit, static_argnames=("denoise",))
    def ideal_mode_scales(self, sde: SDE, denoise: bool = True) -> Array:
        """Per-mode std ``(K,)`` of :meth:`ideal_sample` (single-component approximation).

        With ``alpha, sigma`` at ``eps`` and ``C = alpha^2 s^2 + sigma^2``: ``alpha s^2 / sqrt(C)``
        after Tweedie denoising (slightly below ``s``), ``sqrt(C)`` without (slightly above).
        """
        dtype = self.scales.dtype
        alpha, sigma = self._alpha_sigma(sde, sde.eps, dtype)
        c = alpha**2 * self.scales**2 + sigma**2
        if denoise:
            return alpha * self.scales**2 / jnp.sqrt(c)
        return jnp.sqrt(c)


def gaussian(mean: ArrayLike, scale: float | ArrayLike) -> GaussianMixture:
    """Single Gaussian ``N(mean, scale^2 I)`` as a one-component :class:`GaussianMixture`."""
    return GaussianMixture.gaussian(mean, scale)


@struct.dataclass
class LowRankMixture:
    """Mixture of Gaussians each concentrated near its own low-rank subspace: image-like and stiff.

    Component ``k`` is ``N(mu_k, U_k diag(v_k) U_k^T + s_k^2 I)``: ``U_k`` ``(d, r)`` orthonormal
    columns, ``v_k`` ``(r,)`` variances along them (data units^2), ``s_k`` a small isotropic
    spread off the subspace. Under a linear SDE the time-``t`` component is
    ``N(alpha mu_k, c I + alpha^2 U_k diag(v_k) U_k^T)`` with ``c = alpha^2 s_k^2 + sigma^2``, whose
    inverse and log-determinant follow from Woodbury in ``O(d r)``:
    ``C^-1 y = (y - U diag(a / (a + c)) U^T y) / c`` with ``a = alpha^2 v``. The exact score is then
    ``-sum_k r_k(x) C_k^-1 (x - alpha mu_k)``: O(K d r) per sample, jit/vmap friendly, in the dtype
    of ``x``. The off-subspace directions contract at rate ``1/s_k^2`` near ``t = 0`` while the
    subspace ones do not: a sampler must resolve both scales.

    Attributes:
      weights: ``(K,)``, summing to 1.  means: ``(K, *shape)``.  bases: ``(K, d, r)`` orthonormal
      columns.  variances: ``(K, r)`` > 0.  floor: ``(K,)`` off-subspace std ``s_k`` > 0.
    """

    weights: Array
    means: Array
    bases: Array
    variances: Array
    floor: Array

    @classmethod
    def random(
        cls,
        key: Array,
        num_modes: int = 8,
        shape: Sequence[int] = (16, 16),
        rank: int = 8,
        spread: float = 0.5,
        std_range: tuple[float, float] = (0.05, 0.3),
        floor: float = 0.01,
        dtype: jnp.dtype = jnp.float32,
    ) -> LowRankMixture:
        """Random components: means uniform in ``[-spread, spread]^d``, subspaces from the QR of
        Gaussian matrices, in-subspace stds log-uniform in ``std_range``, off-subspace std
        ``floor``; uniform weights. Runs eagerly."""
        shape = tuple(int(v) for v in shape)
        d = math.prod(shape)
        if num_modes < 1 or not 1 <= rank <= d:
            raise ValueError(f"need num_modes >= 1 and 1 <= rank <= d = {d}, got {num_modes}, {rank}")
        if not 0 < std_range[0] <= std_range[1] or not floor > 0:
            raise ValueError(f"need 0 < std_range[0] <= std_range[1] and floor > 0, got {std_range}, {floor}")
        k_mean, k_basis, k_std = jax.random.split(key, 3)
        means = np.asarray(jax.random.uniform(k_mean, (num_modes, d), minval=-spread, maxval=spread), np.float64)
        gauss = np.asarray(jax.random.normal(k_basis, (num_modes, d, rank)), np.float64)
        bases = np.stack([np.linalg.qr(g)[0] for g in gauss])
        lo, hi = np.log(std_range[0]), np.log(std_range[1])
        stds = np.exp(np.asarray(jax.random.uniform(k_std, (num_modes, rank), minval=lo, maxval=hi), np.float64))
        return cls(
            weights=jnp.full((num_modes,), 1.0 / num_modes, dtype),
            means=jnp.asarray(means.reshape((num_modes, *shape)), dtype),
            bases=jnp.asarray(bases, dtype),
            variances=jnp.asarray(stds**2, dtype),
            floor=jnp.full((num_modes,), floor, dtype),
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    def _components(self, xf: Array, alpha: Array, sigma: Array) -> tuple[Array, Array]:
        """For one flattened sample: component log densities ``(K,)`` and ``C_k^-1 (x - alpha mu_k)`` ``(K, d)``."""
        dtype = xf.dtype
        mu = self.means.reshape(self.num_modes, -1).astype(dtype)
        u, v = self.bases.astype(dtype), self.variances.astype(dtype)
        c = alpha**2 * self.floor.astype(dtype) ** 2 + sigma**2  # (K,)
        a = alpha**2 * v  # (K, r)
        y = xf[None, :] - alpha * mu  # (K, d)
        proj = jnp.einsum("kdr,kd->kr", u, y)
        shrink = a / (a + c[:, None])
        solved = (y - jnp.einsum("kdr,kr->kd", u, shrink * proj)) / c[:, None]
        quad = jnp.sum(y * solved, axis=-1)
        logdet = xf.shape[0] * jnp.log(c) + jnp.sum(jnp.log1p(a / c[:, None]), axis=-1)
        logits = jnp.log(self.weights.astype(dtype)) - 0.5 * (logdet + quad + xf.shape[0] * math.log(2 * math.pi))
        return logits, solved

    def log_prob(self, sde: SDE | None, x: ArrayLike, t: ArrayLike | None = None) -> Array:
        """Exact ``log p_t(x)`` of ONE sample (``sde=None``: the data law; ``t=None``: ``sde.eps``)."""
        x = jnp.asarray(x)
        dtype = _float_dtype(x)
        alpha, sigma = GaussianMixture._alpha_sigma(self, sde, t, dtype)
        return jax.nn.logsumexp(self._components(x.reshape(-1).astype(dtype), alpha, sigma)[0])

    def score(self, sde: SDE) -> ScoreFn:
        """Exact score ``grad_x log p_t(x)`` for ONE sample (``x`` shaped ``shape``, scalar ``t``)."""

        def score_fn(x: Array, t: ArrayLike) -> Array:
            x = jnp.asarray(x)
            dtype = _float_dtype(x)
            alpha, sigma = GaussianMixture._alpha_sigma(self, sde, t, dtype)
            logits, solved = self._components(x.reshape(-1).astype(dtype), alpha, sigma)
            return (-(jax.nn.softmax(logits) @ solved)).reshape(x.shape)

        return score_fn

    def _posterior(self, sde: SDE, x: Array, t: ArrayLike) -> tuple[Array, Array, tuple[Array, Array]]:
        """For one sample: ``(x0hat, epshat, (alpha', sigma'))``, flattened: per component
        ``x0hat_k = mu_k + alpha Sigma_k C_k^-1 y_k``, ``epshat_k = sigma C_k^-1 y_k``
        (``Sigma_k = U diag(v) U^T + s^2 I``, ``y_k = x - alpha mu_k``), weighted by ``r_k``."""
        dtype = _float_dtype(x)
        xf = x.reshape(-1).astype(dtype)
        alpha, sigma = GaussianMixture._alpha_sigma(self, sde, t, dtype)
        logits, solved = self._components(xf, alpha, sigma)
        r = jax.nn.softmax(logits)
        mu = self.means.reshape(self.num_modes, -1).astype(dtype)
        u, v = self.bases.astype(dtype), self.variances.astype(dtype)
        cov_solved = (jnp.einsum("kdr,kr->kd", u, v * jnp.einsum("kdr,kd->kr", u, solved))
                      + self.floor.astype(dtype)[:, None] ** 2 * solved)
        x0hat = r @ (mu + alpha * cov_solved)
        epshat = sigma * (r @ solved)
        dalpha, dsigma = (jnp.asarray(d).astype(dtype) for d in sde.marginal_derivatives(jnp.asarray(t, dtype)))
        return x0hat, epshat, (dalpha, dsigma)

    def posterior_mean(self, sde: SDE) -> ScoreFn:
        """Exact ``E[x_0 | x_t = x]`` ``x0(x, t)`` for ONE sample; the data mean at ``alpha = 0``
        (see :meth:`GaussianMixture.posterior_mean`)."""

        def x0_fn(x: Array, t: ArrayLike) -> Array:
            x = jnp.asarray(x)
            return self._posterior(sde, x, t)[0].reshape(x.shape)

        return x0_fn

    def velocity(self, sde: SDE) -> ScoreFn:
        """Exact velocity ``E[alpha' x_0 + sigma' noise | x_t = x]`` for ONE sample, finite at
        ``alpha = 0`` (see :meth:`GaussianMixture.velocity`)."""

        def v_fn(x: Array, t: ArrayLike) -> Array:
            x = jnp.asarray(x)
            x0hat, epshat, (dalpha, dsigma) = self._posterior(sde, x, t)
            return (dalpha * x0hat + dsigma * epshat).reshape(x.shape)

        return v_fn

    @functools.partial(jax.jit, static_argnames=("n", "dtype"))
    def sample(self, key: Array, n: int, dtype: jnp.dtype | None = None) -> Array:
        """``n`` exact data samples ``(n, *shape)``."""
        dtype = self.means.dtype if dtype is None else dtype
        k_idx, k_in, k_off = jax.random.split(key, 3)
        idx = jax.random.categorical(k_idx, jnp.log(self.weights), shape=(n,))
        rank = self.bases.shape[-1]
        inside = jax.random.normal(k_in, (n, rank), dtype) * jnp.sqrt(self.variances.astype(dtype)[idx])
        off = jax.random.normal(k_off, (n, self.dim), dtype) * self.floor.astype(dtype)[idx][:, None]
        x = self.means.reshape(self.num_modes, -1).astype(dtype)[idx] + jnp.einsum(
            "ndr,nr->nd", self.bases.astype(dtype)[idx], inside) + off
        return x.reshape((n, *self.shape))

    @functools.partial(jax.jit, static_argnames=("n", "dtype"))
    def ideal_sample(self, key: Array, sde: SDE, n: int, dtype: jnp.dtype | None = None) -> Array:
        """What a perfect sampler returns: exact samples of ``p_eps``, then the Tweedie step with the
        exact score (``denoise=True``), ``(n, *shape)``."""
        dtype = self.means.dtype if dtype is None else dtype
        k0, k1 = jax.random.split(key)
        alpha, sigma = GaussianMixture._alpha_sigma(self, sde, sde.eps, dtype)
        x0 = self.sample(k0, n, dtype)
        x = alpha * x0 + sigma * jax.random.normal(k1, x0.shape, dtype)
        score_fn = self.score(sde)
        return jax.vmap(lambda xi: sde.tweedie(xi, sde.eps, score_fn(xi, sde.eps)).astype(dtype))(x)

    @jax.jit
    def assign_modes(self, x: ArrayLike) -> Array:
        """Most likely data-space component (int32) of each sample of a batch ``(n, *shape)``."""
        x = jnp.asarray(x)
        one = jnp.ones((), _float_dtype(x))
        return jax.vmap(lambda xi: jnp.argmax(self._components(xi.reshape(-1), one, 0.0 * one)[0]))(x).astype(
            jnp.int32)

    @jax.jit
    def mode_statistics(self, x: ArrayLike) -> tuple[Array, Array, Array, Array, Array]:
        """Per-component summaries of a batch in whitened coordinates, for sample-quality checks.

        Each sample is assigned to its component ``k`` (:meth:`assign_modes`) and split into its
        in-subspace coordinates ``U_k^T (x - mu_k) / sqrt(v_k)`` (``r`` numbers, each N(0, 1) for
        data samples) and its off-subspace residual ``(I - U_k U_k^T)(x - mu_k) / s_k``. Returns
        ``(counts (K,), in_mean (K, r), in_var (K,), off_mean (K, d), off_var (K,))``: means, and
        variances averaged over the coordinates.
        """
        x = jnp.asarray(x)
        xf = x.reshape(x.shape[0], -1)
        labels = self.assign_modes(x)
        k = self.num_modes
        mu = self.means.reshape(k, -1).astype(xf.dtype)[labels]
        u = self.bases.astype(xf.dtype)[labels]
        y = xf - mu
        proj = jnp.einsum("ndr,nd->nr", u, y)
        inside = proj / jnp.sqrt(self.variances.astype(xf.dtype)[labels])
        off = (y - jnp.einsum("ndr,nr->nd", u, proj)) / self.floor.astype(xf.dtype)[labels][:, None]
        counts = jnp.bincount(labels, length=k).astype(xf.dtype)

        def mean_var(z):
            m = jax.ops.segment_sum(z, labels, k) / jnp.maximum(counts, 1.0)[:, None]
            ss = jax.ops.segment_sum(jnp.sum((z - m[labels]) ** 2, axis=1), labels, k)
            return m, ss / (z.shape[1] * jnp.maximum(counts - 1.0, 1.0))

        in_mean, in_var = mean_var(inside)
        off_mean, off_var = mean_var(off)
        return counts, in_mean, in_var, off_mean, off_var
