"""optimize_grid's objective, plain vs robust, judged by sample quality on held-out draws.

    python -m benchmarks run grid_objective [--problem lowrank-ve] [--steps 9] [--calibration-seeds 1000,1001]
        [--n-calibration 256] [--n 4000] [--seed 1] [--iterations 100]

Per calibration seed and tuned sampler of the frontier (``quality_vs_nfe.TUNED_SAMPLERS``): ``optimize_grid`` from
the log-SNR grid with the plain mean squared distance to the PF-ODE teacher and with the robust
``mean(log(1 + d_i / median d))``; then ``n`` draws of ``--seed`` on each grid, quality (+- bootstrap sd) beside the
log-SNR grid's, and the calibration set's largest per-draw distance over its median. Writes
``grid_objective_<problem>.{md,json}``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.grid_optimization import solve_on_grid

from ..harness.cli import options
from ..harness.samplers import prior, run_jaxsde
from ..harness.writer import progress
from . import quality_vs_nfe  # the frontier's targets and tuned samplers


def arguments(parser):
    options(parser, n=4000, seed=1)
    parser.add_argument("--problem", default="lowrank-ve")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--calibration-seeds", default="1000,1001")
    parser.add_argument("--n-calibration", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=100)


def run(args, ctx):
    t_all = time.perf_counter()
    target = quality_vs_nfe.frontier_target(args.problem)
    start_rows, rows, spreads = {}, [], {}
    for name, make in quality_vs_nfe.TUNED_SAMPLERS.items():
        x, *_ = run_jaxsde(target, make(args.steps, "logsnr"), args.seed, args.n, 0)
        start_rows[name] = target.quality(x)
        print(f"{name} on the log-SNR grid: {start_rows[name][0]:.4f}", flush=True)
    for cal_seed in (int(s) for s in args.calibration_seeds.split(",")):
        x_cal = prior(target, cal_seed, args.n_calibration)
        teacher, _ = jaxsde.grid_optimization.teacher_samples(target.sde, target.score, x_cal)
        for name, make in quality_vs_nfe.TUNED_SAMPLERS.items():
            start = make(args.steps, "logsnr")
            if cal_seed not in spreads:
                grid = jaxsde.time_grid(target.sde, args.steps, "logsnr")
                out = jax.jit(jax.vmap(lambda x, g, s=start: solve_on_grid(target.sde, target.score, s, g, x).x,
                                       in_axes=(0, None)))(x_cal, grid)
                d = np.asarray(jnp.mean((out - teacher) ** 2, axis=tuple(range(1, teacher.ndim))))
                spreads[cal_seed] = float(d.max() / np.median(d))
            for robust in (False, True):
                t0 = time.perf_counter()
                res = jaxsde.optimize_grid(target.sde, target.score, start, x_cal, teacher=teacher,
                                           iterations=args.iterations, robust=robust)
                tune_s = time.perf_counter() - t0
                x, *_ = run_jaxsde(target, make(args.steps, res.times), args.seed, args.n, 0)
                q, sd = target.quality(x)
                rows.append(dict(calibration_seed=cal_seed, sampler=name, robust=robust, quality=float(q), sd=float(sd),
                                 start_quality=float(start_rows[name][0]), start_sd=float(start_rows[name][1]),
                                 initial_loss=res.initial_loss, loss=res.loss, tune_s=tune_s, times=list(res.times)))
                progress(rows[-1], "calibration_seed", "sampler", "robust", "initial_loss", "loss", "quality", "sd")
    ctx.save(f"grid_objective_{args.problem}",
             dict(problem=args.problem, label=target.label, steps=args.steps, n=args.n, seed=args.seed,
                  n_calibration=args.n_calibration, iterations=args.iterations, max_over_median=spreads, rows=rows,
                  elapsed_s=time.perf_counter() - t_all))


def render(data):
    d, m, rows = data, data["machine"], data["rows"]
    lines = [f"# optimize_grid's objective, plain vs robust: {d['problem']}", "", f"Command: `{d['command']}`", "",
             f"{d['steps']} steps + the final denoising step ({d['steps'] + 1} NFE); grids learned on "
             f"{d['n_calibration']} calibration draws per seed ({d['iterations']} Adam iterations from the log-SNR "
             f"grid), quality ({d['label']}, lower is better, +- bootstrap sd) on n = {d['n']} draws of seed "
             f"{d['seed']}; {m['backend']}, {m['cpus']} CPUs, {m['date']}, {d['elapsed_s']:.0f} s.", "",
             "Largest per-draw distance to the teacher over the median, on the log-SNR grid (a "
             "draw sent to another mode makes it thousands): "
             + ", ".join(f"seed {k}: {v:.3g}" for k, v in d["max_over_median"].items()), "",
             "| calibration seed | sampler | log-SNR grid | plain objective: loss | quality | robust objective: loss "
             "| quality |", "|---|---|---|---|---|---|---|"]
    for plain, robust in zip(rows[::2], rows[1::2], strict=True):  # stored in pairs: plain, then robust
        lines.append(f"| {plain['calibration_seed']} | {plain['sampler']} | {plain['start_quality']:.4f} +- "
                     f"{plain['start_sd']:.4f} | " + " | ".join(
                         f"{r['initial_loss']:.3g} -> {r['loss']:.3g} | {r['quality']:.4f} +- {r['sd']:.4f}"
                         for r in (plain, robust)) + " |")
    return "\n".join(lines + ["", "Loss: the mean over calibration draws of the mean squared difference per dimension "
                              "to the teacher (PF-ODE at tolerance 1e-5), on the log-SNR grid -> on the learned grid."])
