"""Compilations of a settings sweep under one ``jax.jit``, solver passed as an argument (digits U-Net).

``run(solver, key) -> sample(...).x`` called with GGF at 5 rtols, ``AdaptiveMultistepSolver`` at 3, DDIM at 3
``eta > 0`` and DPM-Solver++ on 3 grids: traces per sweep (one trace = one compilation), each call's wall time and a
second call's. Public API only, so the command run on an older checkout measures it (``--tag``).
"""

from __future__ import annotations

import time

import jax

import jaxsde

from ..harness.cli import options
from ..harness.machine import describe
from ..harness.writer import columns

SWEEPS = {
    "GottaGoFast rtol": (lambda r: jaxsde.GottaGoFast(rtol=r), (0.1, 0.05, 0.02, 0.01, 0.005)),
    "AdaptiveMultistepSolver rtol": (lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r), (0.1, 0.03, 0.01)),
    "DDIM eta": (lambda e: jaxsde.DDIM(20, eta=e), (0.25, 0.5, 1.0)),
}


def grid_sweep(sde):
    grids = tuple(tuple(float(t) for t in jaxsde.time_grid(sde, 10, kind)) for kind in ("logsnr", "uniform", "edm"))
    return (lambda g: jaxsde.DPMSolverPP(10, grid=g), grids)


def arguments(parser):
    options(parser, n=64)
    parser.add_argument("--tag", default="", help="results file suffix: compile_sweep_TAG")


def run(args, ctx):
    ckpt = jaxsde.pretrained("digits")
    score = ckpt.score_fn(ckpt.params)
    sweeps = dict(SWEEPS, **{"DPMSolverPP grid": grid_sweep(ckpt.sde)})
    rows = []
    for name, (make, values) in sweeps.items():
        traces = []

        @jax.jit
        def run(solver, key, traces=traces):
            traces.append(1)
            return jaxsde.sample(key, ckpt.sde, score, solver, ckpt.shape, args.n).x

        first, again = [], []
        for v in values:
            for into in (first, again):  # the first call (compiled unless traced before), then a second
                t0 = time.perf_counter()
                jax.block_until_ready(run(make(v), jax.random.PRNGKey(0)))
                into.append(time.perf_counter() - t0)
        rows.append(dict(sweep=name, values=[str(v) if isinstance(v, tuple) else v for v in values],
                         compilations=len(traces), first_call_s=first, run_s=again,
                         total_s=sum(first), compile_s_estimate=sum(f - a for f, a in zip(first, again, strict=True))))
        print(f"{name}: {len(traces)} compilation(s) for {len(values)} values; first calls "
              + ", ".join(f"{f:.2f}" for f in first) + " s; runs " + ", ".join(f"{a:.2f}" for a in again) + " s",
              flush=True)
    data = ctx.save("compile_sweep" + (f"_{args.tag}" if args.tag else ""), dict(n=args.n, rows=rows))
    print(render(data))


def render(data):
    m = data["machine"]
    lines = [f"# Compilations of a settings sweep (digits, n = {data['n']})", "",
             f"Reproduce: `{data['command']}` at commit {m['git_commit']}.", "", describe(m) + ".", "",
             *columns(data["rows"], {"sweep": "{sweep}", "values": lambda r: str(len(r["values"])),
                                     "compilations": "{compilations}", "sum of first calls (s)": "{total_s:.1f}",
                                     "sum of (first - second call) (s)": "{compile_s_estimate:.1f}",
                                     "second calls (s)": lambda r: ", ".join(f"{a:.2f}" for a in r["run_s"])})]
    return "\n".join(lines)
