"""Adaptive samplers at matched quality: NFE (mean, max) and wall time, jaxsde vs k-diffusion.

    python -m benchmarks run adaptive [--problems lowrank,gmm3072,digits] [--n 2000] [--quick] [--name NAME]

Everything runs in one process on the same score and the same prior draws (jaxsde's sample i:
``fold_in(seed, i)``; k-diffusion gets the same ``x_T``). Each sampler sweeps its tolerance;
quality is compared with Euler-Maruyama at 1000 steps (EM-1000) and with an exact-vs-exact noise
floor:

* ``lowrank``: :class:`jaxsde.testing.targets.LowRankMixture` (8 components near rank-8 subspaces of
  d = 256, off-subspace std 0.01), VP SDE, exact score. Quality: the whitened mode W2 of
  ``LowRankMixture.mode_statistics`` against 50 000 ideal samples (exact ``p_eps``, Tweedie
  step): per component, ``sqrt(|dm_in|^2 / r + (sqrt(v_in) - sqrt(v_in*))^2 + |dm_off|^2 / (d - r)
  + (sqrt(v_off) - sqrt(v_off*))^2)``, count-weighted RMS over components.
* ``gmm3072``: the 8-mode ring mixture in d = 3072 of the ``vs_diffrax`` suite (std 0.02),
  VP, exact score. Quality: ``jaxsde.testing.metrics.mode_spread_w2`` (whitened W2 of each mode's spread).
* ``digits``: the embedded digits U-Net (VP). Quality: FD-digits against the training set.

Each row's quality carries its bootstrap standard deviation (``sd``, 30 resamples of the
samples); a row is *within noise of EM-1000* when ``q <= q(EM-1000) + 2 sqrt(sd^2 + sd(EM)^2)``.
The summary gives, per sampler, the fewest mean NFE of its sweep within noise of EM-1000.

k-diffusion 0.1.1.post1's ``sample_dpm_adaptive`` (DPM-Solver-23, eta 0 and 1, its I
controller) runs in float32 torch on the whole batch, as it is used: one step size for the batch,
the error norm over all its samples, NFE = model calls (every sample pays them). Its model is the
same jitted jaxsde score, wrapped as a denoiser ``D(x / alpha, sigma / alpha)``. Wall times are
medians of ``--repeats`` runs after a warm-up (jaxsde: compiled once, ``block_until_ready``);
k-diffusion's include the torch <-> JAX transfers of every call. Outputs
``benchmarks/results/adaptive_<problem>[_NAME].{md,json,png}``.

``--mode kd``: jaxsde's adaptive samplers against k-diffusion's ``sample_dpm_adaptive`` at matched
quality, ODE and stochastic, on the VP and VE versions of the mixtures
(``--problems lowrank,lowrank-ve,gmm3072,gmm3072-ve``; ``--kinds ode,sde``)::

    python -m benchmarks run adaptive --mode kd --problems lowrank-ve [--kinds ode,sde] [--n-ode 256]
        [--n-sde 1000] [--rtols 0.3,0.1,...] [--quick]
    python -m benchmarks run adaptive --mode kd --summary --problems lowrank,lowrank-ve,...  # measures nothing

* ODE (``kind = ode``): ``AdaptiveDPMSolver`` (DPM-Solver-23, data prediction, ``eta = 0``),
  ``AdaptiveMultistepSolver`` (orders 2 and 3, ``tau = 0``; each also with ``max_step = 0.5``, the
  same cap on every problem) and ``ProbabilityFlow`` (Dopri5,
  ``rtol = atol = tol``) against k-diffusion ``eta = 0``. Quality: the pathwise error, the RMS over
  samples and coordinates of ``x - x_ref`` in units of half the data range (1 on VP's [-1, 1], 0.5 on
  VE's [0, 1]), ``x_ref`` the same prior draw through diffrax ``Dopri8`` at ``rtol = atol = 1e-10``
  in float64, final denoising step included on both sides.
* SDE (``kind = sde``): ``GottaGoFast``, ``AdaptiveMultistepSolver`` (orders 2 and 3, ``tau = 1``,
  uncapped and capped)
  and ``AdaptiveDPMSolver`` (``eta = 1``) against k-diffusion ``eta = 1``. Quality: the target's
  distribution metric with its bootstrap sd and the exact-vs-exact floor at the same n.

Every sampler sweeps its tolerance (``--rtols``, half decades down to where the curve turns);
jaxsde's with its default ``atol`` (tied to ``rtol`` below one 8-bit level), k-diffusion's twice:
with its default ``atol = 0.0078`` and with jaxsde's relation ``atol = min(sde.default_atol,
rtol * half range)``. Each jaxsde solver is one compiled program for its whole sweep (the tolerances
are traced settings). Matched quality: for each threshold ``T`` the fewest mean NFE over every
setting of a side (any family) whose quality is ``<= T`` (point estimate), and the ratio
jaxsde / k-diffusion; thresholds: ODE ``1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5``; SDE ``(1 + d) * floor``
for ``d = 1, 0.5, 0.25, 0.1`` (a threshold under ``floor + 2 sd(floor)`` is flagged: within the
floor's noise). Outputs ``adaptive_kd_<problem>.{md,json,png}``; ``--summary`` pools the stored
problems' tables into ``adaptive_kd_summary.{md,json}``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde import controllers

from ..harness.kdiffusion import k_diffusion_model
from ..harness.problems import TARGETS, Target
from ..harness.samplers import prior, run_jaxsde, timed_runs


# --- samplers --------------------------------------------------------------------------------
class Row(NamedTuple):
    family: str
    setting: str
    lib: str  # "jaxsde" | "k-diffusion"
    make: Callable  # -> jaxsde solver, or k-diffusion kwargs


def _tols(rtols):
    """(rtol, atol) pairs with atol scaled as k-diffusion's defaults (0.05, 0.0078)."""
    return [(r, round(0.0078 * r / 0.05, 6)) for r in rtols]


def rows(quick: bool, rtols: tuple[float, ...] | None = None) -> list[Row]:
    sweep = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02) if quick else (0.5, 0.3, 0.2, 0.14, 0.1, 0.07, 0.05, 0.035, 0.02, 0.01)
    sweep = rtols or sweep
    out = [Row("EM", "1000", "jaxsde", lambda: jaxsde.EulerMaruyama(1000))]
    for eta in (0.0, 1.0):
        fam = f"k-diffusion dpm_adaptive eta={eta:g}"
        for r, a in _tols(sweep):
            out.append(Row(fam, f"rtol={r:g}", "k-diffusion", lambda r=r, a=a, eta=eta: dict(rtol=r, atol=a, eta=eta)))
        for order in (3,):
            for pred in ("data", "noise"):
                fam = f"AdaptiveDPMSolver-{order}{order - 1} {pred} eta={eta:g}"
                for r, a in _tols(sweep):
                    out.append(Row(fam, f"rtol={r:g}", "jaxsde", lambda r=r, a=a, o=order, p=pred, eta=eta:
                                   jaxsde.AdaptiveDPMSolver(order=o, rtol=r, atol=a, eta=eta, prediction=p)))
        fam = f"AdaptiveDPMSolver-32 data PI eta={eta:g}"
        for r, a in _tols(sweep):
            out.append(Row(fam, f"rtol={r:g}", "jaxsde", lambda r=r, a=a, eta=eta: jaxsde.AdaptiveDPMSolver(
                rtol=r, atol=a, eta=eta, controller=controllers.PIDController(pcoeff=0.4, icoeff=0.3, safety=0.9))))
    for tau in (0.0, 1.0):
        for order in (2, 3):
            fam = f"AdaptiveMultistepSolver-{order} tau={tau:g}"
            for r, a in _tols(sweep):
                out.append(Row(fam, f"rtol={r:g}", "jaxsde", lambda r=r, a=a, o=order, tau=tau:
                               jaxsde.AdaptiveMultistepSolver(order=o, rtol=r, atol=a, tau=tau)))
    for r in ((0.1, 0.05, 0.02) if quick else (0.2, 0.1, 0.05, 0.02)):
        out.append(Row("GottaGoFast", f"rtol={r:g}", "jaxsde", lambda r=r: jaxsde.GottaGoFast(rtol=r)))
    for tol in ((1e-3, 1e-4) if quick else (1e-3, 1e-4, 1e-5)):
        out.append(Row("ProbabilityFlow", f"tol={tol:g}", "jaxsde", lambda tol=tol: jaxsde.ProbabilityFlow(tol, tol)))
    return out


def run_k_diffusion(target: Target, kwargs, x_T, seed: int, repeats: int):
    km = k_diffusion_model(target.sde, target.score)
    xt = km.initial(x_T)

    def once():
        return km.sample_adaptive(xt, seed, **kwargs)  # + the final denoising step, as jaxsde's samplers (+1 NFE)

    (x, nfe), wall = timed_runs(once, repeats)
    return x, np.full((len(x),), nfe), 0, wall


def arguments(parser):
    parser.add_argument("--problems", default="lowrank")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                    help="timed runs after a warm-up; 0: one run, its wall time includes compilation")
    parser.add_argument("--rtols", default="", help="comma-separated rtol sweep of the adaptive samplers (default: "
                                                "--quick's or the full one)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--families", default="", help="comma-separated substrings: only rows whose family has one")
    parser.add_argument("--name", default="")
    parser.add_argument("--mode", default="em1000", choices=("em1000", "kd"),
                        help="em1000: every sampler against EM-1000 (default); kd: jaxsde vs k-diffusion, ODE and SDE")
    parser.add_argument("--kinds", default="ode,sde", help="--mode kd: ode, sde or both")
    parser.add_argument("--n-ode", type=int, default=256, help="--mode kd: samples of the ODE rows")
    parser.add_argument("--n-sde", type=int, default=1000, help="--mode kd: samples of the SDE rows")
    parser.add_argument("--summary", action="store_true",
                        help="--mode kd: pool the stored adaptive_kd_<problem>.json of --problems (measures nothing)")


def run(args, ctx):
    if args.mode == "kd":
        return run_kd(args, ctx)
    for problem in args.problems.split(","):
        target = TARGETS[problem]()
        n = args.n
        x_T = prior(target, args.seed, n)
        floor_q, floor_sd = target.floor(jax.random.PRNGKey(args.seed + 17), n)
        results = []
        rtols = tuple(float(v) for v in args.rtols.split(",")) if args.rtols else None
        selected = [r for r in rows(args.quick, rtols)
                    if not args.families or r.family == "EM" or any(f in r.family for f in args.families.split(","))]
        for row in selected:
            if row.lib == "jaxsde":
                x, nfe, failed, wall = run_jaxsde(target, row.make(), args.seed, n, args.repeats)
            else:
                x, nfe, failed, wall = run_k_diffusion(target, row.make(), x_T, args.seed, args.repeats)
            q, sd = target.quality(x)
            res = dict(family=row.family, setting=row.setting, lib=row.lib, mean_nfe=float(nfe.mean()),
                       max_nfe=int(nfe.max()), wall_s=wall, quality=q, sd=sd, failed=failed)
            results.append(res)
            print(f"{problem} {row.family:45s} {row.setting:10s} NFE {res['mean_nfe']:7.1f} (max {res['max_nfe']:4d}) "
                  f"q {q:.4f} +- {sd:.4f} wall {wall:6.2f}s failed {failed}", flush=True)
        ctx.save(f"adaptive_{target.name}{'_' + args.name if args.name else ''}",
                 dict(problem=target.name, label=target.label, n=n, repeats=args.repeats, floor=[floor_q, floor_sd],
                      results=results))


def within(res, em):
    return res["quality"] <= em["quality"] + 2.0 * math.sqrt(res["sd"] ** 2 + em["sd"] ** 2)


def summary(results):
    em = next(r for r in results if r["family"] == "EM")
    best = {}
    for r in results:
        if r["family"] == "EM" or r["failed"] or not within(r, em):
            continue
        if r["family"] not in best or r["mean_nfe"] < best[r["family"]]["mean_nfe"]:
            best[r["family"]] = r
    return em, best


def render(data):
    if data.get("mode") == "kd":
        return render_kd(data)
    if data.get("mode") == "kd-summary":
        return render_kd_summary(data)
    em, best = summary(data["results"])
    floor_q, floor_sd = data["floor"]
    lines = [f"# Adaptive samplers at matched quality: {data['problem']}", "",
             f"`{data['command']}` ({data['machine']['date'][:10]}, n = {data['n']}, {data['machine']['backend']}, "
             f"jax {data['machine']['jax']})", "",
             f"Quality: {data['label']}; exact-vs-exact floor {floor_q:.4f} +- {floor_sd:.4f}; EM-1000 "
             f"{em['quality']:.4f} +- {em['sd']:.4f}. Within noise of EM-1000: q <= q(EM) + 2 sqrt(sd^2 + sd(EM)^2). "
             "Wall s: " + ("one run, compilation included" if data["repeats"] == 0 else
                           f"median of {data['repeats']} runs after a warm-up") + ".",
             "", "## Fewest NFE within noise of EM-1000", "",
             "| sampler | setting | mean NFE | max NFE | quality | wall s |", "|---|---|---|---|---|---|"]
    for fam, r in sorted(best.items(), key=lambda kv: kv[1]["mean_nfe"]):
        lines.append(f"| {fam} | {r['setting']} | {r['mean_nfe']:.1f} | {r['max_nfe']} | {r['quality']:.4f} +- "
                     f"{r['sd']:.4f} | {r['wall_s']:.2f} |")
    missing = sorted({r["family"] for r in data["results"]} - set(best) - {"EM"})
    if missing:
        lines += ["", "Not within noise of EM-1000 at any setting swept: " + ", ".join(missing) + "."]
    lines += ["", "## Every row", "", "| sampler | setting | mean NFE | max NFE | quality | within | wall s | failed |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        lines.append(f"| {r['family']} | {r['setting']} | {r['mean_nfe']:.1f} | {r['max_nfe']} | {r['quality']:.4f} "
                     f"+- {r['sd']:.4f} | {'yes' if within(r, em) else 'no'} | {r['wall_s']:.2f} | {r['failed']} |")
    return "\n".join(lines)


def plot(data, path):
    if data.get("mode") == "kd-summary":
        return None
    if data.get("mode") == "kd":
        return plot_kd(data, path)
    import matplotlib.pyplot as plt

    results, floor_q = data["results"], data["floor"][0]
    em = summary(results)[0]

    fig, ax = plt.subplots(figsize=(8, 5))
    for fam in dict.fromkeys(r["family"] for r in results if r["family"] != "EM"):
        rs = sorted((r for r in results if r["family"] == fam), key=lambda r: r["mean_nfe"])
        style = "--" if rs[0]["lib"] == "k-diffusion" else "-"
        ax.plot([r["mean_nfe"] for r in rs], [r["quality"] for r in rs], style, marker="o", label=fam)
    ax.axhline(em["quality"], color="k", lw=1, label="EM-1000")
    ax.axhline(floor_q, color="gray", lw=1, ls=":", label="exact vs exact")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean NFE per sample")
    ax.set_ylabel(data["label"])
    ax.set_title(f"adaptive samplers on {data['problem']}")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- --mode kd: jaxsde vs k-diffusion at matched quality, ODE and SDE ------------------------------
KD_ATOL = 0.0078  # k-diffusion's default atol
RTOLS_KD = (0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
RTOLS_KD_QUICK = (0.1, 0.01, 1e-3)
GGF_RTOLS = (0.5, 0.2, 0.1, 0.05, 0.02)
PF_TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
ODE_THRESHOLDS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5)
SDE_MARGINS = (1.0, 0.5, 0.25, 0.1)
KD_MAX_STEP = 0.5  # the step cap (half log-SNR) of the capped jaxsde families: one value on every problem


class Family(NamedTuple):
    name: str
    kind: str  # "ode" | "sde"
    lib: str  # "jaxsde" | "k-diffusion"
    settings: tuple  # swept values
    label: str  # the setting's name
    make: Callable  # value -> jaxsde solver, or k-diffusion kwargs


def half_range(sde) -> float:
    lo, hi = sde.data_range
    return 0.5 * (hi - lo)


def kd_families(sde, kind: str, rtols, quick: bool) -> list[Family]:
    """The sweeps of ``kind`` (module docstring): jaxsde's adaptive samplers, k-diffusion with two atols."""
    half = half_range(sde)
    stochastic = kind == "sde"
    eta = 1.0 if stochastic else 0.0
    out = []
    for atol_name, atol in (("atol 0.0078", lambda r: KD_ATOL),
                            ("atol tied", lambda r: min(float(sde.default_atol), r * half))):
        out.append(Family(f"k-diffusion dpm_adaptive eta={eta:g}, {atol_name}", kind, "k-diffusion", rtols, "rtol",
                          lambda r, a=atol: dict(rtol=r, atol=a(r), eta=eta)))
    out.append(Family(f"AdaptiveDPMSolver-32 eta={eta:g}", kind, "jaxsde", rtols, "rtol",
                      lambda r: jaxsde.AdaptiveDPMSolver(rtol=r, eta=eta)))
    for order in (2, 3):
        out.append(Family(f"AdaptiveMultistepSolver-{order} tau={eta:g}", kind, "jaxsde", rtols, "rtol",
                          lambda r, o=order: jaxsde.AdaptiveMultistepSolver(order=o, rtol=r, tau=eta)))
        out.append(Family(f"AdaptiveMultistepSolver-{order} tau={eta:g} max_step={KD_MAX_STEP:g}", kind, "jaxsde",
                          rtols, "rtol", lambda r, o=order: jaxsde.AdaptiveMultistepSolver(
                              order=o, rtol=r, tau=eta, max_step=KD_MAX_STEP)))
    if stochastic:
        ggf = GGF_RTOLS[1::2] if quick else GGF_RTOLS
        out.append(Family("GottaGoFast", kind, "jaxsde", ggf, "rtol", lambda r: jaxsde.GottaGoFast(rtol=r)))
    else:
        pf = PF_TOLS[::2] if quick else PF_TOLS
        out.append(Family("ProbabilityFlow (rtol = atol)", kind, "jaxsde", pf, "tol",
                          lambda r: jaxsde.ProbabilityFlow(rtol=r, atol=r)))
    return out


def ode_reference(target: Target, x_T) -> np.ndarray:
    """The probability-flow ODE of each prior draw ``x_T`` (n, *shape) through diffrax ``Dopri8`` at
    ``rtol = atol = 1e-10`` in float64, final denoising step included, as float64 NumPy."""
    import diffrax

    from jaxsde.testing.reference import diffrax_solve

    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x_T), jnp.float64)
        run = jax.jit(jax.vmap(lambda x: diffrax_solve(
            jax.random.PRNGKey(0), target.sde, target.score, x, diffrax.Dopri8(), ode=True, denoise=True,
            controller=diffrax.PIDController(rtol=1e-10, atol=1e-10), dt0=1e-3, max_steps=100_000)))
        sol = run(x64)
        if not np.all(np.asarray(sol.result) == 0):
            raise RuntimeError("the Dopri8 reference failed on some draws")
        return np.asarray(sol.x, np.float64)


def kd_problem(args, ctx, problem: str) -> None:
    target = TARGETS[problem]()
    rtols = tuple(float(v) for v in args.rtols.split(",")) if args.rtols else (
        RTOLS_KD_QUICK if args.quick else RTOLS_KD)
    kinds = args.kinds.split(",")
    if any(k not in ("ode", "sde") for k in kinds):
        ctx.error(f"--kinds: ode and/or sde, got {args.kinds!r}")
    half = half_range(target.sde)
    data = dict(mode="kd", problem=target.name, label=target.label, half_range=half, seed=args.seed, kinds={})
    stem = f"adaptive_kd_{target.name}{'_' + args.name if args.name else ''}"
    t_start = time.perf_counter()
    for kind in kinds:
        n = args.n_ode if kind == "ode" else args.n_sde
        x_T = prior(target, args.seed, n)
        keys, _ = jaxsde.sample_keys(jax.random.PRNGKey(args.seed), n)
        if kind == "ode":
            ref = ode_reference(target, x_T)

            def quality(x, ref=ref):
                d = (np.asarray(x, np.float64) - ref) / half
                return float(np.sqrt(np.mean(d**2))), float(np.max(np.abs(d)))

            floor = None
            program = jax.jit(lambda solver, x_T=x_T, keys=keys:
                              jaxsde.solve_batch(keys, target.sde, target.score, solver, x_T))
        else:
            floor = list(target.floor(jax.random.PRNGKey(args.seed + 17), n))

            def quality(x):
                return target.quality(np.asarray(x))

            program = jax.jit(lambda solver, n=n: jaxsde.sample(jax.random.PRNGKey(args.seed), target.sde,
                                                               target.score, solver, target.shape, n))
        km = None
        rows_out = []
        for fam in kd_families(target.sde, kind, rtols, args.quick):
            if args.families and not any(f in fam.name for f in args.families.split(",")):
                continue
            compiled, compile_s = None, None
            for value in fam.settings:
                made = fam.make(value)
                if fam.lib == "jaxsde":
                    if compiled is None:  # one program for the family's sweep (traced tolerances)
                        t0 = time.perf_counter()
                        jax.block_until_ready(program(made))
                        compile_s, compiled = time.perf_counter() - t0, True  # compilation + one run
                    t0 = time.perf_counter()
                    sol = jax.block_until_ready(program(made))
                    wall = time.perf_counter() - t0
                    x, nfe = np.asarray(sol.x), np.asarray(sol.stats.nfe)
                    failed = int(np.sum(np.asarray(sol.result) != 0))
                else:
                    if km is None:
                        km = k_diffusion_model(target.sde, target.score)
                        xt = km.initial(x_T)
                        import torch

                        km.model(xt, torch.full((n,), km.sigma_max))  # compile the denoiser
                    t0 = time.perf_counter()
                    x, calls = km.sample_adaptive(xt, args.seed, **made)
                    wall = time.perf_counter() - t0
                    nfe, failed = np.full((n,), calls), int(np.sum(~np.all(np.isfinite(x.reshape(n, -1)), 1)))
                q = quality(x)
                row = dict(family=fam.name, lib=fam.lib, setting=f"{fam.label}={value:g}", value=value,
                           mean_nfe=float(nfe.mean()), max_nfe=int(nfe.max()), failed=failed, wall_s=wall,
                           compile_s=compile_s, quality=q[0], extra=q[1])
                if isinstance(made, dict):
                    row["atol"] = made["atol"]
                rows_out.append(row)
                second = "max" if kind == "ode" else "sd"
                print(f"{problem} {kind} {fam.name:48s} {row['setting']:12s} NFE {row['mean_nfe']:7.1f} "
                      f"(max {row['max_nfe']:4d}) q {q[0]:.3e} ({second} {q[1]:.2e}) wall {wall:6.2f}s "
                      f"failed {failed}", flush=True)
        data["kinds"][kind] = dict(n=n, floor=floor, rows=rows_out, matched=kd_matched(kind, rows_out, floor))
        data["seconds"] = time.perf_counter() - t_start
        ctx.save(stem, data)  # after each kind: a cut run keeps what it measured


def kd_thresholds(kind: str, floor) -> list[tuple[float, str]]:
    """``[(threshold, note)]``: ODE fixed errors; SDE ``(1 + d) floor`` (note: within the floor's noise)."""
    if kind == "ode":
        return [(t, "") for t in ODE_THRESHOLDS]
    q, sd = floor
    return [((1 + d) * q, "within floor noise" if d * q < 2 * sd else "") for d in SDE_MARGINS]


def kd_matched(kind: str, rows: list[dict], floor) -> list[dict]:
    """Per threshold: each side's cheapest setting with quality <= threshold and the NFE ratio."""
    out = []
    for thr, note in kd_thresholds(kind, floor):
        best = {}
        for lib in ("jaxsde", "k-diffusion"):
            ok = [r for r in rows if r["lib"] == lib and not r["failed"] and r["quality"] <= thr]
            best[lib] = min(ok, key=lambda r: r["mean_nfe"]) if ok else None
        j, k = best["jaxsde"], best["k-diffusion"]
        out.append(dict(threshold=thr, note=note,
                        jaxsde=None if j is None else dict(family=j["family"], setting=j["setting"],
                                                           mean_nfe=j["mean_nfe"], quality=j["quality"]),
                        kdiffusion=None if k is None else dict(family=k["family"], setting=k["setting"],
                                                               mean_nfe=k["mean_nfe"], quality=k["quality"]),
                        ratio=None if j is None or k is None else j["mean_nfe"] / k["mean_nfe"]))
    return out


def _matched_lines(matched: list[dict], kind: str) -> list[str]:
    fmt = "{:.0e}" if kind == "ode" else "{:.4f}"
    lines = ["| threshold | jaxsde best (mean NFE) | k-diffusion best (NFE) | ratio |", "|---|---|---|---|"]
    for m in matched:
        cells = []
        for side in ("jaxsde", "kdiffusion"):
            b = m[side]
            cells.append("not reached" if b is None else
                         f"{b['family']} {b['setting']}: {b['mean_nfe']:.1f} (q {fmt.format(b['quality'])})")
        ratio = "-" if m["ratio"] is None else f"{m['ratio']:.2f}"
        note = f" ({m['note']})" if m["note"] else ""
        lines.append(f"| {fmt.format(m['threshold'])}{note} | {cells[0]} | {cells[1]} | {ratio} |")
    return lines


def render_kd(data: dict) -> str:
    m = data["machine"]
    lines = [f"# jaxsde vs k-diffusion adaptive samplers at matched quality: {data['problem']}", "",
             f"`{data['command']}` ({m['date'][:10]}, {m['backend']}, jax {m['jax']}, {m.get('cpus', '?')} CPUs, "
             f"load {m.get('load', '?')}, commit {m.get('git_commit', '?')}; {data.get('seconds', 0):.0f} s)", "",
             "Same prior draws on both sides; k-diffusion 0.1.1.post1 `sample_dpm_adaptive` (float32 torch, one step "
             "size for the batch, NFE = its model calls + the final denoising call); jaxsde per sample (mean NFE "
             "over samples, final denoising step included). k-diffusion runs with its default atol 0.0078 and with "
             "jaxsde's tied atol (min(sde.default_atol, rtol * half range)); jaxsde with its default (tied) atol. "
             "Matched quality: per threshold, each side's fewest mean NFE over every setting it swept whose quality "
             "is <= the threshold (point estimates); ratio = jaxsde / k-diffusion (target <= 0.8). Wall s: one run, "
             "compiled (jaxsde) / denoiser compiled (k-diffusion; torch <-> JAX transfers included).", "",
             f"The `max_step={KD_MAX_STEP:g}` families cap every step at {KD_MAX_STEP:g} in half log-SNR (the same "
             "value on every problem; the solvers' default is no cap). Per-sample error control accepts long steps "
             "across the noise band where a sample settles into a mode: both solutions of the embedded pair land "
             "in the same mode, so the local estimate is small while a sample near the boundary between modes "
             "ends in the other one. The pathwise error counts such a sample fully; a distribution metric hardly "
             "sees it.", ""]
    for kind, block in data["kinds"].items():
        if kind == "ode":
            lines += ["## ODE (pathwise)", "",
                      f"n = {block['n']}. Quality: RMS over samples and coordinates of x - x_ref in units of half "
                      f"the data range ({data['half_range']:g}); x_ref: diffrax Dopri8 at 1e-10 in float64 from the "
                      "same x_T, final denoising step included. 'max': the largest |x - x_ref| in the same units.", ""]
        else:
            q, sd = block["floor"]
            lines += ["## SDE (distribution)", "",
                      f"n = {block['n']}. Quality: {data['label']}, with its bootstrap sd; exact-vs-exact floor "
                      f"{q:.4f} +- {sd:.4f}. Thresholds (1 + d) * floor, d = "
                      f"{', '.join(f'{d:g}' for d in SDE_MARGINS)}; "
                      "'within floor noise': d * floor < 2 sd(floor).", ""]
        lines += ["### Matched quality", "", *_matched_lines(block["matched"], kind), "", "### Every row", "",
                  "| sampler | setting | mean NFE | max NFE | quality | " + ("max" if kind == "ode" else "sd")
                  + " | wall s | failed |", "|---|---|---|---|---|---|---|---|"]
        for r in block["rows"]:
            lines.append(f"| {r['family']} | {r['setting']} | {r['mean_nfe']:.1f} | {r['max_nfe']} | "
                         f"{r['quality']:.3e} | {r['extra']:.2e} | {r['wall_s']:.2f} | {r['failed']} |")
        lines.append("")
    return "\n".join(lines)


def plot_kd(data: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    kinds = list(data["kinds"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 5), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        block = data["kinds"][kind]
        rows = block["rows"]
        for fam in dict.fromkeys(r["family"] for r in rows):
            rs = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["mean_nfe"])
            style = "--" if rs[0]["lib"] == "k-diffusion" else "-"
            ax.plot([r["mean_nfe"] for r in rs], [r["quality"] for r in rs], style, marker="o", ms=3, label=fam)
        if block["floor"]:
            ax.axhline(block["floor"][0], color="gray", lw=1, ls=":", label="exact vs exact")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("mean NFE per sample")
        ax.set_ylabel("RMS |x - x_ref| / half range" if kind == "ode" else data["label"])
        ax.set_title(f"{data['problem']}: {kind.upper()}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_kd(args, ctx) -> None:
    problems = args.problems.split(",")
    if args.summary:
        pooled = {}
        for problem in problems:
            path = ctx.path(f"adaptive_kd_{problem}{'_' + args.name if args.name else ''}", "json")
            if not os.path.exists(path):
                ctx.error(f"no stored {path}: run --mode kd --problems {problem} first")
            with open(path) as f:
                stored = json.load(f)
            pooled[problem] = dict(command=stored["command"], date=stored["machine"]["date"],
                                   kinds={k: dict(n=b["n"], floor=b["floor"], matched=b["matched"])
                                          for k, b in stored["kinds"].items()})
        ctx.save(f"adaptive_kd_summary{'_' + args.name if args.name else ''}", dict(mode="kd-summary",
                                                                                     problems=pooled))
        return
    for problem in problems:
        if problem not in TARGETS or problem == "digits":
            ctx.error(f"--mode kd: problems from {[p for p in TARGETS if p != 'digits']}, got {problem!r}")
        kd_problem(args, ctx, problem)


def render_kd_summary(data: dict) -> str:
    lines = ["# jaxsde vs k-diffusion adaptive samplers: matched-quality NFE ratios", "",
             f"`{data['command']}` pools the stored per-problem results (measures nothing); each problem's own "
             "command is below. Ratio = jaxsde-best mean NFE / k-diffusion-best NFE at the threshold (target <= "
             "0.8); '-': a side never reached it. Threshold rule: ODE, RMS pathwise error (half-range units) <= T; "
             "SDE, distribution metric <= (1 + d) * floor.", ""]
    for problem, p in data["problems"].items():
        lines += [f"## {problem}", "", f"`{p['command']}` ({p['date'][:10]})", ""]
        for kind, b in p["kinds"].items():
            fmt = "{:.0e}" if kind == "ode" else "{:.4f}"
            lines.append(f"- {kind.upper()} (n = {b['n']}): " + "; ".join(
                f"{fmt.format(m['threshold'])}{'*' if m['note'] else ''}: "
                + ("-" if m["ratio"] is None else f"{m['ratio']:.2f}") for m in b["matched"]))
        lines.append("")
    lines.append("`*`: the threshold lies within the floor's noise (d * floor < 2 sd).")
    return "\n".join(lines)
