"""Sample-quality metrics: exact values on small cases, noise floors, sensitivity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxsde.sde import VPSDE
from jaxsde.testing.metrics import (
    gaussian_w2,
    isotropic_gaussian_w2,
    median_bandwidth,
    mmd2_unbiased,
    mode_spread_w2,
    mode_weight_tv,
    quality_report,
    sliced_wasserstein2,
)
from jaxsde.testing.targets import GaussianMixture

KEY = jax.random.PRNGKey(0)
SDE = VPSDE()
N = 2000


@pytest.fixture(scope="module")
def ring():
    gm = GaussianMixture.ring(8, (2,), radius=0.6, scale=0.05)
    ref = gm.ideal_sample(jax.random.PRNGKey(1), SDE, N)
    twin = gm.ideal_sample(jax.random.PRNGKey(2), SDE, N)
    return gm, ref, twin


def test_sw2_exact_cases():
    x = jnp.array([[0.0], [1.0], [2.0]])
    y = jnp.array([[0.0], [3.0]])
    # 1-D: quantile coupling by hand, W2^2 = 1/6 * 1 + 1/6 * 4 + 1/3 * 1 = 7/6.
    np.testing.assert_allclose(sliced_wasserstein2(KEY, x, y, 8), np.sqrt(7 / 6), rtol=1e-6)
    np.testing.assert_allclose(sliced_wasserstein2(KEY, y, x, 8), np.sqrt(7 / 6), rtol=1e-6)
    z = jax.random.normal(KEY, (300, 2, 2))
    assert float(sliced_wasserstein2(KEY, z, z, 4000)) == 0.0
    c = jnp.array([[0.3, -0.2], [0.1, 0.4]])
    shifted = sliced_wasserstein2(KEY, z, z + c, 4000)
    np.testing.assert_allclose(shifted, jnp.linalg.norm(c) / 2.0, rtol=0.1)  # |c| / sqrt(d)


def test_mmd_blocked_matches_dense_and_detects_shift():
    x = jax.random.normal(jax.random.PRNGKey(3), (150, 5))
    y = jax.random.normal(jax.random.PRNGKey(4), (120, 5)) + 0.5
    h = median_bandwidth(x, y)
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def k(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * h * h))

    n, m = len(xn), len(yn)
    dense = (k(xn, xn).sum() - n) / (n * (n - 1)) + (k(yn, yn).sum() - m) / (m * (m - 1)) - 2 * k(xn, yn).mean()
    np.testing.assert_allclose(mmd2_unbiased(x, y, h, block_entries=1000), dense, rtol=1e-4)
    np.testing.assert_allclose(mmd2_unbiased(x, y), dense, rtol=1e-4)  # median default
    assert dense > 0.05


def test_metric_floors_small_and_shift_detected(ring):
    gm, ref, twin = ring
    h = median_bandwidth(ref)
    shifted = twin + 0.1  # two data stds per coordinate
    sw_floor = sliced_wasserstein2(KEY, twin, ref)
    mmd_floor = mmd2_unbiased(twin, ref, h)
    # In 2-D, mode-weight fluctuations dominate both floors (SW2 ~ 0.02-0.05 at n = 2000).
    assert sw_floor < 0.06 and abs(mmd_floor) < 2e-3
    assert sliced_wasserstein2(KEY, shifted, ref) > 2 * sw_floor
    assert mmd2_unbiased(shifted, ref, h) > 5 * abs(mmd_floor)
    assert mode_weight_tv(gm, twin) < 0.05


def test_mode_weight_tv_dropped_modes(ring):
    gm, ref, _ = ring
    kept = ref[gm.assign_modes(ref) < 4]  # drop modes 4..7 (total weight 1/2)
    np.testing.assert_allclose(mode_weight_tv(gm, kept), 0.5, atol=1e-6)
    one = ref[gm.assign_modes(ref) == 0]
    np.testing.assert_allclose(mode_weight_tv(gm, one), 7 / 8, atol=1e-6)


def test_mode_spread_w2_sees_variance_inflation(ring):
    gm, ref, twin = ring
    means, scales = gm.ideal_mode_means(SDE), gm.ideal_mode_scales(SDE)
    # Same modes and weights, within-mode variance doubled (std * sqrt 2).
    inflated = GaussianMixture.create(gm.weights, means, scales * np.sqrt(2.0)).sample(jax.random.PRNGKey(5), N)
    floor = mode_spread_w2(gm, twin, means, scales)
    spread = mode_spread_w2(gm, inflated, means, scales)
    assert floor < 0.1
    # Default target = the data law itself.
    assert mode_spread_w2(gm, gm.sample(jax.random.PRNGKey(6), N)) < 0.1
    np.testing.assert_allclose(spread, np.sqrt(2.0) - 1.0, atol=0.08)
    assert spread > 4 * floor
    # SW2 barely notices: its value moves about as much as its own Monte-Carlo noise (ratio to
    # the exact-vs-exact value ~0.9-2 across seeds, vs ~5-8 for spread_w2); MMD^2 likewise.
    sw_ratio = sliced_wasserstein2(KEY, inflated, ref) / sliced_wasserstein2(KEY, twin, ref)
    assert spread / floor > 2 * sw_ratio
    # A shift of one data std per coordinate reads as ~1 whitened unit.
    np.testing.assert_allclose(mode_spread_w2(gm, twin + 0.05, means, scales), 1.0, atol=0.1)


def test_gaussian_w2_closed_forms():
    rng = np.random.default_rng(0)
    d = 4
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    iso = isotropic_gaussian_w2(m1, 0.3, m2, 1.7, d)
    np.testing.assert_allclose(gaussian_w2(m1, 0.3 * np.eye(d), m2, 1.7 * np.eye(d)), iso)
    np.testing.assert_allclose(iso, np.sqrt(np.sum((m1 - m2) ** 2) + d * (np.sqrt(0.3) - np.sqrt(1.7)) ** 2), rtol=1e-6)
    np.testing.assert_allclose(isotropic_gaussian_w2(0.5, 1.0, 0.0, 1.0, 9), 1.5, rtol=1e-6)
    # Commuting (diagonal) covariances: sum (sqrt a - sqrt b)^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    np.testing.assert_allclose(gaussian_w2(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)), 2**0.5)
    # General case against scipy's matrix square root; symmetric; zero on identical inputs.
    g1, g2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = g1 @ g1.T + 0.1 * np.eye(d), g2 @ g2.T + 0.1 * np.eye(d)
    r2 = scipy.linalg.sqrtm(s2)
    ref = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r2 @ s1 @ r2)).real
    np.testing.assert_allclose(gaussian_w2(m1, s1, m2, s2), np.sqrt(ref), rtol=1e-8)
    np.testing.assert_allclose(gaussian_w2(m2, s2, m1, s1), np.sqrt(ref), rtol=1e-8)
    assert gaussian_w2(m1, s1, m1, s1) < 1e-6


def test_quality_report(ring):
    gm, _, twin = ring
    rep = quality_report(KEY, gm, SDE, twin)
    for name in ["sw2", "mmd2", "mode_tv", "spread_w2"]:
        assert np.isfinite(rep[name]) and np.isfinite(rep[name + "_floor"])
    assert rep["n"] == N and rep["num_reference"] == N and rep["bandwidth"] > 0
    assert rep["spread_w2"] < 3 * rep["spread_w2_floor"]
    assert rep["sw2"] < 3 * rep["sw2_floor"]
    bad = quality_report(KEY, gm, SDE, twin + 0.1)
    assert bad["sw2"] > 2 * bad["sw2_floor"] and bad["spread_w2"] > 5 * bad["spread_w2_floor"]
    assert bad["mmd2"] > 5 * abs(bad["mmd2_floor"])
    assert bad["sw2_floor"] == rep["sw2_floor"]  # same key: same reference, twin, projections
