"""``jaxsde.BrownianMemoryNoise``: rejection sampling with memory. A rejected attempt fixes the
sample's Brownian path at its end; the retry samples the path's bridge up to that point and a later
step passes through it, so the accepted steps integrate one Brownian path (no rejection bias) at the
cost of fresh noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde import driver
from jaxsde.testing.targets import GaussianMixture

NOISE = jaxsde.BrownianMemoryNoise(depth=4)
SHAPE = (1, 3)


def _draw(memory, key, attempt, t, t_next):
    z, w = NOISE.draw_with_memory(memory, key, jnp.int32(attempt), jnp.float32(t), jnp.float32(t_next), SHAPE,
                                  jnp.float32)
    return z * jnp.sqrt(jnp.float32(t - t_next)), w


def _reject_then_split(key):
    """Attempt 0.9 -> 0.3 rejected, 0.9 -> 0.6 accepted, 0.6 -> 0.3 accepted, 0.3 -> 0.1 accepted:
    the increments of the three accepted steps."""
    memory = NOISE.init_memory(SHAPE, jnp.float32)
    whole, w = _draw(memory, key, 0, 0.9, 0.3)
    memory = NOISE.remember(memory, jnp.float32(0.3), w, jnp.array(False))
    first, w = _draw(memory, key, 1, 0.9, 0.6)
    memory = NOISE.remember(memory, jnp.float32(0.6), w, jnp.array(True))
    second, w = _draw(memory, key, 2, 0.6, 0.3)
    memory = NOISE.remember(memory, jnp.float32(0.3), w, jnp.array(True))
    third, w = _draw(memory, key, 3, 0.3, 0.1)
    memory = NOISE.remember(memory, jnp.float32(0.1), w, jnp.array(True))
    return whole, first, second, third, memory


def test_a_rejected_attempts_end_is_kept_and_passed_through():
    whole, first, second, third, memory = _reject_then_split(jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(first + second), np.asarray(whole), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(first) - np.asarray(whole)).max() > 1e-3  # the bridge point is a new draw
    assert not np.any(np.isfinite(np.asarray(memory.times)))  # every remembered point was passed
    assert int(memory.dropped) == 0
    again = _reject_then_split(jax.random.PRNGKey(0))
    for a, b in zip(again[:4], (whole, first, second, third), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same key: the same path


def test_the_accepted_increments_are_those_of_a_brownian_path():
    """Over many keys, the increments over [0.6, 0.9], [0.3, 0.6] (through a bridge point) and [0.1, 0.3]
    (fresh beyond it) are independent, centred, with variances 0.3, 0.3 and 0.2."""
    inc = jax.jit(jax.vmap(lambda k: jnp.concatenate([a.ravel() for a in _reject_then_split(k)[1:4]])))(
        jax.random.split(jax.random.PRNGKey(1), 8000))
    z = np.asarray(inc) / np.sqrt(np.repeat([0.3, 0.3, 0.2], 3))
    se = 1.0 / np.sqrt(len(z))
    assert np.abs(z.mean(0)).max() < 4 * se
    assert np.abs(z.var(0) - 1.0).max() < 4 * np.sqrt(2) * se
    assert np.abs(np.corrcoef(z.T) - np.eye(9)).max() < 4 * se


def test_a_full_memory_forgets_the_farthest_point_and_counts_it():
    noise = jaxsde.BrownianMemoryNoise(depth=1)
    memory = noise.init_memory(SHAPE, jnp.float32)
    key = jax.random.PRNGKey(2)
    for attempt, t_next in enumerate((0.3, 0.6)):  # two rejections in a row, one slot
        z, w = noise.draw_with_memory(memory, key, jnp.int32(attempt), jnp.float32(0.9), jnp.float32(t_next), SHAPE,
                                      jnp.float32)
        memory = noise.remember(memory, jnp.float32(t_next), w, jnp.array(False))
    assert int(memory.dropped) == 1
    np.testing.assert_allclose(np.asarray(memory.times), [0.6])


def test_bad_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        jaxsde.BrownianMemoryNoise(depth=0)


def test_rejections_do_not_bias_gotta_go_fast_with_memory():
    """Gotta Go Fast on a 2-d mixture, VE, rtol 0.05: about 1 in 5 attempts is rejected. Fresh noise
    per attempt misses the spread by about half (the slow tier's tree test and
    ``benchmarks/results/rejection_noise.md``); with memory the spread is within its sampling noise
    (4000 samples: a std's relative error about 1.1%), and no sample's memory overflows."""
    rng = np.random.default_rng(0)
    target = GaussianMixture.create(rng.uniform(0.5, 1.5, 3), rng.uniform(-0.8, 0.8, (3, 2)), rng.uniform(0.05, 0.3, 3))
    ref_std = np.asarray(target.sample(jax.random.PRNGKey(3), 100_000)).std(0)
    sde = jaxsde.VESDE()
    p = driver.prepare(sde, target.score(sde), jaxsde.GottaGoFast(rtol=0.05), jnp.zeros((2,)),
                       noise=jaxsde.BrownianMemoryNoise())

    def one(key):
        x_T = sde.prior_sample(jax.random.fold_in(key, 1), (2,))
        s = jax.lax.while_loop(lambda s: ~driver.done(p, s), lambda s: driver.step(p, key, s), driver.init(p, x_T))
        sol = driver.finalize(p, s)
        return sol.x, sol.stats, s.noise_memory.dropped

    x, stats, dropped = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(1), 4000))
    assert float(np.mean(stats.num_rejected)) > 0.15 * float(np.mean(stats.num_steps))
    assert int(np.max(dropped)) == 0
    np.testing.assert_array_equal(stats.noise_dropped, dropped)
    assert np.abs(np.asarray(x).std(0) / ref_std - 1.0).max() < 0.035


def test_a_solution_reports_forgotten_points_per_sample():
    """``Solution.stats.noise_dropped`` counts the points a one-slot memory had to forget (GGF at a
    tight rtol on VE rejects its first attempts in runs); the default depth forgets none."""
    sde = jaxsde.VESDE()
    target = GaussianMixture.create(np.ones(2), np.array([[-0.5, 0.0], [0.5, 0.0]]), np.array([0.05, 0.05]))

    def run(depth):
        return jaxsde.sample(jax.random.PRNGKey(0), sde, target.score(sde), jaxsde.GottaGoFast(rtol=0.005), (2,), 64,
                             noise=jaxsde.BrownianMemoryNoise(depth=depth))

    small, default = run(1), run(16)
    assert int(np.sum(small.stats.noise_dropped)) > 0
    assert int(np.sum(default.stats.noise_dropped)) == 0
    assert np.all(np.asarray(small.result) == 0)
