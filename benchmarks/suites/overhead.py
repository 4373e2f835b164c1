"""How much does jaxsde's driver cost on top of the score network?

    python benchmarks/overhead.py [--quick] [--out benchmarks/results]

Three measurements, each printed as it goes and written to ``OUT/overhead.json`` and
``OUT/overhead.md``:

1. **GGF overhead.** A small Flax conv score network (3x3 convs, 64 channels, a sinusoidal
   time embedding; ``score(x, t)`` for ONE sample, batched by jaxsde's ``vmap``). One Gotta
   Go Fast attempt = wall time of ``jaxsde.sample(..., GottaGoFast, max_steps=M,
   denoise=False)`` / loop iterations, against two batched score evaluations = a jitted
   ``fori_loop`` of ``2 M`` chained, vmapped evaluations (same batch, per-sample times, the
   parameters passed as traced arguments) / ``M``. Target: ratio <= 1.1.
2. **EM overhead.** ``jaxsde.sample`` with ``EulerMaruyama(N)`` (``denoise=False``) vs a
   hand-written ``lax.fori_loop`` Euler-Maruyama with the same network, batch, grid and
   noise (per-sample key ``fold_in(k_i, step)``, so both produce the same samples; checked).
   Target: ratio <= 1.05.
3. **Noise share.** With a cheap score (exact Gaussian-mixture score, ``jaxsde.testing.targets``,
   batch 2000, d = 256 .. 3072): GGF and EM time per loop iteration with fresh threefry
   normals, with zeros instead of normals (a ``ZeroNoise`` source), the normals alone, and
   (full mode) with ``rbg`` / ``unsafe_rbg`` / ``philox2x32`` keys; plus a micro-benchmark
   of 2000 x 256 normals per key implementation (one key, and one key per sample as the
   driver draws them).

Every variant also runs with ``UnrolledNoise``: ``FreshNoise`` with the Threefry hash
written out in jnp (:func:`threefry_normal`, bit-identical to ``jax.random.normal``,
checked, and the samples are checked equal). On CPU JAX lowers Threefry as a rolled
5-trip while loop that XLA cannot fuse; this measures the proposed change to
``jaxsde.noise.FreshNoise`` without touching the library.

Every comparison is timed in one process: compiled first, warmed up, then the variants run
in interleaved rounds (rotating order). Wall time (median, minimum, per-round ratios) and
process CPU time (all threads; the steadier figure on a shared machine) are recorded. The
main while-loop body of each compiled program is summarised from its optimized HLO
(instructions, fusions, nested while loops = rolled Threefry, is-finite reductions,
selects) so that an overhead can be traced to what the driver adds.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxsde
from jaxsde.testing.targets import GaussianMixture

# --------------------------------------------------------------------------------------------
# the score network


class ConvScoreNet(nn.Module):
    """A few 3x3 convolutions (``channels`` wide) with a sinusoidal time embedding added as a
    per-channel bias before each hidden activation; ONE sample ``(H, W, C)``, scalar ``t``."""

    channels: int = 64
    depth: int = 3

    @nn.compact
    def __call__(self, x, t):
        half = 16
        freqs = jnp.exp(-jnp.log(1e4) * jnp.arange(half) / half)
        emb = jnp.concatenate([jnp.sin(1e3 * t * freqs), jnp.cos(1e3 * t * freqs)])
        emb = nn.silu(nn.Dense(4 * self.channels)(emb))
        h = nn.Conv(self.channels, (3, 3))(x)
        for _ in range(self.depth - 1):
            h = nn.silu(h + nn.Dense(self.channels)(emb))
            h = nn.Conv(self.channels, (3, 3))(h)
        return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))


def make_score(net: nn.Module) -> Callable:
    """``score(params, x, t)``: the network plus the prior's score ``-x`` (one sample)."""

    def score(params, x, t):
        return net.apply(params, x, t) - x

    return score


class ZeroNoise(NamedTuple):
    """A noise source returning zeros: the loop without any normal generation. Accepts the
    driver's ``draw(key, attempt, [t, h,] shape, dtype)`` (shape and dtype come last)."""

    def draw(self, key, attempt, *args):
        del key, attempt
        shape, dtype = args[-2], args[-1]
        return jnp.zeros(shape, dtype)


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32_unrolled(k1, k2, x1, x2):
    """Threefry-2x32 (20 rounds) written out in jnp, as JAX lowers it on GPU. On CPU JAX
    lowers the same hash as a rolled 5-trip while loop, which XLA cannot fuse with the
    conversion to normals."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x1 + ks[0], x2 + ks[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(block + 1) % 3]
        x1 = x1 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def threefry_normal(key, shape, dtype=jnp.float32):
    """``jax.random.normal(key, shape, float32)`` for a threefry2x32 key (partitionable
    threefry, the default), bit for bit, with the hash unrolled (see above)."""
    if jnp.dtype(dtype) != jnp.float32 or not jax.config.jax_threefry_partitionable:
        return jax.random.normal(key, shape, dtype)
    data = jax.random.key_data(key)
    counts = lax.iota(np.uint32, math.prod(shape)).reshape(shape)
    b0, b1 = _threefry2x32_unrolled(data[0], data[1], jnp.zeros_like(counts), counts)
    mantissa = ((b0 ^ b1) >> np.uint32(9)) | np.uint32(0x3F800000)
    floats = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = lax.max(lo, floats * (np.float32(1.0) - lo) + lo)
    return np.float32(math.sqrt(2.0)) * lax.erf_inv(u)


class UnrolledNoise(NamedTuple):
    """``FreshNoise`` with :func:`threefry_normal`: the same normals (checked), faster on CPU.
    This is the proposed change to ``jaxsde.noise.FreshNoise``, measured here."""

    def draw(self, key, attempt, *args):
        shape, dtype = args[-2], args[-1]
        return threefry_normal(jax.random.fold_in(key, attempt), shape, dtype)


def check_unrolled_normals() -> bool:
    """``threefry_normal`` == ``jax.random.normal`` bit for bit (several keys and shapes)."""
    for shape in [(1, 16, 16, 3), (3, 7)]:
        for seed in range(2):
            k = jax.random.fold_in(jax.random.key(seed), 17)
            a = jax.jit(lambda k, s=shape: jax.random.normal(k, s))(k)
            b = jax.jit(lambda k, s=shape: threefry_normal(k, s))(k)
            if not np.array_equal(np.asarray(a), np.asarray(b)):
                return False
    return True


# --------------------------------------------------------------------------------------------
# timing


def compile_all(fns: dict[str, tuple[Callable, tuple]]) -> dict[str, Any]:
    """Compile every ``(fn, args)``; returns ``{name: (compiled, args, compile_s, hlo_text)}``."""
    out = {}
    for name, (fn, args) in fns.items():
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        out[name] = (compiled, args, time.perf_counter() - t0, compiled.as_text())
    return out


class Times(dict):
    """``{name: [wall seconds]}`` with ``.cpu = {name: [process CPU seconds]}`` alongside.

    The CPU time (all threads of this process) is what the program cost, largely insensitive
    to other processes competing for the cores; on a shared machine its ratios are the
    steadier ones."""

    cpu: dict[str, list[float]]


def run_interleaved(compiled: dict[str, Any], repeats: int) -> tuple[Times, dict[str, Any]]:
    """Warm up each program once, then ``repeats`` rounds running every program in turn
    (the order rotates each round). Returns ``(Times, {name: last output})``."""
    outputs = {name: jax.block_until_ready(c(*a)) for name, (c, a, _, _) in compiled.items()}
    times = Times({name: [] for name in compiled})
    times.cpu = {name: [] for name in compiled}
    names = list(compiled)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            c, a, _, _ = compiled[name]
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(c(*a))
            times[name].append(time.perf_counter() - t0)
            times.cpu[name].append(time.process_time() - c0)
    return times, outputs


def ratio(times: Times, num: str, den: str) -> dict[str, float]:
    """Wall time: ratio of medians, of minima (the least disturbed runs on a shared machine)
    and the median of the per-round ratios; CPU time: ratio of medians and of minima."""
    paired = [a / b for a, b in zip(times[num], times[den], strict=True)]
    out = {
        "ratio_of_medians": statistics.median(times[num]) / statistics.median(times[den]),
        "ratio_of_minima": min(times[num]) / min(times[den]),
        "median_paired_ratio": statistics.median(paired),
        "min_paired_ratio": min(paired),
        "max_paired_ratio": max(paired),
    }
    cpu = getattr(times, "cpu", None)
    if cpu:
        out["cpu_ratio_of_medians"] = statistics.median(cpu[num]) / statistics.median(cpu[den])
        out["cpu_ratio_of_minima"] = min(cpu[num]) / min(cpu[den])
    return out


# --------------------------------------------------------------------------------------------
# optimized-HLO summary of the main loop body


def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        m = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if m and not line.startswith(" "):
            current = "ENTRY" if m.group(1) else m.group(2)
            comps[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps


def loop_body_stats(hlo: str) -> dict[str, Any]:
    """Statistics of the largest while-loop body called from the entry computation."""
    comps = _computations(hlo)
    bodies = [m.group(1) for line in comps.get("ENTRY", []) for m in [re.search(r"body=%([\w.\-]+)", line)] if m]
    if not bodies:
        return {}
    body = max(bodies, key=lambda b: len(comps.get(b, [])))
    ops = [line for line in comps[body] if " = " in line and "get-tuple-element(" not in line
           and "parameter(" not in line and "constant(" not in line and " tuple(" not in line]
    nested = [line for line in ops if " while(" in line]
    trips = [int(m.group(1)) for line in nested for m in [re.search(r'"known_trip_count":\{"n":"(\d+)"', line)] if m]
    return {
        "instructions": len(ops),
        "fusions": sum(" fusion(" in line for line in ops),
        "matmul_or_conv_fusions": sum("kind=kCustom" in line for line in ops) + sum(
            (" convolution(" in line or " dot(" in line) for line in ops),
        "nested_while_loops": len(nested),
        "nested_while_trip_counts": trips,
        "threefry_ops": sum("threefry" in line for line in ops),
        "is_finite_fusions": sum("is-finite" in line for line in ops),
        "select_fusions": sum("select" in line.split(" = ")[0] for line in ops),
        "copies": sum(" copy(" in line for line in ops),
    }


# --------------------------------------------------------------------------------------------
# 1 + 2: conv network


def network_setup(cfg):
    net = ConvScoreNet(channels=cfg["channels"], depth=cfg["depth"])
    shape = tuple(cfg["shape"])
    params = net.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros(()))
    return make_score(net), params, shape


def chained_evals_fn(score, count):
    """``count`` chained vmapped evaluations ``x <- x + 1e-3 score(x, t_i)`` with per-sample
    times (as the driver's per-sample ``t``), parameters traced: nothing can be hoisted."""

    def evals(params, x, t):
        def body(i, x):
            return x + 1e-3 * jax.vmap(functools.partial(score, params))(x, t - 1e-4 * i.astype(t.dtype))

        return jax.lax.fori_loop(0, count, body, x)

    return evals


def normals_only_fn(n, shape, count):
    """The driver's draws alone: per-sample key ``k_i``, ``normal(fold_in(k_i, attempt))``."""

    def normals(key):
        _, keys = jaxsde.sample_keys(key, n)

        def body(i, acc):
            return acc + jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), (1, *shape)))(keys)

        return jax.lax.fori_loop(0, count, body, jnp.zeros((n, 1, *shape)))

    return normals


def sample_fn(score, sde, solver, shape, n, noise=None, max_steps=None):
    """``(params, key) -> (x, loop iterations)`` of ``jaxsde.sample`` without denoising."""
    kw = {} if max_steps is None else {"max_steps": max_steps}

    def run(params, key):
        sol = jaxsde.sample(key, sde, functools.partial(score, params), solver, shape, n, denoise=False,
                            noise=noise, **kw)
        return sol.x, jnp.max(sol.stats.num_steps)

    return run


def bench_ggf(cfg, log) -> dict:
    score, params, shape = network_setup(cfg)
    sde, n, m = jaxsde.VPSDE(), cfg["batch"], cfg["ggf_iterations"]
    solver = jaxsde.GottaGoFast(rtol=0.05)
    key = jax.random.key(1)
    ggf = sample_fn(score, sde, solver, shape, n, max_steps=m)
    iters = int(jax.jit(ggf)(params, key)[1])  # loop iterations the batch runs (max over samples)
    x0 = jax.random.normal(jax.random.key(2), (n, *shape))
    t0 = jnp.linspace(0.5, 1.0, n)
    fns = {
        "ggf": (ggf, (params, key)),
        "two_score_evals": (chained_evals_fn(score, 2 * iters), (params, x0, t0)),
        "normals_only": (normals_only_fn(n, shape, iters), (key,)),
    }
    if cfg["extended"]:
        fns["ggf_unrolled_noise"] = (sample_fn(score, sde, solver, shape, n, UnrolledNoise(), m), (params, key))
        fns["ggf_zero_noise"] = (sample_fn(score, sde, solver, shape, n, ZeroNoise(), m), (params, key))
    compiled = compile_all(fns)
    times, outs = run_interleaved(compiled, cfg["repeats"])
    for name in ("ggf", "ggf_zero_noise", "ggf_unrolled_noise"):
        if name in outs and int(outs[name][1]) != iters:
            raise RuntimeError(f"{name} ran {int(outs[name][1])} iterations, expected {iters}")
    per = {name: statistics.median(v) / iters for name, v in times.items()}
    res = {
        "loop_iterations": iters,
        "ms_per_attempt": {k: 1e3 * v for k, v in per.items()},
        "ratio_ggf_attempt_over_two_evals": ratio(times, "ggf", "two_score_evals"),
        "ratio_ggf_zero_noise_over_two_evals": (ratio(times, "ggf_zero_noise", "two_score_evals")
                                                if "ggf_zero_noise" in times else None),
        "ratio_ggf_unrolled_noise_over_two_evals": (ratio(times, "ggf_unrolled_noise", "two_score_evals")
                                                    if "ggf_unrolled_noise" in times else None),
        "unrolled_noise_same_samples": (bool(jnp.array_equal(outs["ggf"][0], outs["ggf_unrolled_noise"][0]))
                                        if "ggf_unrolled_noise" in outs else None),
        "normals_share_of_attempt": per["normals_only"] / per["ggf"],
        "compile_s": {k: c[2] for k, c in compiled.items()},
        "loop_body_hlo": {k: loop_body_stats(c[3]) for k, c in compiled.items()},
        "times_s": times,
        "cpu_times_s": times.cpu,
    }
    r = res["ratio_ggf_attempt_over_two_evals"]
    log(f"[GGF] batch {n}, {iters} iterations: attempt {1e3 * per['ggf']:.2f} ms, two evals "
        f"{1e3 * per['two_score_evals']:.2f} ms -> ratio {r['ratio_of_medians']:.3f} (paired median "
        f"{r['median_paired_ratio']:.3f}, of minima {r['ratio_of_minima']:.3f}; "
        f"CPU time {r['cpu_ratio_of_medians']:.3f})"
        + (f"; unrolled noise {res['ratio_ggf_unrolled_noise_over_two_evals']['cpu_ratio_of_medians']:.3f} (CPU "
           f"time; same samples: {res['unrolled_noise_same_samples']})" if "ggf_unrolled_noise" in times else "")
        + f"; normals alone {100 * res['normals_share_of_attempt']:.1f}% of an attempt")
    return res


def hand_em_fn(score, sde, n, shape, num_steps, noise_source="threefry"):
    """Hand-written Euler-Maruyama with jaxsde's keys, prior and grid (the same samples).
    ``noise_source``: "threefry" (``jax.random.normal``), "unrolled" or "zeros"."""

    def draw(k, i):
        if noise_source == "unrolled":
            return threefry_normal(jax.random.fold_in(k, i), (1, *shape))[0]
        return jax.random.normal(jax.random.fold_in(k, i), (1, *shape))[0]

    def em(params, key):
        prior_keys, solve_keys = jaxsde.sample_keys(key, n)
        x = jax.vmap(lambda k: sde.prior_sample(k, shape))(prior_keys)
        grid = jaxsde.time_grid(sde, num_steps, "uniform", float(sde.T), float(sde.eps), dtype=jnp.float32)
        batched = jax.vmap(functools.partial(score, params), in_axes=(0, None))

        def body(i, x):
            t, t_next = grid[i], grid[i + 1]
            h = t - t_next
            z = jnp.zeros_like(x) if noise_source == "zeros" else jax.vmap(lambda k: draw(k, i))(solve_keys)
            return x - h * sde.reverse_drift(x, t, batched(x, t)) + sde.diffusion(t) * jnp.sqrt(h) * z

        return jax.lax.fori_loop(0, num_steps, body, x), jnp.asarray(num_steps)

    return em


def bench_em(cfg, log) -> dict:
    score, params, shape = network_setup(cfg)
    sde, n, steps = jaxsde.VPSDE(), cfg["batch"], cfg["em_steps"]
    solver = jaxsde.EulerMaruyama(steps)
    key = jax.random.key(3)
    fns = {
        "jaxsde_em": (sample_fn(score, sde, solver, shape, n), (params, key)),
        "hand_em": (hand_em_fn(score, sde, n, shape, steps), (params, key)),
    }
    if cfg["extended"]:
        fns["jaxsde_em_unrolled_noise"] = (sample_fn(score, sde, solver, shape, n, UnrolledNoise()), (params, key))
    compiled = compile_all(fns)
    times, outs = run_interleaved(compiled, cfg["repeats"])
    diff = float(jnp.max(jnp.abs(outs["jaxsde_em"][0] - outs["hand_em"][0])))
    scale = float(jnp.max(jnp.abs(outs["hand_em"][0])))
    res = {
        "steps": steps,
        "ms_per_step": {k: 1e3 * statistics.median(v) / steps for k, v in times.items()},
        "ratio_jaxsde_over_hand": ratio(times, "jaxsde_em", "hand_em"),
        "ratio_jaxsde_unrolled_noise_over_hand": (ratio(times, "jaxsde_em_unrolled_noise", "hand_em")
                                                  if "jaxsde_em_unrolled_noise" in times else None),
        "max_abs_diff_samples": diff,
        "max_abs_sample": scale,
        "unrolled_noise_same_samples": (bool(jnp.array_equal(outs["jaxsde_em"][0], outs["jaxsde_em_unrolled_noise"][0]))
                                        if "jaxsde_em_unrolled_noise" in outs else None),
        "compile_s": {k: c[2] for k, c in compiled.items()},
        "loop_body_hlo": {k: loop_body_stats(c[3]) for k, c in compiled.items()},
        "times_s": times,
        "cpu_times_s": times.cpu,
    }
    r = res["ratio_jaxsde_over_hand"]
    log(f"[EM] batch {n}, {steps} steps: jaxsde {res['ms_per_step']['jaxsde_em']:.2f} ms/step, hand "
        f"{res['ms_per_step']['hand_em']:.2f} ms/step -> ratio {r['ratio_of_medians']:.3f} (paired median "
        f"{r['median_paired_ratio']:.3f}, of minima {r['ratio_of_minima']:.3f}; "
        f"CPU time {r['cpu_ratio_of_medians']:.3f})"
        "; same samples as hand EM: max |diff| "
        f"{diff:.1e} (max |x| {scale:.1f})")
    return res


# --------------------------------------------------------------------------------------------
# 3: noise share with a cheap score


def available_impls(names) -> list[str]:
    out = []
    for name in names:
        try:
            jax.random.key(0, impl=name)
        except (ValueError, KeyError, TypeError):
            continue
        out.append(name)
    return out


def bench_noise_dim(cfg, d, log) -> dict:
    """GGF and EM with an exact Gaussian-mixture score in dimension ``d``."""
    sde, n = jaxsde.VPSDE(), cfg["noise_batch"]
    gm = GaussianMixture.random(jax.random.key(0), cfg["gmm_modes"], (d,))
    shape = (d,)
    scale = max(1, d // cfg["noise_dims"][0])  # keep the work per program about constant across d
    m, steps = max(2, cfg["noise_ggf_iterations"] // scale), max(4, cfg["noise_em_steps"] // scale)
    impls = cfg["pipeline_impls"] if d == cfg["noise_dims"][0] else ()

    def gm_score(gm, x, t):
        return gm.score(sde)(x, t)

    ggf_solver, em_solver = jaxsde.GottaGoFast(rtol=0.05), jaxsde.EulerMaruyama(steps)
    key = jax.random.key(4)
    x0 = jax.random.normal(jax.random.key(2), (n, d))
    t0 = jnp.linspace(0.5, 1.0, n)
    fns: dict[str, tuple[Callable, tuple]] = {
        "ggf": (sample_fn(gm_score, sde, ggf_solver, shape, n, max_steps=m), (gm, key)),
        "ggf_zeros": (sample_fn(gm_score, sde, ggf_solver, shape, n, ZeroNoise(), m), (gm, key)),
        "two_score_evals": (chained_evals_fn(gm_score, 2 * m), (gm, x0, t0)),
        "em": (sample_fn(gm_score, sde, em_solver, shape, n), (gm, key)),
        "em_zeros": (sample_fn(gm_score, sde, em_solver, shape, n, ZeroNoise()), (gm, key)),
        "em_unrolled": (sample_fn(gm_score, sde, em_solver, shape, n, UnrolledNoise()), (gm, key)),
        "hand_em": (hand_em_fn(gm_score, sde, n, shape, steps), (gm, key)),
        "normals_only": (normals_only_fn(n, shape, steps), (key,)),
    }
    if cfg["extended"]:
        fns["hand_em_zeros"] = (hand_em_fn(gm_score, sde, n, shape, steps, "zeros"), (gm, key))
        fns["ggf_unrolled"] = (sample_fn(gm_score, sde, ggf_solver, shape, n, UnrolledNoise(), m), (gm, key))
        fns["hand_em_unrolled"] = (hand_em_fn(gm_score, sde, n, shape, steps, "unrolled"), (gm, key))
    for impl in available_impls(impls):
        k = jax.random.key(4, impl=impl)
        fns[f"ggf_{impl}"] = (sample_fn(gm_score, sde, ggf_solver, shape, n, max_steps=m), (gm, k))
        fns[f"em_{impl}"] = (sample_fn(gm_score, sde, em_solver, shape, n), (gm, k))
    compiled = compile_all(fns)
    times, outs = run_interleaved(compiled, cfg["noise_repeats"])
    counts = {k: (int(outs[k][1]) if k.startswith("ggf") else (2 * m if k == "two_score_evals" else steps))
              for k in fns}
    counts["two_score_evals"] = m  # per GGF attempt
    per = {k: statistics.median(v) / counts[k] for k, v in times.items()}
    cpu = {k: statistics.median(v) / counts[k] for k, v in times.cpu.items()}
    res = {
        "d": d, "batch": n, "gmm_modes": cfg["gmm_modes"], "ggf_iterations": m, "em_steps": steps,
        "ms_per_iteration": {k: 1e3 * v for k, v in per.items()},
        "cpu_ms_per_iteration": {k: 1e3 * v for k, v in cpu.items()},
        "cpu_ggf_normals_fraction_vs_zeros": 1.0 - cpu["ggf_zeros"] / cpu["ggf"],
        "cpu_em_normals_fraction_vs_zeros": 1.0 - cpu["em_zeros"] / cpu["em"],
        "cpu_em_normals_fraction_alone": cpu["normals_only"] / cpu["em"],
        "cpu_ggf_normals_fraction_alone": cpu["normals_only"] / cpu["ggf"],
        "ggf_over_two_evals": ratio(times, "ggf", "two_score_evals"),
        "ggf_zeros_over_two_evals": ratio(times, "ggf_zeros", "two_score_evals"),
        "ggf_normals_fraction_vs_zeros": 1.0 - per["ggf_zeros"] / per["ggf"],
        "ggf_normals_fraction_alone": per["normals_only"] / per["ggf"],
        "em_normals_fraction_vs_zeros": 1.0 - per["em_zeros"] / per["em"],
        "em_normals_fraction_alone": per["normals_only"] / per["em"],
        "ggf_speedup_unrolled": ratio(times, "ggf", "ggf_unrolled") if "ggf_unrolled" in times else None,
        "em_speedup_unrolled": ratio(times, "em", "em_unrolled"),
        "em_over_hand": ratio(times, "em", "hand_em"),
        "em_over_hand_zeros": ratio(times, "em_zeros", "hand_em_zeros") if "hand_em_zeros" in times else None,
        "em_unrolled_over_hand_unrolled": (ratio(times, "em_unrolled", "hand_em_unrolled")
                                           if "hand_em_unrolled" in times else None),
        "unrolled_same_samples": bool(jnp.array_equal(outs["em"][0], outs["em_unrolled"][0])
                                      and ("ggf_unrolled" not in outs
                                           or jnp.array_equal(outs["ggf"][0], outs["ggf_unrolled"][0]))),
        "loop_body_hlo": {k: loop_body_stats(c[3]) for k, c in compiled.items()},
        "times_s": times,
        "cpu_times_s": times.cpu,
    }
    res["speedup_other_impls"] = {  # whole-loop speedup (CPU time) of another key implementation over threefry2x32
        k.replace("_", "/", 1): cpu[k.split("_", 1)[0]] / v
        for k, v in cpu.items() if k.split("_", 1)[-1] in impls}
    ms = res["ms_per_iteration"]
    other = ", ".join(f"{k} x{v:.2f}" for k, v in res["speedup_other_impls"].items())
    pct = {k: f"{100 * res[k]:.0f}%" for k in ("ggf_normals_fraction_vs_zeros", "cpu_ggf_normals_fraction_vs_zeros",
                                                "ggf_normals_fraction_alone", "em_normals_fraction_vs_zeros",
                                                "cpu_em_normals_fraction_vs_zeros", "em_normals_fraction_alone")}
    hand_zeros = res["em_over_hand_zeros"]
    log(f"[noise d={d}] GGF {ms['ggf']:.2f} ms/attempt (2 evals {ms['two_score_evals']:.2f}, ratio "
        f"{res['ggf_over_two_evals']['ratio_of_medians']:.2f}; zeros {ms['ggf_zeros']:.2f}): normals "
        f"{pct['ggf_normals_fraction_vs_zeros']} (CPU time {pct['cpu_ggf_normals_fraction_vs_zeros']}, alone "
        f"{pct['ggf_normals_fraction_alone']}); EM {ms['em']:.2f} ms/step (zeros {ms['em_zeros']:.2f}): normals "
        f"{pct['em_normals_fraction_vs_zeros']} (CPU time {pct['cpu_em_normals_fraction_vs_zeros']}, alone "
        f"{pct['em_normals_fraction_alone']}); EM jaxsde/hand {res['em_over_hand']['ratio_of_medians']:.3f} (CPU "
        f"{res['em_over_hand']['cpu_ratio_of_medians']:.3f})"
        + (f", zeros {hand_zeros['ratio_of_medians']:.3f} (CPU {hand_zeros['cpu_ratio_of_medians']:.3f})"
           if hand_zeros else "")
        + f"; unrolled threefry speedup (CPU time) EM x{res['em_speedup_unrolled']['cpu_ratio_of_medians']:.2f}"
        + (f", GGF x{res['ggf_speedup_unrolled']['cpu_ratio_of_medians']:.2f}" if res["ggf_speedup_unrolled"] else "")
        + f" (same samples: {res['unrolled_same_samples']})"
        + (f"; other key impls: {other}" if other else ""))
    return res


def bench_normals(cfg, log) -> dict:
    """``reps`` draws of (batch, d) standard normals per key implementation: from one key, and
    one key per sample (``vmap``, as the driver draws them); plus the unrolled threefry."""
    n, d, reps = cfg["noise_batch"], cfg["micro_dim"], cfg["micro_reps"]

    def one_key(key):
        def body(i, acc):
            return acc + jax.random.normal(jax.random.fold_in(key, i), (n, d))

        return jax.lax.fori_loop(0, reps, body, jnp.zeros((n, d)))

    def per_sample(key, draw=jax.random.normal):
        keys = jax.random.split(key, n)

        def body(i, acc):
            return acc + jax.vmap(lambda k: draw(jax.random.fold_in(k, i), (d,)))(keys)

        return jax.lax.fori_loop(0, reps, body, jnp.zeros((n, d)))

    fns: dict[str, tuple[Callable, tuple]] = {}
    for impl in available_impls(cfg["micro_impls"]):
        k = jax.random.key(5, impl=impl)
        if cfg["extended"] or impl == "threefry2x32":
            fns[f"one_key/{impl}"] = (one_key, (k,))
        fns[f"per_sample/{impl}"] = (per_sample, (k,))
    fns["per_sample/threefry2x32_unrolled"] = (functools.partial(per_sample, draw=threefry_normal),
                                               (jax.random.key(5),))
    fns["no_normals"] = (lambda key: jax.lax.fori_loop(0, reps, lambda i, a: a + 1.0, jnp.zeros((n, d))),
                         (jax.random.key(5),))
    compiled = compile_all(fns)
    times, _ = run_interleaved(compiled, cfg["repeats"])
    ms = {k: 1e3 * statistics.median(v) / reps for k, v in times.items()}
    log(f"[normals {n}x{d}] ms/draw: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))
    return {"batch": n, "d": d, "reps": reps, "ms_per_draw": ms, "times_s": times, "cpu_times_s": times.cpu,
            "ns_per_normal": {k: 1e6 * v / (n * d) for k, v in ms.items()}}


# --------------------------------------------------------------------------------------------
# report


def _r(x: dict) -> str:
    return (f"{x['ratio_of_medians']:.3f} (minima {x['ratio_of_minima']:.3f}; paired {x['median_paired_ratio']:.3f}, "
            f"{x['min_paired_ratio']:.3f}-{x['max_paired_ratio']:.3f}; CPU time {x['cpu_ratio_of_medians']:.3f}, "
            f"minima {x['cpu_ratio_of_minima']:.3f})")


def markdown(report: dict) -> str:
    c, g, e = report["config"], report["ggf"], report["em"]
    r = g["ratio_ggf_attempt_over_two_evals"]
    lines = ["# jaxsde driver overhead", "",
             f"Command: `{report['command']}`  ", f"jax {report['jax']}, {report['platform']}, "
             f"{report['cpu_count']} CPUs, {report['date']}; mode {report['mode']}; {report['repeats_note']}", "",
             "Ratios: wall time, ratio of medians (ratio of minima; median of the per-round ratios, min-max over "
             "rounds; process CPU time, ratio of medians and minima). On a shared machine the wall-time minima are "
             "the least disturbed runs and the CPU-time ratios are the steadiest.", "",
             "## 1. One GGF attempt vs two batched score evaluations", "",
             f"Conv net on {tuple(c['shape'])}, {c['channels']} channels, depth {c['depth']}, batch {c['batch']}, "
             f"{g['loop_iterations']} loop iterations.", "", "| program | ms per attempt | CPU ms per attempt |",
             "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {1e3 * statistics.median(g['cpu_times_s'][k]) / g['loop_iterations']:.2f} |"
              for k, v in g["ms_per_attempt"].items()]
    lines += ["", "Headline figures are process-CPU-time ratios of minima: an attempt holds two score evaluations, so "
              "1.0 is the floor, and wall-time medians on a shared machine fall below it when other jobs slow the "
              "baseline's rounds more than the attempt's (the paired wall ratios' range shows how much).", "",
              f"**GGF attempt / 2 evals = {r['cpu_ratio_of_minima']:.3f}** (CPU minima; all: {_r(r)}); target <= 1.1: "
              f"{'met' if r['cpu_ratio_of_minima'] <= 1.1 else 'MISSED'}.  ",
              (f"Zero noise: {_r(g['ratio_ggf_zero_noise_over_two_evals'])}; "
               if g["ratio_ggf_zero_noise_over_two_evals"] else "")
              + (f"Unrolled threefry noise (same samples: {g['unrolled_noise_same_samples']}): "
                 f"{_r(g['ratio_ggf_unrolled_noise_over_two_evals'])}; "
                 if g["ratio_ggf_unrolled_noise_over_two_evals"] else "")
              + f"normals alone = {100 * g['normals_share_of_attempt']:.1f}% of an attempt.", ""]
    r = e["ratio_jaxsde_over_hand"]
    lines += ["## 2. jaxsde EulerMaruyama vs a hand-written fori_loop EM", "",
              f"{e['steps']} steps, same network and batch; ms/step: "
              + ", ".join(f"{k} {v:.2f}" for k, v in e["ms_per_step"].items())
              + f". Same samples (max |diff| {e['max_abs_diff_samples']:.1e}).", "",
              f"**jaxsde / hand = {r['cpu_ratio_of_minima']:.3f}** (CPU minima; all: {_r(r)}); target <= 1.05: "
              f"{'met' if r['cpu_ratio_of_minima'] <= 1.05 else 'MISSED'}. "
              + (f"With unrolled threefry noise: {_r(e['ratio_jaxsde_unrolled_noise_over_hand'])}."
                 if e["ratio_jaxsde_unrolled_noise_over_hand"] else ""), ""]
    lines += ["## 3. Cheap score (exact Gaussian-mixture score): where the time goes", "",
              "Per loop iteration (GGF attempt / EM step), wall ms (process CPU ms); `zeros` = the same loop with "
              "zeros instead of normals; normals share (CPU time) = 1 - zeros/fresh and normals alone/fresh; "
              "`unrolled` = UnrolledNoise (bit-identical normals), speedup = fresh / unrolled.", "",
              "| d | GGF | GGF zeros | 2 evals | GGF / 2 evals | normals share GGF | EM | EM zeros | "
              "normals share EM | EM jaxsde/hand | unrolled speedup GGF / EM |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    impl_lines = []
    for d, x in report["noise"]["dims"].items():
        ms, cpu = x["ms_per_iteration"], x["cpu_ms_per_iteration"]

        def both(k, ms=ms, cpu=cpu):
            return f"{ms[k]:.2f} ({cpu[k]:.2f})"

        unrolled = [x["ggf_speedup_unrolled"], x["em_speedup_unrolled"]]
        g2 = x["ggf_over_two_evals"]
        lines.append(
            f"| {d} | {both('ggf')} | {both('ggf_zeros')} | {both('two_score_evals')} | "
            f"{g2['ratio_of_medians']:.2f} ({g2['cpu_ratio_of_medians']:.2f}) | "
            f"{100 * x['cpu_ggf_normals_fraction_vs_zeros']:.0f}% / {100 * x['cpu_ggf_normals_fraction_alone']:.0f}% | "
            f"{both('em')} | {both('em_zeros')} | {100 * x['cpu_em_normals_fraction_vs_zeros']:.0f}% / "
            f"{100 * x['cpu_em_normals_fraction_alone']:.0f}% | {x['em_over_hand']['ratio_of_medians']:.3f} "
            f"({x['em_over_hand']['cpu_ratio_of_medians']:.3f}) | "
            + " / ".join(f"x{u['ratio_of_medians']:.2f} (x{u['cpu_ratio_of_medians']:.2f})" if u else "-"
                         for u in unrolled) + " |")
        if x["speedup_other_impls"]:
            impl_lines.append(f"- d={d}: " + ", ".join(f"{k} x{v:.2f}" for k, v in x["speedup_other_impls"].items()))
    if impl_lines:
        lines += ["", "Other key implementations, whole-loop speedup over threefry2x32 (CPU time, median):", ""]
        lines += impl_lines
    mic = report["normals"]
    lines += ["", f"Normals alone, {mic['batch']} x {mic['d']} per draw (fold_in per draw):", "",
              "| variant | ms/draw | ns/normal | CPU ms/draw |", "|---|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {mic['ns_per_normal'][k]:.2f} | "
              f"{1e3 * statistics.median(mic['cpu_times_s'][k]) / mic['reps']:.3f} |"
              for k, v in mic["ms_per_draw"].items()]
    lines += ["", "## Main loop bodies (optimized HLO, top-level instructions of the largest while body)", "",
              "| program | instr | fusions | conv/matmul | nested whiles (trips) | is-finite | select | copies |",
              "|---|---|---|---|---|---|---|---|"]
    bodies = {**{f"GGF/{k}": v for k, v in g["loop_body_hlo"].items()},
              **{f"EM/{k}": v for k, v in e["loop_body_hlo"].items()},
              **{f"d={d}/{k}": v for d, x in report["noise"]["dims"].items() for k, v in x["loop_body_hlo"].items()}}
    for k, s in bodies.items():
        if s:
            lines.append(f"| {k} | {s['instructions']} | {s['fusions']} | {s['matmul_or_conv_fusions']} | "
                         f"{s['nested_while_loops']} {s['nested_while_trip_counts']} | {s['is_finite_fusions']} | "
                         f"{s['select_fusions']} | {s['copies']} |")
    return "\n".join(lines) + "\n"


QUICK = dict(shape=(16, 16, 3), channels=64, depth=3, batch=32, ggf_iterations=4, em_steps=8, repeats=3,
             noise_batch=2000, noise_dims=(256,), gmm_modes=8, noise_ggf_iterations=6, noise_em_steps=12,
             noise_repeats=3, pipeline_impls=(), micro_dim=256, micro_reps=4,
             micro_impls=("threefry2x32", "rbg", "unsafe_rbg"), extended=False)
FULL = dict(shape=(16, 16, 3), channels=64, depth=3, batch=128, ggf_iterations=20, em_steps=40, repeats=7,
            noise_batch=2000, noise_dims=(256, 1024, 3072), gmm_modes=8, noise_ggf_iterations=16,
            noise_em_steps=32, noise_repeats=5, pipeline_impls=("rbg", "unsafe_rbg", "philox2x32"), micro_dim=256,
            micro_reps=16, extended=True,
            micro_impls=("threefry2x32", "rbg", "unsafe_rbg", "philox2x32", "philox4x32", "threefry4x32"))


def arguments(parser):
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 1 minute)")


def run(args, ctx):
    cfg = dict(QUICK if args.quick else FULL)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    report: dict[str, Any] = {
        "command": ctx.command,
        "mode": "quick" if args.quick else "full",
        "repeats_note": f"{cfg['repeats']} interleaved rounds after one warm-up run",
        "jax": jax.__version__,
        "platform": f"{jax.devices()[0].platform} / {platform.processor() or platform.machine()}",
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": cfg,
    }
    log(f"config: {cfg}")
    report["unrolled_normals_bit_identical"] = check_unrolled_normals()
    log(f"unrolled threefry normals bit-identical to jax.random.normal: {report['unrolled_normals_bit_identical']}")
    report["ggf"] = bench_ggf(cfg, log)
    report["em"] = bench_em(cfg, log)
    report["noise"] = {"dims": {str(d): bench_noise_dim(cfg, d, log) for d in cfg["noise_dims"]}}
    report["normals"] = bench_normals(cfg, log)
    report["total_s"] = time.perf_counter() - t_start
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "overhead.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "overhead.md"), "w") as f:
        f.write(markdown(report))
    log(f"wrote {args.out}/overhead.json and overhead.md")
    return report
