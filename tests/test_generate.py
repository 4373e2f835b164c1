"""Continuous batching (``jaxsde.generate``): sample i equals ``sample``'s sample i, whatever the slots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.batching import Generator, generate
from jaxsde.testing import targets

SDE = jaxsde.VPSDE()
SCORE = targets.GaussianMixture.random(jax.random.PRNGKey(3), 4, (6,)).score(SDE)
GGF = jaxsde.GottaGoFast(rtol=0.05)
N = 48


def assert_same(a, b):
    np.testing.assert_allclose(np.asarray(a.x), np.asarray(b.x), atol=1e-6, rtol=0)
    for name, u, v in zip(jaxsde.Stats._fields, a.stats, b.stats, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=name)
    np.testing.assert_array_equal(np.asarray(a.result), np.asarray(b.result))
    np.testing.assert_allclose(np.asarray(a.t), np.asarray(b.t), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def reference():
    return jax.jit(lambda k: jaxsde.sample(k, SDE, SCORE, GGF, (6,), N))(jax.random.PRNGKey(0))


@pytest.mark.parametrize("batch_size,refill_size", [(5, None), (16, 3), (4 * N, None)])
def test_generate_equals_sample(reference, batch_size, refill_size):
    key = jax.random.PRNGKey(0)
    gen = jax.jit(lambda k: generate(k, SDE, SCORE, GGF, (6,), N, batch_size, refill_size=refill_size))(key)
    assert_same(gen, reference)
    s = gen.summary()
    assert s.n == N and s.num_failed == 0 and s.slots == min(max(batch_size, 2), N)  # no slot without a sample
    if batch_size == 5:  # many samples per slot: the slots stay busy, unlike sample's batch
        assert s.useful_work > 0.9 and s.useful_work > jaxsde.summarize(reference).useful_work
        assert str(jaxsde.summarize(gen)) == str(s)


def test_fixed_step_offset_and_denoise_off():
    key = jax.random.PRNGKey(1)
    # 50 steps, not fewer: a very coarse VP grid (e.g. 12 steps) amplifies float rounding by ~6x
    # per late step, so programs that differ in one ulp somewhere disagree at 1e-5 there
    em = jaxsde.EulerMaruyama(50)
    ref = jax.jit(lambda k: jaxsde.sample(k, SDE, SCORE, em, (6,), 20, offset=7, denoise=False))(key)
    gen = jax.jit(lambda k: generate(k, SDE, SCORE, em, (6,), 20, 4, offset=7, denoise=False))(key)
    assert_same(gen, ref)
    np.testing.assert_array_equal(np.asarray(gen.stats.nfe), 50)


@pytest.mark.parametrize("batch_size,drain_halvings", [(6, 0), pytest.param(16, 2, marks=pytest.mark.slow)])
def test_generator_chunks_any_index_order(reference, batch_size, drain_halvings):
    rng = np.random.default_rng(0)
    indices = rng.permutation(N)[:37]
    gen = Generator(jax.random.PRNGKey(0), SDE, lambda p: SCORE, None, GGF, (6,), indices, batch_size=batch_size,
                    chunk_size=10, pad_to=N, drain_halvings=drain_halvings)
    chunks = list(gen)
    assert [len(c.index) for c in chunks] == [10, 10, 10, 7]
    index = np.concatenate([c.index for c in chunks])
    assert sorted(index) == sorted(indices)
    np.testing.assert_allclose(np.concatenate([c.x for c in chunks]), np.asarray(reference.x)[index], atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([c.stats.nfe for c in chunks]),
                                  np.asarray(reference.stats.nfe)[index])
    loop = gen.loop_stats()
    assert loop.iterations.sum() > 0
    # the last call, which has room for every pending sample, drains in narrower loops
    assert (loop.slot_iterations < batch_size * loop.iterations).all() == (drain_halvings > 0)


@pytest.mark.slow  # long (one big program or a statistical run): the slow tier
def test_drain_halvings_pay_less_for_the_tail(reference):
    """Moving the last busy slots into loops of half the width keeps every sample's result and
    cuts the score evaluations paid for idle slots (16 slots, 3 samples per slot)."""
    key = jax.random.PRNGKey(0)
    runs = {h: jax.jit(lambda k, h=h: generate(k, SDE, SCORE, GGF, (6,), N, 16, drain_halvings=h))(key)
            for h in (0, 1, 3)}
    for gen in runs.values():
        assert_same(gen, reference)
    s = {h: g.summary() for h, g in runs.items()}
    assert s[0].useful_work < 0.95 < s[3].useful_work and s[0].useful_work < s[1].useful_work < s[3].useful_work
    assert s[0].slot_utilisation < s[3].slot_utilisation
    for h, gen in runs.items():
        full = 16 * int(gen.loop.iterations[0])
        assert (int(gen.loop.slot_iterations[0]) < full) == (h > 0)
    with pytest.raises(ValueError, match="drain_halvings"):
        generate(key, SDE, SCORE, GGF, (6,), 4, 4, drain_halvings=-1)


def test_progress_callback_does_not_change_results(reference):
    seen = []
    run = jax.jit(lambda k: generate(k, SDE, SCORE, GGF, (6,), N, 5, progress=seen.append, progress_every=8))
    gen = jax.block_until_ready(run(jax.random.PRNGKey(0)))
    assert_same(gen, reference)
    assert seen and seen[-1]["done"] == N and seen[-1]["total"] == N
    calls = []
    run = jax.jit(lambda k: jaxsde.sample(k, SDE, SCORE, GGF, (6,), N, progress=calls.append, progress_every=8))
    sol = jax.block_until_ready(run(jax.random.PRNGKey(0)))
    assert_same(sol, reference)
    assert calls and calls[-1]["done"] == N


def test_bad_arguments():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="batch_size"):
        generate(key, SDE, SCORE, GGF, (6,), 4, 0)
    with pytest.raises(ValueError, match="n must be"):
        generate(key, SDE, SCORE, GGF, (6,), 0, 4)
    with pytest.raises(ValueError, match="noise"):
        generate(key, SDE, SCORE, GGF, (6,), 4, 4, noise=jaxsde.GivenNoise(jnp.zeros((5, 1, 6))))
    with pytest.raises(ValueError, match="shaped like x"):
        generate(key, SDE, lambda x, t: x[None], GGF, (6,), 4, 4)


def test_refill_schedule_does_not_change_results(reference):
    """Refill width, refill threshold and batch size change only when slots are refilled, never
    a sample's result (bitwise here); refill_min trades idle slots for fewer refill passes."""
    key = jax.random.PRNGKey(0)
    runs = {}
    for batch_size, refill_size, refill_min in [(16, 3, 1), (16, 4, 4), (7, 7, 7), (40, None, None)]:
        run = jax.jit(lambda k, b=batch_size, r=refill_size, m=refill_min:
                      generate(k, SDE, SCORE, GGF, (6,), N, b, refill_size=r, refill_min=m))
        runs[batch_size, refill_size, refill_min] = gen = run(key)
        assert_same(gen, reference)
    first = runs[16, 3, 1]
    for gen in runs.values():
        np.testing.assert_array_equal(np.asarray(gen.x), np.asarray(first.x))
    eager, lazy = runs[16, 3, 1].summary(), runs[16, 4, 4].summary()
    assert lazy.refills < eager.refills
    with pytest.raises(ValueError, match="refill_min"):
        generate(key, SDE, SCORE, GGF, (6,), 4, 4, refill_min=0)


# EM: samples whose first coordinate exceeds 1 below t = 0.4 fail, the others succeed. GGF rejects
# a non-finite attempt and redraws its noise, so it steers around such a region; every sample is
# made to fail (NaN everywhere below t = 0.4) and stops where its step size collapses.
@pytest.mark.parametrize("solver,threshold", [(jaxsde.EulerMaruyama(50), 1.0), (GGF, -np.inf)], ids=["em", "ggf"])
def test_failed_samples_match_sample(solver, threshold):
    """Failed samples in ``generate`` match ``sample``'s: result codes, last finite states, times
    and counters; the other samples are untouched."""

    def score(x, t):
        return jnp.where((t < 0.4) & (x[0] > threshold), jnp.nan, 1.0) * SCORE(x, t)

    key = jax.random.PRNGKey(5)
    ref = jax.jit(lambda k: jaxsde.sample(k, SDE, score, solver, (6,), 24))(key)
    gen = jax.jit(lambda k: generate(k, SDE, score, solver, (6,), 24, 5))(key)
    failed = np.asarray(ref.result) == jaxsde.results.NONFINITE
    assert failed.sum() > 0 and (threshold == -np.inf) == failed.all()
    assert np.all(np.asarray(ref.result)[~failed] == jaxsde.results.SUCCESS)
    assert np.all(np.isfinite(np.asarray(ref.x))), "a failed sample returns its last finite state"
    t = np.asarray(ref.t)
    assert np.all(t[failed] >= 0.4 - 1e-6) if threshold == -np.inf else np.all(t[failed] < 0.4)
    assert np.all(t[~failed] < 0.01)
    assert_same(gen, ref)
