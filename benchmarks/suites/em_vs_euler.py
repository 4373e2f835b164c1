"""Fixed-step EM: jaxsde vs diffrax Euler per step, timed interleaved (robust to a shared machine).

The same exact mixture score, grid and sample count, both with the final denoising step; diffrax with
UnsafeBrownianPath and ForwardMode. Compile: median CPU seconds of ``--compile-repeats``; then ``--rounds`` rounds
of the warmed-up programs, ratio = median of per-round ratios; XLA FLOP and byte counts. jaxsde checks every step
for non-finite values (one reduction and select per step); the ``check_finite=False`` row is like for like.
"""

from __future__ import annotations

import statistics

import diffrax as dfx
import jax
import numpy as np

import jaxsde
from jaxsde.testing import reference
from jaxsde.timing import compile_cpu_seconds

from ..harness.machine import describe, machine_info
from ..harness.problems import ring_mixture
from ..harness.timing import interleaved
from ..harness.writer import columns, progress


def programs(shape, n, steps):
    sde = jaxsde.VPSDE()
    score = ring_mixture(shape).score(sde)
    ts = jaxsde.time_grid(sde, steps)

    def em(key):
        return jaxsde.sample(key, sde, score, jaxsde.EulerMaruyama(steps), shape, n).x

    def em_unchecked(key):
        return jaxsde.sample(key, sde, score, jaxsde.EulerMaruyama(steps), shape, n, check_finite=False).x

    def euler(key):
        prior_keys, solve_keys = jaxsde.sample_keys(key, n)
        x_T = jax.vmap(lambda k: sde.prior_sample(k, shape))(prior_keys)

        def one(k, x):
            path = dfx.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(shape, x.dtype), key=k)
            return reference.diffrax_solve(k, sde, score, x, dfx.Euler(), ts=ts, path=path,
                                           adjoint=dfx.ForwardMode()).x

        return jax.vmap(one)(solve_keys, x_T)

    return em, em_unchecked, euler


def cost(compiled):
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {k: float(analysis.get(k, -1)) for k in ("flops", "bytes accessed")}


def arguments(parser):
    parser.add_argument("--n", default="64,1000", help="comma-separated sample counts")
    parser.add_argument("--compile-repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=9)


def run(args, ctx):
    key = jax.random.PRNGKey(0)
    rows = []
    shapes = (("d=64", (64,)), ("d=3072", (32, 32, 3)))
    todo = [(name, shape, int(n)) for n in args.n.split(",") for name, shape in shapes]
    for name, shape, n in todo:
        if shape != (64,) and n > 256:
            continue  # d=3072 at n > 256: minutes per round on 2 cores, no new information
        em, em_unchecked, euler = programs(shape, n, args.steps)
        compiled = {}
        for label, fn in (("jaxsde EM", em), ("jaxsde EM check_finite=False", em_unchecked),
                          ("diffrax Euler", euler)):
            compiled[label], compile_s = compile_cpu_seconds(fn, key, repeats=args.compile_repeats)
            jax.block_until_ready(compiled[label](key))
            compiled[label + " compile_s"] = compile_s
        times, _ = interleaved({label: (lambda c=compiled[label]: c(key)) for label in
                                ("jaxsde EM", "jaxsde EM check_finite=False", "diffrax Euler")}, args.rounds,
                               rotate=False, warmup=False)
        ratios = [a / b for a, b in zip(times["jaxsde EM"], times["diffrax Euler"], strict=True)]
        ratios_unchecked = [a / b for a, b in zip(times["jaxsde EM check_finite=False"], times["diffrax Euler"],
                                                  strict=True)]
        x_em, x_eu = np.asarray(compiled["jaxsde EM"](key)), np.asarray(compiled["diffrax Euler"](key))
        row = dict(problem=name, n=n, steps=args.steps,
                   em_median_s=statistics.median(times["jaxsde EM"]),
                   euler_median_s=statistics.median(times["diffrax Euler"]),
                   ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                   ratio_unchecked_median=statistics.median(ratios_unchecked),
                   em_compile_s=compiled["jaxsde EM compile_s"], euler_compile_s=compiled["diffrax Euler compile_s"],
                   em_cost=cost(compiled["jaxsde EM"]), euler_cost=cost(compiled["diffrax Euler"]),
                   max_abs_diff=float(np.max(np.abs(x_em - x_eu))))
        rows.append(row)
        progress(row, "problem", "n", "ratio_median", "ratio_unchecked_median", "ratio_min", "ratio_max", "em_median_s",
                 "euler_median_s", "em_compile_s", "euler_compile_s")
    ctx.save("em_vs_euler", dict(machine=machine_info("diffrax"), rows=rows))


def render(data: dict) -> str:
    lines = ["# Fixed-step EM: jaxsde vs diffrax Euler (interleaved timing)", "", f"Command: `{data['command']}`", "",
             describe(data["machine"]), "",
             *columns(data["rows"], {
                 "problem": "{problem}", "n x steps": "{n} x {steps}",
                 "EM ms": lambda r: f"{r['em_median_s'] * 1e3:.1f}",
                 "Euler ms": lambda r: f"{r['euler_median_s'] * 1e3:.1f}",
                 "ratio median (range)": "**{ratio_median:.3f}** ({ratio_min:.3f}-{ratio_max:.3f})",
                 "ratio, check_finite=False": "{ratio_unchecked_median:.3f}",
                 "compile s EM / Euler": "{em_compile_s:.2f} / {euler_compile_s:.2f}",
                 "FLOPs EM / Euler": lambda r: f"{r['em_cost']['flops']:.3g} / {r['euler_cost']['flops']:.3g}",
                 "bytes EM / Euler": lambda r: f"{r['em_cost']['bytes accessed']:.3g} / "
                                               f"{r['euler_cost']['bytes accessed']:.3g}"})]
    return "\n".join(lines)
