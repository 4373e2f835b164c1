"""Driver overhead on top of the score network (the conv net of ``harness.problems``): ``--mode driver | adaptive``.

- ``driver`` (``overhead.{json,md}``): one ``GottaGoFast`` attempt vs two batched score evaluations (target <= 1.1);
  ``EulerMaruyama`` vs a hand-written ``fori_loop`` EM on the same noise (target <= 1.05, same samples).
- ``adaptive`` (``adaptive_overhead.{json,md}``): time per NFE (program time / the batch's max NFE) of the adaptive
  exponential integrators vs the fixed-grid ``DPMSolverPP(M)`` and M bare evaluations.

Programs are ``sample(..., denoise=False)`` on a fixed ``max_steps``, compiled, warmed up, timed in interleaved
rounds in rotating order, wall and process CPU time (:mod:`benchmarks.harness.timing`). ``--quick``: batch 32.
"""

from __future__ import annotations

import functools
import statistics

import jax
import jax.numpy as jnp

import jaxsde

from ..harness.cli import options
from ..harness.machine import describe
from ..harness.problems import chained_evals_fn, network_setup
from ..harness.timing import compile_all, ratio, run_interleaved
from ..harness.writer import progress, table

NET = dict(shape=(16, 16, 3), channels=64, depth=3)
CONFIGS = {  # mode -> (quick, full)
    "driver": (dict(NET, batch=32, ggf_iterations=4, em_steps=8, repeats=3),
               dict(NET, batch=128, ggf_iterations=20, em_steps=40, repeats=7)),
    "adaptive": (dict(NET, batch=32, steps=6, repeats=3), dict(NET, batch=128, steps=24, repeats=7)),
}
ADAPTIVE = {"fixed_grid_dpmpp": lambda m: jaxsde.DPMSolverPP(m),
            "adaptive_dpm23": lambda m: jaxsde.AdaptiveDPMSolver(rtol=0.05),
            "adaptive_dpm23_eta1": lambda m: jaxsde.AdaptiveDPMSolver(rtol=0.05, eta=1.0),
            "adaptive_multistep": lambda m: jaxsde.AdaptiveMultistepSolver(rtol=0.05),
            "adaptive_multistep_tau1": lambda m: jaxsde.AdaptiveMultistepSolver(rtol=0.05, tau=1.0)}


def sample_fn(score, solver, shape, n, max_steps=None, stat="num_steps"):
    """``(params, key) -> (x, max over samples of sol.stats.<stat>)`` of ``jaxsde.sample`` (VPSDE, no denoising)."""
    kw = {} if max_steps is None else {"max_steps": max_steps}

    def run(params, key):
        sol = jaxsde.sample(key, jaxsde.VPSDE(), functools.partial(score, params), solver, shape, n, denoise=False,
                            **kw)
        return sol.x, jnp.max(getattr(sol.stats, stat))

    return run


def hand_em_fn(score, n, shape, num_steps):
    """Hand-written Euler-Maruyama with jaxsde's keys, prior, grid and normals (the same samples)."""
    sde = jaxsde.VPSDE()

    def em(params, key):
        prior_keys, solve_keys = jaxsde.sample_keys(key, n)
        x = jax.vmap(lambda k: sde.prior_sample(k, shape))(prior_keys)
        grid = jaxsde.time_grid(sde, num_steps, "uniform", float(sde.T), float(sde.eps), dtype=jnp.float32)
        batched = jax.vmap(functools.partial(score, params), in_axes=(0, None))

        def body(i, x):
            t, h = grid[i], grid[i] - grid[i + 1]
            z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), (1, *shape))[0])(solve_keys)
            return x - h * sde.reverse_drift(x, t, batched(x, t)) + sde.diffusion(t) * jnp.sqrt(h) * z

        return jax.lax.fori_loop(0, num_steps, body, x), jnp.asarray(num_steps)

    return em


def timed(fns: dict, repeats: int):
    """Compile and time ``fns`` in interleaved rounds: (Times, outputs, compile seconds)."""
    compiled = compile_all(fns)
    times, outs = run_interleaved(compiled, repeats)
    return times, outs, {k: c[2] for k, c in compiled.items()}


def per_unit(times, counts: dict) -> dict:
    """Times divided by each program's loop count, wall and CPU (then :func:`ratio` compares per iteration)."""
    out = type(times)({k: [t / counts[k] for t in v] for k, v in times.items()})
    out.cpu = {k: [t / counts[k] for t in v] for k, v in times.cpu.items()}
    return out


def run_driver(cfg) -> dict:
    score, params, shape = network_setup(cfg)
    n, m, steps, key = cfg["batch"], cfg["ggf_iterations"], cfg["em_steps"], jax.random.key(1)
    ggf = sample_fn(score, jaxsde.GottaGoFast(rtol=0.05), shape, n, max_steps=m)
    iters = int(jax.jit(ggf)(params, key)[1])  # loop iterations the batch runs (max over samples)
    x0 = jax.random.normal(jax.random.key(2), (n, *shape))
    times, outs, compile_s = timed({"ggf": (ggf, (params, key)), "two_score_evals": (
        chained_evals_fn(score, 2 * iters), (params, x0, jnp.linspace(0.5, 1.0, n)))}, cfg["repeats"])
    if int(outs["ggf"][1]) != iters:
        raise RuntimeError(f"ggf ran {int(outs['ggf'][1])} iterations, expected {iters}")
    g = {"loop_iterations": iters, "ms_per_attempt": {k: 1e3 * statistics.median(v) / iters for k, v in times.items()},
         "ratio_ggf_attempt_over_two_evals": ratio(times, "ggf", "two_score_evals"), "compile_s": compile_s,
         "times_s": times, "cpu_times_s": times.cpu}
    key = jax.random.key(3)
    times, outs, compile_s = timed({
        "jaxsde_em": (sample_fn(score, jaxsde.EulerMaruyama(steps), shape, n), (params, key)),
        "hand_em": (hand_em_fn(score, n, shape, steps), (params, key))}, cfg["repeats"])
    e = {"steps": steps, "ms_per_step": {k: 1e3 * statistics.median(v) / steps for k, v in times.items()},
         "ratio_jaxsde_over_hand": ratio(times, "jaxsde_em", "hand_em"),
         "max_abs_diff_samples": float(jnp.max(jnp.abs(outs["jaxsde_em"][0] - outs["hand_em"][0]))),
         "max_abs_sample": float(jnp.max(jnp.abs(outs["hand_em"][0]))),
         "compile_s": compile_s, "times_s": times, "cpu_times_s": times.cpu}
    progress(dict(ggf_over_two_evals=g["ratio_ggf_attempt_over_two_evals"]["cpu_ratio_of_minima"],
                  em_over_hand=e["ratio_jaxsde_over_hand"]["cpu_ratio_of_minima"],
                  em_max_abs_diff=e["max_abs_diff_samples"]), "ggf_over_two_evals", "em_over_hand", "em_max_abs_diff")
    return dict(ggf=g, em=e)


def run_adaptive(cfg) -> dict:
    score, params, shape = network_setup(cfg)
    n, m, key = cfg["batch"], cfg["steps"], jax.random.key(1)
    fns = {k: (sample_fn(score, make(m), shape, n, max_steps=m, stat="nfe"), (params, key))
           for k, make in ADAPTIVE.items()}
    nfe = {k: int(jax.jit(fn)(*a)[1]) for k, (fn, a) in fns.items()}
    fns["bare_evals"] = (chained_evals_fn(score, m), (params, jax.random.normal(jax.random.key(2), (n, *shape)),
                                                      jnp.linspace(0.5, 1.0, n)))
    nfe["bare_evals"] = m
    times, _ = run_interleaved(compile_all(fns), cfg["repeats"])
    norm = per_unit(times, nfe)
    ratios = {k: ratio(norm, k, "fixed_grid_dpmpp") for k in ADAPTIVE if k != "fixed_grid_dpmpp"}
    ratios["fixed_grid_dpmpp_over_bare"] = ratio(norm, "fixed_grid_dpmpp", "bare_evals")
    per_nfe = {k: 1e3 * statistics.median(v) / nfe[k] for k, v in times.items()}
    print("ms per NFE: " + ", ".join(f"{k} {v:.3f}" for k, v in per_nfe.items()), flush=True)
    return dict(nfe_max=nfe, ms_per_nfe=per_nfe, ratios_per_nfe=ratios, times_s=times, cpu_times_s=times.cpu)


def _r(x: dict) -> str:
    return (f"{x['ratio_of_medians']:.3f} (minima {x['ratio_of_minima']:.3f}; paired {x['median_paired_ratio']:.3f}, "
            f"{x['min_paired_ratio']:.3f}-{x['max_paired_ratio']:.3f}; CPU time {x['cpu_ratio_of_medians']:.3f}, "
            f"minima {x['cpu_ratio_of_minima']:.3f})")


def _verdict(label: str, r: dict, target: float) -> str:
    x, met = r["cpu_ratio_of_minima"], "met" if r["cpu_ratio_of_minima"] <= target else "MISSED"
    return f"**{label} = {x:.3f}** (CPU minima; all: {_r(r)}); target <= {target}: {met}."


def render_driver(data: dict) -> str:
    c, g, e = data["config"], data["ggf"], data["em"]
    cpu = {k: 1e3 * statistics.median(v) / g["loop_iterations"] for k, v in g["cpu_times_s"].items()}
    return "\n".join([
        "# jaxsde driver overhead", "", f"Command: `{data['command']}`  ",
        f"{describe(data['machine'])}; mode {data['mode']}; conv net on {tuple(c['shape'])}, {c['channels']} channels, "
        f"depth {c['depth']}, batch {c['batch']}; {c['repeats']} interleaved rounds after one warm-up run.", "",
        "Ratios: wall time, ratio of medians (ratio of minima; median of the per-round ratios, min-max over rounds; "
        "process CPU time, ratio of medians and minima). Headline: the CPU-time ratio of minima, the steadiest on a "
        "shared machine (an attempt holds two score evaluations, so 1.0 is its floor).", "",
        f"## 1. One GGF attempt vs two batched score evaluations ({g['loop_iterations']} loop iterations)", "",
        *table(["program", "ms per attempt", "CPU ms per attempt"],
               [[k, f"{v:.2f}", f"{cpu[k]:.2f}"] for k, v in g["ms_per_attempt"].items()]), "",
        _verdict("GGF attempt / 2 evals", g["ratio_ggf_attempt_over_two_evals"], 1.1), "",
        "## 2. jaxsde EulerMaruyama vs a hand-written fori_loop EM", "",
        f"{e['steps']} steps; ms/step: " + ", ".join(f"{k} {v:.2f}" for k, v in e["ms_per_step"].items())
        + f". Same samples (max |diff| {e['max_abs_diff_samples']:.1e}).", "",
        _verdict("jaxsde / hand", e["ratio_jaxsde_over_hand"], 1.05)])


def render_adaptive(data):
    cfg, nfe, ratios, per_nfe = data["config"], data["nfe_max"], data["ratios_per_nfe"], data["ms_per_nfe"]

    def cells(k):
        r = ratios.get("fixed_grid_dpmpp_over_bare" if k == "bare_evals" else k)
        if r is None:
            return ["1", "1"]
        return [("fixed grid / bare: " if k == "bare_evals" else "") + f"{r['median_paired_ratio']:.3f}",
                f"{r['cpu_ratio_of_medians']:.3f}"]

    return "\n".join([
        "# Driver overhead per score evaluation: adaptive exponential integrators vs a fixed grid", "",
        f"`{data['command']}` ({describe(data['machine'])}); conv net of the overhead suite, batch {cfg['batch']}, "
        f"{cfg['steps']} loop iterations, {cfg['repeats']} interleaved rounds. Time per NFE = program time / the "
        "batch's max NFE.", "",
        *table(["program", "max NFE", "ms per NFE", "/ fixed grid (wall, median of paired)", "/ fixed grid (CPU)"],
               [[k, nfe[k], f"{per_nfe[k]:.3f}", *cells(k)] for k in per_nfe])])


def render(data: dict) -> str:
    return render_adaptive(data) if data.get("kind") == "adaptive" or "ratios_per_nfe" in data else render_driver(data)


def arguments(parser):
    parser.add_argument("--mode", choices=tuple(CONFIGS), default="driver")
    options(parser, quick="small sizes, few repeats (< 1 minute)")


def run(args, ctx):
    cfg = dict(CONFIGS[args.mode][0 if args.quick else 1])
    if args.mode == "driver":
        ctx.save("overhead", dict(mode="quick" if args.quick else "full", config=cfg, **run_driver(cfg)))
    else:
        ctx.save("adaptive_overhead", dict(kind="adaptive", config=cfg, **run_adaptive(cfg)))
