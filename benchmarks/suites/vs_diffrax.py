"""jaxsde vs diffrax, side by side in one process, same score, same samples, same machine.

    python -m benchmarks run vs_diffrax [--problems gmm64,gmm3072,conv] [--name vs_diffrax] [--rounds 5] [--quick]
        [--compile-repeats 3] [--diffrax-tols 0.3,0.1,0.03,0.01]
    python -m benchmarks run vs_diffrax --mode em [--n 64,1000] [--steps 200] [--rounds 5] [--compile-repeats 3]

Problems (VP): an 8-mode mixture with the exact score in d = 64 and 3072, and ``conv`` (16x16x3, the exact score plus
1e-3 x a small conv net). Per problem: GGF (rtol sweep; default atol and atol = rtol) vs diffrax Heun / ShARK + PID +
VirtualBrownianTree at matched quality both ways round (the other library's cheapest setting whose spread_w2 and sw2
are within half the exact-vs-exact floor) and the cheapest "exact-like" setting of each; EM vs diffrax Euler
(UnsafeBrownianPath) per step; the PF-ODE vs diffrax Dopri5 / Tsit5. Every program compiled (compile = median CPU
seconds of ``--compile-repeats``), warmed up, then ``--rounds`` rounds in a fixed order; every ratio is the median of
per-round ratios; diffrax with ``adjoint=ForwardMode()``. Writes ``<name>[_quick].{md,json}``. ``--mode em``: EM
(also with ``check_finite=False``) vs diffrax Euler alone at ``--steps`` on d = 64 and 3072 (n <= 256) for each
``--n``, the final states only, with XLA's FLOP and byte counts; writes ``em_vs_euler.{md,json}``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax as dfx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.testing import metrics, reference
from jaxsde.testing.targets import GaussianMixture
from jaxsde.timing import compile_cpu_seconds

from ..harness.cli import options
from ..harness.machine import describe, machine_info, normalize
from ..harness.problems import ring_mixture
from ..harness.sweep import cheapest, floats
from ..harness.timing import interleaved
from ..harness.writer import columns, progress, table

ADJOINT = dfx.ForwardMode()
SIZES = dict(gmm64=(1000, 1000), gmm3072=(100, 200), conv=(64, 256))  # (timed n, quality n)
QUICK_SIZES = dict(gmm64=(200, 200), gmm3072=(16, 32), conv=(16, 32))
SHAPES = {"gmm64": (64,), "gmm3072": (32, 32, 3), "conv": (16, 16, 3)}


class TinyConvNet(nn.Module):
    """A small conv score-network body: 3x3 convs with a time embedding, realistic cost."""

    channels: int = 32

    @nn.compact
    def __call__(self, x, t):
        emb = nn.Dense(self.channels)(jnp.stack([jnp.sin(t * 10.0), jnp.cos(t * 10.0)]))
        h = nn.silu(nn.Conv(self.channels, (3, 3))(x[None]) + emb)
        h = nn.silu(nn.Conv(self.channels, (3, 3))(h))
        h = nn.silu(nn.Conv(self.channels, (3, 3))(h))
        return nn.Conv(x.shape[-1], (3, 3))(h)[0]


class Problem(NamedTuple):
    sde: Any
    mixture: GaussianMixture
    shape: tuple[int, ...]
    score_of: Callable  # params -> score(x, t)
    params: Any


def make_problem(name: str) -> Problem:
    sde, shape = jaxsde.VPSDE(), SHAPES[name]
    mixture = ring_mixture(shape)
    exact_score = mixture.score(sde)
    if name != "conv":
        return Problem(sde, mixture, shape, lambda p: exact_score, jnp.zeros(()))
    net = TinyConvNet()
    params = net.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(()))
    return Problem(sde, mixture, shape, lambda p: (lambda x, t: exact_score(x, t) + 1e-3 * net.apply(p, x, t)),
                   params)


def diffrax_euler(sde, shape, steps: int) -> Callable:
    """``(key, score, n) ->`` diffrax ``Euler`` on jaxsde's grid and prior draws, one ``UnsafeBrownianPath`` each."""
    ts = jaxsde.time_grid(sde, steps)

    def run(k, s, n):
        prior_keys, solve_keys = jaxsde.sample_keys(k, n)
        x_T = jax.vmap(lambda kk: sde.prior_sample(kk, shape))(prior_keys)

        def one(kk, x):
            path = dfx.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(shape, x.dtype), key=kk)
            return reference.diffrax_solve(kk, sde, s, x, dfx.Euler(), ts=ts, path=path, adjoint=ADJOINT)

        return jax.vmap(one)(solve_keys, x_T)

    return run


class Case(NamedTuple):
    label: str
    family: str  # "adaptive SDE" | "fixed-step EM" | "PF-ODE"
    lib: str  # "jaxsde" | "diffrax"
    run: Callable  # (key, score, n) -> Solution


def cases(prob: Problem, quick: bool, diffrax_tols: tuple[float, ...] | None = None) -> list[Case]:
    sde, shape, tol, steps = prob.sde, prob.shape, 1e-5, 50 if quick else 200

    def jx(solver):
        return lambda k, s, n: jaxsde.sample(k, sde, s, solver, shape, n)

    def dx(solver, **kw):
        return lambda k, s, n: reference.diffrax_sample(k, sde, s, solver, shape, n, adjoint=ADJOINT, **kw)

    sde_tols = diffrax_tols or ((0.1, 0.03) if quick else (0.3, 0.1, 0.03, 0.01))
    return [  # GGF with its default atol (1/256 of [-1, 1]), then with atol = rtol as the diffrax rows
        *(Case(f"jaxsde GGF rtol={r}", "adaptive SDE", "jaxsde", jx(jaxsde.GottaGoFast(rtol=r)))
          for r in ((0.05, 0.1) if quick else (0.02, 0.05, 0.1, 0.2))),
        *(Case(f"jaxsde GGF rtol=atol={r}", "adaptive SDE", "jaxsde", jx(jaxsde.GottaGoFast(rtol=r, atol=r)))
          for r in (() if quick else (0.1, 0.2, 0.3))),
        *(Case(f"diffrax {cls.__name__} PID rtol={r}", "adaptive SDE", "diffrax", dx(
            cls(), controller=dfx.PIDController(rtol=r, atol=r), dt0=0.01, brownian_tol=1e-3, max_steps=20_000))
          for cls in (dfx.Heun, dfx.ShARK) for r in sde_tols),
        Case(f"jaxsde EM {steps}", "fixed-step EM", "jaxsde", jx(jaxsde.EulerMaruyama(steps))),
        Case(f"diffrax Euler {steps} (UnsafeBrownianPath)", "fixed-step EM", "diffrax",
             diffrax_euler(sde, shape, steps)),
        Case(f"jaxsde PF dopri5 tol={tol}", "PF-ODE", "jaxsde", jx(jaxsde.ProbabilityFlow(rtol=tol, atol=tol))),
        Case(f"jaxsde PF dopri5 tol={tol} unroll_stages", "PF-ODE", "jaxsde",
             jx(jaxsde.ProbabilityFlow(rtol=tol, atol=tol, unroll_stages=True))),
        *(Case(f"diffrax {cls.__name__} PID tol={tol}", "PF-ODE", "diffrax", dx(
            cls(), ode=True, controller=dfx.PIDController(rtol=tol, atol=tol))) for cls in (dfx.Dopri5, dfx.Tsit5))]


def compile_case(case: Case, prob: Problem, n: int, repeats: int = 1):
    """The compiled program of ``case``, its compile time (median CPU seconds of ``repeats``) and temp bytes."""
    compiled, compile_s = compile_cpu_seconds(lambda k, p: case.run(k, prob.score_of(p), n),
                                              jax.random.PRNGKey(0), prob.params, repeats=repeats)
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - backend-dependent
        temp = -1
    return compiled, compile_s, temp


def bench_problem(name: str, n: int, n_quality: int, rounds: int, quick: bool, rows: list, summary: dict,
                  diffrax_tols: tuple[float, ...] | None = None, compile_repeats: int = 3):
    prob, key = make_problem(name), jax.random.PRNGKey(0)
    print(f"== {name}: shape={prob.shape}, n={n} timed, n={n_quality} for quality", flush=True)
    programs, by_label = {}, {}
    for case in cases(prob, quick, diffrax_tols):
        compiled, compile_s, temp = compile_case(case, prob, n, compile_repeats)
        sol = jax.block_until_ready(compiled(key, prob.params))  # warm-up
        sol_q = sol if n_quality == n else jax.block_until_ready(compile_case(case, prob, n_quality)[0](
            key, prob.params))
        report = metrics.quality_report(jax.random.PRNGKey(99), prob.mixture, prob.sde, sol_q.x)
        nfe = np.asarray(sol.stats.nfe)
        row = dict(problem=name, family=case.family, lib=case.lib, solver=case.label, n=n, n_quality=n_quality,
                   mean_nfe=float(nfe.mean()), max_nfe=int(nfe.max()),
                   loop_iterations=int(np.asarray(sol.stats.num_steps).max()),
                   failed=int(np.sum(np.asarray(sol.result) != 0)), compile_s=compile_s, temp_mb=temp / 2**20,
                   **{k: float(report[k]) for k in ("sw2", "spread_w2", "mode_tv", "sw2_floor", "spread_w2_floor")})
        programs[case.label], by_label[case.label] = compiled, row
        rows.append(row)
        progress(row, "solver", "compile_s", "mean_nfe", "spread_w2", "spread_w2_floor", "sw2", "sw2_floor", "failed")
        if case.family == "PF-ODE":
            row["x"] = np.asarray(sol.x)
    times, _ = interleaved({label: (lambda c=c: c(key, prob.params)) for label, c in programs.items()}, rounds,
                           rotate=False, warmup=False)
    for label, row in by_label.items():
        row["wall_s"], row["wall_all_s"] = statistics.median(times[label]), times[label]

    def ratio(a, b):  # median over rounds of wall(a) / wall(b)
        return statistics.median([x / y for x, y in zip(times[a], times[b], strict=True)])

    def within(a, b):  # a's quality no worse than b's, up to noise (half the exact-vs-exact floor)
        return all(a[m] <= b[m] + 0.5 * b[f"{m}_floor"] for m in ("spread_w2", "sw2"))

    def exact_like(a):  # within half the floor of an exact sampler
        return all(a[m] <= a[f"{m}_floor"] + 0.5 * a[f"{m}_floor"] for m in ("spread_w2", "sw2"))

    adaptive = [r for r in by_label.values() if r["family"] == "adaptive SDE" and r["failed"] == 0]
    ggf, dfx_rows = ([r for r in adaptive if r["lib"] == lib] for lib in ("jaxsde", "diffrax"))
    matches = []
    for mine, theirs in ((ggf, dfx_rows), (dfx_rows, ggf)):
        for a in mine:
            b = cheapest(theirs, lambda r, a=a: within(r, a), key="wall_s")
            g, d = (a, b) if a["lib"] == "jaxsde" else (b, a)
            matches.append(dict(setting=a["solver"], matched=b["solver"] if b else None,
                                ggf=g["solver"] if g else None, diffrax=d["solver"] if d else None,
                                speedup=ratio(d["solver"], g["solver"]) if (g and d) else None,
                                nfe_ratio=d["mean_nfe"] / g["mean_nfe"] if (g and d) else None))
    best = {lib: (cheapest(group, exact_like, key="wall_s") or {}).get("solver")
            for lib, group in (("jaxsde", ggf), ("diffrax", dfx_rows))}
    em, eu = (next(r["solver"] for r in by_label.values() if r["family"] == "fixed-step EM" and r["lib"] == lib)
              for lib in ("jaxsde", "diffrax"))
    pf = [r for r in by_label.values() if r["family"] == "PF-ODE"]
    pf_ratios = {("unrolled " if "unroll" in j["solver"] else "") + r["solver"].split()[1]:
                 dict(wall_ratio=ratio(j["solver"], r["solver"]), nfe_ratio=j["mean_nfe"] / r["mean_nfe"],
                      max_abs_diff=float(np.max(np.abs(r["x"] - j["x"]))),
                      compile_ratio=j["compile_s"] / r["compile_s"])
                 for j in pf if j["lib"] == "jaxsde" for r in pf if r["lib"] == "diffrax"}
    for r in pf:
        r.pop("x")
    both = all(best.values())
    summary[name] = dict(
        n=n, n_quality=n_quality, matches=matches,
        default=next((m for m in matches if m["setting"] == "jaxsde GGF rtol=0.05"), None),
        exact_like=dict(ggf=best["jaxsde"], diffrax=best["diffrax"],
                        speedup=ratio(best["diffrax"], best["jaxsde"]) if both else None,
                        nfe_ratio=by_label[best["diffrax"]]["mean_nfe"] / by_label[best["jaxsde"]]["mean_nfe"]
                        if both else None),
        em_per_step_ratio=ratio(em, eu), em_compile_s=by_label[em]["compile_s"],
        euler_compile_s=by_label[eu]["compile_s"], pf_ode=pf_ratios, pf_compile_s=pf[0]["compile_s"],
        compile_s={r["solver"]: r["compile_s"] for r in by_label.values()})
    print(json.dumps(summary[name], indent=1), flush=True)


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def render(data: dict) -> str:
    if data.get("mode") == "em":
        return render_em(data)
    rows, summary, command = data["rows"], data["summary"], data["command"]
    machine = normalize(data["machine"])
    lines = ["# jaxsde vs diffrax", "", f"Command: `{command}`", "",
             f"Machine: {machine['cpus']} CPU cores, {machine.get('platform') or machine.get('cpu')}, jax "
             f"{machine['jax']}, diffrax {machine.get('diffrax') or machine['versions'].get('diffrax')}, "
             f"backend {machine['backend']}, {machine['date']}, load before "
             f"{machine['load']}", "",
             "Timing: all programs of a problem compiled, warmed up, then run in interleaved rounds "
             "(`block_until_ready`); wall = median over rounds; every ratio = median of per-round ratios; "
             "compile s = median CPU seconds of trace + lower + compile over repeats. "
             "Quality (spread_w2, sw2; lower is better; floor = an exact sampler's score at that n) on `n_quality` "
             "samples. Matched = the other library's cheapest setting whose quality is no worse (within half the "
             "floor). Exact-like = within half the floor of an exact sampler.", ""]
    for prob, s in summary.items():
        lines += [f"## {prob} (n={s['n']} timed, n={s['n_quality']} for quality)", "",
                  *table(["setting", "matched setting of the other library", "diffrax wall / GGF wall",
                          "NFE diffrax / GGF"], [[m["setting"], m["matched"] or "none matches", fmt(m["speedup"])
                                                  + ("x" if m["speedup"] else ""), fmt(m["nfe_ratio"])]
                                                 for m in s["matches"]])]
        e = s["exact_like"]
        lines += ["", f"Cheapest exact-like setting: GGF `{e['ggf']}`, diffrax `{e['diffrax']}`: diffrax/GGF wall "
                  f"{fmt(e['speedup'])}x, NFE {fmt(e['nfe_ratio'])}.", "",
                  f"EM / diffrax Euler per step: {s['em_per_step_ratio']:.3f}. PF-ODE jaxsde/diffrax wall: " +
                  ", ".join(f"{k} {v['wall_ratio']:.2f} (NFE {v['nfe_ratio']:.2f}, compile {v['compile_ratio']:.2f}, "
                            f"max |dx| {v['max_abs_diff']:.1e})" for k, v in s["pf_ode"].items()) + ".", ""]
    lines += ["## All runs", "", *columns(rows, {
        "problem": "{problem}", "family": "{family}", "solver": "{solver}", "mean NFE": "{mean_nfe:.1f}",
        "max NFE": "{max_nfe}", "wall s (median)": "{wall_s:.3f}", "compile s": "{compile_s:.2f}",
        "temp MB": "{temp_mb:.1f}", "spread_w2 (floor)": "{spread_w2:.3f} ({spread_w2_floor:.3f})",
        "sw2 (floor)": "{sw2:.4f} ({sw2_floor:.4f})", "failed": "{failed}"})]
    return "\n".join(lines)


def arguments(parser):
    options(parser, rounds=5, name="vs_diffrax", quick="small n, few tolerances (smoke test)")
    parser.add_argument("--mode", default="peers", choices=("peers", "em"), help="em: EM vs diffrax Euler alone")
    parser.add_argument("--problems", default="gmm64,gmm3072,conv")
    parser.add_argument("--compile-repeats", type=int, default=3, help="compile time: median CPU s of this many")
    parser.add_argument("--diffrax-tols", default=None, help="rtol=atol of the diffrax SDE rows (0.3,0.1,0.03,0.01)")
    parser.add_argument("--n", default="64,1000", help="--mode em: comma-separated sample counts")
    parser.add_argument("--steps", type=int, default=200, help="--mode em: EM steps")


def run(args, ctx):
    if args.mode == "em":
        return run_em(args, ctx)
    sizes, machine, rows, summary, t0 = QUICK_SIZES if args.quick else SIZES, machine_info("diffrax"), [], {}, 0.0
    t0 = time.time()
    for problem in args.problems.split(","):
        bench_problem(problem, *sizes[problem], args.rounds, args.quick, rows, summary, floats(args.diffrax_tols),
                      args.compile_repeats)
    ctx.save(args.name + ("_quick" if args.quick else ""), dict(machine=machine, summary=summary, rows=rows))
    print(f"total {time.time() - t0:.0f}s", flush=True)


# --- --mode em ------------------------------------------------------------------------------------------
def run_em(args, ctx):
    key, rows, sde = jax.random.PRNGKey(0), [], jaxsde.VPSDE()
    for n in (int(v) for v in args.n.split(",")):
        for name, shape in (("d=64", (64,)), ("d=3072", (32, 32, 3))):
            if shape != (64,) and n > 256:
                continue  # d=3072 at n > 256: minutes per round on 2 cores, no new information
            compiled = {label: compile_cpu_seconds(fn, key, repeats=args.compile_repeats)
                        for label, fn in em_programs(sde, shape, n, args.steps).items()}
            for c, _ in compiled.values():
                jax.block_until_ready(c(key))
            times, _ = interleaved({label: (lambda c=c: c(key)) for label, (c, _) in compiled.items()}, args.rounds,
                                   rotate=False, warmup=False)
            ratios, unchecked = ([a / b for a, b in zip(times[label], times["diffrax Euler"], strict=True)]
                                 for label in ("jaxsde EM", "jaxsde EM check_finite=False"))
            (em_c, em_s), (eu_c, eu_s) = compiled["jaxsde EM"], compiled["diffrax Euler"]
            rows.append(dict(problem=name, n=n, steps=args.steps, em_median_s=statistics.median(times["jaxsde EM"]),
                             euler_median_s=statistics.median(times["diffrax Euler"]),
                             ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                             ratio_unchecked_median=statistics.median(unchecked), em_compile_s=em_s,
                             euler_compile_s=eu_s, em_cost=cost(em_c), euler_cost=cost(eu_c),
                             max_abs_diff=float(np.max(np.abs(np.asarray(em_c(key)) - np.asarray(eu_c(key)))))))
            progress(rows[-1], "problem", "n", "ratio_median", "ratio_unchecked_median", "ratio_min", "ratio_max",
                     "em_median_s", "euler_median_s", "em_compile_s", "euler_compile_s")
    ctx.save("em_vs_euler", dict(mode="em", machine=machine_info("diffrax"), rows=rows))


def em_programs(sde, shape, n: int, steps: int) -> dict[str, Callable]:
    """``{label: key -> final states}``: jaxsde EM (checked and unchecked) and diffrax Euler, same draws."""
    score, em, euler = ring_mixture(shape).score(sde), jaxsde.EulerMaruyama(steps), diffrax_euler(sde, shape, steps)
    return {"jaxsde EM": lambda k: jaxsde.sample(k, sde, score, em, shape, n).x,
            "jaxsde EM check_finite=False": lambda k: jaxsde.sample(k, sde, score, em, shape, n, check_finite=False).x,
            "diffrax Euler": lambda k: euler(k, score, n).x}


def cost(compiled) -> dict:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {k: float(analysis.get(k, -1)) for k in ("flops", "bytes accessed")}


def render_em(data: dict) -> str:
    return "\n".join(["# Fixed-step EM: jaxsde vs diffrax Euler (interleaved timing)", "",
                      f"Command: `{data['command']}`", "", describe(data["machine"]), "", *columns(data["rows"], {
                          "problem": "{problem}", "n x steps": "{n} x {steps}",
                          "EM ms": lambda r: f"{r['em_median_s'] * 1e3:.1f}",
                          "Euler ms": lambda r: f"{r['euler_median_s'] * 1e3:.1f}",
                          "ratio median (range)": "**{ratio_median:.3f}** ({ratio_min:.3f}-{ratio_max:.3f})",
                          "ratio, check_finite=False": "{ratio_unchecked_median:.3f}",
                          "compile s EM / Euler": "{em_compile_s:.2f} / {euler_compile_s:.2f}",
                          "FLOPs EM / Euler": lambda r: f"{r['em_cost']['flops']:.3g} / {r['euler_cost']['flops']:.3g}",
                          "bytes EM / Euler": lambda r: f"{r['em_cost']['bytes accessed']:.3g} / "
                                                        f"{r['euler_cost']['bytes accessed']:.3g}"})])
