"""Driver overhead per score evaluation of the adaptive exponential integrators vs a fixed-grid solver.

    python -m benchmarks run adaptive_overhead [--quick] [--out benchmarks/results]

The conv score network, batch and timing protocol of the ``overhead`` suite (compiled
first, one warm-up, interleaved rounds in rotating order, wall and process CPU time). Each
program is ``jaxsde.sample(..., max_steps=M, denoise=False)``; its time divided by the score
evaluations of the batch's longest sample (``max nfe``, which every lane of the vmapped loop
pays) gives the time per NFE. The reference is the fixed-grid ``DPMSolverPP(M)`` (multistep, one
evaluation per step) and, below it, ``M`` chained vmapped evaluations of the bare network.
Target (issue 16): adaptive time per NFE <= 1.1x the fixed-grid solver's. Writes
``OUT/adaptive_overhead.{json,md}``.
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp

import jaxsde

from ..harness.machine import describe
from ..harness.problems import chained_evals_fn, network_setup
from ..harness.timing import compile_all, ratio, run_interleaved

QUICK = dict(shape=(16, 16, 3), channels=64, depth=3, batch=32, steps=6, repeats=3)
FULL = dict(shape=(16, 16, 3), channels=64, depth=3, batch=128, steps=24, repeats=7)


def sample_fn(score, solver, shape, n, steps):
    sde = jaxsde.VPSDE()

    def run(params, key):
        sol = jaxsde.sample(key, sde, lambda x, t: score(params, x, t), solver, shape, n, denoise=False,
                            max_steps=steps)
        return sol.x, jnp.max(sol.stats.nfe)

    return run


def arguments(parser):
    parser.add_argument("--quick", action="store_true")


def run(args, ctx):
    cfg = dict(QUICK if args.quick else FULL)
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
    fns = {name: (sample_fn(score, s, shape, n, m), (params, key)) for name, s in solvers.items()}
    nfe = {name: int(jax.jit(fn)(*a)[1]) for name, (fn, a) in fns.items()}
    fns["bare_evals"] = (chained_evals_fn(score, m), (params, jax.random.normal(jax.random.key(2), (n, *shape)),
                                                      jnp.linspace(0.5, 1.0, n)))
    nfe["bare_evals"] = m
    compiled = compile_all(fns)
    times, _ = run_interleaved(compiled, cfg["repeats"])
    per_nfe = {k: 1e3 * statistics.median(v) / nfe[k] for k, v in times.items()}
    # time per NFE ratios: scale each program's times by its NFE before the ratio
    norm = type(times)({k: [t / nfe[k] for t in v] for k, v in times.items()})
    norm.cpu = {k: [t / nfe[k] for t in v] for k, v in times.cpu.items()}
    ratios = {k: ratio(norm, k, "fixed_grid_dpmpp") for k in solvers if k != "fixed_grid_dpmpp"}
    ratios["fixed_grid_dpmpp_over_bare"] = ratio(norm, "fixed_grid_dpmpp", "bare_evals")
    data = ctx.save("adaptive_overhead", dict(config=cfg, nfe_max=nfe, ms_per_nfe=per_nfe, ratios_per_nfe=ratios,
                                              times_s=times, cpu_times_s=times.cpu))
    print(render(data))


def render(data):
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
