"""Galaxy-image statistics (jaxsde.testing.metrics.galaxies): analytic cases, zero on identical sets, floors."""

import jax
import numpy as np
import pytest

from jaxsde.testing.metrics.galaxies import (
    GalaxyMetrics,
    bootstrap_sd,
    flux_histogram,
    flux_histogram_distance,
    flux_histogram_edges,
    pixel_sliced_w2,
    power_spectrum_distance,
    radial_power_spectrum,
)

KEY = jax.random.PRNGKey(0)


def blobs(rng, n, size=16, noise=0.02):
    """Toy galaxies: Gaussian profiles of random width, flux and centre plus white background noise."""
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.uniform(-2, 2, (n, 2))
    w = rng.uniform(1.0, 3.0, n)
    f = rng.lognormal(0.0, 0.5, n)
    d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
    return (f[:, None, None] * np.exp(-d2 / (2 * w[:, None, None] ** 2)) + noise * rng.standard_normal((n, size, size)))


def test_white_noise_spectrum_is_flat_at_its_variance():
    rng = np.random.default_rng(0)
    s = 0.7
    x = 3.0 + s * rng.standard_normal((400, 32, 32, 1))  # the mean lands in the DC bin, which is left out
    p = radial_power_spectrum(x)
    assert p.shape == (16,)
    # bin r pools ~2 pi r cells of 400 images: relative sd <= 1 / sqrt(400 * 4) = 2.5% at r = 1
    np.testing.assert_allclose(p, s**2, rtol=0.1)
    np.testing.assert_allclose(p.mean(), s**2, rtol=0.02)


def test_spectrum_sees_a_single_frequency():
    # a cosine with 5 cycles per image puts all its power in bin 5: P(5) = (H W / 4) * 2 cells / (H W) / n_cells(5)
    h = 32
    img = np.cos(2 * np.pi * 5 * np.arange(h) / h)[None, :] * np.ones((h, 1))
    p = radial_power_spectrum(img[None])
    assert np.argmax(p) == 4 and np.sum(p > 1e-20) == 1
    r = np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(h) * h)))
    np.testing.assert_allclose(p[4], (h * h / 2) / np.sum(r == 5), rtol=1e-10)


def test_power_spectrum_distance_scale_and_shift():
    x = blobs(np.random.default_rng(1), 50)
    assert power_spectrum_distance(x, x) == 0.0
    for c in (0.5, 2.0, 3.0):
        np.testing.assert_allclose(power_spectrum_distance(c * x, x), 2 * abs(np.log10(c)), rtol=1e-10)
    assert power_spectrum_distance(x + 0.3, x) < 1e-10
    # blurring (a narrower spectrum) is seen; the spectrum can be passed precomputed
    blurred = 0.5 * (x + np.roll(x, 1, axis=2))
    d = power_spectrum_distance(blurred, x)
    assert d > 0.1
    assert power_spectrum_distance(blurred, radial_power_spectrum(x), ref_is_spectrum=True) == d


def test_pixel_sliced_w2_identical_and_shift():
    x = blobs(np.random.default_rng(2), 100)
    assert pixel_sliced_w2(KEY, x, x) == pytest.approx(0.0, abs=1e-6)
    # a shift c of every pixel moves each projection u.x by c * sum(u), and E (sum u)^2 = 1 for a unit u:
    # SW2 = c sqrt(mean_u (sum u)^2), within 5% of c at 4096 directions (sd of the mean of chi2_1 / 4096: 2.2%)
    for c in (0.1, 0.5):
        assert pixel_sliced_w2(KEY, x + c, x, num_projections=4096) == pytest.approx(c, rel=0.05)
    with pytest.raises(ValueError, match="mismatch"):
        pixel_sliced_w2(KEY, x, x[:, :8])


def test_flux_histogram_uniform_shift():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 1, (200, 16, 16))
    edges = flux_histogram_edges(ref, bins=32, tail=0)
    assert len(edges) == 31 and np.all(np.diff(edges) > 0)
    h = flux_histogram(ref, edges)
    assert h.sum() == pytest.approx(1.0) and np.allclose(h, 1 / 32, atol=1e-3)
    assert flux_histogram_distance(ref, ref) == 0.0
    # U(c, 1 + c) against U(0, 1): a mass c leaves [0, c) for (1, 1 + c), TV = c. Exactly, on evenly spaced
    # "uniform" pixels (no sampling noise); with random pixels, up to the floor of two independent sets.
    grid = ((np.arange(64 * 256) + 0.5) / (64 * 256)).reshape(64, 16, 16)
    other = rng.uniform(0, 1, (200, 16, 16))
    floor = flux_histogram_distance(other, ref, edges)
    assert floor < 0.02
    for c in (0.1, 0.25):
        assert flux_histogram_distance(grid + c, grid, flux_histogram_edges(grid, 32, 0)) == pytest.approx(c, abs=1e-3)
        assert abs(flux_histogram_distance(other + c, ref, edges) - c) <= floor + 0.005
    # quantile bins: an increasing transform of both sets changes nothing
    assert flux_histogram_distance(np.arcsinh(10 * (other + 0.1)), np.arcsinh(10 * ref)) == pytest.approx(
        flux_histogram_distance(other + 0.1, ref), abs=1e-12)


def test_tail_edges_resolve_the_bright_pixels():
    ref = np.random.default_rng(4).exponential(1.0, (100, 16, 16))
    edges = flux_histogram_edges(ref, bins=16, tail=6)
    assert len(edges) == 15 + 6
    # the last edge is the 1 - 2^-6 / 16 quantile of Exp(1): -log(2^-6 / 16)
    assert edges[-1] == pytest.approx(np.log(16 * 2**6), rel=0.05)


def test_galaxy_metrics_floor_and_sensitivity():
    rng = np.random.default_rng(5)
    ref, a, b = blobs(rng, 400), blobs(rng, 200), blobs(rng, 200)
    gm = GalaxyMetrics(ref, KEY)
    floor_a, floor_b = gm.floor(a, bootstrap=20), gm.report(b, bootstrap=20, seed=1)
    assert set(floor_a) == {"sw2", "sw2_sd", "ps", "ps_sd", "hist", "hist_sd"}
    wrong = gm.report(1.5 * blobs(rng, 200), bootstrap=20)
    for name in GalaxyMetrics.NAMES:
        sd = floor_a[name + "_sd"]
        assert sd > 0
        # two independent sets agree within their noise; a 50% flux error is well outside it (3 sd)
        assert abs(floor_a[name] - floor_b[name]) < 3 * np.hypot(sd, floor_b[name + "_sd"]) + 1e-12, name
        assert wrong[name] > floor_a[name] + 3 * np.hypot(sd, wrong[name + "_sd"]), name
    assert wrong["ps"] == pytest.approx(2 * np.log10(1.5), abs=0.05)
    assert gm.values(ref)["hist"] == 0.0 and gm.values(ref)["ps"] == 0.0


def test_bootstrap_sd_of_the_mean():
    x = np.random.default_rng(6).standard_normal(400)
    # the sd of a mean of 400 unit normals is 0.05; 200 resamples estimate it within ~15%
    assert bootstrap_sd(np.mean, x, repeats=200) == pytest.approx(0.05, rel=0.15)
    with pytest.raises(ValueError):
        bootstrap_sd(np.mean, x, repeats=1)


def test_bad_shapes():
    with pytest.raises(ValueError, match="batch of images"):
        radial_power_spectrum(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="mismatch"):
        GalaxyMetrics(np.zeros((3, 8, 8))).values(np.zeros((3, 8, 4)))
