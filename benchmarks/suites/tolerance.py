"""Tolerance proportionality: error against a converged reference as ``rtol`` falls, default ``atol``.

    python -m benchmarks run tolerance [--problems mixture-vp,mixture-ve,digits,digits-ve,hsc32,hsc64,lsst60]
        [--n-ode 16] [--n-sde 4000] [--n-sde-digits 359 (0: no SDE rows)] [--tag SUFFIX]
        [--rtols 0.1,0.01,...] [--fixed-steps 10,20,40] [--no-old-atol] [--no-peer] [--ref-tol 1e-9]
        [--max-step 0.5]
        [--out benchmarks/results]

For every adaptive solver, with ``atol`` left at its default (``ErrorNorm``: one 8-bit level of the
data range, tied to ``rtol`` below it) and, for the solvers whose default was a fixed 8-bit level
before, also with that fixed ``atol`` (the old default), sweeps ``rtol`` over two or more decades and
reports the error next to the mean NFE:

* ODE solvers (``AdaptiveDPMSolver(eta=0)``, ``AdaptiveMultistepSolver(tau=0)``, ``ProbabilityFlow``):
  pathwise, the max over samples and coordinates of ``|x - x_ref|`` at ``t_end`` (no denoising step)
  from the same prior draws, ``x_ref`` from diffrax ``Dopri8`` at ``rtol = atol = 1e-10`` in float64;
* SDE solvers (``GottaGoFast``, ``AdaptiveMultistepSolver(tau=1)``, ``AdaptiveDPMSolver(eta=1)``):
  the distribution error, on the mixtures ``mode_spread_w2`` against the law a perfect sampler gives
  (its noise floor: the same metric of exact draws of that law, same n), on digits FD-digits with
  its floor at the same n.

Problems: ``mixture-vp`` / ``mixture-ve``: a 6-mode Gaussian mixture in d = 64 (exact score), VP and
VE; ``digits`` / ``digits-ve``: the embedded VP / VE digits U-Nets (8x8). Everything in float64 for the ODE rows (the
reference must be converged beyond the tightest tolerance), float32 for the SDE rows. The log-log
slope of error vs rtol is fitted over the rows above the noise floor. Writes ``tolerance.{md,json}``.

Galaxy problems (``hsc32``, ``hsc64``, ``lsst60``: galaxygrad's published networks, float64, the
error in flux) also run fixed-grid rows, ``UniPC`` and ``DPMSolverPP`` at ``--fixed-steps`` steps
(the fixed-schedule alternative a user would otherwise take), on the same draws and the same
reference, and a matched-NFE table: per fixed-grid row, the fewest mean NFE of each adaptive
solver's sweep whose error is at most that row's, and the smallest error each adaptive solver
reaches within that row's NFE. ``--no-old-atol`` / ``--no-peer`` drop the old-fixed-atol rows and
the diffrax peer (to fit a large network's run in a time budget); ``--rtols`` replaces the ODE
rtol sweep. ``--max-step H`` adds ``AdaptiveDPMSolver`` and ``AdaptiveMultistepSolver`` rows with
every step capped at ``H`` in half log-SNR; ``--n-sde 0`` drops the mixtures' SDE rows.
"""

from __future__ import annotations

import datetime
import json
import os
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.testing.metrics.samples import mode_spread_w2
from jaxsde.testing.reference import diffrax_solve
from jaxsde.testing.targets import GaussianMixture

ODE_RTOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
SDE_RTOLS = (2e-1, 1e-1, 5e-2, 2e-2, 1e-2, 5e-3, 2e-3)
SDE_RTOLS_DIGITS = (1e-1, 5e-2, 2e-2, 1e-2, 5e-3)


def ode_solvers(sde, old_atol=True, max_step=None):
    old = sde.default_atol
    rows = {
        "AdaptiveDPMSolver(eta=0)": lambda r: jaxsde.AdaptiveDPMSolver(rtol=r),
        "AdaptiveDPMSolver(eta=0), old fixed atol": lambda r: jaxsde.AdaptiveDPMSolver(rtol=r, atol=old),
        "AdaptiveMultistepSolver(tau=0)": lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r),
        "AdaptiveMultistepSolver(tau=0), old fixed atol": lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r, atol=old),
        "ProbabilityFlow (atol 1e-5)": lambda r: jaxsde.ProbabilityFlow(rtol=r),
    }
    if max_step is not None:  # the log-SNR solvers with their steps capped (``--max-step``)
        rows[f"AdaptiveDPMSolver(eta=0), max_step={max_step:g}"] = (
            lambda r: jaxsde.AdaptiveDPMSolver(rtol=r, max_step=max_step))
        rows[f"AdaptiveMultistepSolver(tau=0), max_step={max_step:g}"] = (
            lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r, max_step=max_step))
    return rows if old_atol else {k: v for k, v in rows.items() if "old fixed atol" not in k}


def fixed_solvers(steps):
    """The fixed-grid rows of the galaxy problems: UniPC (bh2, order 2 + corrector) and DPM-Solver++(2M),
    both on their default log-SNR grid."""
    return {"UniPC (logsnr grid)": (steps, lambda k: jaxsde.UniPC(k)),
            "DPMSolverPP 2M (logsnr grid)": (steps, lambda k: jaxsde.DPMSolverPP(k))}


def sde_solvers(sde):
    old = sde.default_atol
    return {
        "GottaGoFast": lambda r: jaxsde.GottaGoFast(rtol=r),
        "GottaGoFast, old fixed atol": lambda r: jaxsde.GottaGoFast(rtol=r, atol=old),
        "AdaptiveMultistepSolver(tau=1)": lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r, tau=1.0),
        "AdaptiveMultistepSolver(tau=1), old fixed atol":
            lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r, tau=1.0, atol=old),
        "AdaptiveDPMSolver(eta=1)": lambda r: jaxsde.AdaptiveDPMSolver(rtol=r, eta=1.0),
    }


def mixture_problem(ve: bool):
    sde = jaxsde.VESDE() if ve else jaxsde.VPSDE()
    rng = (0.0, 1.0) if ve else (-1.0, 1.0)

    def target(dtype):
        return GaussianMixture.random(jax.random.PRNGKey(7), 6, (64,), scale=0.08, data_range=rng, dtype=dtype)

    return sde, target


def slope(rtols, errors, floor=0.0):
    """Least-squares slope of log(error) against log(rtol) over the rows clearly above ``floor``."""
    pts = [(np.log(r), np.log(e)) for r, e in zip(rtols, errors, strict=True) if e > 2 * floor and e > 0]
    if len(pts) < 2:
        return float("nan")
    a = np.array(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


def run_ode(sde, score, x_T, rtols, solvers, peer=True, data=None, ref_tol=1e-10, fixed=None, on_row=None):
    """Pathwise error rows; ``peer``: also diffrax ``Dopri5`` + ``PIDController(rtol, atol=1e-5)`` on
    the same draws (what :class:`jaxsde.ProbabilityFlow` integrates, with its default atol), so a
    curve that does not fall can be told apart from a problem that does not let it. ``data``: the map
    from the model's space to the space the error is measured in (e.g. a galaxy model's flux). ``fixed``:
    ``{name: (steps, make(steps))}`` fixed-grid rows, one per step count (kind ``"fixed"``). ``on_row(rows)``:
    called after each row (to store a partial run)."""
    n = x_T.shape[0]
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    data = (lambda x: x) if data is None else data
    reference = data(jax.jit(jax.vmap(lambda x: diffrax_solve(
        jax.random.PRNGKey(0), sde, score, x, diffrax.Dopri8(), ode=True, denoise=False,
        controller=diffrax.PIDController(rtol=ref_tol, atol=ref_tol), dt0=1e-3, max_steps=100_000).x))(x_T))
    run = jax.jit(lambda solver: jaxsde.solve_batch(keys, sde, score, solver, x_T, denoise=False))
    runs = dict(solvers)
    if peer:
        peer_run = jax.jit(lambda r: jax.vmap(lambda x: diffrax_solve(
            jax.random.PRNGKey(0), sde, score, x, diffrax.Dopri5(), ode=True, denoise=False,
            controller=diffrax.PIDController(rtol=r, atol=1e-5), max_steps=100_000))(x_T))
        runs["diffrax Dopri5 + PID (atol 1e-5)"] = lambda r: ("peer", r)
    rows = []
    for name, make in runs.items():
        errors, medians, nfes = [], [], []
        for r in rtols:
            made = make(r)
            sol = peer_run(jnp.asarray(r, x_T.dtype)) if isinstance(made, tuple) else run(made)
            ok = bool(np.all(np.asarray(sol.result) == 0))
            per_sample = jnp.max(jnp.abs(data(sol.x) - reference).reshape(n, -1), axis=1)
            errors.append(float(jnp.max(per_sample)) if ok else float("nan"))
            medians.append(float(jnp.median(per_sample)) if ok else float("nan"))
            nfes.append(float(jnp.mean(sol.stats.nfe)))
        rows.append(dict(solver=name, kind="ode", ref_tol=ref_tol, rtols=list(rtols), errors=errors,
                         median_errors=medians, nfe=nfes,
                         monotone=bool(all(b < a for a, b in zip(errors, errors[1:], strict=False))),
                         slope=slope(rtols, errors)))
        if on_row is not None:
            on_row(rows)
        print(f"  {name}: " + ", ".join(f"{r:g}: {e:.2e} (median {m:.1e}) @ {k:.0f}"
                                        for r, e, m, k in zip(rtols, errors, medians, nfes, strict=True)), flush=True)
    for name, (steps, make) in (fixed or {}).items():
        errors, medians, nfes = [], [], []
        for k in steps:
            sol = run(make(k))
            ok = bool(np.all(np.asarray(sol.result) == 0))
            per_sample = jnp.max(jnp.abs(data(sol.x) - reference).reshape(n, -1), axis=1)
            errors.append(float(jnp.max(per_sample)) if ok else float("nan"))
            medians.append(float(jnp.median(per_sample)) if ok else float("nan"))
            nfes.append(float(jnp.mean(sol.stats.nfe)))
        rows.append(dict(solver=name, kind="fixed", steps=list(steps), errors=errors, median_errors=medians,
                         nfe=nfes))
        if on_row is not None:
            on_row(rows)
        print(f"  {name}: " + ", ".join(f"{k} steps: {e:.2e} (median {m:.1e}) @ {f:.0f}"
                                        for k, e, m, f in zip(steps, errors, medians, nfes, strict=True)), flush=True)
    return rows


def matched_nfe(rows):
    """Per fixed-grid cell (solver, steps): its error and NFE, and per adaptive ODE row the fewest mean
    NFE of its sweep with error <= that error (None: no rtol swept reaches it) and the smallest error of
    its sweep at mean NFE <= that NFE (None: every rtol costs more)."""
    out = []
    adaptive = [r for r in rows if r["kind"] == "ode"]
    for f in (r for r in rows if r["kind"] == "fixed"):
        for k, e, nfe in zip(f["steps"], f["errors"], f["nfe"], strict=True):
            cell = dict(fixed=f["solver"], steps=k, error=e, nfe=nfe, adaptive={})
            for a in adaptive:
                reach = [m for ea, m in zip(a["errors"], a["nfe"], strict=True) if ea <= e]
                within = [ea for ea, m in zip(a["errors"], a["nfe"], strict=True) if m <= nfe and np.isfinite(ea)]
                cell["adaptive"][a["solver"]] = dict(nfe_to_match=min(reach) if reach else None,
                                                     error_at_nfe=min(within) if within else None)
            out.append(cell)
    return out


def run_sde(sde, score, shape, n, rtols, solvers, metric, floor):
    rows = []
    run = jax.jit(lambda solver, key: jaxsde.sample(key, sde, score, solver, shape, n), static_argnums=())
    for name, make in solvers.items():
        errors, nfes = [], []
        for r in rtols:
            sol = run(make(r), jax.random.PRNGKey(1))
            errors.append(metric(np.asarray(sol.x)))
            nfes.append(float(jnp.mean(sol.stats.nfe)))
        rows.append(dict(solver=name, kind="sde", rtols=list(rtols), errors=errors, nfe=nfes, floor=floor,
                         slope=slope(rtols, errors, floor),
                         monotone_above_floor=bool(all(b < a for a, b in zip(errors, errors[1:], strict=False)
                                                       if b > 2 * floor))))
        print(f"  {name}: " + ", ".join(f"{r:g}: {e:.4f} @ {m:.0f}" for r, e, m in zip(rtols, errors, nfes,
                                                                                       strict=True))
              + f" (floor {floor:.4f})", flush=True)
    return rows


def mixture_rows(ve, args):
    sde, target = mixture_problem(ve)
    mix64 = target(jnp.float64)
    x_T = jax.vmap(lambda k: sde.prior_sample(k, (64,), jnp.float64))(jax.random.split(jax.random.PRNGKey(5),
                                                                                         args.n_ode))
    rows = run_ode(sde, mix64.score(sde), x_T, ODE_RTOLS, ode_solvers(sde, not args.no_old_atol, args.max_step))
    if args.n_sde == 0:
        return rows
    mix = target(jnp.float32)
    means, scales = mix.ideal_mode_means(sde), mix.ideal_mode_scales(sde)

    def metric(x):
        return float(mode_spread_w2(mix, jnp.asarray(x), means, scales))

    exact = GaussianMixture.create(mix.weights, means, scales).sample(jax.random.PRNGKey(9), args.n_sde)
    floor = metric(exact)
    with jax.enable_x64(False):
        rows += run_sde(sde, mix.score(sde), (64,), args.n_sde, SDE_RTOLS, sde_solvers(sde), metric, floor)
    return rows


def galaxy_rows(args, name, on_row=None):
    """galaxygrad's published network ``name`` (hsc32, hsc64, lsst60: the installed wheel's weights),
    float64; the error in flux (``ckpt.to_data``), the reference diffrax Dopri8 at ``--ref-tol``."""
    from .galaxies import MODELS, galaxygrad_dir

    ckpt = jaxsde.checkpoints.load(os.path.join(galaxygrad_dir(), MODELS[name]), "galaxygrad")
    params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), ckpt.params)
    x_T = jax.vmap(lambda k: ckpt.sde.prior_sample(k, ckpt.shape, jnp.float64))(
        jax.random.split(jax.random.PRNGKey(5), args.n_ode))
    rtols = args.rtols or ODE_RTOLS[:-1]
    solvers = {k: v for k, v in ode_solvers(ckpt.sde, not args.no_old_atol, args.max_step).items()
               if not any(skip and skip in k for skip in args.skip.split(","))}
    steps = tuple(int(v) for v in args.fixed_steps.split(",")) if args.fixed_steps else ()
    return run_ode(ckpt.sde, ckpt.score_fn(params64), x_T, rtols, solvers,
                   peer=not args.no_peer, data=ckpt.to_data, ref_tol=args.ref_tol,
                   fixed=fixed_solvers(steps) if steps else None, on_row=on_row)


def digits_rows(args, model="digits"):
    from jaxsde.testing.metrics.digits import DigitsMetrics

    ckpt = jaxsde.pretrained(model)
    sde = ckpt.sde
    params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), ckpt.params)
    score64 = ckpt.score_fn(params64)
    x_T = jax.vmap(lambda k: sde.prior_sample(k, ckpt.shape, jnp.float64))(
        jax.random.split(jax.random.PRNGKey(5), args.n_ode))
    rows = run_ode(sde, score64, x_T, ODE_RTOLS[:-1], ode_solvers(sde, not args.no_old_atol, args.max_step))
    if args.n_sde_digits == 0:
        return rows
    metrics = DigitsMetrics()
    floor = None

    def metric(x):
        nonlocal floor
        report = metrics.report(x)
        floor = report["fd_floor"]  # held-out real digits, n = min(len(x), 359)
        return float(report["fd"])

    metric(np.asarray(jax.vmap(lambda k: sde.prior_sample(k, ckpt.shape))(jax.random.split(jax.random.PRNGKey(0),
                                                                                           args.n_sde_digits))))

    with jax.enable_x64(False):
        rows += run_sde(sde, ckpt.score_fn(ckpt.params), ckpt.shape, args.n_sde_digits, SDE_RTOLS_DIGITS,
                        {k: v for k, v in sde_solvers(sde).items() if "DPM" not in k}, metric, floor)
    return rows


def render(results, command):
    lines = ["# Tolerance proportionality (default atol)", "",
             f"Reproduce: `{command}`", "",
             f"{results['date']}, {results['machine']}; {results['seconds']:.0f} s.", "",
             "ODE rows: max |x - x_ref| at t_end (no denoising step) over the samples and coordinates "
             "(in brackets, where stored: the median over samples of each sample's max), "
             "x_ref from diffrax Dopri8 at 1e-10 (float64; galaxy problems: the tolerance stated under each). "
             "SDE rows: mode-spread W2 against the law a perfect "
             "sampler gives (mixtures) or FD-digits (digits), float32; the floor is the same metric of exact "
             "draws (mixtures) or of held-out real digits, at the same n. Each cell: error @ mean NFE. "
             "Slope: least-squares log-log slope of error against rtol over the cells above twice the floor; "
             "monotone (SDE rows): over the cells above twice the floor, 'at floor' when fewer than two are. "
             "'old fixed atol' rows pass the previous default atol (one 8-bit level of the data range) explicitly. "
             "Galaxy problems (hsc32, hsc64, lsst60: galaxygrad's published networks): the error in flux "
             "(`ckpt.to_data`).",
             ""]
    for problem, rows in results["problems"].items():
        lines += [f"## {problem}", ""]
        ref = next((r["ref_tol"] for r in rows if "ref_tol" in r), None)
        if ref is not None:
            lines += [f"Reference: diffrax Dopri8 at rtol = atol = {ref:g} (float64).", ""]
        for kind in ("ode", "sde"):
            sel = [r for r in rows if r["kind"] == kind]
            if not sel:
                continue
            rtols = sel[0]["rtols"]
            lines += ["| solver | " + " | ".join(f"rtol {r:g}" for r in rtols) + " | slope | monotone |",
                      "|---|" + "---|" * (len(rtols) + 2)]
            for r in sel:
                fmt = "{:.2e}" if kind == "ode" else "{:.3f}"
                cells = [f"{fmt.format(e)} @ {m:.0f}" for e, m in zip(r["errors"], r["nfe"], strict=True)]
                if "median_errors" in r:  # the median over samples of the per-sample max error
                    cells = [f"{c} (median {m:.1e})" for c, m in zip(cells, r["median_errors"], strict=True)]
                mono = r.get("monotone")
                if kind == "sde":
                    above = sum(e > 2 * r["floor"] for e in r["errors"])
                    mono = r["monotone_above_floor"] if above >= 2 else "at floor"
                lines.append(f"| {r['solver']} | " + " | ".join(cells) + f" | {r['slope']:.2f} | {mono} |")
            if kind == "sde":
                lines += ["", f"Noise floor: {sel[0]['floor']:.3f}."]
            lines.append("")
        fixed = [r for r in rows if r["kind"] == "fixed"]
        if fixed:
            lines += ["Fixed grids (same draws, same reference; each cell: error @ mean NFE):", "",
                      "| solver | " + " | ".join(f"{k} steps" for k in fixed[0]["steps"]) + " |",
                      "|---|" + "---|" * len(fixed[0]["steps"])]
            for r in fixed:
                lines.append(f"| {r['solver']} | " + " | ".join(
                    f"{e:.2e} @ {m:.0f} (median {md:.1e})"
                    for e, m, md in zip(r["errors"], r["nfe"], r["median_errors"], strict=True)) + " |")
            lines += ["", "Matched NFE: per fixed-grid cell, each adaptive solver's fewest mean NFE over its rtol "
                      "sweep with max error <= the cell's ('-': no rtol swept reaches it), and in brackets its "
                      "smallest max error at mean NFE <= the cell's ('-': every rtol costs more).", ""]
            cells = matched_nfe(rows)
            names = list(cells[0]["adaptive"]) if cells else []
            lines += ["| fixed grid | error @ NFE | " + " | ".join(names) + " |",
                      "|---|---|" + "---|" * len(names)]
            for c in cells:
                parts = []
                for a in names:
                    m = c["adaptive"][a]
                    nfe = "-" if m["nfe_to_match"] is None else f"{m['nfe_to_match']:.0f}"
                    err = "-" if m["error_at_nfe"] is None else f"{m['error_at_nfe']:.2e}"
                    parts.append(f"{nfe} ({err})")
                lines.append(f"| {c['fixed']} {c['steps']} | {c['error']:.2e} @ {c['nfe']:.0f} | "
                             + " | ".join(parts) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def arguments(parser):
    parser.add_argument("--problems", default="mixture-vp,mixture-ve,digits")
    parser.add_argument("--n-ode", type=int, default=16)
    parser.add_argument("--n-sde", type=int, default=4000)
    parser.add_argument("--n-sde-digits", type=int, default=359)
    parser.add_argument("--tag", default="", help="suffix of the results files' name, e.g. _ve")
    parser.add_argument("--rtols", type=lambda v: tuple(float(x) for x in v.split(",")), default=None,
                        help="galaxy problems: the ODE rtol sweep (default 0.1 .. 3e-4 at half decades)")
    parser.add_argument("--fixed-steps", default="10,20,40",
                        help="galaxy problems: step counts of the fixed-grid rows (UniPC, DPMSolverPP); '' for none")
    parser.add_argument("--no-old-atol", action="store_true", help="drop the old-fixed-atol rows")
    parser.add_argument("--no-peer", action="store_true", help="drop the diffrax Dopri5 peer row")
    parser.add_argument("--max-step", type=float, default=None,
                        help="also run the log-SNR ODE solvers with this step cap (half log-SNR)")
    parser.add_argument("--skip", default="", help="galaxy problems: comma-separated substrings of ODE rows to drop")
    parser.add_argument("--ref-tol", type=float, default=1e-9,
                        help="galaxy problems: the Dopri8 reference's rtol = atol")


def run(args, ctx):
    # float64 (the ODE rows and their reference), set here so that loading the suite changes nothing
    jax.config.update("jax_enable_x64", True)
    command = ctx.command
    t0 = time.perf_counter()
    problems = {}
    for name in args.problems.split(","):
        print(name, flush=True)
        if name in ("mixture-vp", "mixture-ve"):
            problems[name] = mixture_rows(name.endswith("-ve"), args)
        elif name in ("digits", "digits-ve"):
            problems[name] = digits_rows(args, name)
        elif name in ("hsc32", "hsc64", "lsst60"):
            def partial(rows, name=name):  # a run cut by a time limit keeps the rows it finished
                write(args.out, command, {**problems, name: rows}, time.perf_counter() - t0, args.tag, quiet=True)

            problems[name] = galaxy_rows(args, name, partial)
        else:
            raise SystemExit(f"unknown problem {name!r}")
        # after each problem: a cut run keeps its rows
        write(args.out, command, problems, time.perf_counter() - t0, args.tag)


def write(out, command, problems, seconds, tag="", quiet=False):
    import platform
    results = dict(command=command, date=datetime.date.today().isoformat(),
                   machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU",
                   seconds=seconds, problems=problems)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"tolerance{tag}.json.tmp"), "w") as f:
        json.dump(results, f, indent=1)
    os.replace(os.path.join(out, f"tolerance{tag}.json.tmp"), os.path.join(out, f"tolerance{tag}.json"))
    with open(os.path.join(out, f"tolerance{tag}.md.tmp"), "w") as f:
        f.write(render(results, command))
    os.replace(os.path.join(out, f"tolerance{tag}.md.tmp"), os.path.join(out, f"tolerance{tag}.md"))
    plot(results, os.path.join(out, f"tolerance{tag}.png"))
    if not quiet:
        print(render(results, command))


def plot(results, path):
    """Error against rtol (log-log), one panel per problem and kind (ODE: pathwise; SDE: distribution, floor
    dotted); fixed-grid rows are not on an rtol axis and are left out."""
    from ..harness.writer import pyplot

    plt = pyplot()
    if plt is None:
        return
    panels = [(problem, kind, [r for r in rows if r["kind"] == kind])
              for problem, rows in results["problems"].items() for kind in ("ode", "sde")]
    panels = [p for p in panels if p[2]]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (problem, kind, rows) in zip(axes[0], panels, strict=True):
        for r in rows:
            ax.plot(r["rtols"], r["errors"], marker="o", ms=3, ls="--" if "old fixed" in r["solver"] else "-",
                    label=f"{r['solver']} (slope {r['slope']:.2f})")
        if kind == "sde":
            ax.axhline(rows[0]["floor"], color="gray", ls=":", lw=1, label="noise floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("rtol")
        ax.set_ylabel("max |x - x_ref|" if kind == "ode" else "distribution error")
        ax.set_title(f"{problem}: {kind.upper()}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
