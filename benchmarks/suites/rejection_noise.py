"""Rejections and noise: adaptive SDE samplers with a fresh normal per attempt vs one Brownian path per sample.

    python -m benchmarks run rejection_noise [--n 4000] [--rtols 0.05 0.01 0.002] [--sdes vp ve flow] [--rounds 3]

``GottaGoFast`` and ``AdaptiveMultistepSolver(tau=1)`` with ``FreshNoise`` (a rejected attempt's normal is
discarded), ``BrownianTreeNoise`` and ``BrownianMemoryNoise`` (a retry reads the same path) on a 2-d three-Gaussian
mixture with its exact score (VP, VE, and the flow path with a velocity ``Prediction``), the same keys for every row.
Error: the largest relative error of the coordinates' std against 100k exact draws (noise ~ ``1 / sqrt(2 n)``), and
of their means in units of the target's std; wall: median of ``--rounds`` interleaved runs. Writes
``rejection_noise.{md,json}``.
"""

from __future__ import annotations

import jax
import numpy as np

import jaxsde
from jaxsde.testing.targets import GaussianMixture

from ..harness.cli import options
from ..harness.machine import describe, machine_info
from ..harness.timing import interleaved
from ..harness.writer import columns


def arguments(parser):
    options(parser, n=4000, rounds=3)
    parser.add_argument("--rtols", type=float, nargs="+", default=[0.05, 0.01, 0.002])
    parser.add_argument("--sdes", nargs="+", default=["vp", "ve", "flow"], choices=("vp", "ve", "flow"))


def run(args, ctx):
    rng = np.random.default_rng(0)
    mix = GaussianMixture.create(rng.uniform(0.5, 1.5, 3), rng.uniform(-0.8, 0.8, (3, 2)), rng.uniform(0.05, 0.3, 3))
    ref = np.asarray(mix.sample(jax.random.PRNGKey(3), 100_000))
    sdes = {"vp": jaxsde.VPSDE(), "ve": jaxsde.VESDE(), "flow": jaxsde.FlowSDE()}
    noises = {"fresh": jaxsde.FreshNoise(), "tree": jaxsde.BrownianTreeNoise(), "memory": jaxsde.BrownianMemoryNoise()}
    calls, meta = {}, {}
    for sde_name in args.sdes:
        sde = sdes[sde_name]
        model = jaxsde.Prediction(mix.velocity(sde), "velocity") if sde_name == "flow" else mix.score(sde)
        for rtol in args.rtols:
            for solver_name, solver in {"GottaGoFast": jaxsde.GottaGoFast(rtol=rtol), "AdaptiveMultistepSolver tau=1":
                                        jaxsde.AdaptiveMultistepSolver(order=2, rtol=rtol, tau=1.0)}.items():
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
    return "\n".join([
        "# Adaptive SDE samplers: fresh noise per attempt vs one Brownian path per sample (tree or memory)", "",
        f"Command: `{data['command']}`", "",
        f"{describe(data['machine'])}; n = {data['n']} samples per row (same keys); the std error's sampling "
        f"noise is about {1 / np.sqrt(2 * data['n']):.3f}. Wall: median of {data['rounds']} interleaved runs.", "",
        *columns(data["rows"], {"SDE": "{sde}", "solver": "{solver}", "rtol": "{rtol:g}", "noise": "{noise}",
                                "mean NFE": "{mean_nfe:.0f}", "rejected": "{rejected:.0f}",
                                "std error": "{std_error:.3f}", "mean error": "{mean_error:.3f}", "failed": "{failed}",
                                "wall s": "{wall_s:.2f}"})])
