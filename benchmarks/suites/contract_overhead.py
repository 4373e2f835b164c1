"""The solver contract's cost against a baseline revision, side by side in one process.

    python -m benchmarks run contract_overhead [--baseline REV] [--quick]

jaxsde as it was at ``--baseline`` (``git archive`` of its package into a temporary folder,
imported as ``jaxsde_base``) next to the working tree's jaxsde: the same programs,
``sample(key, VPSDE(), score, solver, shape, n, denoise=False, max_steps=M)`` on the conv score
network of the ``overhead`` suite, compiled by both, then timed in interleaved rounds (rotating
order, ``block_until_ready``, medians). Per program: compile seconds, wall and process-CPU time of
the whole run, the ratio current / baseline, and whether the two give the same NFE (they must: the
contract change moves no step) and how far their samples are apart.
"""

from __future__ import annotations

import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde

from ..harness.writer import table
from .overhead import compile_all, network_setup, ratio, run_interleaved

QUICK = dict(shape=(16, 16, 3), channels=32, depth=2, batch=16, steps=8, repeats=5)
FULL = dict(shape=(16, 16, 3), channels=64, depth=3, batch=64, steps=24, repeats=9)

SOLVERS = {  # name -> constructor of the solver from a jaxsde package
    "GottaGoFast(rtol=0.05)": lambda j: j.GottaGoFast(rtol=0.05),
    "ProbabilityFlow(rtol=1e-3)": lambda j: j.ProbabilityFlow(rtol=1e-3, atol=1e-3),
    "AdaptiveDPMSolver(rtol=0.05)": lambda j: j.AdaptiveDPMSolver(rtol=0.05),
    "AdaptiveMultistepSolver(rtol=0.05, tau=1)": lambda j: j.AdaptiveMultistepSolver(rtol=0.05, tau=1.0),
    "EulerMaruyama(M)": lambda j, m=None: j.EulerMaruyama(m),
    "DPMSolverPP(M)": lambda j, m=None: j.DPMSolverPP(m),
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


def program(package, score, solver, shape, n, steps):
    sde = package.VPSDE()

    def run(params, key):
        sol = package.sample(key, sde, lambda x, t: score(params, x, t), solver, shape, n, denoise=False,
                             max_steps=steps)
        return sol.x, sol.stats.nfe

    return run


def arguments(parser):
    parser.add_argument("--baseline", default="a1ae567", help="git revision to compare against")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compiles", type=int, default=3, help="compiles of each program (median reported)")


def run(args, ctx):
    cfg = dict(QUICK if args.quick else FULL)
    base = load_baseline(args.baseline)
    score, params, shape = network_setup(cfg)
    n, m = cfg["batch"], cfg["steps"]
    key = jax.random.key(1)

    def programs():  # fresh closures: every compile is a new program, not a cache hit
        fns = {}
        for name, make in SOLVERS.items():
            for label, package in (("current", jaxsde), ("baseline", base)):
                solver = make(package, m) if "(M)" in name else make(package)
                fns[f"{label}: {name}"] = (program(package, score, solver, shape, n, m), (params, key))
        return fns

    # compile every program --compiles times, in rotating order (the first compile of a process pays
    # one-time costs); the median compile time is reported
    compile_times: dict[str, list[float]] = {}
    for r in range(args.compiles):
        fns = programs()
        names = list(fns)[r % 2:] + list(fns)[:r % 2]
        compiled = compile_all({k: fns[k] for k in names})
        for k, v in compiled.items():
            compile_times.setdefault(k, []).append(v[2])
    times, outputs = run_interleaved(compiled, cfg["repeats"])
    rows = []
    for name in SOLVERS:
        cur, old = f"current: {name}", f"baseline: {name}"
        (x_cur, nfe_cur), (x_old, nfe_old) = outputs[cur], outputs[old]
        rows.append(dict(
            solver=name, compile_s=statistics.median(compile_times[cur]),
            compile_base_s=statistics.median(compile_times[old]),
            wall_s=statistics.median(times[cur]), wall_base_s=statistics.median(times[old]),
            ratio=ratio(times, cur, old), same_nfe=bool(np.array_equal(np.asarray(nfe_cur), np.asarray(nfe_old))),
            mean_nfe=float(jnp.mean(nfe_cur)), max_abs_dx=float(jnp.max(jnp.abs(x_cur - x_old)))))
        print(rows[-1], flush=True)
    ctx.save("contract_overhead", dict(config=cfg, baseline=args.baseline, compiles=args.compiles, rows=rows))


def render(data):
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
