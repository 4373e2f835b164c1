"""The embedded models load offline and generate recognisable digits."""

import jax
import numpy as np
import pytest

import jaxsde
from jaxsde.checkpoints.embedded import NAMES, available
from jaxsde.testing.metrics.digits import DigitsMetrics


def test_names_and_errors():
    assert set(available()) <= set(NAMES)
    with pytest.raises(ValueError, match="available: digits"):
        jaxsde.pretrained("imagenet")


@pytest.mark.slow  # a statistical quality check on many samples; test_names_and_errors stays fast
@pytest.mark.skipif("digits" not in available(), reason="embedded weights not present")
def test_ggf_samples_are_recognisable_digits():
    ckpt = jaxsde.pretrained("digits")
    assert ckpt.shape == (8, 8, 1) and isinstance(ckpt.sde, jaxsde.VPSDE) and ckpt.data_range == (-1.0, 1.0)
    n = 128
    sol = jax.jit(lambda p, k: jaxsde.sample(k, ckpt.sde, ckpt.score_fn(p), jaxsde.GottaGoFast(rtol=0.05),
                                             ckpt.shape, n))(ckpt.params, jax.random.PRNGKey(0))
    assert np.all(np.asarray(sol.result) == 0)
    report = DigitsMetrics().report(np.asarray(sol.x), ckpt.data_range)
    # n=128: a loose version of the benchmark's criteria (>= 90% confident, class TV <= 0.1 at large n)
    assert report["confident"] >= 0.85, report
    assert report["class_tv"] <= 0.2, report
    assert report["fd"] < 3 * report["fd_floor"], report
