"""Sources of the Gaussian noise a stochastic solver consumes.

The driver asks the source for the standard normals of one *attempt* (one loop iteration)
at once: an array shaped ``(count, *sample_shape)`` where ``count`` is the solver's
``noise_per_attempt``. One draw per attempt, shared by all stages of that attempt.

* :class:`FreshNoise` (default): ``normal(fold_in(key, attempt))``. A rejected attempt's
  noise is discarded and the retry draws fresh noise, as Gotta Go Fast prescribes.
* :class:`GivenNoise`: a pre-drawn array indexed by attempt; lets a test drive two solvers
  (or jaxsde and another library) with identical noise, and lets solver outputs be
  differentiated with respect to the noise (exact output laws for affine problems).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["FreshNoise", "GivenNoise"]


class FreshNoise(NamedTuple):
    """Standard normals from ``jax.random.fold_in(key, attempt)``; no state."""

    def draw(self, key: Array, attempt: Array, shape: tuple[int, ...], dtype) -> Array:
        return jax.random.normal(jax.random.fold_in(key, attempt), shape, dtype)


class GivenNoise(NamedTuple):
    """Pre-drawn standard normals ``z`` shaped ``(num_attempts, count, *sample_shape)``.

    Attempt ``k`` uses ``z[k]``; attempts past the end clamp to the last entry (size it
    for the solver's number of attempts, e.g. ``num_steps`` for fixed-step solvers).
    """

    z: Array

    def draw(self, key: Array, attempt: Array, shape: tuple[int, ...], dtype) -> Array:
        del key
        if self.z.shape[1:] != tuple(shape):
            raise ValueError(
                f"GivenNoise.z has per-attempt shape {self.z.shape[1:]}, the solver needs {tuple(shape)}"
            )
        return jnp.asarray(self.z[attempt], dtype)
