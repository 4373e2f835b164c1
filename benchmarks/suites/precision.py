"""A bfloat16 score network with a float32 sampler state, against float32 throughout, on the digits U-Net.

``ckpt.score_fn(params, compute_dtype=...)`` runs the network in that dtype (``jaxsde.precision``); the solver
state stays float32. ``GottaGoFast(rtol)`` and ``EulerMaruyama(200)`` on the same ``n`` prior draws at both
precisions: FD-digits +- bootstrap sd, mean NFE, max |dx| against float32; wall: batch 64, median of ``--rounds``
interleaved runs (CPU bfloat16 convolutions are not native).
"""

from __future__ import annotations

import datetime
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.testing.metrics.digits import DigitsMetrics

from ..harness.cli import options
from ..harness.timing import interleaved


def arguments(parser):
    options(parser, n=500, rounds=3)
    parser.add_argument("--rtol", type=float, default=0.05, help="GGF's rtol (default 0.05)")


def run(args, ctx):
    command = ctx.command
    ckpt = jaxsde.pretrained("digits")
    dm = DigitsMetrics()
    key = jax.random.PRNGKey(0)
    scores = {"float32": ckpt.score, "bfloat16 network": ckpt.score_fn(ckpt.params, compute_dtype=jnp.bfloat16)}
    solvers = {f"GottaGoFast(rtol={args.rtol:g})": jaxsde.GottaGoFast(rtol=args.rtol),
               "EulerMaruyama(200)": jaxsde.EulerMaruyama(200)}
    rows = []
    for sname, solver in solvers.items():
        ref = None
        timed = {}
        for pname, score in scores.items():
            fn = jax.jit(lambda k, score=score, solver=solver, n=args.n:
                         jaxsde.sample(k, ckpt.sde, score, solver, ckpt.shape, n))
            sol = jax.block_until_ready(fn(key))
            x = np.asarray(sol.x)
            ref = x if ref is None else ref
            rep = dm.report(x, data_range=ckpt.data_range, bootstrap=30)
            rows.append(dict(solver=sname, precision=pname, fd=rep["fd"], fd_sd=rep["fd_std"],
                             nfe=float(np.asarray(sol.stats.nfe).mean()),
                             failed=int(np.sum(np.asarray(sol.result) != 0)),
                             max_dx=float(np.abs(x - ref).max())))
            timed[pname] = jax.jit(lambda k, score=score, solver=solver:
                                   jaxsde.sample(k, ckpt.sde, score, solver, ckpt.shape, 64))
            jax.block_until_ready(timed[pname](key))
            print(rows[-1], flush=True)
        times, _ = interleaved({p: (lambda fn=fn: fn(key)) for p, fn in timed.items()}, args.rounds, rotate=False,
                               warmup=False)
        for r in rows:
            if r["solver"] == sname:
                r["wall_64"] = statistics.median(times[r["precision"]])
    lines = ["# bfloat16 score network, float32 state (digits U-Net)", "",
             f"`{command}` ({datetime.date.today()}, jax {jax.__version__}, {jax.devices()[0].platform}; n = {args.n} "
             f"for quality; wall: 64 samples, median of {args.rounds} interleaved rounds)", "",
             "| solver | network | FD-digits +- sd | mean NFE | failed | max abs dx vs float32 | wall s (64) | "
             "wall vs float32 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(b for b in rows if b["solver"] == r["solver"] and b["precision"] == "float32")
        lines.append(f"| {r['solver']} | {r['precision']} | {r['fd']:.2f} +- {r['fd_sd']:.2f} | {r['nfe']:.1f} | "
                     f"{r['failed']} | {r['max_dx']:.2e} | {r['wall_64']:.2f} | "
                     f"{r['wall_64'] / base['wall_64']:.2f}x |")
    ctx.save("precision", dict(n=args.n, rounds=args.rounds, rows=rows), md="\n".join(lines))
    print("\n".join(lines))
