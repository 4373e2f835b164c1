"""Sample quality vs NFE for every solver (exact mixtures, digits); ``--frontier``: every fixed-budget sampler of
jaxsde and of k-diffusion at 5/10/20 NFE on the same score and prior draws.

Default mode (``--problems ring2,gmm32,digits``): the fixed-step solvers of :data:`FIXED` at NFE budgets 5..200,
final Tweedie step included (``(B - 1) // k`` steps at ``k`` NFE per step), GGF and the PF-ODE at several
tolerances; sliced W2 / MMD^2 against exact Tweedie-denoised samples (mixtures) or FD-digits / KID with the
bootstrap sd (digits), each with its floor. Writes ``quality_vs_nfe_<problem>.*``.

``--frontier`` (problems of :data:`FRONTIER_PROBLEMS`, quality +- 30-resample bootstrap sd): jaxsde's fixed-step
registry samplers and :func:`frontier_grid_variants` against k-diffusion 0.1.1.post1's fixed-schedule samplers on
Karras (and ``@exponential``) sigmas, NFE counted. ``--tuned`` adds :data:`TUNED_SAMPLERS` on grids learned by
``jaxsde.optimize_grid`` on calibration draws of seed + 1000. Writes ``frontier_<problem>[_TAG].*`` and
``frontier_summary.md`` (jaxsde's best vs k-diffusion's best per budget, runs of the same draws pooled).
"""

from __future__ import annotations

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
from ..harness.frontier import best, verdict
from ..harness.problems import TARGETS
from ..harness.samplers import prior, run_jaxsde, sample_chunks
from ..harness.select import select
from ..harness.writer import curves, pivot, progress, table

BUDGETS = (5, 10, 20, 50, 100, 200)
N_DIGITS, DIGITS_MAX_NFE = 300, 50  # digits: samples per solver; largest budget of the fixed-step solvers but EM
FIXED = {  # family -> (NFE per step, steps -> solver)
    "DDIM": (1, jaxsde.DDIM), "DPM++2M": (1, lambda k: jaxsde.DPMSolverPP(k, order=2)),
    "DPM++3M": (1, lambda k: jaxsde.DPMSolverPP(k, order=3)), "SA-Solver": (1, jaxsde.SASolver),
    "ForwardValue": (1, jaxsde.ForwardValue), "EDMHeun": (2, jaxsde.EDMHeun), "EM": (1, jaxsde.EulerMaruyama),
    "PC": (2, lambda k: jaxsde.PredictorCorrector(k, snr=0.01))}
FAMILY_STYLE = dict(zip([*FIXED, "GGF", "PF-ODE"], "os^v<>x+D*", strict=True))


def solvers(budgets, rtols, tols, digits: bool):
    """(family, setting, budget or None, solver): :data:`FIXED` at each budget (on digits only EM above
    ``DIGITS_MAX_NFE``), then GGF at ``rtols`` and the PF-ODE at ``tols``."""
    jobs = [(fam, f"NFE<={b}", b, make((b - 1) // k)) for b in budgets for fam, (k, make) in FIXED.items()
            if not (digits and fam != "EM" and b > DIGITS_MAX_NFE)]
    return (jobs + [("GGF", f"rtol={r}", None, jaxsde.GottaGoFast(rtol=r)) for r in rtols]
            + [("PF-ODE", f"tol={t:g}", None, jaxsde.ProbabilityFlow(rtol=t, atol=t)) for t in tols])


def make_problem(name: str):
    """(sde, score_fn(params), params, shape, evaluate(x) -> dict, primary metric, floor key, info)."""
    if name == "digits":
        from jaxsde.testing.metrics.digits import DigitsMetrics

        ckpt, metrics = jaxsde.pretrained("digits"), DigitsMetrics()

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
    """For each budget: the fixed-step row with the lowest metric, and the rows tied with it: on the mixtures
    ``<= 1.25 x`` the floor when the best is there too, on digits ``<= best + 2 sqrt(std_best^2 + std^2)``."""
    out = {}
    for b in budgets:
        cands = [r for r in rows if r["budget"] == b and r["failed"] == 0 and np.isfinite(r[metric])]
        if not cands:
            continue
        top = min(cands, key=lambda r: r[metric])
        if digits:
            sb = top.get("fd_std", 0.0)
            tied = [r for r in cands if r[metric] <= top[metric] + 2.0 * float(np.hypot(sb, r.get("fd_std", 0.0)))]
        else:
            tied = [r for r in cands if r[metric] <= 1.25 * floor] if top[metric] <= 1.25 * floor else [top]
        out[str(b)] = {"solver": top["family"], metric: top[metric],
                       "tied": [r["family"] for r in sorted(tied, key=lambda r: r[metric])]}
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
    options(parser, batch=500, seed=0, quick="tiny n, budgets 5/10/20, few adaptive settings; --frontier: lowrank, "
            "n = 64, NFE 5")
    parser.add_argument("--frontier", action="store_true", help="every fixed-budget sampler of jaxsde and of "
                        "k-diffusion at NFE 5/10/20 on the frontier problems")
    parser.add_argument("--frontier-problems", default="", help="--frontier: subset of " + ",".join(FRONTIER_PROBLEMS))
    parser.add_argument("--budgets", default="", help="--frontier: comma-separated NFE budgets (default 5,10,20)")
    parser.add_argument("--n-frontier", type=int, default=0, help="--frontier: samples (default 1000, digits 300)")
    parser.add_argument("--samplers", nargs="+", default=None, help="--frontier: exact row names, one argument each")
    parser.add_argument("--tag", default="", help="--frontier: results file suffix, frontier_<problem>_<tag>.*")
    parser.add_argument("--frontier-summary", action="store_true",
                        help="only rewrite frontier_summary.md from the frontier_*.json in --out")
    parser.add_argument("--tuned", action="store_true", help="--frontier: add the multistep samplers on grids "
                        "learned by jaxsde.optimize_grid (rows '<name> tuned grid')")
    parser.add_argument("--n-calibration", type=int, default=0, help="--tuned: calibration draws (default 256, "
                        "digits 32)")
    parser.add_argument("--tune-iterations", type=int, default=0, help="--tuned: Adam iterations (default 100, "
                        "digits 60)")


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
                             **(r or {metric: float("nan")})))
            progress(rows[-1], "family", "setting", "mean_nfe", "max_nfe", metric, "wall_s", "compile_s", "failed")
        floor = next((r[floor_key] for r in rows if floor_key in r and np.isfinite(r[floor_key])), float("nan"))
        summary = {"winners_by_budget": winners([r for r in rows if r["budget"] is not None], metric, budgets, floor,
                                                digits)}
        if digits and not args.quick:
            summary["headline"] = headline(rows)
        ctx.save(f"quality_vs_nfe_{problem}" + ("_quick" if args.quick else ""),
                 dict(problem=problem, info=info, n=n, seed=args.seed, metric=metric, floor=floor,
                      budgets=list(budgets), elapsed_s=time.perf_counter() - t_problem, summary=summary, rows=rows))


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
                      for b, w in summary["winners_by_budget"].items()]),
              "", ("Tied: FD within 2 bootstrap sigma of the best." if digits else
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


# --- the frontier: every fixed-budget sampler of jaxsde and of k-diffusion, same score ---------------------------
FRONTIER_BUDGETS = (5, 10, 20)
FRONTIER_PROBLEMS = ("lowrank", "lowrank-ve", "gmm3072", "gmm3072-ve", "digits")
# k-diffusion's fixed-schedule samplers: name -> model calls per step. On Karras sigmas (``steps`` sigmas, then 0)
# the last step is one call for all of them, so budget B is B steps at 1 call, (B + 1) // 2 at 2 (NFE 2 steps - 1).
# ``sample_dpm_fast`` takes its NFE directly: B - 1, then a final denoising call. ``@exponential``: the one-call
# samplers on ``get_sigmas_exponential`` (log-uniform sigmas).
K_DIFFUSION_EXPONENTIAL = ("euler", "euler_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde")
K_DIFFUSION_SAMPLERS = {"euler": 1, "euler_ancestral": 1, "lms": 1, "dpmpp_2m": 1, "dpmpp_2m_sde": 1,
                        "dpmpp_3m_sde": 1, "heun": 2, "dpm_2": 2, "dpm_2_ancestral": 2, "dpmpp_2s_ancestral": 2,
                        "dpmpp_sde": 2, "dpm_fast": 1}


def frontier_target(name: str):
    if name not in FRONTIER_PROBLEMS:
        raise ValueError(f"unknown frontier problem {name!r}; choose from {', '.join(FRONTIER_PROBLEMS)}")
    return TARGETS[name]()


def frontier_jaxsde_solvers(budget: int, ve: bool):
    """(name, solver): every fixed-step registry sampler (``steps`` option; not ``mlem``) at its defaults, plus
    DPM-Solver++ 3M, ``(budget - 1) // k`` steps at ``k`` NFE per step, PC's snr 0.01 (VP) or 0.16 (VE); then
    :func:`frontier_grid_variants`."""
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


GRID_VARIANTS = {  # name -> steps -> solver: the one-NFE-per-step samplers at settings their defaults leave out
    "dpmpp edm": lambda k: jaxsde.DPMSolverPP(k, order=2, grid="edm"),
    "dpmpp-3m edm": lambda k: jaxsde.DPMSolverPP(k, order=3, grid="edm"),
    "unipc-3": lambda k: jaxsde.UniPC(k, order=3),
    "unipc edm": lambda k: jaxsde.UniPC(k, order=2, grid="edm"),
    "unipc-3 edm": lambda k: jaxsde.UniPC(k, order=3, grid="edm"),
    "deis edm": lambda k: jaxsde.DEIS(k, order=3, grid="edm"),
    "ipndm logsnr": lambda k: jaxsde.IPNDM(k, order=4, grid="logsnr"),
    "lms logsnr": lambda k: jaxsde.LMS(k, order=4, grid="logsnr"),
    # k-diffusion's own configurations (Karras grid, full order to the end): the same algorithms
    "dpmpp edm full-order": lambda k: jaxsde.DPMSolverPP(k, order=2, grid="edm", lower_order_final=False),
    "dpmpp-sde edm": lambda k: jaxsde.DPMSolverPPSDE(k, order=2, grid="edm"),
    "unipc edm full-order": lambda k: jaxsde.UniPC(k, order=2, grid="edm", lower_order_final=False),
    "lms edm, lms last step": lambda k: jaxsde.LMS(k, order=4, last_step="lms"),  # = sample_lms
    "lms logsnr, lms last step": lambda k: jaxsde.LMS(k, order=4, grid="logsnr", last_step="lms"),
}


def frontier_grid_variants(steps: int):
    """(name, solver) of :data:`GRID_VARIANTS` at ``steps`` steps + the final denoising step; a setting a sampler
    refuses at this step count (too few steps for its order) is left out."""
    out = []
    for name, make in GRID_VARIANTS.items():
        try:
            out.append((name, make(steps)))
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
    """The tuned-grid rows of one problem: ``jaxsde.optimize_grid`` from the log-SNR grid on ``n`` calibration draws
    of seed ``seed + 1000`` against the PF-ODE teacher (computed once), one grid per (sampler, steps)."""

    def __init__(self, target, seed: int, n: int, iterations: int):
        self.target, self.iterations, self.n, self.seed = target, iterations, n, seed + 1000
        self.x_cal, self.teacher, self.learned = prior(target, self.seed, n), None, {}

    def __call__(self, name: str, steps: int):
        """(``name`` on its learned grid of ``steps`` steps, the tuning record)."""
        if (name, steps) in self.learned:
            return self.learned[name, steps]
        if self.teacher is None:
            t0 = time.perf_counter()
            x, nfe = jaxsde.grid_optimization.teacher_samples(self.target.sde, self.target.score, self.x_cal)
            self.teacher = x, nfe, time.perf_counter() - t0
        make, (teacher, teacher_nfe, teacher_s), t0 = TUNED_SAMPLERS[name], self.teacher, time.perf_counter()
        res = jaxsde.optimize_grid(self.target.sde, self.target.score, make(steps, "logsnr"), self.x_cal,
                                   teacher=teacher, iterations=self.iterations)
        info = dict(calibration_draws=self.n, calibration_seed=self.seed, iterations=self.iterations,
                    start_grid="logsnr", teacher_nfe=teacher_nfe, teacher_s=teacher_s,
                    tune_s=time.perf_counter() - t0, initial_loss=res.initial_loss, loss=res.loss,
                    times=list(res.times))
        print(f"  tuned {name} ({steps} steps): loss {res.initial_loss:.3g} -> {res.loss:.3g} in "
              f"{info['tune_s']:.0f}s; times {np.round(res.times, 4).tolist()}", flush=True)
        self.learned[name, steps] = make(steps, res.times), info
        return self.learned[name, steps]


def run_k_diffusion_fixed(target, name: str, budget: int, x_T, seed: int, times=None):
    """k-diffusion's ``sample_<name>`` (``<name>@exponential``: on exponential sigmas; with ``times``, a one-call
    sampler on the sigmas of those ``budget`` jaxsde times, then 0) from ``x_T`` on the whole batch, torch seeded
    with ``seed``. Returns (samples, NFE = model calls, wall s incl. compilation)."""
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
        if times is not None:
            if K_DIFFUSION_SAMPLERS[base] != 1 or len(times) != budget:
                raise ValueError(f"{base} on a jaxsde grid needs a one-call sampler and {budget} times")
            alpha, sigma = target.sde.marginal(jnp.asarray(times, jnp.float32))
            sigmas = torch.cat([torch.from_numpy(np.array(sigma / alpha, np.float32)), torch.zeros(1)])
        else:
            make_sigmas = ks.get_sigmas_exponential if schedule == "exponential" else ks.get_sigmas_karras
            sigmas = make_sigmas(budget if K_DIFFUSION_SAMPLERS[base] == 1 else (budget + 1) // 2, smin, smax)
        out = getattr(ks, "sample_" + base)(model, xt, sigmas, disable=True)
    return out.numpy(), km.calls[0], time.perf_counter() - t0


def frontier_best(rows, budgets):
    """Per budget: jaxsde's and k-diffusion's best usable rows and the verdict between them."""
    out, keep = {}, ("sampler", "quality", "sd", "mean_nfe")
    for b in budgets:
        j, k = (best([r for r in rows if r["lib"] == lib and r["budget"] == b]) for lib in ("jaxsde", "k-diffusion"))
        if j and k:
            v = verdict(j, k, words=("jaxsde better", "k-diffusion better", "tie (within 2 sd)"))
            out[str(b)] = dict(jaxsde={f: j[f] for f in keep}, k_diffusion={f: k[f] for f in keep}, **v,
                               jaxsde_best_or_tied=bool(v["diff"] >= -2 * v["combined_sd"]))
    return out


def frontier_jobs(b: int, ve: bool, tuner):
    """(label, (lib, name, solver or (tuner, base, steps) or None)) of every frontier row at budget ``b``."""
    jobs = [("jaxsde", name, solver) for name, solver in frontier_jaxsde_solvers(b, ve)]
    if tuner is not None:
        jobs += [("jaxsde", name + " tuned grid", (tuner, name, b - 1)) for name in TUNED_SAMPLERS]
        # k-diffusion's algorithm on jaxsde's learned grid (not counted as k-diffusion's: it has no grid optimizer)
        jobs += [(K_DIFFUSION_ON_LEARNED, f"{kd} on tuned grid of {name}", (tuner, name, b - 1))
                 for kd, name in LEARNED_GRID_TWINS.items()]
    jobs += [("k-diffusion", name, None) for name in K_DIFFUSION_SAMPLERS]
    jobs += [("k-diffusion", name + "@exponential", None) for name in K_DIFFUSION_EXPONENTIAL]
    return [(name if lib == "jaxsde" else "k-diffusion " + name, (lib, name, solver)) for lib, name, solver in jobs]


def frontier_row(target, lib, name, solver, b, x_T, seed, n):
    """One frontier row (``tuning`` added for a tuned grid); a sampler that raises is a row of ``n`` failures."""
    tuning = None
    try:
        if isinstance(solver, tuple):  # a tuned grid: learn it now (only for the samplers asked for)
            tune, base, steps = solver
            solver, tuning = tune(base, steps)
        if lib == "jaxsde":
            x, nfe, failed, wall = run_jaxsde(target, solver, seed, n, 0)
            setting = repr(solver)
        else:  # k-diffusion, on its sigmas or (K_DIFFUSION_ON_LEARNED) on jaxsde's learned grid
            kd, _, twin = name.partition(" on tuned grid of ")
            x, calls, wall = run_k_diffusion_fixed(target, kd, b, x_T, seed, times=tuning["times"] if twin else None)
            nfe, failed, (base, _, schedule) = np.array([calls]), 0, kd.partition("@")
            setting = (f"sample_{kd} on the sigmas of jaxsde's learned grid for {twin}" if twin else
                       f"sample_{base}, " + ("exponential" if schedule else "Karras") + " sigmas")
        mean_nfe, max_nfe = float(nfe.mean()), int(nfe.max())
        good = np.all(np.isfinite(np.asarray(x).reshape(len(x), -1)), axis=1)
        failed += int(np.sum(~good))
        q, sd = target.quality(np.asarray(x)[good]) if good.sum() > 10 else (float("nan"), float("nan"))
    except Exception as err:  # noqa: BLE001 - one broken sampler must not stop the benchmark
        print(f"  {name} at {b}: {type(err).__name__}: {err}", flush=True)
        q = sd = mean_nfe = wall = float("nan")
        max_nfe, failed, setting = -1, n, f"error: {type(err).__name__}: {err}"
    row = dict(lib=lib, budget=b, setting=setting, mean_nfe=mean_nfe, max_nfe=max_nfe, quality=float(q),
               sd=float(sd), failed=int(failed), wall_s=float(wall))
    return row if tuning is None else dict(row, tuning=tuning)


def frontier(args, ctx):
    """``--frontier``: every fixed-budget sampler of both libraries at each budget on each problem."""
    problems = [p.strip() for p in (args.frontier_problems or ",".join(FRONTIER_PROBLEMS)).split(",") if p.strip()]
    budgets = tuple(int(b) for b in args.budgets.split(",")) if args.budgets else FRONTIER_BUDGETS
    if args.quick:
        problems, budgets = problems[:1] if args.frontier_problems else ["lowrank"], budgets[:1]
    for problem in problems:
        t_problem, target, digits = time.perf_counter(), frontier_target(problem), problem == "digits"
        n = args.n_frontier if args.n_frontier else (64 if args.quick else (300 if digits else 1000))
        x_T = prior(target, args.seed, n)
        floor_q, floor_sd = target.floor(jax.random.PRNGKey(args.seed + 17), n)
        tuner = GridTuner(target, args.seed, args.n_calibration or (32 if digits else 256),
                          args.tune_iterations or (60 if digits else 100)) if args.tuned else None
        rows = []
        for b in budgets:
            try:
                jobs = select(frontier_jobs(b, isinstance(target.sde, jaxsde.VESDE), tuner), args.samplers)
            except ValueError as err:
                ctx.error(f"--samplers: {err}")
            for label, (lib, name, solver) in jobs:
                rows.append(dict(sampler=label, **frontier_row(target, lib, name, solver, b, x_T, args.seed, n)))
                progress(rows[-1], "budget", "sampler", "mean_nfe", "quality", "sd", "wall_s", "failed")
        res = dict(kind="frontier", problem=problem, tag=args.tag, sde=type(target.sde).__name__,
                   label=target.label, n=n, seed=args.seed, floor=[floor_q, floor_sd], budgets=list(budgets),
                   elapsed_s=time.perf_counter() - t_problem, best=frontier_best(rows, budgets), rows=rows)
        ctx.save(f"frontier_{problem}" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else ""), res)
        print(f"{problem}: {res['elapsed_s']:.0f}s", flush=True)
    if not args.quick:
        write_frontier_summary(args.out)


def _q(r):
    return "nan" if not np.isfinite(r["quality"]) else f"{r['quality']:.4f} +- {r['sd']:.4f}"


def frontier_markdown(res) -> str:
    budgets, m = res["budgets"], res["machine"]
    lines = [f"# Fixed-budget frontier: {res['problem']} ({res['sde']})", "", f"Command: `{res['command']}`", "",
             f"n = {res['n']} samples per sampler, seed {res['seed']}, the same prior draws for both libraries; "
             f"{m['backend']}, {m['cpus']} CPUs, jax {m['jax']}, {m['date']}; {res['elapsed_s']:.0f} s.", "",
             f"Quality: {res['label']} (lower is better) +- its bootstrap sd (30 resamples); exact-vs-exact "
             f"floor {res['floor'][0]:.4f} +- {res['floor'][1]:.4f}. NFE counts the final denoising step on both "
             "sides; k-diffusion runs on Karras sigmas (rho 7) between the SDE's sigma/alpha at eps and T.", "",
             "## Best per budget", "",
             *table(["NFE budget", "jaxsde best", "quality", "NFE", "k-diffusion best", "quality", "NFE",
                     "diff / combined sd", "verdict"],
                    [[b, j["sampler"], _q(j), f"{j['mean_nfe']:.0f}", k["sampler"], _q(k), f"{k['mean_nfe']:.0f}",
                      f"{w['diff']:+.4f} / {w['combined_sd']:.4f}", w["verdict"]]
                     for b in budgets if (w := res["best"].get(str(b))) for j, k in [(w["jaxsde"], w["k_diffusion"])]]),
             "", "Verdict: the difference (k-diffusion's best minus jaxsde's best) against 2 combined sd.", "",
             "## Every sampler", "",
             *pivot(["sampler", *(f"NFE <= {b}" for b in budgets)], res["rows"], "sampler", "budget", budgets,
                    lambda r: _q(r) + ("" if r["mean_nfe"] == r["budget"] else f" (NFE {r['mean_nfe']:.0f})")
                    + (f", {r['failed']} failed" if r["failed"] else "")),
             "", "(NFE in parentheses where it differs from the budget: 2-NFE-per-step samplers at even budgets.)",
             "", "Settings: " + "; ".join(dict.fromkeys(f"{r['sampler']}: `{r['setting']}`" for r in res["rows"]
                                                        if r["budget"] == budgets[0]))]
    return "\n".join(lines)


def write_frontier_summary(out):
    """``frontier_summary.md``: jaxsde's best vs k-diffusion's best per budget over every non-quick
    ``frontier_*.json`` in ``out``, the files of the same draws (problem, n, seed) pooled (a sampler in several
    files: the latest run's row); jaxsde's best also without the tuned-grid rows."""
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
        g["rows"].update({(r["sampler"], r["budget"]): r for r in res["rows"]})
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
        rows, budgets = list(g["rows"].values()), sorted(g["budgets"])
        top, plain = frontier_best(rows, budgets), frontier_best([r for r in rows if "tuning" not in r], budgets)
        for b in budgets:
            if (w := top.get(str(b))) is None:
                continue
            u = plain[str(b)]
            lines.append(f"| {problem} | {g['sde']} | {n} | {seed} | {b} | {w['jaxsde']['sampler']} | "
                         f"{_q(w['jaxsde'])} | {w['k_diffusion']['sampler']} | {_q(w['k_diffusion'])} | "
                         f"{w['verdict']} | {u['jaxsde']['sampler']} | {_q(u['jaxsde'])} | {u['verdict']} | "
                         f"{', '.join(g['files'])} |")
    with open(os.path.join(out, "frontier_summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
