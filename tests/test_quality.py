"""GGF on an exact Gaussian mixture (VP, d=32): EM-1000's quality for under a third of its NFE."""

import jax
import numpy as np
import pytest

import jaxsde
from jaxsde import driver
from jaxsde.testing import metrics
from jaxsde.testing.targets import GaussianMixture


# a long statistical test (1000 samples of EM-1000 and GGF, quality reports): the slow tier; GGF's mechanics and
# convergence (test_ggf.py, test_convergence.py) and the metrics (test_metrics.py) stay fast
@pytest.mark.slow
def test_ggf_matches_em1000_with_a_third_of_the_nfe():
    sde = jaxsde.VPSDE()
    d, n = 32, 1000
    mixture = GaussianMixture.ring(8, (d,), radius=0.6, scale=0.02, key=jax.random.PRNGKey(1))
    score = mixture.score(sde)

    def run(solver):
        sol = jax.jit(lambda k: driver.sample(k, sde, score, solver, (d,), n))(jax.random.PRNGKey(0))
        assert np.all(np.asarray(sol.result) == 0)
        report = metrics.quality_report(jax.random.PRNGKey(5), mixture, sde, sol.x)
        return float(np.asarray(sol.stats.nfe).mean()), report

    ggf_nfe, ggf = run(jaxsde.GottaGoFast(rtol=0.05))
    em_nfe, em = run(jaxsde.EulerMaruyama(1000))
    matched_nfe, matched = run(jaxsde.EulerMaruyama(int(ggf_nfe) - 1))

    assert em_nfe == 1001 and ggf_nfe < em_nfe / 3, ggf_nfe

    def within_noise(a, b):
        """a's quality is no worse than b's up to the metric's noise (half the exact-vs-exact floor)."""
        return (a["spread_w2"] <= b["spread_w2"] + 0.5 * b["spread_w2_floor"]
                and a["sw2"] <= b["sw2"] + 0.5 * b["sw2_floor"]
                and a["mode_tv"] <= b["mode_tv"] + 0.05)

    assert within_noise(ggf, em), (ggf, em)
    # The criterion has teeth: Euler-Maruyama at GGF's NFE fails it (inflated within-mode spread).
    assert not within_noise(matched, em), (matched, em)
    assert matched["spread_w2"] > 2 * ggf["spread_w2"]
