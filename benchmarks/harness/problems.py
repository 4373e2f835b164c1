"""Problems shared by several suites: the small conv score network of the overhead suites, and the exact
Gaussian-mixture targets of the adaptive and frontier suites (with their exact scores)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.testing import metrics
from jaxsde.testing.targets import GaussianMixture, LowRankMixture


class ConvScoreNet(nn.Module):
    """A few 3x3 convolutions (``channels`` wide) with a sinusoidal time embedding added as a per-channel bias
    before each hidden activation; ONE sample ``(H, W, C)``, scalar ``t``."""

    channels: int = 64
    depth: int = 3

    @nn.compact
    def __call__(self, x, t):
        half = 16
        freqs = jnp.exp(-jnp.log(1e4) * jnp.arange(half) / half)
        emb = jnp.concatenate([jnp.sin(1e3 * t * freqs), jnp.cos(1e3 * t * freqs)])
        emb = nn.silu(nn.Dense(4 * self.channels)(emb))
        h = nn.Conv(self.channels, (3, 3))(x)
        for _ in range(self.depth - 1):
            h = nn.silu(h + nn.Dense(self.channels)(emb))
            h = nn.Conv(self.channels, (3, 3))(h)
        return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))


def network_setup(cfg: dict) -> tuple[Callable, dict, tuple[int, ...]]:
    """``(score(params, x, t), params, shape)``: :class:`ConvScoreNet` (``cfg``'s channels, depth, shape) plus the
    prior's score ``-x``, one sample."""
    net = ConvScoreNet(channels=cfg["channels"], depth=cfg["depth"])
    shape = tuple(cfg["shape"])
    params = net.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros(()))

    def score(params, x, t):
        return net.apply(params, x, t) - x

    return score, params, shape


def chained_evals_fn(score: Callable, count: int) -> Callable:
    """``(params, x, t) ->`` ``count`` chained vmapped evaluations ``x <- x + 1e-3 score(x, t_i)`` with per-sample
    times (as the driver's per-sample ``t``), parameters traced: nothing can be hoisted."""

    def evals(params, x, t):
        def body(i, x):
            return x + 1e-3 * jax.vmap(functools.partial(score, params))(x, t - 1e-4 * i.astype(t.dtype))

        return jax.lax.fori_loop(0, count, body, x)

    return evals


class Target(NamedTuple):
    """A sampling problem with its quality measure: the adaptive and frontier suites' problems."""

    name: str
    sde: jaxsde.SDE
    shape: tuple[int, ...]
    score: Callable
    quality: Callable  # (n, *shape) samples -> (value, bootstrap sd)
    floor: Callable  # key, n -> quality of exact samples
    label: str


def bootstrap_sd(fn: Callable, x: np.ndarray, repeats: int = 30, seed: int = 0) -> float:
    """The standard deviation of ``fn`` over ``repeats`` bootstrap resamples of the rows of ``x``."""
    rng = np.random.default_rng(seed)
    return float(np.std([fn(x[rng.integers(0, len(x), len(x))]) for _ in range(repeats)]))


def exact_target(name, sde, mix, distance, label) -> Target:
    """A target with an exact score and exact samples: quality = ``distance`` with its bootstrap sd, floor = the
    same for ``mix.ideal_sample``."""

    def quality(x):
        return distance(x), bootstrap_sd(distance, np.asarray(x))

    def floor(key, n):
        return quality(np.asarray(mix.ideal_sample(key, sde, n)))

    return Target(name, sde, mix.shape, mix.score(sde), quality, floor, label)


def lowrank_target(ve: bool = False) -> Target:
    """``LowRankMixture``: 8 components near rank-8 subspaces of d = 256 (off-subspace std 0.01), exact score; VP,
    or for VE the same mixture mapped affinely from [-1, 1] to [0, 1] (means ``0.5 + 0.5 mu``, stds halved).
    Quality: the whitened mode W2 of ``LowRankMixture.mode_statistics`` against 50 000 ideal samples: per
    component ``sqrt(|dm_in|^2 / r + (sqrt(v_in) - sqrt(v_in*))^2 + |dm_off|^2 / (d - r) + (sqrt(v_off) -
    sqrt(v_off*))^2)``, count-weighted RMS over components."""
    sde = jaxsde.VESDE() if ve else jaxsde.VPSDE()
    mix = LowRankMixture.random(jax.random.PRNGKey(2024), 8, (16, 16), rank=8, std_range=(0.05, 0.3), floor=0.01)
    if ve:
        mix = mix.replace(means=0.5 + 0.5 * mix.means, variances=0.25 * mix.variances, floor=0.5 * mix.floor)
    ref = [np.asarray(v, np.float64)
           for v in mix.mode_statistics(mix.ideal_sample(jax.random.PRNGKey(99), sde, 50_000))]

    def distance(x):
        counts, in_m, in_v, off_m, off_v = (np.asarray(v, np.float64) for v in mix.mode_statistics(jnp.asarray(x)))
        d2 = (np.sum((in_m - ref[1]) ** 2, 1) / in_m.shape[1] + (np.sqrt(in_v) - np.sqrt(ref[2])) ** 2
              + np.sum((off_m - ref[3]) ** 2, 1) / off_m.shape[1] + (np.sqrt(off_v) - np.sqrt(ref[4])) ** 2)
        w = np.where(counts >= 2, counts, 0.0)
        return float(np.sqrt(np.sum(w * d2) / np.sum(w)))

    label = "whitened mode W2" + (" (data units of [0, 1]: half the VP scale)" if ve else "")
    return exact_target("lowrank-ve" if ve else "lowrank", sde, mix, distance, label)


def ring_mixture(shape: tuple[int, ...], ve: bool = False) -> GaussianMixture:
    """The benchmarks' 8-mode ring mixture (``GaussianMixture.ring``, key 1234): for VP radius 0.6, within-mode std
    0.02, jitter 0.05, data in [-1, 1]; for VE the same mapped to [0, 1] (centre 0.5, radius 0.3, std 0.01, jitter
    0.025)."""
    if ve:
        return GaussianMixture.ring(8, shape, radius=0.3, scale=0.01, key=jax.random.PRNGKey(1234), jitter=0.025,
                                    center=0.5)
    return GaussianMixture.ring(8, shape, radius=0.6, scale=0.02, key=jax.random.PRNGKey(1234), jitter=0.05)


def gmm3072_target(ve: bool = False) -> Target:
    """:func:`ring_mixture` in d = 3072 (32x32x3), exact score, VP or VE. Quality: ``mode_spread_w2`` (whitened)."""
    sde, mix = jaxsde.VESDE() if ve else jaxsde.VPSDE(), ring_mixture((32, 32, 3), ve)
    means, scales = mix.ideal_mode_means(sde, True), mix.ideal_mode_scales(sde, True)

    def spread(x):
        return float(metrics.mode_spread_w2(mix, jnp.asarray(x), means, scales))

    return exact_target("gmm3072-ve" if ve else "gmm3072", sde, mix, spread, "mode-spread W2 (whitened)")


def digits_target() -> Target:
    """The embedded digits U-Net (VP). Quality: FD-digits against the training set (30 bootstrap resamples);
    floor: the held-out real digits (at most 359) against the training set."""
    from jaxsde.testing.metrics.digits import DigitsMetrics

    ckpt = jaxsde.pretrained("digits")
    dm = DigitsMetrics()

    def quality(x):
        rep = dm.report(np.asarray(x), data_range=ckpt.data_range, bootstrap=30)
        return rep["fd"], rep["fd_std"]

    def floor(key, n):
        rep = dm.report(dm.test_images[:n], data_range=(0.0, 1.0), bootstrap=30)
        return rep["fd"], rep["fd_std"]

    return Target("digits", ckpt.sde, ckpt.shape, ckpt.score, quality, floor,
                  "FD-digits (floor: held-out real digits, n <= 359)")


TARGETS = {"lowrank": lowrank_target, "lowrank-ve": lambda: lowrank_target(True), "gmm3072": gmm3072_target,
           "gmm3072-ve": lambda: gmm3072_target(True), "digits": digits_target}
