"""Sample-quality metrics (see :mod:`jaxsde.testing.metrics.samples`). Lower is better throughout."""

from jaxsde.testing.metrics.samples import (
    gaussian_w2,
    isotropic_gaussian_w2,
    median_bandwidth,
    mmd2_unbiased,
    mode_spread_w2,
    mode_weight_tv,
    quality_report,
    sliced_wasserstein2,
)

__all__ = [
    "gaussian_w2",
    "isotropic_gaussian_w2",
    "median_bandwidth",
    "mmd2_unbiased",
    "mode_spread_w2",
    "mode_weight_tv",
    "quality_report",
    "sliced_wasserstein2",
]
