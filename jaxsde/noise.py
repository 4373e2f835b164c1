"""Sources of the Gaussian noise a stochastic solver consumes.

The driver asks the source for the standard normals of one *attempt* (one loop iteration)
at once: an array shaped ``(count, *sample_shape)`` where ``count`` is the solver's
``noise_per_attempt``. One draw per attempt, shared by all stages of that attempt.

* :class:`FreshNoise` (default): ``normal(fold_in(key, attempt))``. A rejected attempt's
  noise is discarded and the retry draws fresh noise, as Gotta Go Fast prescribes.
* :class:`GivenNoise`: a pre-drawn array indexed by attempt; lets a test drive two solvers
  with identical noise, and lets solver outputs be differentiated with respect to the noise
  (exact output laws for affine problems).
* :class:`BrownianNoise`: increments of a Brownian path object with ``evaluate(t0, t1)``
  (e.g. ``diffrax.VirtualBrownianTree``), so jaxsde and diffrax consume identical noise.
* :class:`BrownianTreeNoise`: increments of one Brownian path per sample, a function of the
  sample's key (a ``diffrax.VirtualBrownianTree``): an adaptive solver's retry after a rejection
  integrates the same path as the rejected attempt, so rejections do not bias the accepted noise.

``draw(key, attempt, t, t_next, shape, dtype)``: the attempt integrates from ``t`` down to
``t_next < t`` (chosen by the solver's controller before the noise is drawn). ``num_attempts``: how many attempts
the source can serve (``None``: unlimited). The driver refuses a fixed-grid solve that needs more
up front, and stops an adaptive one that runs past the end with ``results.NOISE_EXHAUSTED``;
a custom source without the attribute counts as unlimited.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["FreshNoise", "GivenNoise", "BrownianNoise", "BrownianTreeNoise", "sample_keys"]


def sample_keys(key: Array, n: int, offset: int | Array = 0) -> tuple[Array, Array]:
    """``(prior_keys, solve_keys)`` of samples ``offset .. offset+n-1``: ``split(fold_in(key, i))``.

    Every batched sampler derives sample ``i``'s keys this way, so sample ``i`` never depends on
    its batch. ``n`` is static; ``offset`` may be traced.

    Args:
        key: the run's PRNG key.
        n: how many samples (static).
        offset: the index of the first sample.

    Returns:
        ``(prior_keys, solve_keys)``, each ``(n, 2)`` (or ``n`` typed keys).
    """
    idx = jnp.arange(n) + offset
    pairs = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(idx)
    return pairs[:, 0], pairs[:, 1]


class FreshNoise(NamedTuple):
    """Standard normals from ``jax.random.fold_in(key, attempt)``; no state."""

    num_attempts = None

    def draw(self, key: Array, attempt: Array, t: Array, t_next: Array, shape: tuple[int, ...], dtype) -> Array:
        del t, t_next
        # Drawn flat, then reshaped: the same numbers as drawing ``shape`` directly (threefry fills
        # the elements in order), but XLA compiles the flat draw much faster when ``shape`` has a
        # leading count axis of 1, and runs it faster (``benchmarks/em_vs_euler.py``: d=3072 EM
        # per step 1.00x -> 0.74x diffrax Euler).
        return jax.random.normal(jax.random.fold_in(key, attempt), (math.prod(shape),), dtype).reshape(shape)


class GivenNoise(NamedTuple):
    """Pre-drawn standard normals ``z`` shaped ``(num_attempts, count, *sample_shape)``.

    Attempt ``k`` uses ``z[k]``. Size it for the solver's number of attempts: a fixed-grid
    solve needs ``num_steps`` entries (fewer is refused before the solve), an adaptive one as
    many as it takes attempts (one that runs past the end stops there, at its state so far, with
    ``results.NOISE_EXHAUSTED``; ``max_steps`` is a safe size).

    Attributes:
        z: the normals, ``(num_attempts, count, *sample_shape)``; under ``sample`` /
            ``solve_batch`` with a leading batch axis in front.
    """

    z: Array

    @property
    def num_attempts(self) -> int:
        return int(self.z.shape[0])

    def draw(self, key: Array, attempt: Array, t: Array, t_next: Array, shape: tuple[int, ...], dtype) -> Array:
        del key, t, t_next
        if self.z.shape[1:] != tuple(shape):
            raise ValueError(
                f"GivenNoise.z has per-attempt shape {self.z.shape[1:]}, the solver needs {tuple(shape)}"
            )
        return jnp.asarray(self.z[attempt], dtype)


class BrownianNoise(NamedTuple):
    """Normals from a Brownian path: ``z = (W(t_next) - W(t)) / sqrt(t - t_next)``.

    ``path.evaluate(t0, t1)`` must return ``W(t1) - W(t0)`` shaped like one sample (with
    ``count == 1``), as diffrax's Brownian paths do. The sign matches diffrax's reverse-time
    control ``W(t_next) - W(t)``, so a jaxsde Euler-Maruyama step equals a ``diffrax.Euler``
    step on the same path and grid.

    Attributes:
        path: an object with ``evaluate(t0, t1)``, e.g. a ``diffrax.VirtualBrownianTree``.
    """

    path: object
    num_attempts = None

    def draw(self, key: Array, attempt: Array, t: Array, t_next: Array, shape: tuple[int, ...], dtype) -> Array:
        del key, attempt
        if shape[0] != 1:
            raise ValueError(f"BrownianNoise provides one normal per attempt; the solver needs {shape[0]}")
        increment = -self.path.evaluate(t_next, t)
        return jnp.asarray(increment / jnp.sqrt(t - t_next), dtype).reshape(shape)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class BrownianTreeNoise:
    """Normals ``z = (W(t_next) - W(t)) / sqrt(t - t_next)`` of one Brownian path ``W`` per sample and
    per normal of an attempt, each a ``diffrax.VirtualBrownianTree`` on ``[t0, t1]`` keyed by the
    sample's solve key (split ``count`` ways): the same key gives the same path, whatever steps
    are taken.

    Why: an adaptive solver accepts an attempt only if its error estimate, which depends on the
    attempt's noise, passes the test. With :class:`FreshNoise` a rejected attempt's normal is
    discarded and the retry draws a new one, so the accepted increments are those that passed:
    their law is no longer Brownian, and the samples are biased by an amount that does not vanish
    as the tolerance falls (it grows with the rejection rate). On one path the retry over the
    shorter interval reads the same ``W`` (the tree's exact Brownian bridge), so the accepted steps
    integrate a Brownian path and the error falls with the tolerance.

    Cost: each draw evaluates ``W`` at both ends, descending the tree about
    ``log2((t1 - t0) / tol)`` levels with one normal draw shaped like the sample per level (on
    small problems this can exceed the model's cost; on an image network it is small).

    Static settings (no array leaves: one source serves a whole batch under ``jaxsde.sample``).

    Attributes:
        t0: the start of the path's span in the SDE's time (the span must contain every step).
        t1: its end (default 1, the default ``T`` of the SDEs of :mod:`jaxsde.sde`; the driver
            refuses a solve whose ``[t_end, t_start]`` the span does not contain).
        tol: the tree's resolution in time: below it the path is interpolated by its exact bridge
            (diffrax's ``VirtualBrownianTree``, which matches the Brownian law at every query time).
    """

    t0: float = 0.0
    t1: float = 1.0
    tol: float = 1e-5
    num_attempts = None  # unlimited

    def __post_init__(self):
        if not (math.isfinite(self.t0) and math.isfinite(self.t1) and self.t0 < self.t1):
            raise ValueError(f"BrownianTreeNoise: need finite t0 < t1, got {self.t0!r}, {self.t1!r}")
        if not (math.isfinite(self.tol) and 0 < self.tol < self.t1 - self.t0):
            raise ValueError(f"BrownianTreeNoise: tol must be in (0, t1 - t0), got {self.tol!r}")

    def draw(self, key: Array, attempt: Array, t: Array, t_next: Array, shape: tuple[int, ...], dtype) -> Array:
        import diffrax  # here, not at import time: ``import jaxsde`` stays light

        del attempt
        count, *sample_shape = shape
        struct = jax.ShapeDtypeStruct(tuple(sample_shape), dtype)

        def one(k: Array) -> Array:
            tree = diffrax.VirtualBrownianTree(self.t0, self.t1, tol=self.tol, shape=struct, key=k)
            return -tree.evaluate(t_next, t)  # W(t_next) - W(t), as BrownianNoise

        increments = jax.vmap(one)(jax.random.split(key, count)) if count > 1 else one(key)[None]
        return (increments / jnp.sqrt(t - t_next).astype(dtype)).astype(dtype)
