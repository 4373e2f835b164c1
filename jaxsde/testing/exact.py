"""Exact output laws on a single isotropic Gaussian target (no Monte-Carlo noise).

For data ``x_0 ~ N(mu, s^2 I)`` every SDE here keeps the problem linear and isotropic:
the exact score is ``-(x - alpha mu) / C(t)``, ``C = alpha^2 s^2 + sigma^2``, and the
coordinates evolve independently. A fixed-step solver whose update is linear in the state
and in the noise (Euler-Maruyama, reverse diffusion) then maps ``(x_T, z_1..z_N)`` to
``a x_T + sum_i b_i . z_i + c`` in each coordinate, so its output law is exactly
``N(c, a^2 prior_std^2 + |b|^2)``. :func:`solver_output_law` extracts ``a, b, c`` by
differentiating (forward mode) ONE one-dimensional solve with respect to its inputs (given noise), and
checks the affinity it relies on.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..driver import solve
from ..noise import GivenNoise
from ..sde import SDE


def _float():
    """float64 when x64 is enabled (also inside ``jax.enable_x64``), else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


class GaussianLaw(NamedTuple):
    """Law ``N(mean, var)`` of each coordinate (all coordinates alike)."""

    mean: float
    var: float


def gaussian_score(sde: SDE, mu: float, s: float):
    """Exact score of ``p_t`` for data ``N(mu, s^2 I)`` (one sample, any shape)."""

    def score(x, t):
        alpha, sigma = sde.marginal(t)
        return -(x - alpha * mu) / (alpha**2 * s**2 + sigma**2)

    return score


def ideal_law(sde: SDE, mu: float, s: float, t_end: float | None = None, denoise: bool = True) -> GaussianLaw:
    """The law a perfect solver produces: exact ``p_{t_end}``, then (if ``denoise``) the exact
    Tweedie step, which maps ``N(alpha mu, C)`` to ``N(mu, alpha^2 s^4 / C)``."""
    t_end = sde.eps if t_end is None else t_end
    alpha, sigma = (float(v) for v in sde.marginal(jnp.asarray(t_end, _float())))
    c = alpha**2 * s**2 + sigma**2
    if denoise:
        return GaussianLaw(mu, alpha**2 * s**4 / c)
    return GaussianLaw(alpha * mu, c)


def w2(law1: GaussianLaw, law2: GaussianLaw, dim: int = 1) -> float:
    """Exact 2-Wasserstein distance between ``N(m1, v1 I_d)`` and ``N(m2, v2 I_d)``."""
    d2 = (law1.mean - law2.mean) ** 2 + (math.sqrt(law1.var) - math.sqrt(law2.var)) ** 2
    return math.sqrt(dim * d2)


def solver_output_law(sde: SDE, mu: float, s: float, solver, check_affine: bool = True,
                      **solve_kwargs) -> GaussianLaw:
    """Exact per-coordinate output law of a fixed-step, noise-affine solver on ``N(mu, s^2)`` data.

    Raises ``ValueError`` for solvers without a fixed number of attempts, and (with
    ``check_affine``) if the output is not affine in the inputs.
    """
    attempts = solver.max_attempts()
    if attempts is None:
        raise ValueError("solver_output_law needs a fixed-step solver (its output must be affine)")
    dtype = _float()
    count = solver.noise_per_attempt
    score = gaussian_score(sde, mu, s)

    def run(x_T, z):
        noise = GivenNoise(z) if count else None
        sol = solve(jax.random.PRNGKey(0), sde, score, solver, x_T, noise=noise, **solve_kwargs)
        return sol.x[0]

    x0 = jnp.zeros((1,), dtype)
    z0 = jnp.zeros((attempts, max(count, 1), 1), dtype)
    c, (a, b) = jax.jit(lambda x, z: (run(x, z), jax.jacfwd(run, argnums=(0, 1))(x, z)))(x0, z0)
    if check_affine:
        k1, k2 = jax.random.split(jax.random.PRNGKey(1))
        x1 = jax.random.normal(k1, x0.shape, dtype)
        z1 = jax.random.normal(k2, z0.shape, dtype)
        predicted = c + jnp.sum(a * x1) + jnp.sum(b * z1)
        actual = jax.jit(run)(x1, z1)
        if not jnp.allclose(predicted, actual, rtol=1e-4, atol=1e-5 * (1 + abs(float(actual)))):
            raise ValueError(f"{type(solver).__name__}'s output is not affine in (x_T, noise) on this problem")
    if not count:
        b = jnp.zeros_like(b)
    var = float(a[0]) ** 2 * sde.prior_std**2 + float(jnp.sum(b**2))
    return GaussianLaw(float(c), var)
