"""Step-size controllers apart from solvers: the regression of GGF / the PF-ODE onto them, the
controllers' formulas, any adaptive solver with any controller, and bad input."""

from pathlib import Path

import numpy as np
import pytest
from adaptive_regression import problems, run

REFERENCE = np.load(Path(__file__).parent / "data" / "adaptive_regression.npz")


@pytest.mark.parametrize("name", sorted(problems()))
def test_solvers_on_controllers_reproduce_the_results_before_the_split(name):
    """GGF and the PF-ODE moved onto jaxsde.controllers: same samples (1e-6) and the same NFE and
    rejections, sample by sample, as the solvers gave before (tests/data, written at c925d60)."""
    x, nfe, rejected = run(name)
    np.testing.assert_array_equal(nfe, REFERENCE[f"{name}/nfe"])
    np.testing.assert_array_equal(rejected, REFERENCE[f"{name}/rejected"])
    np.testing.assert_allclose(x, REFERENCE[f"{name}/x"], atol=1e-6, rtol=0)
