"""Running jaxsde samplers on a :class:`~benchmarks.harness.problems.Target`: the same prior draws for every
library (jaxsde's sample i: ``fold_in(seed, i)``), one compiled program per solver (peers: :mod:`.kdiffusion`)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde

from .problems import Target


def prior(target: Target, seed: int, n: int):
    """jaxsde's prior draws ``x_T`` of samples 0..n-1 for ``seed`` (what every library starts from)."""
    keys, _ = jaxsde.sample_keys(jax.random.PRNGKey(seed), n)
    return jax.vmap(lambda k: target.sde.prior_sample(k, target.shape, jnp.float32))(keys)


def run_jaxsde(target: Target, solver, seed: int, n: int, repeats: int):
    """``(x, nfe per sample, failed count, wall s)``: median of ``repeats`` runs after a warm-up, or with
    ``repeats = 0`` the first run, compilation included."""
    fn = jax.jit(lambda key: jaxsde.sample(key, target.sde, target.score, solver, target.shape, n))
    key = jax.random.PRNGKey(seed)
    sol, wall = timed_runs(lambda: jax.block_until_ready(fn(key)), repeats)
    nfe = np.asarray(sol.stats.nfe)
    return np.asarray(sol.x), nfe, int(np.sum(np.asarray(sol.result) != 0)), wall


def timed_runs(once, repeats: int):
    """``(once()'s first output, wall s)``: the median of ``repeats`` calls after that first (warm-up) one, or with
    ``repeats = 0`` the first call's own time (compilation included)."""
    t0 = time.perf_counter()
    out = once()
    times = [time.perf_counter() - t0] if repeats == 0 else []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def sample_chunks(sde, score_fn, params, shape, solver, n: int, seed: int, batch: int, cond=None, warmup=False,
                  sample=None):
    """Samples 0..n-1 of ``seed`` (sample i: ``fold_in(PRNGKey(seed), i)``) in chunks of ``batch``, one compiled
    program (``score_fn(params)`` the score; ``cond``: per-sample conditions, ``(n, ...)``, or None; ``sample``:
    ``jaxsde.sample`` or another function of its arguments, e.g. ``jaxsde.sample_multilevel``; ``warmup``: one
    untimed call first). Returns ``(x, per-sample NFE, failed count, wall s of the chunks, compile s)``."""
    sample = sample or jaxsde.sample
    padded = None if cond is None else np.concatenate([np.asarray(cond), np.zeros((batch, *np.shape(cond)[1:]),
                                                                                   np.asarray(cond).dtype)])

    def cond_at(start):
        return None if padded is None else jnp.asarray(padded[start:start + batch])

    @jax.jit
    def chunk(p, offset, c):
        kw = {} if c is None else {"cond": c}
        return sample(jax.random.PRNGKey(seed), sde, score_fn(p), solver, shape, batch, offset=offset, **kw)

    t0 = time.perf_counter()
    compiled = chunk.lower(params, jnp.int32(0), cond_at(0)).compile()
    compile_s = time.perf_counter() - t0
    if warmup:
        jax.block_until_ready(compiled(params, jnp.int32(0), cond_at(0)))
    xs, nfes, fails = [], [], 0
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        sol = jax.block_until_ready(compiled(params, jnp.int32(start), cond_at(start)))
        take = min(batch, n - start)
        xs.append(np.asarray(sol.x[:take]))
        nfes.append(np.asarray(sol.stats.nfe[:take]))
        fails += int(np.sum(np.asarray(sol.result[:take]) != 0))
    return np.concatenate(xs), np.concatenate(nfes), fails, time.perf_counter() - t0, compile_s
