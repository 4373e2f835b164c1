"""Tolerance proportionality: error against a converged reference as ``rtol`` falls, default ``atol``.

    python -m benchmarks run tolerance [--problems mixture-vp,mixture-ve,digits,digits-ve,hsc32,hsc64,lsst60]
        [--n-ode 16] [--n-sde 4000] [--n-sde-digits 359] [--tag SUFFIX] [--rtols 0.1,...] [--fixed-steps 10,20,40]
        [--no-old-atol] [--no-peer] [--skip SUBSTR,...] [--ref-tol 1e-9] [--max-step 0.5]

Every adaptive solver sweeps ``rtol`` with its default ``atol`` (and, where the default used to be a fixed 8-bit
level, with that old fixed ``atol``); each cell is the error @ mean NFE. ODE rows (``AdaptiveDPMSolver(eta=0)``,
``AdaptiveMultistepSolver(tau=0)``, ``ProbabilityFlow``, diffrax ``Dopri5`` as the peer), float64: the max (and
median) over draws of each draw's max ``|x - x_ref|`` at ``t_end`` (no denoising step), ``x_ref`` diffrax ``Dopri8``
at 1e-10 (galaxies: ``--ref-tol``) from the same draws. SDE rows (``GottaGoFast``, ``AdaptiveMultistepSolver(tau=1)``,
``AdaptiveDPMSolver(eta=1)``), float32: ``mode_spread_w2`` (mixtures) or FD-digits, with its floor at the same n.
Problems: a 6-mode d = 64 mixture (exact score, VP / VE), the embedded VP / VE digits U-Nets, galaxygrad's networks
(error in flux; also ``UniPC`` / ``DPMSolverPP`` at ``--fixed-steps`` and a matched-NFE table). ``--rtols``: the
galaxies' ODE sweep; ``--max-step H``: capped log-SNR ODE rows; ``--n-sde 0`` / ``--n-sde-digits 0``: no SDE rows.
Writes ``tolerance[TAG].{md,json,png}`` after each problem (galaxies: after each row); the ``.md`` at run time only
(``report`` leaves these files as they are: the stored ones carry their own revisions' prose).
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.testing.metrics.samples import mode_spread_w2
from jaxsde.testing.reference import diffrax_solve
from jaxsde.testing.targets import GaussianMixture

from ..harness.sweep import floats
from ..harness.writer import pyplot, table

ODE_RTOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
SDE_RTOLS = (2e-1, 1e-1, 5e-2, 2e-2, 1e-2, 5e-3, 2e-3)
SDE_RTOLS_DIGITS = (1e-1, 5e-2, 2e-2, 1e-2, 5e-3)


def ode_solvers(sde, old_atol=True, max_step=None):
    old, rows = sde.default_atol, {}
    for name, cls in (("AdaptiveDPMSolver(eta=0)", jaxsde.AdaptiveDPMSolver),
                      ("AdaptiveMultistepSolver(tau=0)", jaxsde.AdaptiveMultistepSolver)):
        rows[name] = lambda r, cls=cls: cls(rtol=r)
        if old_atol:
            rows[f"{name}, old fixed atol"] = lambda r, cls=cls: cls(rtol=r, atol=old)
    rows["ProbabilityFlow (atol 1e-5)"] = lambda r: jaxsde.ProbabilityFlow(rtol=r)
    if max_step is not None:  # the log-SNR solvers with their steps capped
        rows[f"AdaptiveDPMSolver(eta=0), max_step={max_step:g}"] = (
            lambda r: jaxsde.AdaptiveDPMSolver(rtol=r, max_step=max_step))
        rows[f"AdaptiveMultistepSolver(tau=0), max_step={max_step:g}"] = (
            lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r, max_step=max_step))
    return rows


def sde_solvers(sde):
    old = sde.default_atol
    return {"GottaGoFast": lambda r: jaxsde.GottaGoFast(rtol=r),
            "GottaGoFast, old fixed atol": lambda r: jaxsde.GottaGoFast(rtol=r, atol=old),
            "AdaptiveMultistepSolver(tau=1)": lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r, tau=1.0),
            "AdaptiveMultistepSolver(tau=1), old fixed atol":
                lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r, tau=1.0, atol=old),
            "AdaptiveDPMSolver(eta=1)": lambda r: jaxsde.AdaptiveDPMSolver(rtol=r, eta=1.0)}


def slope(rtols, errors, floor=0.0):
    """Least-squares slope of log(error) against log(rtol) over the rows clearly above ``floor``."""
    pts = [(np.log(r), np.log(e)) for r, e in zip(rtols, errors, strict=True) if e > 2 * floor and e > 0]
    return float(np.polyfit(*np.array(pts).T, 1)[0]) if len(pts) >= 2 else float("nan")


def decreasing(errors, above=None):
    return bool(all(b < a for a, b in zip(errors, errors[1:], strict=False) if above is None or b > above))


def run_ode(sde, score, x_T, rtols, solvers, peer=True, data=None, ref_tol=1e-10, fixed=None, on_row=None):
    """Pathwise error rows of ``solvers`` (``{name: make(rtol)}``) and, with ``peer``, diffrax ``Dopri5`` +
    ``PIDController(rtol, atol=1e-5)``; ``data``: the map to the space the error is measured in; ``fixed``:
    ``{name: (steps, make(steps))}`` fixed-grid rows; ``on_row(rows)`` after each row."""
    n = x_T.shape[0]
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    data = (lambda x: x) if data is None else data
    reference = data(jax.jit(jax.vmap(lambda x: diffrax_solve(
        jax.random.PRNGKey(0), sde, score, x, diffrax.Dopri8(), ode=True, denoise=False,
        controller=diffrax.PIDController(rtol=ref_tol, atol=ref_tol), dt0=1e-3, max_steps=100_000).x))(x_T))
    run = jax.jit(lambda solver: jaxsde.solve_batch(keys, sde, score, solver, x_T, denoise=False))
    runs = {name: (lambda r, make=make: run(make(r))) for name, make in solvers.items()}
    if peer:
        peer_run = jax.jit(lambda r: jax.vmap(lambda x: diffrax_solve(
            jax.random.PRNGKey(0), sde, score, x, diffrax.Dopri5(), ode=True, denoise=False,
            controller=diffrax.PIDController(rtol=r, atol=1e-5), max_steps=100_000))(x_T))
        runs["diffrax Dopri5 + PID (atol 1e-5)"] = lambda r: peer_run(jnp.asarray(r, x_T.dtype))
    todo = [(name, "ode", "rtols", rtols, go) for name, go in runs.items()]
    todo += [(name, "fixed", "steps", steps, lambda k, make=make: run(make(k))) for name, (steps, make) in
             (fixed or {}).items()]
    rows = []
    for name, kind, label, settings, go in todo:
        errors, medians, nfes = [], [], []
        for v in settings:
            sol = go(v)
            ok = bool(np.all(np.asarray(sol.result) == 0))
            per_sample = jnp.max(jnp.abs(data(sol.x) - reference).reshape(n, -1), axis=1)
            errors.append(float(jnp.max(per_sample)) if ok else float("nan"))
            medians.append(float(jnp.median(per_sample)) if ok else float("nan"))
            nfes.append(float(jnp.mean(sol.stats.nfe)))
        rows.append(dict(solver=name, kind=kind, **({"ref_tol": ref_tol} if kind == "ode" else {}),
                         **{label: list(settings)}, errors=errors, median_errors=medians, nfe=nfes))
        if kind == "ode":
            rows[-1].update(monotone=decreasing(errors), slope=slope(rtols, errors))
        if on_row is not None:
            on_row(rows)
        print(f"  {name}: " + ", ".join(f"{v:g}: {e:.2e} (median {m:.1e}) @ {k:.0f}" for v, e, m, k in
                                        zip(settings, errors, medians, nfes, strict=True)), flush=True)
    return rows


def matched_nfe(rows):
    """Per fixed-grid cell (solver, steps): its error and NFE, and per adaptive ODE row the fewest mean
    NFE of its sweep with error <= that error (None: no rtol swept reaches it) and the smallest error of
    its sweep at mean NFE <= that NFE (None: every rtol costs more)."""
    out = []
    for f in (r for r in rows if r["kind"] == "fixed"):
        for k, e, nfe in zip(f["steps"], f["errors"], f["nfe"], strict=True):
            cell = dict(fixed=f["solver"], steps=k, error=e, nfe=nfe, adaptive={})
            for a in (r for r in rows if r["kind"] == "ode"):
                pairs = list(zip(a["errors"], a["nfe"], strict=True))
                reach = [m for ea, m in pairs if ea <= e]
                within = [ea for ea, m in pairs if m <= nfe and np.isfinite(ea)]
                cell["adaptive"][a["solver"]] = dict(nfe_to_match=min(reach) if reach else None,
                                                     error_at_nfe=min(within) if within else None)
            out.append(cell)
    return out


def run_sde(sde, score, shape, n, rtols, solvers, metric, floor):
    rows = []
    run = jax.jit(lambda solver, key: jaxsde.sample(key, sde, score, solver, shape, n))
    for name, make in solvers.items():
        sols = [run(make(r), jax.random.PRNGKey(1)) for r in rtols]
        errors = [metric(np.asarray(sol.x)) for sol in sols]
        nfes = [float(jnp.mean(sol.stats.nfe)) for sol in sols]
        rows.append(dict(solver=name, kind="sde", rtols=list(rtols), errors=errors, nfe=nfes, floor=floor,
                         slope=slope(rtols, errors, floor), monotone_above_floor=decreasing(errors, 2 * floor)))
        print(f"  {name}: " + ", ".join(f"{r:g}: {e:.4f} @ {m:.0f}" for r, e, m in zip(rtols, errors, nfes,
                                                                                       strict=True))
              + f" (floor {floor:.4f})", flush=True)
    return rows


def prior64(sde, shape, n):
    return jax.vmap(lambda k: sde.prior_sample(k, shape, jnp.float64))(jax.random.split(jax.random.PRNGKey(5), n))


def mixture_rows(ve, args):
    sde = jaxsde.VESDE() if ve else jaxsde.VPSDE()

    def target(dtype):
        return GaussianMixture.random(jax.random.PRNGKey(7), 6, (64,), scale=0.08,
                                      data_range=(0.0, 1.0) if ve else (-1.0, 1.0), dtype=dtype)

    rows = run_ode(sde, target(jnp.float64).score(sde), prior64(sde, (64,), args.n_ode), ODE_RTOLS,
                   ode_solvers(sde, not args.no_old_atol, args.max_step))
    if args.n_sde == 0:
        return rows
    mix = target(jnp.float32)
    means, scales = mix.ideal_mode_means(sde), mix.ideal_mode_scales(sde)

    def metric(x):
        return float(mode_spread_w2(mix, jnp.asarray(x), means, scales))

    floor = metric(GaussianMixture.create(mix.weights, means, scales).sample(jax.random.PRNGKey(9), args.n_sde))
    with jax.enable_x64(False):
        return rows + run_sde(sde, mix.score(sde), (64,), args.n_sde, SDE_RTOLS, sde_solvers(sde), metric, floor)


def galaxy_rows(args, name, on_row=None):
    """galaxygrad's published network ``name`` (the installed wheel's weights), float64; the error in flux."""
    from .galaxies import MODELS, galaxygrad_dir

    ckpt = jaxsde.checkpoints.load(os.path.join(galaxygrad_dir(), MODELS[name]), "galaxygrad")
    params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), ckpt.params)
    solvers = {k: v for k, v in ode_solvers(ckpt.sde, not args.no_old_atol, args.max_step).items()
               if not any(skip and skip in k for skip in args.skip.split(","))}
    steps = tuple(int(v) for v in args.fixed_steps.split(",")) if args.fixed_steps else ()
    fixed = {"UniPC (logsnr grid)": (steps, jaxsde.UniPC), "DPMSolverPP 2M (logsnr grid)": (steps, jaxsde.DPMSolverPP)}
    return run_ode(ckpt.sde, ckpt.score_fn(params64), prior64(ckpt.sde, ckpt.shape, args.n_ode),
                   args.rtols or ODE_RTOLS[:-1], solvers, peer=not args.no_peer, data=ckpt.to_data,
                   ref_tol=args.ref_tol, fixed=fixed if steps else None, on_row=on_row)


def digits_rows(args, model="digits"):
    from jaxsde.testing.metrics.digits import DigitsMetrics

    ckpt = jaxsde.pretrained(model)
    sde = ckpt.sde
    params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), ckpt.params)
    rows = run_ode(sde, ckpt.score_fn(params64), prior64(sde, ckpt.shape, args.n_ode), ODE_RTOLS[:-1],
                   ode_solvers(sde, not args.no_old_atol, args.max_step))
    if args.n_sde_digits == 0:
        return rows
    metrics, floor = DigitsMetrics(), []

    def metric(x):
        report = metrics.report(x)
        floor.append(report["fd_floor"])  # held-out real digits, n = min(len(x), 359)
        return float(report["fd"])

    metric(np.asarray(jax.vmap(lambda k: sde.prior_sample(k, ckpt.shape))(jax.random.split(jax.random.PRNGKey(0),
                                                                                           args.n_sde_digits))))
    with jax.enable_x64(False):
        return rows + run_sde(sde, ckpt.score_fn(ckpt.params), ckpt.shape, args.n_sde_digits, SDE_RTOLS_DIGITS,
                              {k: v for k, v in sde_solvers(sde).items() if "DPM" not in k}, metric, floor[-1])


def markdown(results):
    lines = ["# Tolerance proportionality (default atol)", "",
             f"Reproduce: `{results['command']}`", "",
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
             "(`ckpt.to_data`).", ""]
    for problem, rows in results["problems"].items():
        lines += [f"## {problem}", ""]
        ref = next((r["ref_tol"] for r in rows if "ref_tol" in r), None)
        if ref is not None:
            lines += [f"Reference: diffrax Dopri8 at rtol = atol = {ref:g} (float64).", ""]
        for kind in ("ode", "sde"):
            sel = [r for r in rows if r["kind"] == kind]
            if not sel:
                continue
            body = []
            for r in sel:
                cells = [f"{e:{'.2e' if kind == 'ode' else '.3f'}} @ {m:.0f}" for e, m in zip(r["errors"], r["nfe"],
                                                                                          strict=True)]
                if "median_errors" in r:  # the median over samples of the per-sample max error
                    cells = [f"{c} (median {m:.1e})" for c, m in zip(cells, r["median_errors"], strict=True)]
                mono = r.get("monotone")
                if kind == "sde":
                    above = sum(e > 2 * r["floor"] for e in r["errors"])
                    mono = r["monotone_above_floor"] if above >= 2 else "at floor"
                body.append([r["solver"], *cells, f"{r['slope']:.2f}", mono])
            lines += table(["solver", *(f"rtol {r:g}" for r in sel[0]["rtols"]), "slope", "monotone"], body)
            lines += ["", f"Noise floor: {sel[0]['floor']:.3f}.", ""] if kind == "sde" else [""]
        fixed = [r for r in rows if r["kind"] == "fixed"]
        if fixed:
            body = [[r["solver"], *(f"{e:.2e} @ {m:.0f} (median {md:.1e})" for e, m, md in
                                    zip(r["errors"], r["nfe"], r["median_errors"], strict=True))] for r in fixed]
            lines += ["Fixed grids (same draws, same reference; each cell: error @ mean NFE):", "",
                      *table(["solver", *(f"{k} steps" for k in fixed[0]["steps"])], body),
                      "", "Matched NFE: per fixed-grid cell, each adaptive solver's fewest mean NFE over its rtol "
                      "sweep with max error <= the cell's ('-': no rtol swept reaches it), and in brackets its "
                      "smallest max error at mean NFE <= the cell's ('-': every rtol costs more).", ""]
            cells = matched_nfe(rows)
            names = list(cells[0]["adaptive"]) if cells else []

            def cell(m):
                return ("-" if m["nfe_to_match"] is None else f"{m['nfe_to_match']:.0f}") + " (" + (
                    "-" if m["error_at_nfe"] is None else f"{m['error_at_nfe']:.2e}") + ")"

            lines += table(["fixed grid", "error @ NFE", *names], [
                [f"{c['fixed']} {c['steps']}", f"{c['error']:.2e} @ {c['nfe']:.0f}", *(cell(c["adaptive"][a])
                                                                                       for a in names)] for c in cells])
            lines.append("")
    return "\n".join(lines) + "\n"


def arguments(parser):
    parser.add_argument("--problems", default="mixture-vp,mixture-ve,digits")
    parser.add_argument("--n-ode", type=int, default=16)
    parser.add_argument("--n-sde", type=int, default=4000, help="mixtures' SDE samples (0: no SDE rows)")
    parser.add_argument("--n-sde-digits", type=int, default=359, help="digits' SDE samples (0: no SDE rows)")
    parser.add_argument("--tag", default="", help="suffix of the results files' name, e.g. _ve")
    parser.add_argument("--rtols", type=floats, default=None, help="galaxy problems: the ODE rtol sweep")
    parser.add_argument("--fixed-steps", default="10,20,40", help="galaxy problems: fixed-grid step counts ('': none)")
    parser.add_argument("--no-old-atol", action="store_true", help="drop the old-fixed-atol rows")
    parser.add_argument("--no-peer", action="store_true", help="drop the diffrax Dopri5 peer row")
    parser.add_argument("--max-step", type=float, default=None, help="also the log-SNR ODE solvers with this cap")
    parser.add_argument("--skip", default="", help="galaxy problems: comma-separated substrings of ODE rows to drop")
    parser.add_argument("--ref-tol", type=float, default=1e-9, help="galaxy problems: the Dopri8 reference's tolerance")


def run(args, ctx):
    jax.config.update("jax_enable_x64", True)  # the ODE rows and their reference; set here, not at import
    t0, problems = time.perf_counter(), {}

    def save(done):
        data = dict(command=ctx.command, date=datetime.date.today().isoformat(),
                    machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU",
                    seconds=time.perf_counter() - t0, problems=done)
        ctx.save(f"tolerance{args.tag}", data, md=markdown(data))

    for name in args.problems.split(","):
        print(name, flush=True)
        if name in ("mixture-vp", "mixture-ve"):
            problems[name] = mixture_rows(name.endswith("-ve"), args)
        elif name in ("digits", "digits-ve"):
            problems[name] = digits_rows(args, name)
        elif name in ("hsc32", "hsc64", "lsst60"):  # a run cut by a time limit keeps the rows it finished
            problems[name] = galaxy_rows(args, name, lambda rows, name=name: save({**problems, name: rows}))
        else:
            ctx.error(f"unknown problem {name!r}")
        save(problems)


def plot(results, path):
    """Error against rtol (log-log), one panel per problem and kind (ODE: pathwise; SDE: distribution, floor
    dotted); fixed-grid rows are not on an rtol axis and are left out."""
    panels = [(problem, kind, [r for r in rows if r["kind"] == kind])
              for problem, rows in results["problems"].items() for kind in ("ode", "sde")]
    panels = [p for p in panels if p[2]]
    if not panels or (plt := pyplot()) is None:
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
