"""Sample quality vs NFE for every solver (exact mixtures, digits); ``--frontier``: every fixed-budget sampler of
jaxsde and of k-diffusion at 5/10/20 NFE on the same score and prior draws.

Default mode: ``ring2`` (8-mode ring, 2-D) and ``gmm32`` (10 modes, 32-D), VP, sliced W2 / MMD^2 against exact
Tweedie-denoised samples with their floor; ``digits`` (the embedded VP model), FD-digits / KID with the bootstrap sd.
Fixed-step solvers (DDIM, DPM-Solver++ 2M/3M, SA-Solver, ForwardValue, EDM Heun, EM, PC) at NFE budgets
5..200 including the final Tweedie step (2-NFE-per-step solvers take ``(B - 1) // 2`` steps); GGF and the PF-ODE
at several tolerances (mean NFE). Sample i uses ``fold_in(seed, i)``. Writes ``quality_vs_nfe_<problem>.*``.

``--frontier``: problems of :data:`benchmarks.harness.problems.TARGETS` (quality +- 30-resample bootstrap sd).
jaxsde: every fixed-step registry sampler (plus :func:`frontier_grid_variants`), ``(B - 1) // k`` steps + Tweedie.
k-diffusion 0.1.1.post1: Karras sigmas (rho 7) between sigma/alpha at eps and T, then 0 (its last step is one
call); ``<name>@exponential`` on log-uniform sigmas; ``sample_dpm_fast`` gets ``B - 1`` and a final denoising
call. NFE is counted. ``--tuned`` adds :data:`TUNED_SAMPLERS` on grids learned by ``jaxsde.optimize_grid`` on
calibration draws of seed + 1000 (never the evaluation draws). Writes ``frontier_<problem>[_TAG].*`` and
``frontier_summary.md`` (jaxsde's best vs k-diffusion's best per budget, runs of the same draws pooled).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
import jaxsde.testing.metrics
from jaxsde.testing.targets import GaussianMixture

from ..harness.cli import options
from ..harness.problems import TARGETS
from ..harness.samplers import prior, run_jaxsde, sample_chunks
from ..harness.select import select
from ..harness.writer import curves, pivot, progress, table

BUDGETS = (5, 10, 20, 50, 100, 200)
N_DIGITS, DIGITS_MAX_NFE = 300, 50  # digits: samples per solver; largest budget of the fixed-step solvers but EM
FAMILY_STYLE = {"DDIM": "o", "DPM++2M": "s", "DPM++3M": "^", "SA-Solver": "v", "ForwardValue": "<",
                "EDMHeun": ">", "EM": "x", "PC": "+", "GGF": "D", "PF-ODE": "*"}


def solvers(budgets, rtols, tols, digits: bool, snr: float = 0.01):
    """(family, setting, budget or None, solver): the fixed-step solvers at each NFE budget (final Tweedie step
    included: 2-NFE-per-step solvers take ``(B - 1) // 2`` steps; on digits only EM above ``DIGITS_MAX_NFE``),
    then GGF at ``rtols`` and the PF-ODE at ``tols``."""
    jobs = []
    for b in budgets:
        n1, n2 = b - 1, (b - 1) // 2
        for fam, s in (("DDIM", jaxsde.DDIM(n1)), ("DPM++2M", jaxsde.DPMSolverPP(n1, order=2)),
                       ("DPM++3M", jaxsde.DPMSolverPP(n1, order=3)), ("SA-Solver", jaxsde.SASolver(n1)),
                       ("ForwardValue", jaxsde.ForwardValue(n1)), ("EDMHeun", jaxsde.EDMHeun(n2)),
                       ("EM", jaxsde.EulerMaruyama(n1)), ("PC", jaxsde.PredictorCorrector(n2, snr=snr))):
            if not (digits and fam != "EM" and b > DIGITS_MAX_NFE):
                jobs.append((fam, f"NFE<={b}", b, s))
    return (jobs + [("GGF", f"rtol={r}", None, jaxsde.GottaGoFast(rtol=r)) for r in rtols]
            + [("PF-ODE", f"tol={t:g}", None, jaxsde.ProbabilityFlow(rtol=t, atol=t)) for t in tols])


def make_problem(name: str):
    """(sde, score_fn(params), params, shape, evaluate(x) -> dict, primary metric, floor key, info)."""
    if name == "digits":
        from jaxsde.testing.metrics.digits import DigitsMetrics

        ckpt = jaxsde.pretrained("digits")
        metrics = DigitsMetrics()

        def evaluate(x):
            return {k: float(v) for k, v in metrics.report(x, ckpt.data_range, bootstrap=20).items()}

        return ckpt.sde, ckpt.score_fn, ckpt.params, ckpt.shape, evaluate, "fd", "fd_floor", (
            f"embedded model `{ckpt.name}` ({ckpt.config.get('sde')} SDE), FD-digits / KID vs the training set")
    sde = jaxsde.VPSDE()
    if name == "ring2":
        mix = GaussianMixture.ring(8, (2,), radius=0.6, scale=0.05)
        info = "8-mode ring in 2-D (radius 0.6, component std 0.05), VP SDE"
    elif name == "gmm32":
        mix = GaussianMixture.random(jax.random.PRNGKey(7), 10, (32,), scale=0.1)
        info = "10 random modes in 32-D (component std 0.1), VP SDE"
    else:
        raise ValueError(f"unknown problem {name!r}")
    key = jax.random.PRNGKey(123)

    def evaluate(x):
        return {k: float(v) for k, v in jaxsde.testing.metrics.quality_report(key, mix, sde, x, denoise=True).items()}

    return sde, lambda p: p.score(sde), mix, mix.shape, evaluate, "sw2", "sw2_floor", (
        info + "; sliced W2 / MMD^2 vs exact Tweedie-denoised p_eps samples")


def winners(rows, metric, budgets, floor, digits):
    """For each budget: the fixed-step row with the lowest metric, and the rows tied with it.

    Tied: within the metric's noise of the best, i.e. on the mixtures ``<= 1.25 x`` the exact-vs-exact
    floor when the best is there too, on digits ``<= best + 2 sqrt(std_best^2 + std^2)`` with the
    bootstrap standard deviations of FD.
    """
    out = {}
    for b in budgets:
        cands = [r for r in rows if r["budget"] == b and r["failed"] == 0 and np.isfinite(r[metric])]
        if not cands:
            continue
        best = min(cands, key=lambda r: r[metric])
        if digits:
            sb = best.get("fd_std", 0.0)
            tied = [r for r in cands if r[metric] <= best[metric] + 2.0 * float(np.hypot(sb, r.get("fd_std", 0.0)))]
        else:
            tied = [r for r in cands if r[metric] <= 1.25 * floor] if best[metric] <= 1.25 * floor else [best]
        tied = sorted(tied, key=lambda r: r[metric])
        out[str(b)] = {"solver": best["family"], metric: best[metric], "tied": [r["family"] for r in tied]}
    return out


def headline(rows):
    """Digits: the best of DPM-Solver++ / SA-Solver / ForwardValue at 10 NFE against EM at 200."""
    em200 = next(r for r in rows if r["family"] == "EM" and r["budget"] == 200)
    b10 = min((r for r in rows if r["budget"] == 10 and r["family"] in ("DPM++2M", "DPM++3M", "SA-Solver",
                                                                        "ForwardValue")), key=lambda r: r["fd"])
    noise = 2.0 * float(np.hypot(b10.get("fd_std", 0.0), em200.get("fd_std", 0.0)))
    return dict(best_fast_at_10=b10["family"], fd_best_fast_at_10=b10["fd"], fd_em200=em200["fd"], two_sigma=noise,
                no_worse=bool(b10["fd"] <= em200["fd"]), no_worse_within_noise=bool(b10["fd"] <= em200["fd"] + noise))


def arguments(parser):
    parser.add_argument("--problems", default="ring2,gmm32,digits")
    parser.add_argument("--n", type=int, default=4000, help="samples per solver on the mixtures (digits: 300)")
    options(parser, batch=500, seed=0, quick="tiny n, budgets 5/10/20, few adaptive settings")
    parser.add_argument("--frontier", action="store_true",
                        help="the frontier of issue 22: every fixed-budget sampler of jaxsde and of k-diffusion at "
                             "NFE 5/10/20 on lowrank, gmm3072 (VP and VE) and digits; with --quick: lowrank, "
                             "n = 64, NFE 5")
    parser.add_argument("--frontier-problems", default="",
                        help="--frontier: comma-separated subset of " + ",".join(FRONTIER_PROBLEMS))
    parser.add_argument("--budgets", default="", help="--frontier: comma-separated NFE budgets (default 5,10,20)")
    parser.add_argument("--n-frontier", type=int, default=0,
                        help="--frontier: samples per sampler (default 1000 on the mixtures, 300 on digits)")
    parser.add_argument("--samplers", nargs="+", default=None,
                        help="--frontier: exact row names, one argument each (e.g. unipc 'k-diffusion lms')")
    parser.add_argument("--tag", default="", help="--frontier: results file suffix, frontier_<problem>_<tag>.*, "
                        "for a partial or confirmation run (--samplers, --seed); frontier_summary.md merges a tagged "
                        "file with the untagged one of the same draws (problem, n, seed)")
    parser.add_argument("--frontier-summary", action="store_true",
                        help="only rewrite frontier_summary.md from the frontier_*.json in --out (measures nothing)")
    parser.add_argument("--tuned", action="store_true",
                        help="--frontier: add the deterministic multistep samplers on grids learned by "
                             "jaxsde.optimize_grid (rows '<name> tuned grid'), calibrated on other draws")
    parser.add_argument("--n-calibration", type=int, default=0,
                        help="--tuned: calibration draws (seed + 1000; default 256 on the mixtures, 32 on digits)")
    parser.add_argument("--tune-iterations", type=int, default=0,
                        help="--tuned: Adam iterations (default 100 on the mixtures, 60 on digits)")


def run(args, ctx):
    if args.frontier_summary:
        return write_frontier_summary(args.out)
    if args.frontier:
        return frontier(args, ctx)
    for problem in [p.strip() for p in args.problems.split(",") if p.strip()]:
        t_problem = time.perf_counter()
        sde, score_fn, params, shape, evaluate, metric, floor_key, info = make_problem(problem)
        digits = problem == "digits"
        budgets = (5, 10, 20) if args.quick else BUDGETS
        n = (64 if digits else 256) if args.quick else (N_DIGITS if digits else args.n)
        few = args.quick or digits
        rows = []
        for fam, setting, b, solver in solvers(budgets, (0.1,) if few else (0.2, 0.1, 0.05, 0.02, 0.01),
                                               (1e-3,) if few else (1e-2, 1e-3, 1e-4, 1e-5), digits):
            x, nfe, fails, wall, compile_s = sample_chunks(sde, score_fn, params, shape, solver, n, args.seed,
                                                           min(args.batch, n))
            good = np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)
            try:
                r = evaluate(x[good]) if good.sum() > 10 else {}
            except Exception as err:  # noqa: BLE001 - a diverged solver must not stop the benchmark
                print(f"  metric failed: {err}")
                r = {}
            rows.append(dict(family=fam, setting=setting, budget=b, solver=repr(solver), mean_nfe=float(nfe.mean()),
                             max_nfe=int(nfe.max()), failed=fails, wall_s=wall, compile_s=compile_s,
                             **{k: r.get(k, float("nan")) for k in r}, **({metric: float("nan")} if not r else {})))
            progress(rows[-1], "family", "setting", "mean_nfe", "max_nfe", metric, "wall_s", "compile_s", "failed")
        floor = next((r[floor_key] for r in rows if floor_key in r and np.isfinite(r[floor_key])), float("nan"))
        summary = {"winners_by_budget": winners([r for r in rows if r["budget"] is not None], metric, budgets, floor,
                                                digits)}
        if digits and not args.quick:
            summary["headline"] = headline(rows)
        stem = f"quality_vs_nfe_{problem}" + ("_quick" if args.quick else "")
        ctx.save(stem, dict(problem=problem, info=info, n=n, seed=args.seed, metric=metric, floor=floor,
                            budgets=list(budgets), elapsed_s=time.perf_counter() - t_problem, summary=summary,
                            rows=rows))


def _fmt(v, digits=4):
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def render(data):
    if data.get("kind") == "frontier" or "best" in data:  # frontier files stored before ``kind`` have ``best``
        return frontier_markdown(data)
    problem, machine, metric, floor, rows, summary = (data[k] for k in ("problem", "machine", "metric", "floor",
                                                                        "rows", "summary"))
    budgets = data.get("budgets") or sorted({r["budget"] for r in rows if r["budget"] is not None})
    digits, n, nan = problem == "digits", data["n"], float("nan")
    second = "kid" if digits else "mmd2"
    lines = [f"# Quality vs NFE: {problem}", "", f"Command: `{data['command']}`", "",
             f"{data['info']}. n = {n} samples per solver (seed {data.get('seed', 0)}); {machine['backend']}, "
             f"{machine['cpus']} CPUs, jax {machine['jax']}, {machine['date']}; {data['elapsed_s']:.0f} s.", "",
             f"Noise floor of {metric}: {_fmt(floor)} (exact-vs-exact / real-vs-real at this n)."]
    if digits:
        sd = float(np.nanmedian([r.get("fd_std", nan) for r in rows]))
        lines += [f"Bootstrap std of FD at this n: median {_fmt(sd, 3)}."]
    lines += ["", f"## {metric} by NFE budget (fixed-step solvers; final Tweedie step included)", "",
              *pivot(["solver", *budgets], [r for r in rows if r["budget"] is not None], "family", "budget", budgets,
                     lambda r: _fmt(r[metric]) + ("" if r["mean_nfe"] == r["budget"] else f" ({r['mean_nfe']:.0f})")),
              "", "(NFE in parentheses where it differs from the budget; — = not run.)", "", "## Winners", "",
              *table(["budget", "best solver", metric, "tied within noise"],
                     [[b, w["solver"], _fmt(w[metric]), ", ".join(w.get("tied", []))]
                      for b, w in summary["winners_by_budget"].items()])]
    lines += ["", ("Tied: FD within 2 bootstrap sigma of the best." if digits else
                   f"Tied: all at the noise floor (<= 1.25 x {_fmt(floor)}) when the best is there.")]
    if h := summary.get("headline"):
        lines += ["", f"**At 10 NFE the best of DPM-Solver++/SA-Solver/ForwardValue is {h['best_fast_at_10']} "
                  f"with FD {h['fd_best_fast_at_10']:.3f}; EM at 200 NFE: FD {h['fd_em200']:.3f} (2 sigma of the "
                  f"difference {h['two_sigma']:.3f}). No worse: {'yes' if h['no_worse'] else 'no'}; within 2 bootstrap "
                  f"sigma: {'yes' if h['no_worse_within_noise'] else 'no'}.**"]
    lines += ["", "## All runs", "", *table(
        ["solver", "setting", "mean NFE", "max NFE", metric, second, "FD boot. std" if digits else "mode TV", "wall s",
         "failed"], [[r["family"], r["setting"], f"{r['mean_nfe']:.1f}", r["max_nfe"], _fmt(r[metric]),
                      _fmt(r.get(second, nan)), _fmt(r.get("fd_std" if digits else "mode_tv", nan), 3),
                      f"{r['wall_s']:.1f}", r["failed"]] for r in rows])]
    return "\n".join(lines)


def plot(data, path):
    frontier = data.get("kind") == "frontier" or "best" in data
    rows, name, y = data["rows"], "sampler" if frontier else "family", "quality" if frontier else data["metric"]
    series = {}
    for i, label in enumerate(dict.fromkeys(r[name] for r in rows)):
        lib = next(r.get("lib") for r in rows if r[name] == label)
        style = (dict(marker="os^v<>Dph*xP+X"[i % 14], ls="-" if lib == "jaxsde" else "--", lw=1)
                 if frontier else dict(marker=FAMILY_STYLE.get(label, "o"),
                                       ls="--" if label in ("EM", "PC", "GGF", "PF-ODE") else "-"))
        series[label] = ([(r["mean_nfe"], r[y]) for r in rows if r[name] == label], style)
    if frontier:
        return curves(path, series, xlabel="NFE per sample (final denoising step included)", ylabel=data["label"],
                      title=f"{data['problem']} ({data['sde']}), n={data['n']}: jaxsde solid, k-diffusion dashed",
                      hline=(data["floor"][0], "exact vs exact"), logy=True, size=(9, 5.5), xticks=data["budgets"],
                      legend=6)
    curves(path, series, xlabel="NFE per sample (mean for adaptive solvers)", title=f"{data['problem']}, n={data['n']}",
           ylabel={"fd": "FD-digits", "sw2": "sliced W2"}.get(y, y) + " (lower is better)",
           hline=(data["floor"], "noise floor"), logy=True, size=(7, 4.5))


# --- the frontier (issue 22): every fixed-budget sampler of jaxsde and of k-diffusion, same score --------------
FRONTIER_BUDGETS = (5, 10, 20)
FRONTIER_PROBLEMS = ("lowrank", "lowrank-ve", "gmm3072", "gmm3072-ve", "digits")
# k-diffusion 0.1.1.post1's fixed-schedule samplers: name -> model calls per step. On Karras sigmas
# ``get_sigmas_karras(steps, ...)`` (``steps`` sigmas, then 0) the last step, to sigma 0, is one call for
# every one of them (the 2-call samplers take an Euler step there, which returns the denoised prediction),
# like jaxsde's final Tweedie step. So a budget B is ``B`` steps for a 1-call sampler (NFE = B) and
# ``(B + 1) // 2`` steps for a 2-call one (NFE = 2 steps - 1: B for odd B, B - 1 for even B).
# ``sample_dpm_fast`` takes its NFE ``n`` directly and stops at sigma_min: it gets ``n = B - 1`` and the
# final denoising call (+1 NFE) that the adaptive suite also gives ``sample_dpm_adaptive``.
# ``sample_dpm_adaptive`` (a tolerance, not a budget) is the adaptive suite's.
# The one-call samplers also run on k-diffusion's ``get_sigmas_exponential`` (uniform in log sigma, i.e. in
# log-SNR: jaxsde's "logsnr" grid), as ``<name>@exponential``.
K_DIFFUSION_EXPONENTIAL = ("euler", "euler_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde")
K_DIFFUSION_SAMPLERS = {"euler": 1, "euler_ancestral": 1, "lms": 1, "dpmpp_2m": 1, "dpmpp_2m_sde": 1,
                        "dpmpp_3m_sde": 1, "heun": 2, "dpm_2": 2, "dpm_2_ancestral": 2, "dpmpp_2s_ancestral": 2,
                        "dpmpp_sde": 2, "dpm_fast": 1}


def frontier_target(name: str):
    if name not in FRONTIER_PROBLEMS:
        raise ValueError(f"unknown frontier problem {name!r}; choose from {', '.join(FRONTIER_PROBLEMS)}")
    return TARGETS[name]()


def frontier_jaxsde_solvers(budget: int, ve: bool):
    """(name, solver) for every fixed-step sampler of the registry (``jaxsde.solvers.registry``: those with a
    ``steps`` option; ``mlem`` needs the digits model family and is left out), at its registry defaults, plus
    DPM-Solver++ 3M. A sampler with ``k`` NFE per step (``solver.nfe_per_attempt``: 2 for EDM Heun and PC,
    1 for the others) takes ``(budget - 1) // k`` steps, the final Tweedie step being the last NFE: NFE =
    ``budget`` for ``k = 1``, ``budget`` or ``budget - 1`` for ``k = 2``. PC's Langevin snr is 0.01 (VP) or
    0.16 (VE)."""
    from jaxsde.solvers import registry

    out = []
    for name in registry.solver_names():
        options = registry.solver_options(name)
        if "steps" not in options or name == "mlem":
            continue
        extra = {"snr": 0.16 if ve else 0.01} if "snr" in options else {}
        k = registry.make_solver(name, steps=8, **extra).nfe_per_attempt
        out.append((name, registry.make_solver(name, steps=(budget - 1) // k, **extra)))
        if name == "dpmpp":
            out.append(("dpmpp-3m", jaxsde.DPMSolverPP((budget - 1) // k, order=3)))
    return out + frontier_grid_variants(budget - 1)


def frontier_grid_variants(steps: int):
    """The one-NFE-per-step multistep samplers at the settings their registry defaults leave out: the other of the
    two grids that matter at low NFE (``"logsnr"``, uniform in log-SNR, and ``"edm"``, Karras rho = 7 as in
    k-diffusion) and the third orders of UniPC and DPM-Solver++ (diffusers' UniPC default for unconditional
    models); and k-diffusion's own configurations of the shared algorithms, on the Karras grid without the
    lower order at the last steps (``dpmpp edm full-order`` is ``sample_dpmpp_2m``, ``dpmpp-sde edm``
    ``sample_dpmpp_2m_sde``, ``lms edm, lms last step`` ``sample_lms``). ``steps`` steps, then the final
    denoising step: NFE = ``steps + 1``. A setting a sampler refuses at this step count (too few steps for the
    order) is left out."""
    makers = {"dpmpp edm": lambda: jaxsde.DPMSolverPP(steps, order=2, grid="edm"),
              "dpmpp-3m edm": lambda: jaxsde.DPMSolverPP(steps, order=3, grid="edm"),
              "unipc-3": lambda: jaxsde.UniPC(steps, order=3),
              "unipc edm": lambda: jaxsde.UniPC(steps, order=2, grid="edm"),
              "unipc-3 edm": lambda: jaxsde.UniPC(steps, order=3, grid="edm"),
              "deis edm": lambda: jaxsde.DEIS(steps, order=3, grid="edm"),
              "ipndm logsnr": lambda: jaxsde.IPNDM(steps, order=4, grid="logsnr"),
              "lms logsnr": lambda: jaxsde.LMS(steps, order=4, grid="logsnr"),
              # k-diffusion's own configurations (Karras grid, full order to the end): the same algorithms
              "dpmpp edm full-order": lambda: jaxsde.DPMSolverPP(steps, order=2, grid="edm", lower_order_final=False),
              "dpmpp-sde edm": lambda: jaxsde.DPMSolverPPSDE(steps, order=2, grid="edm"),
              "unipc edm full-order": lambda: jaxsde.UniPC(steps, order=2, grid="edm", lower_order_final=False),
              "lms edm, lms last step": lambda: jaxsde.LMS(steps, order=4, last_step="lms"),  # = sample_lms
              "lms logsnr, lms last step": lambda: jaxsde.LMS(steps, order=4, grid="logsnr", last_step="lms")}
    out = []
    for name, make in makers.items():
        try:
            out.append((name, make()))
        except ValueError:
            continue
    return out


TUNED_SAMPLERS = {  # name -> (steps, grid) -> solver: the deterministic one-NFE-per-step multistep samplers
    "unipc": lambda steps, grid: jaxsde.UniPC(steps, order=2, grid=grid),
    "dpmpp": lambda steps, grid: jaxsde.DPMSolverPP(steps, order=2, grid=grid),
    "ipndm": lambda steps, grid: jaxsde.IPNDM(steps, order=4, grid=grid),
    "deis": lambda steps, grid: jaxsde.DEIS(steps, order=3, grid=grid),
    "lms, lms last step": lambda steps, grid: jaxsde.LMS(steps, order=4, grid=grid, last_step="lms"),
}


K_DIFFUSION_ON_LEARNED = "k-diffusion on a learned grid"
LEARNED_GRID_TWINS = {"lms": "lms, lms last step"}  # k-diffusion sampler -> the same algorithm in jaxsde


class GridTuner:
    """The tuned-grid rows of one problem: ``jaxsde.optimize_grid`` from the log-SNR grid, on ``n`` calibration
    draws of seed ``seed + 1000`` (never the evaluation draws) against the PF-ODE teacher (tolerance 1e-5), computed
    once per problem and shared by every sampler and budget."""

    def __init__(self, target, seed: int, n: int, iterations: int):
        self.target, self.iterations, self.n, self.seed = target, iterations, n, seed + 1000
        self.x_cal = prior(target, self.seed, n)

    @functools.cached_property
    def teacher(self):
        t0 = time.perf_counter()
        x, nfe = jaxsde.grid_optimization.teacher_samples(self.target.sde, self.target.score, self.x_cal)
        return x, nfe, time.perf_counter() - t0

    @functools.cache  # noqa: B019 - one tuner per problem: (solver on the learned grid, calibration) per (name, steps)
    def __call__(self, name: str, steps: int):
        return self.learn(name, steps)

    def learn(self, name: str, steps: int):
        make = TUNED_SAMPLERS[name]
        teacher, teacher_nfe, teacher_s = self.teacher
        t0 = time.perf_counter()
        res = jaxsde.optimize_grid(self.target.sde, self.target.score, make(steps, "logsnr"), self.x_cal,
                                   teacher=teacher, iterations=self.iterations)
        info = dict(calibration_draws=self.n, calibration_seed=self.seed, iterations=self.iterations,
                    start_grid="logsnr", teacher_nfe=teacher_nfe, teacher_s=teacher_s,
                    tune_s=time.perf_counter() - t0, initial_loss=res.initial_loss, loss=res.loss,
                    times=list(res.times))
        print(f"  tuned {name} ({steps} steps): loss {res.initial_loss:.3g} -> {res.loss:.3g} in "
              f"{info['tune_s']:.0f}s; times {np.round(res.times, 4).tolist()}", flush=True)
        return make(steps, res.times), info


def run_k_diffusion_fixed(target, name: str, budget: int, x_T, seed: int, times=None):
    """k-diffusion's ``sample_<name>`` on Karras sigmas (rho 7, sigma_min / sigma_max = sigma / alpha at the SDE's
    ``eps`` / ``T``; ``<name>@exponential``: on ``get_sigmas_exponential`` between the same ends; with ``times``, a
    one-call sampler on the sigmas of those ``budget`` jaxsde times, then 0), float32 torch on the whole batch, its
    model the jitted jaxsde score as a denoiser ``D(x / alpha, sigma / alpha)``. Returns (samples, NFE = model
    calls, wall s incl. compilation)."""
    import torch

    from ..harness.kdiffusion import k_diffusion_model

    km = k_diffusion_model(target.sde, target.score)
    ks, model, smin, smax = km.ks, km.model, km.sigma_min, km.sigma_max
    xt = km.initial(x_T)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if name == "dpm_fast":
        out = ks.sample_dpm_fast(model, xt, smin, smax, budget - 1, disable=True)
        out = model(out, torch.full((out.shape[0],), smin))  # the final denoising step
    else:
        base, _, schedule = name.partition("@")
        steps = budget if K_DIFFUSION_SAMPLERS[base] == 1 else (budget + 1) // 2
        if times is not None:
            if K_DIFFUSION_SAMPLERS[base] != 1 or len(times) != budget:
                raise ValueError(f"{base} on a jaxsde grid needs a one-call sampler and {budget} times")
            alpha, sigma = target.sde.marginal(jnp.asarray(times, jnp.float32))
            sigmas = torch.cat([torch.from_numpy(np.array(sigma / alpha, np.float32)), torch.zeros(1)])
        else:
            make_sigmas = ks.get_sigmas_exponential if schedule == "exponential" else ks.get_sigmas_karras
            sigmas = make_sigmas(steps, smin, smax)
        out = getattr(ks, "sample_" + base)(model, xt, sigmas, disable=True)
    return out.numpy(), km.calls[0], time.perf_counter() - t0


def _verdict(j, k):
    """jaxsde's best row ``j`` vs k-diffusion's ``k`` (lower quality is better): the difference in units of the
    combined bootstrap sd."""
    diff = k["quality"] - j["quality"]
    sd = float(np.hypot(j["sd"], k["sd"]))
    word = "jaxsde better" if diff > 2 * sd else "k-diffusion better" if diff < -2 * sd else "tie (within 2 sd)"
    return dict(diff=diff, combined_sd=sd, verdict=word, jaxsde_best_or_tied=bool(diff >= -2 * sd))


def frontier_best(rows, budgets):
    out = {}
    for b in budgets:
        best = {}
        for lib in ("jaxsde", "k-diffusion"):
            cands = [r for r in rows if r["lib"] == lib and r["budget"] == b and r["failed"] == 0
                     and np.isfinite(r["quality"]) and r["mean_nfe"] <= b]
            if cands:
                best[lib] = min(cands, key=lambda r: r["quality"])
        if len(best) == 2:
            keep = ("sampler", "quality", "sd", "mean_nfe")
            out[str(b)] = dict(jaxsde={k: best["jaxsde"][k] for k in keep},
                               k_diffusion={k: best["k-diffusion"][k] for k in keep},
                               **_verdict(best["jaxsde"], best["k-diffusion"]))
    return out


def frontier(args, ctx):
    """``--frontier``: every fixed-budget sampler of both libraries at each budget on each problem."""
    problems = [p.strip() for p in (args.frontier_problems or ",".join(FRONTIER_PROBLEMS)).split(",") if p.strip()]
    budgets = tuple(int(b) for b in args.budgets.split(",")) if args.budgets else FRONTIER_BUDGETS
    if args.quick:
        problems, budgets = problems[:1] if args.frontier_problems else ["lowrank"], budgets[:1]
    for problem in problems:
        t_problem = time.perf_counter()
        target = frontier_target(problem)
        n = args.n_frontier if args.n_frontier else (64 if args.quick else (300 if problem == "digits" else 1000))
        x_T = prior(target, args.seed, n)
        floor_q, floor_sd = target.floor(jax.random.PRNGKey(args.seed + 17), n)
        rows, digits = [], problem == "digits"
        tuner = GridTuner(target, args.seed, args.n_calibration or (32 if digits else 256),
                          args.tune_iterations or (60 if digits else 100)) if args.tuned else None
        for b in budgets:
            jobs = [("jaxsde", name, solver) for name, solver in
                    frontier_jaxsde_solvers(b, isinstance(target.sde, jaxsde.VESDE))]
            if tuner is not None:
                jobs += [("jaxsde", name + " tuned grid", (tuner, name, b - 1)) for name in TUNED_SAMPLERS]
                # the same algorithms in k-diffusion on the sigmas of jaxsde's learned grid (not counted as
                # k-diffusion's: it has no grid optimizer), to show where the gain comes from
                jobs += [(K_DIFFUSION_ON_LEARNED, f"{kd} on tuned grid of {name}", (tuner, name, b - 1))
                         for kd, name in LEARNED_GRID_TWINS.items()]
            jobs += [("k-diffusion", name, None) for name in K_DIFFUSION_SAMPLERS]
            jobs += [("k-diffusion", name + "@exponential", None) for name in K_DIFFUSION_EXPONENTIAL]
            try:
                jobs = select([(name if lib == "jaxsde" else "k-diffusion " + name, (lib, name, solver))
                               for lib, name, solver in jobs], args.samplers)
            except ValueError as err:
                ctx.error(f"--samplers: {err}")
            for label, (lib, name, solver) in jobs:
                tuning = None
                try:
                    if isinstance(solver, tuple):  # a tuned grid: learn it now (only for the samplers asked for)
                        tune, base, steps = solver
                        solver, tuning = tune(base, steps)
                    if lib == "jaxsde":
                        x, nfe, failed, wall = run_jaxsde(target, solver, args.seed, n, 0)
                        setting = repr(solver)
                    else:  # k-diffusion, on its sigmas or (K_DIFFUSION_ON_LEARNED) on jaxsde's learned grid
                        kd, _, twin = name.partition(" on tuned grid of ")
                        x, calls, wall = run_k_diffusion_fixed(target, kd, b, x_T, args.seed,
                                                               times=tuning["times"] if twin else None)
                        nfe, failed = np.array([calls]), 0
                        base, _, schedule = kd.partition("@")
                        setting = (f"sample_{kd} on the sigmas of jaxsde's learned grid for {twin}" if twin else
                                   f"sample_{base}, " + ("exponential" if schedule else "Karras") + " sigmas")
                    mean_nfe, max_nfe = float(nfe.mean()), int(nfe.max())
                    good = np.all(np.isfinite(np.asarray(x).reshape(len(x), -1)), axis=1)
                    failed += int(np.sum(~good))
                    q, sd = target.quality(np.asarray(x)[good]) if good.sum() > 10 else (float("nan"), float("nan"))
                except Exception as err:  # noqa: BLE001 - one broken sampler must not stop the benchmark
                    print(f"  {label} at {b}: {type(err).__name__}: {err}", flush=True)
                    q = sd = mean_nfe = wall = float("nan")
                    max_nfe, failed, setting = -1, n, f"error: {type(err).__name__}: {err}"
                row = dict(sampler=label, lib=lib, budget=b, setting=setting, mean_nfe=mean_nfe, max_nfe=max_nfe,
                           quality=float(q), sd=float(sd), failed=int(failed), wall_s=float(wall))
                if tuning is not None:
                    row["tuning"] = tuning
                rows.append(row)
                progress(row, "budget", "sampler", "mean_nfe", "quality", "sd", "wall_s", "failed")
        res = dict(kind="frontier", problem=problem, tag=args.tag, sde=type(target.sde).__name__,
                   label=target.label, n=n, seed=args.seed, floor=[floor_q, floor_sd], budgets=list(budgets),
                   elapsed_s=time.perf_counter() - t_problem, best=frontier_best(rows, budgets), rows=rows)
        stem = f"frontier_{problem}" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
        ctx.save(stem, res)
        print(f"{problem}: {res['elapsed_s']:.0f}s", flush=True)
    if not args.quick:
        write_frontier_summary(args.out)


def _q(r):
    return "nan" if not np.isfinite(r["quality"]) else f"{r['quality']:.4f} +- {r['sd']:.4f}"


def frontier_markdown(res) -> str:
    budgets = res["budgets"]
    m = res["machine"]
    lines = [f"# Fixed-budget frontier: {res['problem']} ({res['sde']})", "", f"Command: `{res['command']}`", "",
             f"n = {res['n']} samples per sampler, seed {res['seed']}, the same prior draws for both libraries; "
             f"{m['backend']}, {m['cpus']} CPUs, jax {m['jax']}, {m['date']}; {res['elapsed_s']:.0f} s.", "",
             f"Quality: {res['label']} (lower is better) +- its bootstrap sd (30 resamples); exact-vs-exact "
             f"floor {res['floor'][0]:.4f} +- {res['floor'][1]:.4f}. NFE counts the final denoising step on both "
             "sides; k-diffusion runs on Karras sigmas (rho 7) between the SDE's sigma/alpha at eps and T.", "",
             "## Best per budget", "",
             "| NFE budget | jaxsde best | quality | NFE | k-diffusion best | quality | NFE | diff / combined sd "
             "| verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for b in budgets:
        w = res["best"].get(str(b))
        if w is None:
            continue
        j, k = w["jaxsde"], w["k_diffusion"]
        lines.append(f"| {b} | {j['sampler']} | {_q(j)} | {j['mean_nfe']:.0f} | {k['sampler']} | {_q(k)} | "
                     f"{k['mean_nfe']:.0f} | {w['diff']:+.4f} / {w['combined_sd']:.4f} | {w['verdict']} |")
    lines += ["", "Verdict: the difference (k-diffusion's best minus jaxsde's best) against 2 combined sd.", "",
              "## Every sampler", "",
              *pivot(["sampler", *(f"NFE <= {b}" for b in budgets)], res["rows"], "sampler", "budget", budgets,
                     lambda r: _q(r) + ("" if r["mean_nfe"] == r["budget"] else f" (NFE {r['mean_nfe']:.0f})")
                     + (f", {r['failed']} failed" if r["failed"] else ""))]
    lines += ["", "(NFE in parentheses where it differs from the budget: 2-NFE-per-step samplers at even budgets.)",
              "", "Settings: " + "; ".join(dict.fromkeys(f"{r['sampler']}: `{r['setting']}`" for r in res["rows"]
                                                         if r["budget"] == budgets[0]))]
    return "\n".join(lines)


def write_frontier_summary(out):
    """``frontier_summary.md``: jaxsde's best vs k-diffusion's best per budget over every (non-quick)
    ``frontier_*.json`` in ``out``, the files of the same draws (problem, n, seed: an untagged run and its tagged
    partial runs) merged into one pool of rows (a sampler in several files: the latest run's row); jaxsde's best
    is also given without the tuned-grid rows."""
    runs = []
    for p in sorted(glob.glob(os.path.join(out, "frontier_*.json"))):
        if not p.endswith("_quick.json"):
            with open(p) as f:
                runs.append((p, json.load(f)))
    runs.sort(key=lambda pr: pr[1].get("machine", {}).get("date", ""))  # a later run's row replaces an earlier one's
    groups: dict = {}
    for p, res in runs:
        g = groups.setdefault((res["problem"], res["n"], res.get("seed", 0)),
                              dict(sde=res["sde"], files=[], rows={}, budgets=set()))
        g["files"].append(os.path.basename(p))
        g["budgets"].update(res["budgets"])
        for r in res["rows"]:
            g["rows"][(r["sampler"], r["budget"])] = r
    if not groups:
        return
    lines = ["# Fixed-budget frontier: jaxsde's best vs k-diffusion's best", "",
             "Command: `python -m benchmarks run quality_vs_nfe --frontier-summary` (also rewritten by every "
             "`--frontier` run that is not `--quick`), from the `frontier_*.json` named in the last column.", "",
             "Each results file states its command. Rows of the same draws (problem, n, seed) are pooled across "
             "the files named in the last column. Quality +- bootstrap sd, lower is better; verdict: the difference "
             "against 2 combined sd. *Tuned grid* rows run on a grid learned by `jaxsde.optimize_grid` on other "
             "draws (seed + 1000); the column before the verdict is jaxsde's best without them.", "",
             "| problem | SDE | n | seed | NFE budget | jaxsde best | quality | k-diffusion best | quality | verdict "
             "| jaxsde best on built-in grids | quality | verdict | files |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (problem, n, seed), g in sorted(groups.items()):
        rows = list(g["rows"].values())
        budgets = sorted(g["budgets"])
        best = frontier_best(rows, budgets)
        plain = frontier_best([r for r in rows if "tuning" not in r], budgets)
        for b in budgets:
            w, u = best.get(str(b)), plain.get(str(b))
            if w is None:
                continue
            lines.append(f"| {problem} | {g['sde']} | {n} | {seed} | {b} | {w['jaxsde']['sampler']} | "
                         f"{_q(w['jaxsde'])} | {w['k_diffusion']['sampler']} | {_q(w['k_diffusion'])} | "
                         f"{w['verdict']} | {u['jaxsde']['sampler']} | {_q(u['jaxsde'])} | {u['verdict']} | "
                         f"{', '.join(g['files'])} |")
    with open(os.path.join(out, "frontier_summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
