"""Driver overhead on top of the score network: ``--mode driver | adaptive | contract``.

- ``driver`` (``overhead.{json,md}``): one GottaGoFast attempt vs two batched evaluations of the conv score net
  (target <= 1.1); ``EulerMaruyama`` vs a hand-written ``fori_loop`` EM on the same noise (target <= 1.05, same
  samples); with an exact mixture score (batch 2000, d = 256..3072) the share of the normals in a GGF / EM step
  (zeros instead of normals, the normals alone, other key implementations).
- ``adaptive`` (``adaptive_overhead.{json,md}``): time per NFE (program time / the batch's max NFE) of the adaptive
  exponential integrators vs the fixed-grid ``DPMSolverPP(M)`` (target <= 1.1) and M bare evaluations.
- ``contract`` (``contract_overhead.{json,md}``): the same programs on jaxsde at ``--baseline`` (``git archive``,
  imported as ``jaxsde_base``) and on the working tree: compile s (median of ``--compiles``), wall/CPU ratio, NFE.

Every comparison runs in one process: compiled, warmed up, interleaved rounds in rotating order, wall and process
CPU time (:mod:`benchmarks.harness.timing`). Programs are ``sample(..., denoise=False)`` on a fixed ``max_steps``.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.testing.targets import GaussianMixture

from ..harness.machine import describe
from ..harness.problems import chained_evals_fn, network_setup
from ..harness.timing import compile_all, ratio, run_interleaved
from ..harness.writer import table


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


def sample_fn(score, sde, solver, shape, n, noise=None, max_steps=None, stat="num_steps", package=jaxsde):
    """``(params, key) -> (x, max over samples of sol.stats.<stat>)`` of ``package.sample`` without denoising;
    ``stat=None``: the per-sample NFE."""
    kw = {k: v for k, v in (("noise", noise), ("max_steps", max_steps)) if v is not None}

    def run(params, key):
        sol = package.sample(key, sde, functools.partial(score, params), solver, shape, n, denoise=False, **kw)
        return sol.x, sol.stats.nfe if stat is None else jnp.max(getattr(sol.stats, stat))

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


def render_driver(data: dict) -> str:
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
CONFIGS = {  # mode -> (quick, full)
    "driver": (QUICK, FULL),
    "adaptive": (dict(shape=(16, 16, 3), channels=64, depth=3, batch=32, steps=6, repeats=3),
                 dict(shape=(16, 16, 3), channels=64, depth=3, batch=128, steps=24, repeats=7)),
    "contract": (dict(shape=(16, 16, 3), channels=32, depth=2, batch=16, steps=8, repeats=5),
                 dict(shape=(16, 16, 3), channels=64, depth=3, batch=64, steps=24, repeats=9)),
}


def run_driver(cfg, log) -> dict:
    return dict(ggf=bench_ggf(cfg, log), em=bench_em(cfg, log),
                noise={"dims": {str(d): bench_noise_dim(cfg, d, log) for d in cfg["noise_dims"]}},
                normals=bench_normals(cfg, log))


def run_adaptive(cfg, log) -> dict:
    score, params, shape = network_setup(cfg)
    n, m = cfg["batch"], cfg["steps"]
    solvers = {
        "fixed_grid_dpmpp": jaxsde.DPMSolverPP(m),
        "adaptive_dpm23": jaxsde.AdaptiveDPMSolver(rtol=0.05),
        "adaptive_dpm23_eta1": jaxsde.AdaptiveDPMSolver(rtol=0.05, eta=1.0),
        "adaptive_multistep": jaxsde.AdaptiveMultistepSolver(rtol=0.05),
        "adaptive_multistep_tau1": jaxsde.AdaptiveMultistepSolver(rtol=0.05, tau=1.0),
    }
    key = jax.random.key(1)
    fns = {name: (sample_fn(score, jaxsde.VPSDE(), s, shape, n, max_steps=m, stat="nfe"), (params, key))
           for name, s in solvers.items()}
    nfe = {name: int(jax.jit(fn)(*a)[1]) for name, (fn, a) in fns.items()}
    fns["bare_evals"] = (chained_evals_fn(score, m), (params, jax.random.normal(jax.random.key(2), (n, *shape)),
                                                      jnp.linspace(0.5, 1.0, n)))
    nfe["bare_evals"] = m
    times, _ = run_interleaved(compile_all(fns), cfg["repeats"])
    per_nfe = {k: 1e3 * statistics.median(v) / nfe[k] for k, v in times.items()}
    norm = type(times)({k: [t / nfe[k] for t in v] for k, v in times.items()})  # time per NFE, then the ratios
    norm.cpu = {k: [t / nfe[k] for t in v] for k, v in times.cpu.items()}
    ratios = {k: ratio(norm, k, "fixed_grid_dpmpp") for k in solvers if k != "fixed_grid_dpmpp"}
    ratios["fixed_grid_dpmpp_over_bare"] = ratio(norm, "fixed_grid_dpmpp", "bare_evals")
    log("ms per NFE: " + ", ".join(f"{k} {v:.3f}" for k, v in per_nfe.items()))
    return dict(nfe_max=nfe, ms_per_nfe=per_nfe, ratios_per_nfe=ratios, times_s=times, cpu_times_s=times.cpu)


CONTRACT_SOLVERS = {  # name -> constructor of the solver from a jaxsde package and the step count M
    "GottaGoFast(rtol=0.05)": lambda j, m: j.GottaGoFast(rtol=0.05),
    "ProbabilityFlow(rtol=1e-3)": lambda j, m: j.ProbabilityFlow(rtol=1e-3, atol=1e-3),
    "AdaptiveDPMSolver(rtol=0.05)": lambda j, m: j.AdaptiveDPMSolver(rtol=0.05),
    "AdaptiveMultistepSolver(rtol=0.05, tau=1)": lambda j, m: j.AdaptiveMultistepSolver(rtol=0.05, tau=1.0),
    "EulerMaruyama(M)": lambda j, m: j.EulerMaruyama(m),
    "DPMSolverPP(M)": lambda j, m: j.DPMSolverPP(m),
}


def load_baseline(rev: str):
    """jaxsde's package at git revision ``rev``, imported as ``jaxsde_base`` (a separate package)."""
    archive = subprocess.run(["git", "archive", rev, "jaxsde"], check=True, capture_output=True).stdout
    folder = tempfile.mkdtemp(prefix="jaxsde_base_")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    os.rename(os.path.join(folder, "jaxsde"), os.path.join(folder, "jaxsde_base"))
    sys.path.insert(0, folder)
    try:
        return importlib.import_module("jaxsde_base")
    finally:
        sys.path.remove(folder)


def run_contract(cfg, log, baseline: str, compiles: int) -> dict:
    base = load_baseline(baseline)
    score, params, shape = network_setup(cfg)
    n, m = cfg["batch"], cfg["steps"]
    key = jax.random.key(1)

    def programs():  # fresh closures: every compile is a new program, not a cache hit
        return {f"{label}: {name}": (sample_fn(score, pkg.VPSDE(), make(pkg, m), shape, n, max_steps=m, stat=None,
                                               package=pkg), (params, key))
                for name, make in CONTRACT_SOLVERS.items() for label, pkg in (("current", jaxsde), ("baseline", base))}

    compile_times: dict[str, list[float]] = {}
    for r in range(compiles):  # rotating order (a process' first compile pays one-time costs); median reported
        fns = programs()
        compiled = compile_all({k: fns[k] for k in list(fns)[r % 2:] + list(fns)[:r % 2]})
        for k, v in compiled.items():
            compile_times.setdefault(k, []).append(v[2])
    times, outputs = run_interleaved(compiled, cfg["repeats"])
    rows = []
    for name in CONTRACT_SOLVERS:
        cur, old = f"current: {name}", f"baseline: {name}"
        (x_cur, nfe_cur), (x_old, nfe_old) = outputs[cur], outputs[old]
        rows.append(dict(
            solver=name, compile_s=statistics.median(compile_times[cur]),
            compile_base_s=statistics.median(compile_times[old]),
            wall_s=statistics.median(times[cur]), wall_base_s=statistics.median(times[old]),
            ratio=ratio(times, cur, old), same_nfe=bool(np.array_equal(np.asarray(nfe_cur), np.asarray(nfe_old))),
            mean_nfe=float(jnp.mean(nfe_cur)), max_abs_dx=float(jnp.max(jnp.abs(x_cur - x_old)))))
        log(str(rows[-1]))
    return dict(baseline=baseline, compiles=compiles, rows=rows)


def render_adaptive(data):
    cfg, nfe, ratios, per_nfe = data["config"], data["nfe_max"], data["ratios_per_nfe"], data["ms_per_nfe"]
    lines = ["# Driver overhead per score evaluation: adaptive exponential integrators vs a fixed grid", "",
             f"`{data['command']}` ({describe(data['machine'])}); conv net of the overhead suite, batch "
             f"{cfg['batch']}, {cfg['steps']} loop iterations, {cfg['repeats']} interleaved rounds. Time per NFE = "
             "program time / the batch's max NFE.", "",
             "| program | max NFE | ms per NFE | / fixed grid (wall, median of paired) | / fixed grid (CPU) |",
             "|---|---|---|---|---|"]
    for k in per_nfe:
        r = ratios.get(k)
        cells = (f"{r['median_paired_ratio']:.3f}", f"{r['cpu_ratio_of_medians']:.3f}") if r else ("1", "1")
        if k == "bare_evals":
            b = ratios["fixed_grid_dpmpp_over_bare"]
            cells = (f"fixed grid / bare: {b['median_paired_ratio']:.3f}", f"{b['cpu_ratio_of_medians']:.3f}")
        lines.append(f"| {k} | {nfe[k]} | {per_nfe[k]:.3f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def render_contract(data):
    cfg = data["config"]
    lines = ["# Solver contract: cost against a baseline revision", "",
             f"Reproduce: `{data['command']}`", "",
             f"{data['machine']}", "",
             f"Baseline: jaxsde at `{data['baseline']}`, imported next to the working tree's in the same process. "
             f"Programs: `sample(..., denoise=False, max_steps={cfg['steps']})`, batch {cfg['batch']}, the overhead "
             f"suite's conv score network ({cfg['channels']} channels, depth {cfg['depth']}, {tuple(cfg['shape'])}); "
             f"{cfg['repeats']} interleaved rounds after a warm-up. Ratio: current / baseline, median of the "
             "per-round ratios of wall time (and of process CPU time, all threads). Compile: median of "
             f"{data.get('compiles', 1)} compiles of each program in alternating order. Max abs dx: between the two "
             "runs' samples; the adaptive runs stop at max_steps before t_end, so a rounding-level change of their "
             "step sizes leaves them at slightly other times (and the stochastic ones then draw other noise after "
             "a rejection): only the fixed grids must agree exactly.", ""]
    rows = [[r["solver"], f"{r['compile_s']:.2f} / {r['compile_base_s']:.2f}",
             f"{r['wall_s'] * 1e3:.1f} / {r['wall_base_s'] * 1e3:.1f}",
             f"{r['ratio']['median_paired_ratio']:.3f}",
             f"{r['ratio'].get('cpu_ratio_of_medians', float('nan')):.3f}",
             f"{r['mean_nfe']:.1f}", "yes" if r["same_nfe"] else "NO", f"{r['max_abs_dx']:.1e}"]
            for r in data["rows"]]
    lines += table(["solver", "compile s (current / baseline)", "wall ms (current / baseline)", "wall ratio",
                    "CPU ratio", "mean NFE", "same NFE", "max abs dx"], rows)
    return "\n".join(lines) + "\n"


def render(data: dict) -> str:
    kind = data.get("kind") or ("adaptive" if "ratios_per_nfe" in data else None)  # files stored before ``kind``
    return {"adaptive": render_adaptive, "contract": render_contract}.get(kind, render_driver)(data)


def arguments(parser):
    parser.add_argument("--mode", choices=tuple(CONFIGS), default="driver")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 1 minute)")
    parser.add_argument("--baseline", default="a1ae567", help="contract: git revision to compare against")
    parser.add_argument("--compiles", type=int, default=3, help="contract: compiles of each program (median)")


def run(args, ctx):
    cfg = dict(CONFIGS[args.mode][0 if args.quick else 1])
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    if args.mode == "driver":
        data = dict(mode="quick" if args.quick else "full", config=cfg, **run_driver(cfg, log))
        data["total_s"] = time.perf_counter() - t_start
    elif args.mode == "adaptive":
        data = dict(kind="adaptive", config=cfg, **run_adaptive(cfg, log))
    else:
        data = dict(kind="contract", config=cfg, **run_contract(cfg, log, args.baseline, args.compiles))
    stem = {"driver": "overhead"}.get(args.mode, args.mode + "_overhead")
    ctx.save(stem, data)
