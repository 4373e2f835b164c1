"""Sample-quality metrics for batches of samples, mainly against exact targets.

Every metric takes batches shaped ``(n, *shape)`` and flattens each sample to ``d`` numbers.
All are distances or divergences: lower is better, 0 means "indistinguishable". With finite
samples even two exact batches score above 0; :func:`quality_report` therefore also reports the
value of each metric for an independent exact-vs-exact pair at the same sample size (the noise
floor): a sampler is only measurably wrong where its value is clearly above the floor.

* :func:`sliced_wasserstein2` -- global shape of the distribution (data units).
* :func:`mmd2_unbiased` -- kernel two-sample statistic (unitless; can be slightly negative).
* :func:`mode_weight_tv` -- are the modes visited with the right frequencies?
* :func:`mode_spread_w2` -- is the spread inside each mode right (whitened units)? Sensitive
  to over/under-dispersion that SW2 and MMD barely see when modes are far apart.
* :func:`gaussian_w2`, :func:`isotropic_gaussian_w2` -- closed-form W2 between Gaussians.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsde.sde import SDE
from jaxsde.testing.targets import GaussianMixture

Array = jax.Array

__all__ = [
    "sliced_wasserstein2",
    "mmd2_unbiased",
    "median_bandwidth",
    "mode_weight_tv",
    "mode_spread_w2",
    "gaussian_w2",
    "isotropic_gaussian_w2",
    "quality_report",
]


def _flat(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"expected a non-empty batch (n, ...), got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


# --- sliced Wasserstein ------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("num_projections",))
def _sw2(key: Array, x: Array, y: Array, num_projections: int) -> Array:
    dtype = jnp.result_type(x, y)
    x, y = x.astype(dtype), y.astype(dtype)
    n, m = x.shape[0], y.shape[0]
    u = jax.random.normal(key, (x.shape[1], num_projections), dtype)
    u = u / jnp.linalg.norm(u, axis=0, keepdims=True)
    xs = jnp.sort(x @ u, axis=0)
    ys = jnp.sort(y @ u, axis=0)
    if n == m:
        w2 = jnp.mean((xs - ys) ** 2, axis=0)
    else:
        # Exact 1-D W2 between the empirical laws: both quantile functions are step functions,
        # constant between consecutive breakpoints of {i/n} U {j/m}.
        levels = jnp.sort(jnp.concatenate([jnp.arange(1, n + 1) / n, jnp.arange(1, m + 1) / m]))
        widths = jnp.diff(levels, prepend=0.0)
        mid = levels - 0.5 * widths
        ix = jnp.clip(jnp.floor(mid * n).astype(jnp.int32), 0, n - 1)
        iy = jnp.clip(jnp.floor(mid * m).astype(jnp.int32), 0, m - 1)
        w2 = jnp.sum(widths.astype(dtype)[:, None] * (xs[ix] - ys[iy]) ** 2, axis=0)
    return jnp.sqrt(jnp.mean(w2))


def sliced_wasserstein2(
    key: Array, x: ArrayLike, y: ArrayLike, num_projections: int = 256
) -> Array:
    """Sliced 2-Wasserstein distance between two batches ``(n, *shape)`` and ``(m, *shape)``.

    ``sqrt(E_u[W2^2(u.x, u.y)])`` over ``num_projections`` random unit directions ``u`` (drawn
    from ``key``; reuse the key to compare several batches on the same directions). The 1-D W2
    is computed exactly from sorted projections (quantile coupling; ``n != m`` is allowed).
    Data units; for a pure shift ``c`` it is about ``|c| / sqrt(d)``.
    """
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
    return _sw2(key, x, y, num_projections)


# --- MMD ---------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("block",))
def _rbf_row_sums(a: Array, b: Array, inv_two_h2: Array, block: int) -> Array:
    """Row sums ``sum_j exp(-|a_i - b_j|^2 / (2 h^2))`` -> ``(n,)``, ``block`` rows at a time."""
    n, d = a.shape
    nb = -(-n // block)
    a_p = jnp.pad(a, ((0, nb * block - n), (0, 0))).reshape(nb, block, d)
    b2 = jnp.sum(b * b, axis=1)

    def rows(ab):
        d2 = jnp.sum(ab * ab, axis=1)[:, None] + b2[None, :] - 2.0 * (ab @ b.T)
        k = jnp.exp(-jnp.maximum(d2, 0.0) * inv_two_h2)
        return k @ jnp.ones(b.shape[0], k.dtype)

    return jax.lax.map(rows, a_p).reshape(-1)[:n]


def median_bandwidth(x: ArrayLike, y: ArrayLike | None = None, max_points: int = 1000) -> float:
    """Median heuristic: median pairwise Euclidean distance of the pooled samples (at most
    ``max_points`` of them, taken evenly from each batch), in data units."""
    x = np.asarray(_flat(x), np.float64)
    parts = [x] if y is None else [x, np.asarray(_flat(y), np.float64)]
    per = max(2, max_points // len(parts))
    pool = np.concatenate(
        [p[np.linspace(0, len(p) - 1, min(per, len(p))).astype(int)] for p in parts]
    )
    sq = np.sum(pool**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * pool @ pool.T, 0.0)
    h = float(np.sqrt(np.median(d2[np.triu_indices(len(pool), k=1)])))
    return h if h > 0 else 1.0


def mmd2_unbiased(
    x: ArrayLike,
    y: ArrayLike,
    bandwidth: float | None = None,
    block_entries: int = 4_000_000,
) -> float:
    """Unbiased estimate of MMD^2 with the RBF kernel ``exp(-|a - b|^2 / (2 h^2))``.

    ``(1/(n(n-1))) sum_{i!=j} k(x_i, x_j) + (1/(m(m-1))) sum_{i!=j} k(y_i, y_j)
    - (2/(nm)) sum_{i,j} k(x_i, y_j)``; zero in expectation when both batches come from the
    same law, so it can be slightly negative. ``bandwidth`` ``h`` defaults to
    :func:`median_bandwidth` of the pooled data; pass a fixed ``h`` to compare several batches
    on the same kernel. Kernel matrices are built ``block_entries`` entries at a time (about
    16 MB in float32); row sums are accumulated in float64. Needs ``n, m >= 2``.
    """
    x, y = _flat(x), _flat(y)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need n, m >= 2 and equal dimensions, got {x.shape}, {y.shape}")
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    dtype = jnp.result_type(x, y)
    # Centering leaves distances unchanged and makes |a|^2 + |b|^2 - 2 a.b far more accurate.
    center = 0.5 * (jnp.mean(x, axis=0) + jnp.mean(y, axis=0))
    x, y = (x - center).astype(dtype), (y - center).astype(dtype)
    inv = jnp.asarray(1.0 / (2.0 * h * h), dtype)

    def total(a, b):
        block = max(1, min(a.shape[0], block_entries // b.shape[0]))
        block = -(-a.shape[0] // -(-a.shape[0] // block))  # equal blocks, least padding
        return float(np.sum(np.asarray(_rbf_row_sums(a, b, inv, block), np.float64)))

    kxx = (total(x, x) - n) / (n * (n - 1))  # k(x_i, x_i) = 1 on the diagonal
    kyy = (total(y, y) - m) / (m * (m - 1))
    kxy = total(x, y) / (n * m)
    return kxx + kyy - 2.0 * kxy


# --- mode metrics ------------------------------------------------------------------------------
@jax.jit
def mode_weight_tv(mixture: GaussianMixture, x: ArrayLike) -> Array:
    """Total variation ``1/2 sum_k |hat w_k - w_k|`` between the empirical mode histogram of
    ``x`` (each sample assigned by :meth:`GaussianMixture.assign_modes`, data space) and
    ``mixture.weights``. In [0, 1]; dropping modes of total weight ``W`` gives about ``W``."""
    x = jnp.asarray(x)
    labels = mixture.assign_modes(x)
    counts = jnp.bincount(labels, length=mixture.num_modes)
    freq = counts / x.shape[0]
    return 0.5 * jnp.sum(jnp.abs(freq - mixture.weights.astype(freq.dtype)))


@jax.jit
def mode_spread_w2(
    mixture: GaussianMixture,
    x: ArrayLike,
    means: ArrayLike | None = None,
    scales: ArrayLike | None = None,
) -> Array:
    """Within-mode error of location and spread, in whitened units per dimension.

    Each sample is assigned to its most likely data-space mode ``k`` and whitened with that
    mode's data parameters, ``z = (x - mixture.means[k]) / mixture.scales[k]``. Per mode, the
    isotropic Gaussian fit of the ``z`` (mean vector ``m``, per-dimension variance ``v``
    averaged over dimensions) is compared with the ideal ``N(m*, s*^2 I)``,
    ``m* = (means[k] - mixture.means[k]) / s_k``, ``s* = scales[k] / s_k``, by the
    per-dimension Gaussian W2 ``D_k = sqrt(|m - m*|^2 / d + (sqrt(v) - s*)^2)``. Returns the
    count-weighted RMS ``sqrt(sum_k n_k D_k^2 / sum_k n_k)`` over modes with ``n_k >= 2``.

    ``means``/``scales`` (``(K, *shape)``, ``(K,)``) describe the law a perfect sampler gives,
    e.g. :meth:`GaussianMixture.ideal_mode_means` / :meth:`~GaussianMixture.ideal_mode_scales`;
    they default to the data law. Inflating the within-mode variance twofold moves the value
    by about ``sqrt(2) - 1 = 0.41``; its noise floor is about ``s* sqrt(K / n)`` (mean term).
    """
    x = jnp.asarray(x)
    labels = mixture.assign_modes(x)
    xf = x.reshape(x.shape[0], -1)
    dtype = xf.dtype if jnp.issubdtype(xf.dtype, jnp.floating) else jnp.result_type(float)
    xf = xf.astype(dtype)
    k, d = mixture.num_modes, mixture.dim
    mu = mixture.means.reshape(k, d).astype(dtype)
    s = mixture.scales.astype(dtype)
    ideal_means = mu if means is None else jnp.asarray(means, dtype).reshape(k, d)
    ideal_scales = s if scales is None else jnp.asarray(scales, dtype).reshape(k)

    z = (xf - mu[labels]) / s[labels][:, None]
    counts = jnp.bincount(labels, length=k).astype(dtype)
    m = jax.ops.segment_sum(z, labels, k) / jnp.maximum(counts, 1.0)[:, None]
    ss = jax.ops.segment_sum(jnp.sum((z - m[labels]) ** 2, axis=1), labels, k)
    v = ss / (d * jnp.maximum(counts - 1.0, 1.0))
    m_star = (ideal_means - mu) / s[:, None]
    s_star = ideal_scales / s
    dist2 = jnp.sum((m - m_star) ** 2, axis=1) / d + (jnp.sqrt(v) - s_star) ** 2
    wts = jnp.where(counts >= 2, counts, 0.0)
    return jnp.sqrt(jnp.sum(wts * dist2) / jnp.maximum(jnp.sum(wts), 1.0))


# --- Gaussian W2 -------------------------------------------------------------------------------
def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(0.5 * (a + a.T))
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def gaussian_w2(mean1: ArrayLike, cov1: ArrayLike, mean2: ArrayLike, cov2: ArrayLike) -> float:
    """Closed-form 2-Wasserstein distance (not squared) between ``N(mean1, cov1)`` and
    ``N(mean2, cov2)``: ``W2^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2)``.
    Means ``(d,)``, covariances ``(d, d)`` symmetric PSD; eigh-based, float64 (numpy)."""
    m1, m2 = np.asarray(mean1, np.float64).ravel(), np.asarray(mean2, np.float64).ravel()
    s1, s2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: {m1.shape}, {s1.shape}, {m2.shape}, {s2.shape}")
    r2 = _psd_sqrt(s2)
    cross = np.linalg.eigvalsh(r2 @ (0.5 * (s1 + s1.T)) @ r2)
    w2sq = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2)
    w2sq -= 2.0 * np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    return math.sqrt(max(float(w2sq), 0.0))


def isotropic_gaussian_w2(
    m1: ArrayLike, v1: ArrayLike, m2: ArrayLike, v2: ArrayLike, dim: int
) -> Array:
    """W2 (not squared) between ``N(m1, v1 I)`` and ``N(m2, v2 I)`` in ``dim`` dimensions:
    ``sqrt(|m1 - m2|^2 + dim (sqrt(v1) - sqrt(v2))^2)``. ``v`` are variances; means are
    vectors of ``dim`` entries (any shape) or scalars (the same value in every coordinate)."""
    diff = jnp.ravel(jnp.asarray(m1) - jnp.asarray(m2))
    if diff.size not in (1, dim):
        raise ValueError(f"means must have 1 or {dim} entries, got {diff.size}")
    mean_sq = jnp.sum(diff**2) * (dim if diff.size == 1 else 1)
    return jnp.sqrt(mean_sq + dim * (jnp.sqrt(jnp.asarray(v1)) - jnp.sqrt(jnp.asarray(v2))) ** 2)


# --- report ------------------------------------------------------------------------------------
def quality_report(
    key: Array,
    mixture: GaussianMixture,
    sde: SDE,
    x: ArrayLike,
    denoise: bool = True,
    num_reference: int | None = None,
    num_projections: int = 256,
) -> dict[str, float]:
    """Compare samples ``x`` ``(n, *shape)`` from a sampler with the law of a perfect sampler.

    The reference is ``mixture.ideal_sample(sde, denoise=denoise)`` (exact ``p_eps`` samples,
    Tweedie-denoised if ``denoise``; pass the same ``denoise`` the sampler used), with
    ``num_reference`` (default ``n``) samples. Returned keys (all lower is better):

    * ``sw2``: :func:`sliced_wasserstein2` of ``x`` vs the reference (data units);
    * ``mmd2``: :func:`mmd2_unbiased` vs the reference, RBF bandwidth ``bandwidth`` = median
      heuristic of the reference (shared with the floor);
    * ``mode_tv``: :func:`mode_weight_tv` of ``x``;
    * ``spread_w2``: :func:`mode_spread_w2` of ``x`` vs :meth:`~GaussianMixture.ideal_mode_means`
      / :meth:`~GaussianMixture.ideal_mode_scales`;
    * ``<metric>_floor``: the same metric for a second, independent batch of ``n`` ideal samples
      in place of ``x`` (same reference, projections and kernel). This is what an exact sampler
      scores at this ``n``: pure Monte-Carlo noise. Values within a small multiple of the floor
      are not evidence of sampler error; lowering the floor needs a larger ``n``;
    * ``n``, ``num_reference``, ``bandwidth``.
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    m = n if num_reference is None else int(num_reference)
    k_ref, k_twin, k_proj = jax.random.split(key, 3)
    # Reference in the samples' float dtype (None: the mixture's own, the common case).
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else None
    dtype = None if dtype == mixture.means.dtype else dtype
    ref = mixture.ideal_sample(k_ref, sde, m, denoise=denoise, dtype=dtype)
    twin = mixture.ideal_sample(k_twin, sde, n, denoise=denoise, dtype=dtype)
    h = median_bandwidth(ref)
    means = mixture.ideal_mode_means(sde, denoise)
    scales = mixture.ideal_mode_scales(sde, denoise)

    def metrics(s):
        return {
            "sw2": float(sliced_wasserstein2(k_proj, s, ref, num_projections)),
            "mmd2": mmd2_unbiased(s, ref, bandwidth=h),
            "mode_tv": float(mode_weight_tv(mixture, s)),
            "spread_w2": float(mode_spread_w2(mixture, s, means, scales)),
        }

    report: dict[str, float] = dict(metrics(x))
    report.update({f"{k}_floor": v for k, v in metrics(twin).items()})
    report.update({"n": n, "num_reference": m, "bandwidth": h})
    return report
