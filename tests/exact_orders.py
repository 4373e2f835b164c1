"""Convergence orders of deterministic fixed-grid solvers on exact Gaussian laws (test helper).

For data ``N(mu, s^2)`` a deterministic exponential-integrator / multistep solver acts coordinate
by coordinate and is affine in ``x_T``: ``x_out = c + a x_T``. One solve of the probe
``x_T = (0, 1)`` gives ``c`` and ``c + a``; from the exact ``p_{t_start} = N(alpha mu, alpha^2 s^2
+ sigma^2)`` the output law is then ``N(c + a alpha mu, a^2 (alpha^2 s^2 + sigma^2))``, with no
prior-mismatch floor, so only the discretisation error is left.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.testing import exact


def exact_start_law(sde, mu: float, s: float, solver, denoise: bool = True) -> exact.GaussianLaw:
    """Exact output law of a deterministic affine ``solver`` started from the exact ``p_{t_start}``."""
    score = exact.gaussian_score(sde, mu, s)
    probe = jnp.asarray([0.0, 1.0], jnp.float64)
    out = jax.jit(lambda x: jaxsde.solve(jax.random.PRNGKey(0), sde, score, solver, x, denoise=denoise).x)(probe)
    c, a = float(out[0]), float(out[1] - out[0])
    span = solver.time_span()
    t0 = sde.T if span is None else span[0]
    alpha, sigma = (float(v) for v in sde.marginal(jnp.asarray(t0, jnp.float64)))
    return exact.GaussianLaw(c + a * alpha * mu, a**2 * (alpha**2 * s**2 + sigma**2))


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
