"""Adaptive, error-controlled sampling of flow models from t = 1: jaxsde against diffrax, in one process.

The flow ODE of :class:`jaxsde.FlowSDE` with the exact velocity of the flow_frontier suite's 8-mode mixtures in
d = 64 or (``--digits``) the velocity network of ``jaxsde.pretrained("digits-flow")``, from the same ``N(0, I)``
draws at ``t = 1`` to ``T_END``, no final denoising, float32, per-sample steps: the :data:`JAXSDE` solvers against
:data:`DIFFRAX` with ``PIDController(rtol=tol, atol=tol)`` on ``dx/dtau = -v(x, 1 - tau)``, each a traced tolerance
sweep. Error: mean over samples of the RMS of ``x - x_ref``, ``x_ref`` from float64 diffrax ``Dopri8`` (1e-10;
digits-flow 1e-8, with its distance to the same solve at 10x). Matched quality: per error threshold, each solver's
fewest mean NFE. Wall: median of ``--rounds`` interleaved rounds. Writes ``flow_adaptive[_digits].{json,md}``.
"""

from __future__ import annotations

import statistics
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

import jaxsde

from ..harness.timing import interleaved
from ..harness.writer import table
from .flow_frontier import DIM, TARGETS, mixture

T_END = 1e-3
JAXSDE_TOLS = (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
PF_TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 1e-7)
THRESHOLDS = (1e-2, 1e-3, 1e-4, 1e-5)

JAXSDE = {  # name -> solver of a traced tolerance
    "jaxsde ProbabilityFlow (dopri5, time)": lambda tol: jaxsde.ProbabilityFlow(rtol=tol, atol=tol),
    "jaxsde AdaptiveDPMSolver (order 3)": lambda tol: jaxsde.AdaptiveDPMSolver(order=3, rtol=tol),
    "jaxsde AdaptiveMultistepSolver (order 2)": lambda tol: jaxsde.AdaptiveMultistepSolver(order=2, rtol=tol),
    "jaxsde AdaptiveMultistepSolver (order 3)": lambda tol: jaxsde.AdaptiveMultistepSolver(order=3, rtol=tol),
}
DIFFRAX = {"diffrax Tsit5 + PID": dfx.Tsit5, "diffrax Dopri5 + PID": dfx.Dopri5}
FSAL_STAGES = 6  # Tsit5 / Dopri5: 6 new evaluations a step (accepted or not), 1 at the start


# digits-flow: a network's velocity (a solve costs a U-Net evaluation per NFE), so a shorter sweep
DIGITS = "digits-flow"
DIGITS_JAXSDE_TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
DIGITS_PF_TOLS = (3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
DIGITS_THRESHOLDS = (1e-2, 3e-3, 1e-3)
DIGITS_REFERENCE_TOL = 1e-8


def velocities(name: str):
    """``(shape, v32, v64)``: one sample's shape and the velocity ``v(x, t)`` of ONE sample for the
    float32 solves and the float64 reference."""
    if name == DIGITS:
        ckpt = jaxsde.pretrained(DIGITS)
        params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), ckpt.params)
        return ckpt.shape, ckpt.score_fn(ckpt.params).fn, ckpt.score_fn(params64).fn
    sde = jaxsde.FlowSDE()
    return (DIM,), mixture(name, jnp.float32).velocity(sde), mixture(name, jnp.float64).velocity(sde)


def diffrax_program(cls, velocity, max_steps: int):
    """``(x_T, tol) -> (x, nfe, ok)``: the flow ODE per sample with diffrax (``tau = 1 - t``)."""
    term = dfx.ODETerm(lambda tau, y, args: -velocity(y, 1.0 - tau))

    def one(x, tol):
        sol = dfx.diffeqsolve(term, cls(), 0.0, 1.0 - T_END, None, x, max_steps=max_steps, throw=False,
                              stepsize_controller=dfx.PIDController(rtol=tol, atol=tol),
                              saveat=dfx.SaveAt(t1=True), adjoint=dfx.ForwardMode())
        nfe = 1 + FSAL_STAGES * sol.stats["num_steps"]
        return sol.ys[0], nfe, sol.result == dfx.RESULTS.successful

    return jax.jit(lambda x_T, tol: jax.vmap(one, in_axes=(0, None))(x_T, tol))


def jaxsde_program(make, model):
    sde = jaxsde.FlowSDE()

    def run(x_T, tol):
        keys = jax.random.split(jax.random.PRNGKey(0), x_T.shape[0])
        sol = jaxsde.solve_batch(keys, sde, model, make(tol), x_T, t_start=1.0, t_end=T_END, denoise=False,
                                 max_steps=20_000)
        return sol.x, sol.stats.nfe, sol.result == 0

    return jax.jit(run)


def arguments(parser):
    parser.add_argument("--n", type=int, default=None, help="samples (default 512, --digits 32)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 7, --digits 2)")
    parser.add_argument("--quick", action="store_true", help="64 samples (--digits: 16), 2 rounds, one target")
    parser.add_argument("--digits", action="store_true", help="the embedded digits-flow model, not the mixtures")


def run(args, ctx):
    jax.config.update("jax_enable_x64", True)  # the reference only; every timed solve is float32
    digits, results = args.digits, {}
    n, rounds = ((16 if digits else 64), 2) if args.quick else (args.n or (32 if digits else 512),
                                                                args.rounds or (2 if digits else 7))
    names = (DIGITS,) if digits else ("ring8",) if args.quick else tuple(TARGETS)
    jaxsde_tols, pf_tols = (DIGITS_JAXSDE_TOLS, DIGITS_PF_TOLS) if digits else (JAXSDE_TOLS, PF_TOLS)
    ref_tol, thresholds = (DIGITS_REFERENCE_TOL, DIGITS_THRESHOLDS) if digits else (1e-10, THRESHOLDS)
    for tname in names:
        shape, v32, v64 = velocities(tname)
        x64 = jax.random.normal(jax.random.PRNGKey(5), (n, *shape), jnp.float64)
        x32 = x64.astype(jnp.float32)
        ref_prog = diffrax_program(dfx.Dopri8, v64, 100_000)
        t0 = time.perf_counter()
        x_ref, ref_nfe, ok = jax.block_until_ready(ref_prog(x64, ref_tol))
        assert bool(jnp.all(ok)), "reference failed"
        x_ref = np.asarray(x_ref).reshape(n, -1)
        ref_info = dict(tol=ref_tol, mean_nfe=float(np.mean(ref_nfe)), wall_s=time.perf_counter() - t0)
        if digits:  # the reference's own error: its distance to the same solve at 10x the tolerance
            x_loose, _, ok = jax.block_until_ready(ref_prog(x64, 10 * ref_tol))
            assert bool(jnp.all(ok)), "reference failed"
            ref_info["error_vs_10x_tol"] = float(np.mean(np.sqrt(np.mean(
                (np.asarray(x_loose).reshape(n, -1) - x_ref) ** 2, axis=1))))
        print(f"  {tname} reference: {ref_info}", flush=True)
        model = jaxsde.Prediction(v32, "velocity")
        programs = {name: (jaxsde_program(make, model), pf_tols if "ProbabilityFlow" in name else jaxsde_tols)
                    for name, make in JAXSDE.items()}
        programs.update({name: (diffrax_program(cls, v32, 20_000), pf_tols) for name, cls in DIFFRAX.items()})
        runs = {}
        for name, (prog, tols) in programs.items():
            t0 = time.perf_counter()
            for tol in tols:
                out = jax.block_until_ready(prog(x32, jnp.float32(tol)))  # compile (first) and warm up
                x, nfe, ok = (np.asarray(a) for a in out)
                err = np.sqrt(np.mean((x.reshape(n, -1).astype(np.float64) - x_ref) ** 2, axis=1))
                runs[(name, tol)] = dict(solver=name, tol=tol, mean_nfe=float(nfe.mean()), max_nfe=int(nfe.max()),
                                         error=float(err.mean()), max_error=float(err.max()),
                                         failed=int(np.sum(~ok.astype(bool))))
            print(f"  {tname} {name}: compiled and warmed in {time.perf_counter() - t0:.1f}s", flush=True)
        times, _ = interleaved({key: (lambda p=programs[key[0]][0], tol=key[1], x=x32: p(x, jnp.float32(tol)))
                                for key in runs}, rounds, warmup=False)  # the order rotates each round
        rows = [dict(row, wall_s=statistics.median(times[key])) for key, row in runs.items()]
        for row in rows:
            print(f"  {tname} {row['solver']:42s} tol={row['tol']:.0e} NFE={row['mean_nfe']:7.1f} "
                  f"err={row['error']:.2e} wall={row['wall_s'] * 1e3:7.1f} ms failed={row['failed']}", flush=True)
        results[tname] = dict(scale=TARGETS.get(tname), shape=list(shape), reference=ref_info, rows=rows,
                              matched=matched(rows, thresholds))
    ctx.save("flow_adaptive_digits" if digits else "flow_adaptive",
             dict(n=n, rounds=rounds, dim=DIM, t_end=T_END, digits=digits, thresholds=list(thresholds),
                  targets=results))


def matched(rows: list[dict], thresholds=THRESHOLDS) -> list[dict]:
    """Per threshold and solver: the fewest mean NFE among the settings whose error reaches it."""
    out = []
    for thr in thresholds:
        for solver in dict.fromkeys(r["solver"] for r in rows):
            best = min((r for r in rows if r["solver"] == solver and r["error"] <= thr and not r["failed"]),
                       key=lambda r: r["mean_nfe"], default=None)
            out.append(dict(threshold=thr, solver=solver, tol=best and best["tol"],
                            mean_nfe=best and best["mean_nfe"], error=best and best["error"],
                            wall_s=best and best["wall_s"]))
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def render(data):
    digits = data.get("digits", False)
    what = (f"the velocity network of the embedded flow-matching model `jaxsde.pretrained(\"{DIGITS}\")` "
            f"(8x8x1, d = {data['dim']}), float32 weights" if digits else
            f"the exact velocity of an 8-mode Gaussian mixture in d = {data['dim']}")
    ref = ("diffrax Dopri8 at rtol = atol = 1e-8 (float64, the network on its weights cast to float64)" if digits
           else "diffrax Dopri8 at rtol = atol = 1e-10 (float64)")
    lines = ["# Adaptive sampling of flow models from t = 1: jaxsde vs diffrax"
             + (f" on {DIGITS}" if digits else ""), "",
             f"Reproduce: `{data['command']}`", "",
             f"FlowSDE, {what}, {data['n']} samples "
             f"from the same N(0, I) draws at t = 1 exactly to t = {data['t_end']} (no final denoising step), "
             "every sample with its own steps; solves in float32. Error: per sample the RMS over coordinates of "
             f"x - x_ref, averaged over samples, x_ref from {ref}. "
             f"Wall: the whole batch, median of {data['rounds']} interleaved rounds, compiled and warmed up, "
             "one process. jaxsde: every setting at its default but the tolerance (ProbabilityFlow rtol = atol "
             "= tol; the log-SNR solvers rtol = tol, atol tied to it); diffrax: PIDController(rtol=tol, atol=tol) "
             "on dx/dtau = -v(x, 1 - tau), diffrax's own first step. The SD3/Flux shift warps fixed grids; "
             "adaptive solvers place their own steps, so it does not apply.", ""]
    for tname, res in data["targets"].items():
        rows = res["rows"]
        title = tname if res.get("scale") is None else f"{tname} (component std {res['scale']})"
        lines += [f"## {title}", ""]
        ref_info = res.get("reference")
        if ref_info:
            extra = (f"; its own error (distance to the same solve at 10x the tolerance) "
                     f"{ref_info['error_vs_10x_tol']:.1e}" if "error_vs_10x_tol" in ref_info else "")
            lines += [f"Reference: tol {ref_info['tol']:.0e}, mean NFE {ref_info['mean_nfe']:.0f}{extra}.", ""]
        lines += ["### Matched quality: fewest mean NFE reaching the error threshold", ""]
        peer = [m for m in res["matched"] if m["solver"].startswith("diffrax") and m["mean_nfe"] is not None]
        best_diffrax = {m["threshold"]: m for m in sorted(peer[::-1], key=lambda m: -m["mean_nfe"])}  # fewest
        tsit5 = {m["threshold"]: m for m in peer if "Tsit5" in m["solver"]}

        def ratio(m, ref, field):
            return "-" if ref is None or m[field] is None else f"{m[field] / ref[field]:.2f}"

        head = ["error <=", "solver", "tol", "mean NFE", "error", "wall ms", "NFE / Tsit5", "wall / Tsit5",
                "NFE / best diffrax", "wall / best diffrax"]
        body = []
        for m in res["matched"]:
            ref, ts = best_diffrax.get(m["threshold"]), tsit5.get(m["threshold"])
            body.append([f"{m['threshold']:.0e}", m["solver"], _fmt(m["tol"], ".0e"), _fmt(m["mean_nfe"], ".1f"),
                         _fmt(m["error"], ".2e"), _fmt(m["wall_s"] and m["wall_s"] * 1e3, ".1f"),
                         ratio(m, ts, "mean_nfe"), ratio(m, ts, "wall_s"), ratio(m, ref, "mean_nfe"),
                         ratio(m, ref, "wall_s")])
        lines += table(head, body) + ["", "### Every setting", ""]
        lines += table(["solver", "tol", "mean NFE", "max NFE", "mean error", "max error", "wall ms", "failed"],
                       [[r["solver"], f"{r['tol']:.0e}", f"{r['mean_nfe']:.1f}", str(r["max_nfe"]),
                         f"{r['error']:.2e}", f"{r['max_error']:.2e}", f"{r['wall_s'] * 1e3:.1f}", str(r["failed"])]
                        for r in rows]) + [""]
    return "\n".join(lines)
