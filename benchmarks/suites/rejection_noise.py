"""Rejections and noise: adaptive SDE samplers with a fresh normal per attempt vs one Brownian path per sample.

An adaptive SDE solver accepts an attempt only if its error estimate, which depends on the attempt's noise,
passes. With ``FreshNoise`` (Gotta Go Fast's published scheme) a rejected attempt's normal is discarded and the
retry draws another, so the accepted increments are biased toward those that passed; ``BrownianTreeNoise``
(a ``diffrax.VirtualBrownianTree`` per sample, keyed by its solve key) makes the retry read the same path, and
``BrownianMemoryNoise`` (rejection sampling with memory) reaches the same by remembering rejected attempts' ends.
Problem: a 2-d mixture of three Gaussians (std 0.05-0.3) with its exact score, on VP, VE and the flow path (the
flow from ``t = 1`` with a velocity ``Prediction``), ``--n`` samples from the same keys for every row. Error:
the largest relative error of the two coordinates' standard deviations against 100k exact draws (its sampling
noise is about ``1 / sqrt(2 n)``), and of their means in units of the target's std. Wall: median of
``--rounds`` interleaved runs after compilation (the tree's cost relative to this very cheap score is its
worst case).
"""

from __future__ import annotations

import jax
import numpy as np

import jaxsde
from jaxsde.testing.targets import GaussianMixture

from ..harness.machine import describe, machine_info
from ..harness.timing import interleaved


def target() -> GaussianMixture:
    rng = np.random.default_rng(0)
    return GaussianMixture.create(rng.uniform(0.5, 1.5, 3), rng.uniform(-0.8, 0.8, (3, 2)), rng.uniform(0.05, 0.3, 3))


def solvers(rtol: float) -> dict:
    return {"GottaGoFast": jaxsde.GottaGoFast(rtol=rtol),
            "AdaptiveMultistepSolver tau=1": jaxsde.AdaptiveMultistepSolver(order=2, rtol=rtol, tau=1.0)}


def arguments(parser):
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--rtols", type=float, nargs="+", default=[0.05, 0.01, 0.002])
    parser.add_argument("--sdes", nargs="+", default=["vp", "ve", "flow"])
    parser.add_argument("--rounds", type=int, default=3)


def run(args, ctx):
    mix = target()
    ref = np.asarray(mix.sample(jax.random.PRNGKey(3), 100_000))
    sdes = {"vp": jaxsde.VPSDE(), "ve": jaxsde.VESDE(), "flow": jaxsde.FlowSDE()}
    noises = {"fresh": jaxsde.FreshNoise(), "tree": jaxsde.BrownianTreeNoise(), "memory": jaxsde.BrownianMemoryNoise()}
    calls, meta = {}, {}
    for sde_name in args.sdes:
        sde = sdes[sde_name]
        model = jaxsde.Prediction(mix.velocity(sde), "velocity") if sde_name == "flow" else mix.score(sde)
        for rtol in args.rtols:
            for solver_name, solver in solvers(rtol).items():
                for noise_name, noise in noises.items():
                    fn = jax.jit(lambda k, sde=sde, model=model, solver=solver, noise=noise: jaxsde.sample(
                        k, sde, model, solver, (2,), args.n, noise=noise))
                    key = f"{sde_name}|{solver_name}|{rtol}|{noise_name}"
                    calls[key] = lambda fn=fn: fn(jax.random.PRNGKey(1))
                    meta[key] = dict(sde=sde_name, solver=solver_name, rtol=rtol, noise=noise_name)
    times, outputs = interleaved(calls, args.rounds)
    rows = []
    for key, sol in outputs.items():
        x = np.asarray(sol.x)
        ok = np.asarray(sol.result) == 0
        rows.append(dict(**meta[key], mean_nfe=float(np.mean(sol.stats.nfe)),
                         rejected=float(np.mean(sol.stats.num_rejected)),
                         std_error=float(np.abs(x[ok].std(0) / ref.std(0) - 1).max()),
                         mean_error=float(np.abs((x[ok].mean(0) - ref.mean(0)) / ref.std(0)).max()),
                         failed=int((~ok).sum()), wall_s=float(np.median(times[key]))))
        print(rows[-1], flush=True)
    ctx.save("rejection_noise", dict(machine=machine_info(), n=args.n, rounds=args.rounds, rows=rows))


def render(data: dict) -> str:
    lines = ["# Adaptive SDE samplers: fresh noise per attempt vs one Brownian path per sample (tree or memory)", "",
             f"Command: `{data['command']}`", "",
             f"{describe(data['machine'])}; n = {data['n']} samples per row (same keys); the std error's sampling "
             f"noise is about {1 / np.sqrt(2 * data['n']):.3f}. Wall: median of {data['rounds']} interleaved runs.", "",
             "| SDE | solver | rtol | noise | mean NFE | rejected | std error | mean error | failed | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['sde']} | {r['solver']} | {r['rtol']:g} | {r['noise']} | {r['mean_nfe']:.0f} | "
                     f"{r['rejected']:.0f} | {r['std_error']:.3f} | {r['mean_error']:.3f} | {r['failed']} | "
                     f"{r['wall_s']:.2f} |")
    return "\n".join(lines)
