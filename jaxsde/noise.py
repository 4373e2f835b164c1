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
* :class:`BrownianMemoryNoise`: the same guarantee at the cost of fresh noise, by remembering the
  path's values at rejected attempts' ends (rejection sampling with memory) instead of building
  the path from the key.

``draw(key, attempt, t, t_next, shape, dtype)``: the attempt integrates from ``t`` down to
``t_next < t`` (chosen by the solver's controller before the noise is drawn). ``num_attempts``: how many attempts
the source can serve (``None``: unlimited). The driver refuses a fixed-grid solve that needs more
up front, and stops an adaptive one that runs past the end with ``results.NOISE_EXHAUSTED``;
a custom source without the attribute counts as unlimited.

A source with memory (:class:`BrownianMemoryNoise`) also defines ``init_memory(shape, dtype)``
(its state, carried in each sample's loop state), ``draw_with_memory(memory, key, attempt, t,
t_next, shape, dtype) -> (z, w_next)`` and ``remember(memory, t_next, w_next, accepted)``: the
driver draws with the first and, once the attempt is judged, passes the verdict to the second.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["FreshNoise", "GivenNoise", "BrownianNoise", "BrownianTreeNoise", "BrownianMemoryNoise", "BrownianMemory",
           "sample_keys"]


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
        # leading count axis of 1, and runs it faster (``python -m benchmarks run vs_diffrax --mode
        # em``: d=3072 EM per step 1.00x -> 0.74x diffrax Euler when this changed).
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


class BrownianMemory(NamedTuple):
    """One sample's state of :class:`BrownianMemoryNoise`. ``V(tau) = W(tau) - W(t_start)`` is the
    sample's Brownian path run backwards from the solve's start (a Brownian motion in ``t_start -
    tau``).

    Attributes:
        w: ``V`` at the sample's current time, ``(count, *sample_shape)``.
        times: the times ``tau < t`` where ``V`` is already fixed by a rejected attempt, ``(depth,)``;
            ``-inf`` marks an empty slot.
        values: ``V`` at those times, ``(depth, count, *sample_shape)``.
        dropped: how many remembered points were forgotten because every slot was taken (then
            the draws are no longer exact; a larger ``depth`` avoids it).
    """

    w: Array
    times: Array
    values: Array
    dropped: Array


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class BrownianMemoryNoise:
    """Normals ``z = (W(t_next) - W(t)) / sqrt(t - t_next)`` of one Brownian path per sample that is
    revealed as the solve looks at it: rejection sampling with memory (Rackauckas and Nie, "Adaptive
    methods for stochastic differential equations via natural embeddings and rejection sampling
    with memory", 2017).

    Each draw fixes the path at the attempt's end ``t_next``. An accepted attempt moves on from
    there; a rejected one leaves the point in the sample's memory, so the retry over a shorter
    interval samples the path between ``t`` and that point from its exact Brownian bridge, and a
    later step that crosses it passes through it. The accepted steps thus integrate a Brownian
    path whatever the controller decides, as with :class:`BrownianTreeNoise`, but each draw costs
    one normal per element, like :class:`FreshNoise` (plus ``depth`` remembered points per sample
    in the loop state). New normals come from ``fold_in(key, attempt)``: the same key gives the
    same samples.

    The memory holds ``depth`` points (static). A sample needs one slot per rejection not yet
    stepped past: a run of rejections at the first step fills several. A rejection that finds
    every slot taken forgets the point farthest ahead and counts it in the sample's
    ``Solution.stats.noise_dropped`` (:class:`jaxsde.Stats`; the loop state's ``noise_memory``
    holds the count while the solve runs); the draws are then no longer exact. Gotta Go Fast on
    2-d mixtures (VP and VE, rtol 0.05 and 0.005, 4000 samples each) held at most 13 points at once.

    Attributes:
        depth: how many points a sample's memory holds (>= 1).
    """

    depth: int = 16
    num_attempts = None  # unlimited

    def __post_init__(self):
        if not (isinstance(self.depth, int) and not isinstance(self.depth, bool) and self.depth >= 1):
            raise ValueError(f"BrownianMemoryNoise: depth must be an integer >= 1, got {self.depth!r}")

    def init_memory(self, shape: tuple[int, ...], dtype) -> BrownianMemory:
        """An empty memory for one sample; ``shape`` is ``(count, *sample_shape)``."""
        return BrownianMemory(w=jnp.zeros(shape, dtype), times=jnp.full((self.depth,), -jnp.inf, dtype),
                              values=jnp.zeros((self.depth, *shape), dtype), dropped=jnp.zeros((), jnp.int32))

    def draw_with_memory(self, memory: BrownianMemory, key: Array, attempt: Array, t: Array, t_next: Array,
                         shape: tuple[int, ...], dtype) -> tuple[Array, Array]:
        """``(z, w_next)``: the attempt's normals and ``V(t_next)``, from the nearest remembered
        points around ``t_next`` (the current time counts as one): the Brownian bridge between the
        nearest point at or above ``t_next`` and the nearest below it, or a fresh increment beyond
        the last one."""
        t, t_next = jnp.asarray(t, dtype), jnp.asarray(t_next, dtype)
        times, values = memory.times, memory.values
        known = jnp.isfinite(times)
        above, below = known & (times >= t_next), known & (times < t_next)
        i_above = jnp.argmin(jnp.where(above, times, jnp.inf))
        a = jnp.where(jnp.any(above), times[i_above], t)
        v_a = jnp.where(jnp.any(above), values[i_above], memory.w)
        i_below = jnp.argmax(jnp.where(below, times, -jnp.inf))
        has_b = jnp.any(below)
        b = jnp.where(has_b, times[i_below], t_next - 1.0)  # a placeholder where there is none
        v_b = values[i_below]
        normal = jax.random.normal(jax.random.fold_in(key, attempt), (math.prod(shape),), dtype).reshape(shape)
        span = jnp.maximum(a - b, jnp.finfo(dtype).tiny)
        bridge = v_a + (a - t_next) / span * (v_b - v_a) + jnp.sqrt(jnp.maximum((a - t_next) * (t_next - b) / span,
                                                                                 0.0)) * normal
        fresh = v_a + jnp.sqrt(jnp.maximum(a - t_next, 0.0)) * normal
        w_next = jnp.where(has_b, bridge, fresh)
        return ((w_next - memory.w) / jnp.sqrt(t - t_next)).astype(dtype), w_next

    def remember(self, memory: BrownianMemory, t_next: Array, w_next: Array, accepted: Array) -> BrownianMemory:
        """The memory after the attempt to ``t_next``: accepted, the current point moves there and
        the points it passed are forgotten; rejected, ``(t_next, w_next)`` is stored."""
        t_next = jnp.asarray(t_next, memory.times.dtype)
        known = jnp.isfinite(memory.times)
        full = jnp.all(known)
        slot = jnp.where(full, jnp.argmin(jnp.where(known, memory.times, jnp.inf)), jnp.argmin(known))
        stored = BrownianMemory(w=memory.w, times=memory.times.at[slot].set(t_next),
                                values=memory.values.at[slot].set(w_next),
                                dropped=memory.dropped + full.astype(jnp.int32))
        passed = known & (memory.times >= t_next)
        moved = BrownianMemory(w=w_next, times=jnp.where(passed, -jnp.inf, memory.times), values=memory.values,
                               dropped=memory.dropped)
        return jax.tree_util.tree_map(lambda m, r: jnp.where(accepted, m, r), moved, stored)
