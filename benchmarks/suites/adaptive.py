"""Adaptive samplers at matched quality: NFE (mean, max) and wall time, jaxsde vs k-diffusion.

    python -m benchmarks run adaptive [--problems lowrank,gmm3072,digits] [--n 2000] [--quick] [--repeats 1]
        [--rtols R,...] [--families SUBSTR,...] [--name NAME]
    python -m benchmarks run adaptive --mode kd --problems lowrank,lowrank-ve,gmm3072,gmm3072-ve [--kinds ode,sde]
        [--n-ode 256] [--n-sde 1000] [--rtols R,...] [--quick] [--summary]

One process, the same score and prior draws on both sides (k-diffusion 0.1.1.post1 ``sample_dpm_adaptive`` in float32
torch on the whole batch, NFE = its model calls + the final denoising call; jaxsde per sample, mean NFE). Default mode:
every sampler's tolerance sweep (atol scaled as k-diffusion's 0.0078 at rtol 0.05) against EM-1000 on the target's
quality with its bootstrap sd; a row is within noise of EM-1000 when ``q <= q(EM) + 2 sqrt(sd^2 + sd(EM)^2)``; the
summary is each family's fewest mean NFE within noise. Wall: median of ``--repeats`` runs after a warm-up (0: one
run, compilation included). Writes ``adaptive_<problem>[_NAME].{md,json,png}``. ``--mode kd``: jaxsde's adaptive
samplers (tied default atol; ``AdaptiveMultistepSolver`` also with ``max_step = 0.5``) against k-diffusion (its
atol 0.0078 and jaxsde's tied atol) at matched quality: ODE (eta = tau = 0, plus ``ProbabilityFlow``) on the
pathwise RMS error in half-range units against diffrax ``Dopri8`` at 1e-10 in float64 from the same draws; SDE
(eta = tau = 1, plus ``GottaGoFast``) on the distribution metric, thresholds ``(1 + d) floor``. Per threshold,
each side's fewest mean NFE over every setting it swept and the ratio. Writes ``adaptive_kd_<problem>.{md,json,png}``;
``--summary`` pools the stored problems into ``adaptive_kd_summary.{md,json}`` (measures nothing).
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

from ..harness.cli import options
from ..harness.kdiffusion import k_diffusion_model
from ..harness.problems import TARGETS, Target
from ..harness.samplers import prior, run_jaxsde, timed_runs
from ..harness.sweep import cheapest, family_axes, floats, stem
from ..harness.writer import columns, pyplot, yes


class Row(NamedTuple):
    family: str
    setting: str
    lib: str  # "jaxsde" | "k-diffusion"
    make: Callable  # -> jaxsde solver, or k-diffusion kwargs


def rows(quick: bool, rtols: tuple[float, ...] | None = None) -> list[Row]:
    """The default mode's rows: EM-1000, then each family's sweep (atol = 0.0078 rtol / 0.05)."""
    sweep = rtols or ((0.5, 0.3, 0.2, 0.1, 0.05, 0.02) if quick else
                      (0.5, 0.3, 0.2, 0.14, 0.1, 0.07, 0.05, 0.035, 0.02, 0.01))
    pi = controllers.PIDController(pcoeff=0.4, icoeff=0.3, safety=0.9)
    fams = []
    for eta in (0.0, 1.0):
        fams += [(f"k-diffusion dpm_adaptive eta={eta:g}", "k-diffusion",
                  lambda r, a, e=eta: dict(rtol=r, atol=a, eta=e))]
        fams += [(f"AdaptiveDPMSolver-32 {p} eta={eta:g}", "jaxsde", lambda r, a, e=eta, p=p: jaxsde.AdaptiveDPMSolver(
            order=3, rtol=r, atol=a, eta=e, prediction=p)) for p in ("data", "noise")]
        fams += [(f"AdaptiveDPMSolver-32 data PI eta={eta:g}", "jaxsde",
                  lambda r, a, e=eta: jaxsde.AdaptiveDPMSolver(rtol=r, atol=a, eta=e, controller=pi))]
    fams += [(f"AdaptiveMultistepSolver-{o} tau={tau:g}", "jaxsde", lambda r, a, o=o, t=tau:
              jaxsde.AdaptiveMultistepSolver(order=o, rtol=r, atol=a, tau=t)) for tau in (0.0, 1.0) for o in (2, 3)]
    out = [Row("EM", "1000", "jaxsde", lambda: jaxsde.EulerMaruyama(1000))]
    out += [Row(f, f"rtol={r:g}", lib, lambda m=m, r=r: m(r, round(0.0078 * r / 0.05, 6)))
            for f, lib, m in fams for r in sweep]
    out += [Row("GottaGoFast", f"rtol={r:g}", "jaxsde", lambda r=r: jaxsde.GottaGoFast(rtol=r))
            for r in ((0.1, 0.05, 0.02) if quick else (0.2, 0.1, 0.05, 0.02))]
    return out + [Row("ProbabilityFlow", f"tol={t:g}", "jaxsde", lambda t=t: jaxsde.ProbabilityFlow(t, t))
                  for t in ((1e-3, 1e-4) if quick else (1e-3, 1e-4, 1e-5))]


def arguments(parser):
    options(parser, n=2000, seed=0, name="", quick="shorter sweeps")
    parser.add_argument("--problems", default="lowrank")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after a warm-up; 0: one run with compile")
    parser.add_argument("--rtols", default="", help="comma-separated rtol sweep (default: --quick's or the full one)")
    parser.add_argument("--families", default="", help="comma-separated substrings: only rows whose family has one")
    parser.add_argument("--mode", default="em1000", choices=("em1000", "kd"), help="kd: jaxsde vs k-diffusion")
    parser.add_argument("--kinds", default="ode,sde", help="--mode kd: ode, sde or both")
    parser.add_argument("--n-ode", type=int, default=256, help="--mode kd: samples of the ODE rows")
    parser.add_argument("--n-sde", type=int, default=1000, help="--mode kd: samples of the SDE rows")
    parser.add_argument("--summary", action="store_true", help="--mode kd: pool the stored problems (measures nothing)")


def wanted(args, family: str) -> bool:
    return not args.families or any(f in family for f in args.families.split(","))


def run(args, ctx):
    if args.mode == "kd":
        return run_kd(args, ctx)
    for problem in args.problems.split(","):
        target, n = TARGETS[problem](), args.n
        x_T = prior(target, args.seed, n)
        floor_q, floor_sd = target.floor(jax.random.PRNGKey(args.seed + 17), n)
        results = []
        for row in rows(args.quick, floats(args.rtols)):
            if row.family != "EM" and not wanted(args, row.family):
                continue
            if row.lib == "jaxsde":
                x, nfe, failed, wall = run_jaxsde(target, row.make(), args.seed, n, args.repeats)
            else:
                km, kw = k_diffusion_model(target.sde, target.score), row.make()
                xt = km.initial(x_T)
                (x, calls), wall = timed_runs(lambda km=km, xt=xt, kw=kw: km.sample_adaptive(xt, args.seed, **kw),
                                              args.repeats)
                nfe, failed = np.full((len(x),), calls), 0
            q, sd = target.quality(x)
            results.append(dict(family=row.family, setting=row.setting, lib=row.lib, mean_nfe=float(nfe.mean()),
                                max_nfe=int(nfe.max()), wall_s=wall, quality=q, sd=sd, failed=failed))
            print(problem, row.family, row.setting, results[-1], flush=True)
        ctx.save(stem(f"adaptive_{target.name}", args.name), dict(
            problem=target.name, label=target.label, n=n, repeats=args.repeats, floor=[floor_q, floor_sd],
            results=results))


def within(res, em):
    return res["quality"] <= em["quality"] + 2.0 * math.sqrt(res["sd"] ** 2 + em["sd"] ** 2)


def summary(results):
    """EM-1000's row and, per family, its fewest-mean-NFE row within noise of EM-1000 (no failures)."""
    em = next(r for r in results if r["family"] == "EM")
    best = {f: cheapest(results, lambda r, f=f: r["family"] == f and not r["failed"] and within(r, em))
            for f in dict.fromkeys(r["family"] for r in results if r["family"] != "EM")}
    return em, {f: r for f, r in best.items() if r is not None}


def render(data):
    if data.get("mode") in ("kd", "kd-summary"):
        return (render_kd if data["mode"] == "kd" else render_kd_summary)(data)
    em, best = summary(data["results"])
    floor_q, floor_sd = data["floor"]
    m = data["machine"]
    lines = [f"# Adaptive samplers at matched quality: {data['problem']}", "",
             f"`{data['command']}` ({m['date'][:10]}, n = {data['n']}, {m['backend']}, jax {m['jax']})", "",
             f"Quality: {data['label']}; exact-vs-exact floor {floor_q:.4f} +- {floor_sd:.4f}; EM-1000 "
             f"{em['quality']:.4f} +- {em['sd']:.4f}. Within noise of EM-1000: q <= q(EM) + 2 sqrt(sd^2 + sd(EM)^2). "
             "Wall s: " + ("one run, compilation included" if data["repeats"] == 0 else
                           f"median of {data['repeats']} runs after a warm-up") + ".",
             "", "## Fewest NFE within noise of EM-1000", ""]
    spec = {"sampler": "{family}", "setting": "{setting}", "mean NFE": "{mean_nfe:.1f}", "max NFE": "{max_nfe}",
            "quality": "{quality:.4f} +- {sd:.4f}"}
    lines += columns(sorted(best.values(), key=lambda r: r["mean_nfe"]), {**spec, "wall s": "{wall_s:.2f}"})
    missing = sorted({r["family"] for r in data["results"]} - set(best) - {"EM"})
    if missing:
        lines += ["", "Not within noise of EM-1000 at any setting swept: " + ", ".join(missing) + "."]
    lines += ["", "## Every row", "", *columns(data["results"], {
        **spec, "within": lambda r: yes(within(r, em)), "wall s": "{wall_s:.2f}", "failed": "{failed}"})]
    return "\n".join(lines)


def plot(data, path):
    if data.get("mode") == "kd-summary" or (plt := pyplot()) is None:
        return
    kd = data.get("mode") == "kd"
    blocks = list(data["kinds"].items()) if kd else [(None, dict(rows=data["results"], floor=data["floor"]))]
    fig, axes = plt.subplots(1, len(blocks), figsize=(7 * len(blocks), 5) if kd else (8, 5), squeeze=False)
    for ax, (kind, block) in zip(axes[0], blocks, strict=True):
        floor = [] if not block["floor"] else [(block["floor"][0], dict(color="gray", lw=1, ls=":",
                                                                      label="exact vs exact"))]
        if kd:
            family_axes(ax, block["rows"], xlabel="mean NFE per sample", title=f"{data['problem']}: {kind.upper()}",
                        ylabel="RMS |x - x_ref| / half range" if kind == "ode" else data["label"], hlines=floor, ms=3)
        else:
            em = summary(block["rows"])[0]
            family_axes(ax, [r for r in block["rows"] if r["family"] != "EM"], xlabel="mean NFE per sample",
                        ylabel=data["label"], title=f"adaptive samplers on {data['problem']}",
                        hlines=[(em["quality"], dict(color="k", lw=1, label="EM-1000")), *floor])
    fig.tight_layout()
    fig.savefig(path, dpi=110 if kd else 120)
    plt.close(fig)


# --- --mode kd --------------------------------------------------------------------------------------------------------
KD_ATOL = 0.0078  # k-diffusion's default atol
RTOLS_KD = (0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
RTOLS_KD_QUICK = (0.1, 0.01, 1e-3)
GGF_RTOLS = (0.5, 0.2, 0.1, 0.05, 0.02)
PF_TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
ODE_THRESHOLDS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5)
SDE_MARGINS = (1.0, 0.5, 0.25, 0.1)
KD_MAX_STEP = 0.5  # the step cap (half log-SNR) of the capped jaxsde families: one value on every problem


def half_range(sde) -> float:
    lo, hi = sde.data_range
    return 0.5 * (hi - lo)


def kd_families(sde, kind: str, rtols, quick: bool) -> list[tuple[str, str, tuple, str, Callable]]:
    """``(name, lib, settings, setting label, make(value) -> jaxsde solver or k-diffusion kwargs)`` of ``kind``."""
    eta, half, cap = float(kind == "sde"), half_range(sde), dict(max_step=KD_MAX_STEP)
    out = [(f"k-diffusion dpm_adaptive eta={eta:g}, {name}", "k-diffusion", rtols, "rtol",
            lambda r, a=a: dict(rtol=r, atol=a(r), eta=eta))
           for name, a in (("atol 0.0078", lambda r: KD_ATOL), ("atol tied", lambda r: min(float(sde.default_atol),
                                                                                        r * half)))]
    out += [(f"AdaptiveDPMSolver-32 eta={eta:g}", "jaxsde", rtols, "rtol", lambda r: jaxsde.AdaptiveDPMSolver(
        rtol=r, eta=eta))]
    out += [(f"AdaptiveMultistepSolver-{o} tau={eta:g}" + (f" max_step={KD_MAX_STEP:g}" if kw else ""), "jaxsde",
             rtols, "rtol", lambda r, o=o, kw=kw: jaxsde.AdaptiveMultistepSolver(order=o, rtol=r, tau=eta, **kw))
            for o in (2, 3) for kw in ({}, cap)]
    if kind == "sde":
        return out + [("GottaGoFast", "jaxsde", GGF_RTOLS[1::2] if quick else GGF_RTOLS, "rtol",
                       lambda r: jaxsde.GottaGoFast(rtol=r))]
    return out + [("ProbabilityFlow (rtol = atol)", "jaxsde", PF_TOLS[::2] if quick else PF_TOLS, "tol",
                   lambda r: jaxsde.ProbabilityFlow(rtol=r, atol=r))]


def ode_reference(target: Target, x_T) -> np.ndarray:
    """The probability-flow ODE of each prior draw ``x_T`` (n, *shape) through diffrax ``Dopri8`` at
    ``rtol = atol = 1e-10`` in float64, final denoising step included, as float64 NumPy."""
    import diffrax

    from jaxsde.testing.reference import diffrax_solve

    with jax.enable_x64(True):
        sol = jax.jit(jax.vmap(lambda x: diffrax_solve(
            jax.random.PRNGKey(0), target.sde, target.score, x, diffrax.Dopri8(), ode=True, denoise=True,
            controller=diffrax.PIDController(rtol=1e-10, atol=1e-10), dt0=1e-3, max_steps=100_000)))(
            jnp.asarray(np.asarray(x_T), jnp.float64))
        if not np.all(np.asarray(sol.result) == 0):
            raise RuntimeError("the Dopri8 reference failed on some draws")
        return np.asarray(sol.x, np.float64)


def kd_problem(args, ctx, problem: str) -> None:
    target = TARGETS[problem]()
    rtols = floats(args.rtols) or (RTOLS_KD_QUICK if args.quick else RTOLS_KD)
    kinds = args.kinds.split(",")
    if any(k not in ("ode", "sde") for k in kinds):
        ctx.error(f"--kinds: ode and/or sde, got {args.kinds!r}")
    half = half_range(target.sde)
    data = dict(mode="kd", problem=target.name, label=target.label, half_range=half, seed=args.seed, kinds={})
    t_start = time.perf_counter()
    for kind in kinds:
        n = args.n_ode if kind == "ode" else args.n_sde
        x_T = prior(target, args.seed, n)
        keys, _ = jaxsde.sample_keys(jax.random.PRNGKey(args.seed), n)
        if kind == "ode":
            ref, floor = ode_reference(target, x_T), None

            def quality(x, ref=ref):
                d = (np.asarray(x, np.float64) - ref) / half
                return float(np.sqrt(np.mean(d**2))), float(np.max(np.abs(d)))

            program = jax.jit(lambda solver, x_T=x_T, keys=keys:
                              jaxsde.solve_batch(keys, target.sde, target.score, solver, x_T))
        else:
            floor = list(target.floor(jax.random.PRNGKey(args.seed + 17), n))
            quality = target.quality
            program = jax.jit(lambda solver, n=n: jaxsde.sample(jax.random.PRNGKey(args.seed), target.sde,
                                                               target.score, solver, target.shape, n))
        km, rows_out = None, []
        for name, lib, settings, label, make in kd_families(target.sde, kind, rtols, args.quick):
            if not wanted(args, name):
                continue
            compile_s = None
            for value in settings:
                made = make(value)
                if lib == "jaxsde":
                    if compile_s is None:  # one program for the family's sweep (traced tolerances)
                        t0 = time.perf_counter()
                        jax.block_until_ready(program(made))
                        compile_s = time.perf_counter() - t0  # compilation + one run
                    t0 = time.perf_counter()
                    sol = jax.block_until_ready(program(made))
                    wall = time.perf_counter() - t0
                    x, nfe, failed = sol.x, np.asarray(sol.stats.nfe), int(np.sum(np.asarray(sol.result) != 0))
                else:
                    if km is None:
                        import torch

                        km = k_diffusion_model(target.sde, target.score)
                        xt = km.initial(x_T)
                        km.model(xt, torch.full((n,), km.sigma_max))  # compile the denoiser
                    t0 = time.perf_counter()
                    x, calls = km.sample_adaptive(xt, args.seed, **made)
                    wall = time.perf_counter() - t0
                    nfe, failed = np.full((n,), calls), int(np.sum(~np.all(np.isfinite(x.reshape(n, -1)), 1)))
                q = quality(np.asarray(x))
                row = dict(family=name, lib=lib, setting=f"{label}={value:g}", value=value, mean_nfe=float(nfe.mean()),
                           max_nfe=int(nfe.max()), failed=failed, wall_s=wall, compile_s=compile_s, quality=q[0],
                           extra=q[1], **({"atol": made["atol"]} if isinstance(made, dict) else {}))
                rows_out.append(row)
                print(problem, kind, name, row, flush=True)
        data["kinds"][kind] = dict(n=n, floor=floor, rows=rows_out, matched=kd_matched(kind, rows_out, floor))
        data["seconds"] = time.perf_counter() - t_start
        ctx.save(stem(f"adaptive_kd_{target.name}", args.name), data)  # after each kind: a cut run keeps its rows


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
        j, k = (cheapest(rows, lambda r, lib=lib, t=thr: r["lib"] == lib and not r["failed"] and r["quality"] <= t)
                for lib in ("jaxsde", "k-diffusion"))
        brief = [None if b is None else {key: b[key] for key in ("family", "setting", "mean_nfe", "quality")}
                 for b in (j, k)]
        out.append(dict(threshold=thr, note=note, jaxsde=brief[0], kdiffusion=brief[1],
                        ratio=None if j is None or k is None else j["mean_nfe"] / k["mean_nfe"]))
    return out


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
        fmt = "{:.0e}" if kind == "ode" else "{:.4f}"
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

        def best(b, fmt=fmt):
            return "not reached" if b is None else (f"{b['family']} {b['setting']}: {b['mean_nfe']:.1f} "
                                                    f"(q {fmt.format(b['quality'])})")

        lines += ["### Matched quality", "", *columns(block["matched"], {
            "threshold": lambda r, fmt=fmt: fmt.format(r["threshold"]) + (f" ({r['note']})" if r["note"] else ""),
            "jaxsde best (mean NFE)": lambda r: best(r["jaxsde"]), "k-diffusion best (NFE)": lambda r:
            best(r["kdiffusion"]), "ratio": lambda r: "-" if r["ratio"] is None else f"{r['ratio']:.2f}"}),
            "", "### Every row", "", *columns(block["rows"], {
                "sampler": "{family}", "setting": "{setting}", "mean NFE": "{mean_nfe:.1f}", "max NFE": "{max_nfe}",
                "quality": "{quality:.3e}", "max" if kind == "ode" else "sd": "{extra:.2e}", "wall s": "{wall_s:.2f}",
                "failed": "{failed}"}), ""]
    return "\n".join(lines)


def run_kd(args, ctx) -> None:
    problems = args.problems.split(",")
    if not args.summary:
        for problem in problems:
            if problem not in TARGETS or problem == "digits":
                ctx.error(f"--mode kd: problems from {[p for p in TARGETS if p != 'digits']}, got {problem!r}")
            kd_problem(args, ctx, problem)
        return
    pooled = {}
    for problem in problems:
        path = ctx.path(stem(f"adaptive_kd_{problem}", args.name), "json")
        if not os.path.exists(path):
            ctx.error(f"no stored {path}: run --mode kd --problems {problem} first")
        with open(path) as f:
            stored = json.load(f)
        pooled[problem] = dict(command=stored["command"], date=stored["machine"]["date"],
                               kinds={k: dict(n=b["n"], floor=b["floor"], matched=b["matched"])
                                      for k, b in stored["kinds"].items()})
    ctx.save(stem("adaptive_kd_summary", args.name), dict(mode="kd-summary", problems=pooled))


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
    return "\n".join(lines + ["`*`: the threshold lies within the floor's noise (d * floor < 2 sd)."])
