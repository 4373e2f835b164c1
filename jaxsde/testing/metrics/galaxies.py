"""Sample-quality statistics for galaxy images, against a reference set of images.

Every function takes batches of images shaped ``(n, H, W)`` or ``(n, H, W, C)`` in the space the
statistic is meant for: galaxygrad models sample in log space, so pass ``ckpt.to_data(y)``
(flux) here. All are distances: lower is better, 0 for identical sets. With finite samples two
independent sets from the same law score above 0; :meth:`GalaxyMetrics.report` gives each
value with its bootstrap standard deviation, and :meth:`GalaxyMetrics.floor` the same
statistic for a second, independent set from the reference law (the noise floor).

* :func:`pixel_sliced_w2` -- sliced 2-Wasserstein distance between the images as vectors of
  ``H W C`` pixels (flux units). A constant shift ``c`` of every pixel gives about ``|c|``.
* :func:`radial_power_spectrum` / :func:`power_spectrum_distance` -- the radially averaged
  power spectrum (spatial structure: sizes, profiles, noise texture), compared as the RMS over
  radial bins of ``log10`` ratios (dex). The DC bin is left out, so a constant shift gives 0
  and a scale ``c`` gives exactly ``2 |log10 c|``.
* :func:`flux_histogram` / :func:`flux_histogram_distance` -- the histogram of pooled pixel
  fluxes on bins whose edges are quantiles of the reference's pixels (so the statistic is
  unchanged by any increasing transform of the flux, e.g. an asinh stretch), compared by total
  variation, in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.typing import ArrayLike

from .samples import sliced_wasserstein2

__all__ = [
    "pixel_sliced_w2",
    "radial_power_spectrum",
    "power_spectrum_distance",
    "flux_histogram_edges",
    "flux_histogram",
    "flux_histogram_distance",
    "bootstrap_sd",
    "GalaxyMetrics",
]


def _images(x: ArrayLike) -> np.ndarray:
    """``(n, H, W[, C])`` -> float64 ``(n, H, W, C)``."""
    x = np.asarray(x, np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"expected a batch of images (n, H, W) or (n, H, W, C), got shape {x.shape}")
    return x


def pixel_sliced_w2(key: jax.Array, x: ArrayLike, ref: ArrayLike, num_projections: int = 256) -> float:
    """Sliced W2 between the images of ``x`` and ``ref`` as ``H W C``-vectors (units of the pixels).

    :func:`jaxsde.testing.metrics.sliced_wasserstein2` on the flattened images, in float32; reuse
    ``key`` to compare several batches on the same directions.
    """
    x, ref = _images(x), _images(ref)
    if x.shape[1:] != ref.shape[1:]:
        raise ValueError(f"image shape mismatch: {x.shape[1:]} vs {ref.shape[1:]}")
    return float(sliced_wasserstein2(key, x.astype(np.float32), ref.astype(np.float32), num_projections))


def _radii(h: int, w: int) -> tuple[np.ndarray, int]:
    """Integer radial frequency index of every FFT cell and the number of bins (1 .. min(H, W) // 2)."""
    ky = np.fft.fftfreq(h) * h
    kx = np.fft.fftfreq(w) * w
    r = np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).astype(int)
    return r, min(h, w) // 2


def radial_power_spectrum(x: ArrayLike) -> np.ndarray:
    """Radially averaged power spectrum of a batch of images -> ``(min(H, W) // 2,)``.

    Per image and channel, ``P(k) = |FFT(image)(k)|^2 / (H W)`` (so white noise of variance
    ``s^2`` has ``E P(k) = s^2`` at every ``k``), averaged over the cells whose radial frequency
    ``sqrt(kx^2 + ky^2)`` (in cycles per image) rounds to ``r``, then over images and channels.
    Entry ``r - 1`` is bin ``r = 1 .. min(H, W) // 2``: the DC term (mean flux) is left out, and
    so are the corners beyond the Nyquist radius.
    """
    x = _images(x)
    n, h, w, c = x.shape
    power = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2 / (h * w)
    power = power.mean(axis=(0, 3))  # (H, W)
    r, nbins = _radii(h, w)
    sums = np.bincount(r.ravel(), weights=power.ravel(), minlength=nbins + 1)
    counts = np.bincount(r.ravel(), minlength=nbins + 1)
    return sums[1:nbins + 1] / counts[1:nbins + 1]


def power_spectrum_distance(x: ArrayLike, ref: ArrayLike | np.ndarray, ref_is_spectrum: bool = False) -> float:
    """RMS over radial bins of ``log10 P_x(k) - log10 P_ref(k)`` (dex), :func:`radial_power_spectrum`.

    ``ref`` is a batch of images, or its spectrum with ``ref_is_spectrum=True`` (to score many
    batches against one reference). Scaling every image by ``c`` gives exactly ``2 |log10 c|``;
    adding a constant gives 0 (the DC bin is not compared).
    """
    px = radial_power_spectrum(x)
    pr = np.asarray(ref, np.float64) if ref_is_spectrum else radial_power_spectrum(ref)
    if px.shape != pr.shape:
        raise ValueError(f"spectrum length mismatch: {px.shape} vs {pr.shape}")
    tiny = np.finfo(np.float64).tiny
    d = np.log10(np.maximum(px, tiny)) - np.log10(np.maximum(pr, tiny))
    return float(np.sqrt(np.mean(d**2)))


def flux_histogram_edges(ref: ArrayLike, bins: int = 64, tail: int = 8) -> np.ndarray:
    """Bin edges for :func:`flux_histogram`: quantiles of the reference's pooled pixels.

    ``bins`` equal-mass bins, refined in the bright tail with the quantiles at levels
    ``1 - 2^-k / bins`` for ``k = 1 .. tail`` (so the brightest ``1 / bins`` of the pixels, the
    galaxy cores, is resolved too). Returns the ``len - 1`` interior edges, increasing and
    distinct; the outer bins are open (``-inf``, ``+inf``).
    """
    if bins < 2 or tail < 0:
        raise ValueError(f"need bins >= 2 and tail >= 0, got {bins}, {tail}")
    levels = np.concatenate([np.arange(1, bins) / bins, 1.0 - 0.5 ** np.arange(1, tail + 1) / bins])
    return np.unique(np.quantile(_images(ref).ravel(), np.sort(levels)))


def flux_histogram(x: ArrayLike, edges: np.ndarray) -> np.ndarray:
    """Fraction of the pooled pixels of ``x`` in each bin ``(-inf, e_0), [e_0, e_1), ..., [e_last, inf)``."""
    pix = _images(x).ravel()
    counts = np.bincount(np.searchsorted(np.asarray(edges), pix, side="right"), minlength=len(edges) + 1)
    return counts / pix.size


def flux_histogram_distance(x: ArrayLike, ref: ArrayLike, edges: np.ndarray | None = None) -> float:
    """Total variation ``1/2 sum |p - q|`` between the pixel-flux histograms of ``x`` and ``ref``.

    ``edges`` defaults to :func:`flux_histogram_edges` of ``ref``. In [0, 1]; moving a fraction
    ``f`` of the pixels into bins the reference leaves (nearly) empty gives about ``f``.
    """
    edges = flux_histogram_edges(ref) if edges is None else np.asarray(edges)
    return float(0.5 * np.sum(np.abs(flux_histogram(x, edges) - flux_histogram(ref, edges))))


def bootstrap_sd(fn: Callable[[np.ndarray], float], x: ArrayLike, repeats: int = 30, seed: int = 0) -> float:
    """Standard deviation of ``fn`` over ``repeats`` resamples (with replacement) of the batch ``x``."""
    x = np.asarray(x)
    if repeats < 2:
        raise ValueError(f"need repeats >= 2, got {repeats}")
    rng = np.random.default_rng(seed)
    return float(np.std([fn(x[rng.integers(0, len(x), len(x))]) for _ in range(repeats)], ddof=1))


class GalaxyMetrics:
    """The three statistics of a batch against one fixed reference set (flux images ``(m, H, W[, C])``).

    The reference's spectrum, histogram edges and the sliced-W2 directions (from ``key``) are
    fixed once, so every batch is scored on the same footing. :meth:`report` returns
    ``{"sw2", "sw2_sd", "ps", "ps_sd", "hist", "hist_sd"}``: each statistic of the batch against
    the reference and its bootstrap sd over resamples of the batch (the reference held fixed).
    :meth:`floor` is :meth:`report` of an independent set from the reference's law: the value a
    perfect sampler scores at that batch size.
    """

    NAMES = ("sw2", "ps", "hist")

    def __init__(self, ref: ArrayLike, key: jax.Array | None = None, num_projections: int = 256, bins: int = 64):
        self.ref = _images(ref)
        self.key = jax.random.PRNGKey(0) if key is None else key
        self.num_projections = num_projections
        self.spectrum = radial_power_spectrum(self.ref)
        self.edges = flux_histogram_edges(self.ref, bins)
        self.ref_hist = flux_histogram(self.ref, self.edges)

    def values(self, x: ArrayLike) -> dict[str, float]:
        """``{"sw2", "ps", "hist"}`` of the batch ``x`` (same image shape as the reference)."""
        x = _images(x)
        if x.shape[1:] != self.ref.shape[1:]:
            raise ValueError(f"image shape mismatch: {x.shape[1:]} vs reference {self.ref.shape[1:]}")
        return {
            "sw2": pixel_sliced_w2(self.key, x, self.ref, self.num_projections),
            "ps": power_spectrum_distance(x, self.spectrum, ref_is_spectrum=True),
            "hist": float(0.5 * np.sum(np.abs(flux_histogram(x, self.edges) - self.ref_hist))),
        }

    def report(self, x: ArrayLike, bootstrap: int = 30, seed: int = 0) -> dict[str, float]:
        """:meth:`values` plus ``<name>_sd``, the bootstrap sd over ``bootstrap`` resamples of ``x``."""
        x = _images(x)
        out = self.values(x)
        rng = np.random.default_rng(seed)
        boots = [self.values(x[rng.integers(0, len(x), len(x))]) for _ in range(bootstrap)]
        for name in self.NAMES:
            out[name + "_sd"] = float(np.std([b[name] for b in boots], ddof=1)) if bootstrap >= 2 else 0.0
        return out

    def floor(self, other_ref: ArrayLike, bootstrap: int = 30, seed: int = 0) -> dict[str, float]:
        """The noise floor: :meth:`report` of ``other_ref``, a second set from the reference's law
        drawn independently of it (compare batches of the same size)."""
        return self.report(other_ref, bootstrap, seed)
