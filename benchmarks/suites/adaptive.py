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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
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


def run(args, ctx):
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
