"""How much does jaxsde's driver cost on top of the score network?

    python -m benchmarks run overhead [--quick]

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

Every comparison is timed in one process: compiled first, warmed up, then the variants run
in interleaved rounds (rotating order). Wall time (median, minimum, per-round ratios) and
process CPU time (all threads; the steadier figure on a shared machine) are recorded
(:mod:`benchmarks.harness.timing`).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import jaxsde
from jaxsde.testing.targets import GaussianMixture

from ..harness.machine import describe
from ..harness.problems import chained_evals_fn, network_setup
from ..harness.timing import compile_all, ratio, run_interleaved

__all__ = ["chained_evals_fn", "compile_all", "network_setup", "ratio", "run_interleaved"]  # other suites' imports

class ZeroNoise(NamedTuple):
    """A noise source returning zeros: the loop without any normal generation. Accepts the
    driver's ``draw(key, attempt, [t, h,] shape, dtype)`` (shape and dtype come last)."""

    def draw(self, key, attempt, *args):
        del key, attempt
        shape, dtype = args[-2], args[-1]
        return jnp.zeros(shape, dtype)


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


def timed(fns: dict, repeats: int) -> tuple[Any, Any, dict]:
    """Compile and time ``fns`` in interleaved rounds: (Times, outputs, compile seconds)."""
    compiled = compile_all(fns)
    times, outs = run_interleaved(compiled, repeats)
    return times, outs, {k: c[2] for k, c in compiled.items()}


def bench_ggf(cfg, log) -> dict:
    score, params, shape = network_setup(cfg)
    sde, n, m = jaxsde.VPSDE(), cfg["batch"], cfg["ggf_iterations"]
    solver = jaxsde.GottaGoFast(rtol=0.05)
    key = jax.random.key(1)
    ggf = sample_fn(score, sde, solver, shape, n, max_steps=m)
    iters = int(jax.jit(ggf)(params, key)[1])  # loop iterations the batch runs (max over samples)
    x0 = jax.random.normal(jax.random.key(2), (n, *shape))
    t0 = jnp.linspace(0.5, 1.0, n)
    fns = {"ggf": (ggf, (params, key)), "two_score_evals": (chained_evals_fn(score, 2 * iters), (params, x0, t0)),
           "normals_only": (normals_only_fn(n, shape, iters), (key,))}
    if cfg["extended"]:
        fns["ggf_zero_noise"] = (sample_fn(score, sde, solver, shape, n, ZeroNoise(), m), (params, key))
    times, outs, compile_s = timed(fns, cfg["repeats"])
    for name in ("ggf", "ggf_zero_noise"):
        if name in outs and int(outs[name][1]) != iters:
            raise RuntimeError(f"{name} ran {int(outs[name][1])} iterations, expected {iters}")
    per = {name: statistics.median(v) / iters for name, v in times.items()}
    res = {"loop_iterations": iters, "ms_per_attempt": {k: 1e3 * v for k, v in per.items()},
           "ratio_ggf_attempt_over_two_evals": ratio(times, "ggf", "two_score_evals"),
           "ratio_ggf_zero_noise_over_two_evals": (ratio(times, "ggf_zero_noise", "two_score_evals")
                                                   if "ggf_zero_noise" in times else None),
           "normals_share_of_attempt": per["normals_only"] / per["ggf"],
           "compile_s": compile_s, "times_s": times, "cpu_times_s": times.cpu}
    r = res["ratio_ggf_attempt_over_two_evals"]
    log(f"[GGF] batch {n}, {iters} iterations: attempt / two evals {r['ratio_of_medians']:.3f} "
        f"(CPU time {r['cpu_ratio_of_medians']:.3f}); normals alone {100 * res['normals_share_of_attempt']:.1f}%")
    return res


def hand_em_fn(score, sde, n, shape, num_steps):
    """Hand-written Euler-Maruyama with jaxsde's keys, prior, grid and normals (the same samples)."""

    def em(params, key):
        prior_keys, solve_keys = jaxsde.sample_keys(key, n)
        x = jax.vmap(lambda k: sde.prior_sample(k, shape))(prior_keys)
        grid = jaxsde.time_grid(sde, num_steps, "uniform", float(sde.T), float(sde.eps), dtype=jnp.float32)
        batched = jax.vmap(functools.partial(score, params), in_axes=(0, None))

        def body(i, x):
            t, t_next = grid[i], grid[i + 1]
            h = t - t_next
            z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), (1, *shape))[0])(solve_keys)
            return x - h * sde.reverse_drift(x, t, batched(x, t)) + sde.diffusion(t) * jnp.sqrt(h) * z

        return jax.lax.fori_loop(0, num_steps, body, x), jnp.asarray(num_steps)

    return em


def bench_em(cfg, log) -> dict:
    score, params, shape = network_setup(cfg)
    sde, n, steps = jaxsde.VPSDE(), cfg["batch"], cfg["em_steps"]
    key = jax.random.key(3)
    times, outs, compile_s = timed({
        "jaxsde_em": (sample_fn(score, sde, jaxsde.EulerMaruyama(steps), shape, n), (params, key)),
        "hand_em": (hand_em_fn(score, sde, n, shape, steps), (params, key))}, cfg["repeats"])
    diff = float(jnp.max(jnp.abs(outs["jaxsde_em"][0] - outs["hand_em"][0])))
    res = {"steps": steps, "ms_per_step": {k: 1e3 * statistics.median(v) / steps for k, v in times.items()},
           "ratio_jaxsde_over_hand": ratio(times, "jaxsde_em", "hand_em"), "max_abs_diff_samples": diff,
           "max_abs_sample": float(jnp.max(jnp.abs(outs["hand_em"][0]))),
           "compile_s": compile_s, "times_s": times, "cpu_times_s": times.cpu}
    r = res["ratio_jaxsde_over_hand"]
    log(f"[EM] batch {n}, {steps} steps: jaxsde / hand {r['ratio_of_medians']:.3f} (CPU time "
        f"{r['cpu_ratio_of_medians']:.3f}); same samples: max |diff| {diff:.1e}")
    return res


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
        "hand_em": (hand_em_fn(gm_score, sde, n, shape, steps), (gm, key)),
        "normals_only": (normals_only_fn(n, shape, steps), (key,)),
    }
    for impl in available_impls(impls):
        k = jax.random.key(4, impl=impl)
        fns[f"ggf_{impl}"] = (sample_fn(gm_score, sde, ggf_solver, shape, n, max_steps=m), (gm, k))
        fns[f"em_{impl}"] = (sample_fn(gm_score, sde, em_solver, shape, n), (gm, k))
    times, outs, _ = timed(fns, cfg["noise_repeats"])
    counts = {k: int(outs[k][1]) if k.startswith("ggf") else steps for k in fns}
    counts["two_score_evals"] = m  # per GGF attempt
    per = {k: statistics.median(v) / counts[k] for k, v in times.items()}
    cpu = {k: statistics.median(v) / counts[k] for k, v in times.cpu.items()}
    res = {"d": d, "batch": n, "gmm_modes": cfg["gmm_modes"], "ggf_iterations": m, "em_steps": steps,
           "ms_per_iteration": {k: 1e3 * v for k, v in per.items()},
           "cpu_ms_per_iteration": {k: 1e3 * v for k, v in cpu.items()},
           "ggf_over_two_evals": ratio(times, "ggf", "two_score_evals"), "em_over_hand": ratio(times, "em", "hand_em"),
           "times_s": times, "cpu_times_s": times.cpu,
           # whole-loop speedup (CPU time) of another key implementation over threefry2x32
           "speedup_other_impls": {k.replace("_", "/", 1): cpu[k.split("_", 1)[0]] / v
                                   for k, v in cpu.items() if k.split("_", 1)[-1] in impls}}
    for loop in ("ggf", "em"):
        res[f"cpu_{loop}_normals_fraction_vs_zeros"] = 1.0 - cpu[f"{loop}_zeros"] / cpu[loop]
        res[f"cpu_{loop}_normals_fraction_alone"] = cpu["normals_only"] / cpu[loop]
    log(f"[noise d={d}] normals share of a step (CPU time, vs zeros): GGF "
        f"{100 * res['cpu_ggf_normals_fraction_vs_zeros']:.0f}%, "
        f"EM {100 * res['cpu_em_normals_fraction_vs_zeros']:.0f}%; "
        f"EM jaxsde/hand {res['em_over_hand']['cpu_ratio_of_medians']:.3f}")
    return res


def bench_normals(cfg, log) -> dict:
    """``reps`` draws of (batch, d) standard normals per key implementation: from one key, and one key per sample
    (``vmap``, as the driver draws them)."""
    n, d, reps = cfg["noise_batch"], cfg["micro_dim"], cfg["micro_reps"]

    def one_key(key):
        return jax.lax.fori_loop(0, reps, lambda i, acc: acc + jax.random.normal(jax.random.fold_in(key, i), (n, d)),
                                 jnp.zeros((n, d)))

    def per_sample(key):
        keys = jax.random.split(key, n)

        def body(i, acc):
            return acc + jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), (d,)))(keys)

        return jax.lax.fori_loop(0, reps, body, jnp.zeros((n, d)))

    fns: dict[str, tuple[Callable, tuple]] = {}
    for impl in available_impls(cfg["micro_impls"]):
        k = jax.random.key(5, impl=impl)
        if cfg["extended"] or impl == "threefry2x32":
            fns[f"one_key/{impl}"] = (one_key, (k,))
        fns[f"per_sample/{impl}"] = (per_sample, (k,))
    fns["no_normals"] = (lambda key: jax.lax.fori_loop(0, reps, lambda i, a: a + 1.0, jnp.zeros((n, d))),
                         (jax.random.key(5),))
    times, _, _ = timed(fns, cfg["repeats"])
    ms = {k: 1e3 * statistics.median(v) / reps for k, v in times.items()}
    log(f"[normals {n}x{d}] ms/draw: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))
    return {"batch": n, "d": d, "reps": reps, "ms_per_draw": ms, "times_s": times, "cpu_times_s": times.cpu,
            "ns_per_normal": {k: 1e6 * v / (n * d) for k, v in ms.items()}}


def _r(x: dict) -> str:
    return (f"{x['ratio_of_medians']:.3f} (minima {x['ratio_of_minima']:.3f}; paired {x['median_paired_ratio']:.3f}, "
            f"{x['min_paired_ratio']:.3f}-{x['max_paired_ratio']:.3f}; CPU time {x['cpu_ratio_of_medians']:.3f}, "
            f"minima {x['cpu_ratio_of_minima']:.3f})")


def render(data: dict) -> str:
    c, g, e = data["config"], data["ggf"], data["em"]
    r = g["ratio_ggf_attempt_over_two_evals"]
    lines = ["# jaxsde driver overhead", "", f"Command: `{data['command']}`  ",
             f"{describe(data['machine'])}; mode {data['mode']}; {c['repeats']} interleaved rounds after one warm-up "
             "run", "",
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
              + f"normals alone = {100 * g['normals_share_of_attempt']:.1f}% of an attempt.", ""]
    r = e["ratio_jaxsde_over_hand"]
    lines += ["## 2. jaxsde EulerMaruyama vs a hand-written fori_loop EM", "",
              f"{e['steps']} steps, same network and batch; ms/step: "
              + ", ".join(f"{k} {v:.2f}" for k, v in e["ms_per_step"].items())
              + f". Same samples (max |diff| {e['max_abs_diff_samples']:.1e}).", "",
              f"**jaxsde / hand = {r['cpu_ratio_of_minima']:.3f}** (CPU minima; all: {_r(r)}); target <= 1.05: "
              f"{'met' if r['cpu_ratio_of_minima'] <= 1.05 else 'MISSED'}.", ""]
    lines += ["## 3. Cheap score (exact Gaussian-mixture score): where the time goes", "",
              "Per loop iteration (GGF attempt / EM step), wall ms (process CPU ms); `zeros` = the same loop with "
              "zeros instead of normals; normals share (CPU time) = 1 - zeros/fresh and normals alone/fresh.", "",
              "| d | GGF | GGF zeros | 2 evals | GGF / 2 evals | normals share GGF | EM | EM zeros | "
              "normals share EM | EM jaxsde/hand |", "|---|---|---|---|---|---|---|---|---|---|"]
    impl_lines = []
    for d, x in data["noise"]["dims"].items():
        ms, cpu = x["ms_per_iteration"], x["cpu_ms_per_iteration"]
        both = {k: f"{ms[k]:.2f} ({cpu[k]:.2f})" for k in ms}
        share = {loop: f"{100 * x[f'cpu_{loop}_normals_fraction_vs_zeros']:.0f}% / "
                       f"{100 * x[f'cpu_{loop}_normals_fraction_alone']:.0f}%" for loop in ("ggf", "em")}
        g2, eh = x["ggf_over_two_evals"], x["em_over_hand"]
        lines.append(f"| {d} | {both['ggf']} | {both['ggf_zeros']} | {both['two_score_evals']} | "
                     f"{g2['ratio_of_medians']:.2f} ({g2['cpu_ratio_of_medians']:.2f}) | {share['ggf']} | {both['em']} "
                     f"| {both['em_zeros']} | {share['em']} | {eh['ratio_of_medians']:.3f} "
                     f"({eh['cpu_ratio_of_medians']:.3f}) |")
        if x["speedup_other_impls"]:
            impl_lines.append(f"- d={d}: " + ", ".join(f"{k} x{v:.2f}" for k, v in x["speedup_other_impls"].items()))
    if impl_lines:
        lines += ["", "Other key implementations, whole-loop speedup over threefry2x32 (CPU time, median):", "",
                  *impl_lines]
    mic = data["normals"]
    lines += ["", f"Normals alone, {mic['batch']} x {mic['d']} per draw (fold_in per draw):", "",
              "| variant | ms/draw | ns/normal | CPU ms/draw |", "|---|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {mic['ns_per_normal'][k]:.2f} | "
              f"{1e3 * statistics.median(mic['cpu_times_s'][k]) / mic['reps']:.3f} |"
              for k, v in mic["ms_per_draw"].items()]
    return "\n".join(lines)


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

    report: dict[str, Any] = {"mode": "quick" if args.quick else "full", "config": cfg}
    report["ggf"] = bench_ggf(cfg, log)
    report["em"] = bench_em(cfg, log)
    report["noise"] = {"dims": {str(d): bench_noise_dim(cfg, d, log) for d in cfg["noise_dims"]}}
    report["normals"] = bench_normals(cfg, log)
    report["total_s"] = time.perf_counter() - t_start
    ctx.save("overhead", report)
    log(f"wrote {ctx.path('overhead', 'md')}")
