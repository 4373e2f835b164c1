"""Convergence orders of deterministic fixed-grid solvers on exact Gaussian laws (test helper).

For data ``N(mu, s^2)`` a deterministic exponential-integrator / multistep solver is affine in
``x_T`` coordinate-wise: ``x_out = c + a x_T``. :func:`jaxsde.testing.exact.solver_output_law`
gives ``N(c, a^2 prior_std^2)`` from the prior; :func:`exact_start_law` turns that into the law
from the exact ``p_{t_start} = N(alpha mu, alpha^2 s^2 + sigma^2)`` (``a > 0``: a flow map keeps
orientation), which removes the prior-mismatch floor, so only the discretisation error is left.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxsde.testing import exact


def exact_start_law(sde, mu: float, s: float, solver, denoise: bool = True) -> exact.GaussianLaw:
    """Exact output law of a deterministic affine ``solver`` started from the exact ``p_{t_start}``."""
    law = exact.solver_output_law(sde, mu, s, solver, check_affine=False, denoise=denoise)
    a = math.sqrt(law.var) / sde.prior_std
    span = solver.time_span()
    t0 = sde.T if span is None else span[0]
    alpha, sigma = (float(v) for v in sde.marginal(jnp.asarray(t0, jnp.float64)))
    return exact.GaussianLaw(law.mean + a * alpha * mu, a**2 * (alpha**2 * s**2 + sigma**2))


def w2_errors(sde, mu: float, s: float, make, ns, denoise: bool = True) -> list[float]:
    """Exact W2 from the ideal law at the grid's end (Tweedie-denoised with ``denoise``) for ``make(n)``."""
    errs = []
    for n in ns:
        solver = make(n)
        span = solver.time_span()
        ideal = exact.ideal_law(sde, mu, s, None if span is None else span[1], denoise=denoise)
        errs.append(exact.w2(exact_start_law(sde, mu, s, solver, denoise=denoise), ideal))
    return errs


def slope(ns, errs) -> float:
    """Measured order: minus the log-log slope of the error against the step count."""
    return float(-np.polyfit(np.log(ns), np.log(errs), 1)[0])
