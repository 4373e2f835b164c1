"""Sample quality vs NFE for every solver, on exact Gaussian mixtures and on the embedded digits model.

    nice python benchmarks/quality_vs_nfe.py [--quick] [--problems ring2,gmm32,digits] [--n 4000]
        [--n-digits 300] [--digits-max-nfe 50] [--out benchmarks/results]
    nice python benchmarks/quality_vs_nfe.py --digits-sweep10   # non-default settings at 10 NFE vs EM 200
    python benchmarks/quality_vs_nfe.py --from-json benchmarks/results/quality_vs_nfe_*.json  # re-make tables

Solvers (each at its default grid and options): DDIM (eta=0), DPM-Solver++ 2M and 3M, SA-Solver 3/4
(tau = 1 on the middle 60% of the time, the default), ForwardValue (F-DDIM), EDM Heun (these are the
fast samplers of issue 6), Euler-Maruyama, predictor-corrector (reverse diffusion + 1 Langevin step,
snr 0.01), and the adaptive Gotta Go Fast (several rtol) and probability-flow ODE (dopri5, several
tolerances). Fixed-step solvers get NFE budgets 5, 10, 20, 50, 100, 200 *including the final Tweedie
denoising step* (``denoise=True`` for every solver): a 1-NFE-per-step solver takes ``B - 1`` steps,
EDM Heun and PC (2 NFE per step) ``(B - 1) // 2`` (so their NFE is ``B`` or ``B - 1``). Adaptive
solvers report the mean NFE they used.

Problems:

* ``ring2``: 8-mode ring in 2-D, VP SDE (``GaussianMixture.ring``); ``gmm32``: 10 random modes in
  32-D, VP SDE (``GaussianMixture.random``). Quality: sliced W2 and MMD^2 against exact
  (Tweedie-denoised ``p_eps``) samples, with their noise floor (an independent exact batch of the
  same size, ``jaxsde.testing.metrics.quality_report``).
* ``digits``: the embedded ``digits`` model (VP), FD-digits and KID against the training set
  (``jaxsde.testing.metrics.digits``), with the real-vs-real floor and the bootstrap standard deviation of
  FD at this n. On the shared 2-core CPU one sample-NFE of this U-Net costs 1-10 ms and each
  configuration compiles for 10-50 s, so by default digits runs n=300, the fixed-step solvers up to
  50 NFE (the deterministic ones sit at their PF-ODE limit by then, cf. the PF-ODE row) and EM, the
  reference, up to 200; GGF at rtol 0.1 and the PF-ODE at tolerance 1e-3 (see benchmarks/digits.py
  for more GGF/PF settings). ``--digits-max-nfe 200 --n-digits 1000`` runs the full grid.

Every solver uses the same keys (sample i: ``fold_in(seed, i)``). Outputs
``benchmarks/results/quality_vs_nfe_<problem>[_quick].{md,json,png}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
import jaxsde.testing.metrics
from jaxsde import driver
from jaxsde.testing.targets import GaussianMixture

BUDGETS = (5, 10, 20, 50, 100, 200)
FAMILY_STYLE = {"DDIM": "o", "DPM++2M": "s", "DPM++3M": "^", "SA-Solver": "v", "ForwardValue": "<",
                "EDMHeun": ">", "EM": "x", "PC": "+", "GGF": "D", "PF-ODE": "*"}


def fixed_solvers(budget: int, snr: float):
    """(family, solver) of the fixed-step solvers at an NFE budget (final Tweedie step included)."""
    n1, n2 = budget - 1, (budget - 1) // 2
    return [("DDIM", jaxsde.DDIM(n1)), ("DPM++2M", jaxsde.DPMSolverPP(n1, order=2)),
            ("DPM++3M", jaxsde.DPMSolverPP(n1, order=3)), ("SA-Solver", jaxsde.SASolver(n1)),
            ("ForwardValue", jaxsde.ForwardValue(n1)), ("EDMHeun", jaxsde.EDMHeun(n2)),
            ("EM", jaxsde.EulerMaruyama(n1)), ("PC", jaxsde.PredictorCorrector(n2, snr=snr))]


def adaptive_solvers(rtols, tols):
    return ([("GGF", f"rtol={r}", jaxsde.GottaGoFast(rtol=r)) for r in rtols]
            + [("PF-ODE", f"tol={t:g}", jaxsde.ProbabilityFlow(rtol=t, atol=t)) for t in tols])


def run_solver(sde, score_fn, params, shape, solver, n, seed, batch):
    """``n`` samples (chunks of ``batch``), mean/max NFE, failures, wall seconds (compile excluded)."""

    @jax.jit
    def chunk(p, offset):
        return driver.sample(jax.random.PRNGKey(seed), sde, score_fn(p), solver, shape, batch, offset=offset)

    t0 = time.perf_counter()
    compiled = chunk.lower(params, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    xs, nfes, fails = [], [], 0
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        sol = jax.block_until_ready(compiled(params, jnp.int32(start)))
        xs.append(np.asarray(sol.x))
        nfes.append(np.asarray(sol.stats.nfe))
        fails += int(np.sum(np.asarray(sol.result) != 0))
    wall = time.perf_counter() - t0
    nfe = np.concatenate(nfes)[:n]
    return np.concatenate(xs)[:n], float(nfe.mean()), int(nfe.max()), fails, wall, compile_s


def make_problem(name: str):
    """(sde, score_fn(params), params, shape, evaluate(x) -> dict, primary metric, floor key, info)."""
    if name == "digits":
        from jaxsde.testing.metrics.digits import DigitsMetrics

        ckpt = jaxsde.pretrained("digits")
        metrics = DigitsMetrics()

        def evaluate(x):
            r = metrics.report(x, ckpt.data_range, bootstrap=20)
            return {k: float(v) for k, v in r.items()}

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
        r = jaxsde.testing.metrics.quality_report(key, mix, sde, x, denoise=True)
        return {k: float(v) for k, v in r.items()}

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


def summarize_rows(rows, metric, floor, budgets, digits, quick):
    summary = {"winners_by_budget": winners([r for r in rows if r["budget"] is not None], metric, budgets, floor,
                                            digits)}
    if digits and not quick:
        em200 = next(r for r in rows if r["family"] == "EM" and r["budget"] == 200)
        at10 = [r for r in rows if r["budget"] == 10 and r["family"] in ("DPM++2M", "DPM++3M", "SA-Solver",
                                                                           "ForwardValue")]
        b10 = min(at10, key=lambda r: r["fd"])
        noise = 2.0 * float(np.hypot(b10.get("fd_std", 0.0), em200.get("fd_std", 0.0)))
        summary["headline"] = dict(
            best_fast_at_10=b10["family"], fd_best_fast_at_10=b10["fd"], fd_em200=em200["fd"],
            two_sigma=noise, no_worse=bool(b10["fd"] <= em200["fd"]),
            no_worse_within_noise=bool(b10["fd"] <= em200["fd"] + noise))
    return summary


def rewrite(path_json):
    """Re-make the Markdown table and the plot of a finished run from its JSON (``--from-json``)."""
    with open(path_json) as f:
        res = json.load(f)
    rows, metric, digits = res["rows"], res["metric"], res["problem"] == "digits"
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    quick = path_json.endswith("_quick.json")
    res["summary"] = summarize_rows(rows, metric, res["floor"], budgets, digits, quick)
    with open(path_json, "w") as f:
        json.dump(res, f, indent=1)
    stem = path_json[: -len(".json")]
    machine = {k: res["machine"][k] for k in ("jax", "backend", "cpus", "date")}
    write_markdown(stem + ".md", res["problem"], res["info"], res["command"], machine, res["n"], metric, res["floor"],
                   rows, budgets, res["summary"], digits, res["elapsed_s"])
    plot(stem + ".png", res["problem"], res["n"], metric, res["floor"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="ring2,gmm32,digits")
    parser.add_argument("--n", type=int, default=4000, help="samples per solver on the mixtures")
    parser.add_argument("--n-digits", type=int, default=300, help="samples per solver on digits")
    parser.add_argument("--digits-max-nfe", type=int, default=50,
                        help="largest NFE budget of the fixed-step solvers on digits, except EM (the reference, "
                             "always up to 200)")
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "jaxsde_xla"),
                        help="persistent XLA compilation cache ('' to disable); re-runs skip most compiles")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="tiny n, budgets 5/10/20, few adaptive settings")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--from-json", nargs="*", default=None, metavar="JSON",
                        help="only re-make the tables and plots of finished runs from their JSON files")
    parser.add_argument("--digits-sweep10", action="store_true",
                        help="only the 10-NFE variants on digits (grids, tau) vs EM 200, seeds 0 and 1")
    args = parser.parse_args(argv)
    if args.digits_sweep10:
        return sweep10(args)
    if args.from_json is not None:
        for path in args.from_json:
            rewrite(path)
        return
    command = "nice python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    print(f"reproduce with: {command}", flush=True)
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    machine = dict(jax=jax.__version__, backend=jax.default_backend(), cpus=os.cpu_count(),
                   date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    os.makedirs(args.out, exist_ok=True)
    for problem in [p.strip() for p in args.problems.split(",") if p.strip()]:
        t_problem = time.perf_counter()
        sde, score_fn, params, shape, evaluate, metric, floor_key, info = make_problem(problem)
        digits = problem == "digits"
        budgets = (5, 10, 20) if args.quick else BUDGETS
        n = (64 if digits else 256) if args.quick else (args.n_digits if digits else args.n)
        batch = min(args.batch, n)
        snr = 0.01
        if args.quick:
            rtols, tols = (0.1,), (1e-3,)
        elif digits:
            rtols, tols = (0.1,), (1e-3,)
        else:
            rtols, tols = (0.2, 0.1, 0.05, 0.02, 0.01), (1e-2, 1e-3, 1e-4, 1e-5)
        jobs = []
        for b in budgets:
            for fam, solver in fixed_solvers(b, snr):
                if digits and fam != "EM" and b > args.digits_max_nfe:
                    continue
                jobs.append((fam, f"NFE<={b}", b, solver))
        jobs += [(fam, setting, None, solver) for fam, setting, solver in adaptive_solvers(rtols, tols)]
        rows = []
        for fam, setting, b, solver in jobs:
            x, mean_nfe, max_nfe, fails, wall, compile_s = run_solver(sde, score_fn, params, shape, solver, n, 0, batch)
            good = np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)
            try:
                r = evaluate(x[good]) if good.sum() > 10 else {}
            except Exception as err:  # noqa: BLE001 - a diverged solver must not stop the benchmark
                print(f"  metric failed: {err}")
                r = {}
            row = dict(family=fam, setting=setting, budget=b, solver=repr(solver), mean_nfe=mean_nfe,
                       max_nfe=max_nfe, failed=fails, wall_s=wall, compile_s=compile_s,
                       **{k: r.get(k, float("nan")) for k in r}, **({metric: float("nan")} if not r else {}))
            rows.append(row)
            print(f"{problem:6s} {fam:12s} {setting:10s} NFE {mean_nfe:6.1f} (max {max_nfe:4d})  "
                  f"{metric} {row[metric]:8.4f}  wall {wall:6.1f}s compile {compile_s:5.1f}s failed {fails}",
                  flush=True)
        floor = next((r[floor_key] for r in rows if floor_key in r and np.isfinite(r[floor_key])), float("nan"))
        summary = summarize_rows(rows, metric, floor, budgets, digits, args.quick)
        elapsed = time.perf_counter() - t_problem
        stem = os.path.join(args.out, f"quality_vs_nfe_{problem}" + ("_quick" if args.quick else ""))
        with open(stem + ".json", "w") as f:
            json.dump(dict(command=command, machine=dict(machine, load=os.getloadavg()), problem=problem, info=info,
                           n=n, metric=metric, floor=floor, elapsed_s=elapsed, summary=summary, rows=rows),
                      f, indent=1)
        write_markdown(stem + ".md", problem, info, command, machine, n, metric, floor, rows, budgets, summary,
                       digits, elapsed)
        plot(stem + ".png", problem, n, metric, floor, rows)
        print(f"{problem}: {elapsed:.0f}s; wrote {stem}.{{md,json,png}}", flush=True)


def sweep10(args):
    """Non-default settings of the fast solvers at 10 NFE on digits, next to EM at 200 NFE (two seeds)."""
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
    command = "nice python benchmarks/quality_vs_nfe.py --digits-sweep10" + (" --quick" if args.quick else "")
    sde, score_fn, params, shape, evaluate, *_ = make_problem("digits")
    n = 64 if args.quick else args.n_digits
    cands = [
        ("SA-Solver 3/4, tau=1 on [0.2, 0.8] (default), logsnr grid", jaxsde.SASolver(9), (0,)),
        ("SA-Solver 3/4, tau=1 everywhere, logsnr grid", jaxsde.SASolver(9, tau_interval=None), (0,)),
        ("SA-Solver 3/4, tau=0.5 everywhere, logsnr grid", jaxsde.SASolver(9, tau=0.5, tau_interval=None), (0,)),
        ("SA-Solver 2/2, tau=1 everywhere, logsnr grid", jaxsde.SASolver(9, 2, 2, tau_interval=None), (0,)),
        ("SA-Solver 3/4, tau=1 everywhere, edm grid", jaxsde.SASolver(9, tau_interval=None, grid="edm"), (0,)),
        ("SA-Solver 3/4, tau=1 everywhere, uniform grid",
         jaxsde.SASolver(9, tau_interval=None, grid="uniform"), (0, 1)),
        ("DPM-Solver++ 2M, logsnr grid (default)", jaxsde.DPMSolverPP(9, 2), (0, 1)),
        ("DPM-Solver++ 2M, edm grid", jaxsde.DPMSolverPP(9, 2, grid="edm"), (0,)),
        ("DPM-Solver++ 2M, uniform grid", jaxsde.DPMSolverPP(9, 2, grid="uniform"), (0,)),
        ("ForwardValue, edm grid (default)", jaxsde.ForwardValue(9), (0,)),
        ("ForwardValue, logsnr grid", jaxsde.ForwardValue(9, grid="logsnr"), (0,)),
        ("EM, 200 NFE", jaxsde.EulerMaruyama(199), (0, 1)),
    ]
    if args.quick:
        cands = [cands[5], cands[-1]]
    rows = []
    for name, solver, seeds in cands:
        for seed in seeds:
            x, mean_nfe, _, fails, wall, _ = run_solver(sde, score_fn, params, shape, solver, n, seed, min(n, 500))
            r = evaluate(x)
            rows.append(dict(solver=name, seed=seed, mean_nfe=mean_nfe, fd=r["fd"], fd_std=r["fd_std"], kid=r["kid"],
                             failed=fails, wall_s=wall))
            print(f"{name:60s} seed {seed} NFE {mean_nfe:5.1f} FD {r['fd']:7.2f} (boot. std {r['fd_std']:.2f})",
                  flush=True)
    stem = os.path.join(args.out, "quality_vs_nfe_digits_sweep10" + ("_quick" if args.quick else ""))
    with open(stem + ".json", "w") as f:
        json.dump(dict(command=command, n=n, rows=rows), f, indent=1)
    lines = ["# Digits at 10 NFE: solver settings vs EM at 200 NFE", "", f"Command: `{command}`", "",
             f"n = {n} samples per row; FD-digits vs the training set (lower is better); settings picked after "
             "the main benchmark, so the best row carries a selection effect: the second seed checks it.", "",
             "| solver | seed | NFE | FD-digits | FD bootstrap std | KID |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['seed']} | {r['mean_nfe']:.0f} | {r['fd']:.2f} | {r['fd_std']:.2f} | "
                     f"{r['kid']:.2f} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def _fmt(v, digits=4):
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def write_markdown(path, problem, info, command, machine, n, metric, floor, rows, budgets, summary, digits, elapsed):
    second = "kid" if digits else "mmd2"
    lines = [f"# Quality vs NFE: {problem}", "", f"Command: `{command}`", "",
             f"{info}. n = {n} samples per solver (seed 0); {machine['backend']}, {machine['cpus']} CPUs, "
             f"jax {machine['jax']}, {machine['date']}; {elapsed:.0f} s.", "",
             f"Noise floor of {metric}: {_fmt(floor)} (exact-vs-exact / real-vs-real at this n)."]
    if digits:
        sd = [r.get("fd_std", float("nan")) for r in rows]
        lines += [f"Bootstrap std of FD at this n: median {_fmt(float(np.nanmedian(sd)), 3)}."]
    lines += ["", f"## {metric} by NFE budget (fixed-step solvers; final Tweedie step included)", "",
              "| solver | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    fams = list(dict.fromkeys(r["family"] for r in rows if r["budget"] is not None))
    for fam in fams:
        cells = []
        for b in budgets:
            r = next((r for r in rows if r["family"] == fam and r["budget"] == b), None)
            cells.append("—" if r is None else (_fmt(r[metric]) + ("" if r["mean_nfe"] == b else
                                                                   f" ({r['mean_nfe']:.0f})")))
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines += ["", "(NFE in parentheses where it differs from the budget; — = not run.)", "",
              "## Winners", "", "| budget | best solver | " + metric + " | tied within noise |", "|---|---|---|---|"]
    for b, w in summary["winners_by_budget"].items():
        lines.append(f"| {b} | {w['solver']} | {_fmt(w[metric])} | {', '.join(w.get('tied', []))} |")
    lines += ["", ("Tied: FD within 2 bootstrap sigma of the best." if digits else
                   f"Tied: all at the noise floor (<= 1.25 x {_fmt(floor)}) when the best is there.")]
    if "headline" in summary:
        h = summary["headline"]
        lines += ["", f"**At 10 NFE the best of DPM-Solver++/SA-Solver/ForwardValue is {h['best_fast_at_10']} "
                  f"with FD {h['fd_best_fast_at_10']:.3f}; EM at 200 NFE: FD {h['fd_em200']:.3f} (2 sigma of the "
                  f"difference {h['two_sigma']:.3f}). No worse: {'yes' if h['no_worse'] else 'no'}; within 2 bootstrap "
                  f"sigma: {'yes' if h['no_worse_within_noise'] else 'no'}.**"]
    lines += ["", "## All runs", "", f"| solver | setting | mean NFE | max NFE | {metric} | {second} | "
              + ("FD boot. std | " if digits else "mode TV | ") + "wall s | failed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        third = r.get("fd_std", float("nan")) if digits else r.get("mode_tv", float("nan"))
        lines.append(f"| {r['family']} | {r['setting']} | {r['mean_nfe']:.1f} | {r['max_nfe']} | {_fmt(r[metric])} | "
                     f"{_fmt(r.get(second, float('nan')))} | {_fmt(third, 3)} | {r['wall_s']:.1f} | {r['failed']} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(path, problem, n, metric, floor, rows):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as err:  # noqa: BLE001 - the plot is optional
        print(f"plot skipped: {err}")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fam in dict.fromkeys(r["family"] for r in rows):
        pts = sorted((r["mean_nfe"], r[metric]) for r in rows if r["family"] == fam and np.isfinite(r[metric]))
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=FAMILY_STYLE.get(fam, "o"), label=fam,
                    ls="--" if fam in ("EM", "PC", "GGF", "PF-ODE") else "-")
    if np.isfinite(floor):
        ax.axhline(floor, ls=":", c="gray", label="noise floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE per sample (mean for adaptive solvers)")
    ax.set_ylabel({"fd": "FD-digits", "sw2": "sliced W2"}.get(metric, metric) + " (lower is better)")
    ax.set_title(f"{problem}, n={n}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
