"""jaxsde vs diffrax, side by side in one process, same score, same samples, same machine.

Problems (VP): an 8-mode mixture with the exact score in d = 64 and 3072, and ``conv`` (16x16x3, the exact score
plus 1e-3 x a small conv net). Per problem: GGF (rtol sweep; default atol and atol = rtol) vs diffrax Heun / ShARK
+ PID + VirtualBrownianTree (``--diffrax-tols``) at matched quality both ways round (the other library's cheapest
setting whose spread_w2 and sw2 are within half the exact-vs-exact floor), and the cheapest "exact-like" setting of
each; EM vs diffrax Euler (UnsafeBrownianPath) per step; the PF-ODE vs diffrax Dopri5 / Tsit5 at one tolerance.
All programs compiled (compile = median CPU seconds of ``--compile-repeats``), warmed up, then ``--rounds`` rounds
in a fixed order; every ratio is the median of per-round ratios. diffrax runs with ``adjoint=ForwardMode()``.
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
from ..harness.machine import machine_info, normalize
from ..harness.problems import ring_mixture
from ..harness.timing import interleaved
from ..harness.writer import columns, progress, table

ADJOINT = dfx.ForwardMode()
SIZES = dict(gmm64=(1000, 1000), gmm3072=(100, 200), conv=(64, 256))  # (timed n, quality n)
QUICK_SIZES = dict(gmm64=(200, 200), gmm3072=(16, 32), conv=(16, 32))


class TinyConvNet(nn.Module):
    """A small conv score-network body: 3x3 convs with a time embedding, realistic cost."""

    channels: int = 32

    @nn.compact
    def __call__(self, x, t):
        emb = nn.Dense(self.channels)(jnp.stack([jnp.sin(t * 10.0), jnp.cos(t * 10.0)]))
        h = nn.Conv(self.channels, (3, 3))(x[None])
        h = nn.silu(h + emb)
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
    sde = jaxsde.VPSDE()
    shape = {"gmm64": (64,), "gmm3072": (32, 32, 3), "conv": (16, 16, 3)}[name]
    mixture = ring_mixture(shape)
    exact_score = mixture.score(sde)
    if name != "conv":
        return Problem(sde, mixture, shape, lambda p: exact_score, jnp.zeros(()))
    net = TinyConvNet()
    params = net.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(()))
    return Problem(sde, mixture, shape, lambda p: (lambda x, t: exact_score(x, t) + 1e-3 * net.apply(p, x, t)),
                   params)


class Case(NamedTuple):
    label: str
    family: str  # "adaptive SDE" | "fixed-step EM" | "PF-ODE"
    lib: str  # "jaxsde" | "diffrax"
    run: Callable  # (key, score, n) -> Solution


def cases(prob: Problem, quick: bool, diffrax_tols: tuple[float, ...] | None = None) -> list[Case]:
    sde, shape = prob.sde, prob.shape

    def jx(solver):
        return lambda k, s, n: jaxsde.sample(k, sde, s, solver, shape, n)

    def dx(solver, **kw):
        return lambda k, s, n: reference.diffrax_sample(k, sde, s, solver, shape, n, adjoint=ADJOINT, **kw)

    out = []
    for rtol in ((0.05, 0.1) if quick else (0.02, 0.05, 0.1, 0.2)):  # GGF's default atol (1/256 of [-1, 1])
        out.append(Case(f"jaxsde GGF rtol={rtol}", "adaptive SDE", "jaxsde", jx(jaxsde.GottaGoFast(rtol=rtol))))
    for tol in (() if quick else (0.1, 0.2, 0.3)):  # atol = rtol, the setting the diffrax rows use
        out.append(Case(f"jaxsde GGF rtol=atol={tol}", "adaptive SDE", "jaxsde",
                        jx(jaxsde.GottaGoFast(rtol=tol, atol=tol))))
    for cls in (dfx.Heun, dfx.ShARK):
        for tol in diffrax_tols or ((0.1, 0.03) if quick else (0.3, 0.1, 0.03, 0.01)):
            out.append(Case(f"diffrax {cls.__name__} PID rtol={tol}", "adaptive SDE", "diffrax",
                            dx(cls(), controller=dfx.PIDController(rtol=tol, atol=tol), dt0=0.01, brownian_tol=1e-3,
                               max_steps=20_000)))
    steps = 50 if quick else 200
    ts = jaxsde.time_grid(sde, steps)
    out.append(Case(f"jaxsde EM {steps}", "fixed-step EM", "jaxsde", jx(jaxsde.EulerMaruyama(steps))))

    def euler_unsafe(k, s, n):
        prior_keys, solve_keys = jaxsde.sample_keys(k, n)
        x_T = jax.vmap(lambda kk: sde.prior_sample(kk, shape))(prior_keys)

        def one(kk, x):
            path = dfx.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(shape, x.dtype), key=kk)
            return reference.diffrax_solve(kk, sde, s, x, dfx.Euler(), ts=ts, path=path, adjoint=ADJOINT)

        return jax.vmap(one)(solve_keys, x_T)

    out.append(Case(f"diffrax Euler {steps} (UnsafeBrownianPath)", "fixed-step EM", "diffrax", euler_unsafe))
    tol = 1e-5
    out.append(Case(f"jaxsde PF dopri5 tol={tol}", "PF-ODE", "jaxsde", jx(jaxsde.ProbabilityFlow(rtol=tol, atol=tol))))
    out.append(Case(f"jaxsde PF dopri5 tol={tol} unroll_stages", "PF-ODE", "jaxsde",
                    jx(jaxsde.ProbabilityFlow(rtol=tol, atol=tol, unroll_stages=True))))
    for cls in (dfx.Dopri5, dfx.Tsit5):
        out.append(Case(f"diffrax {cls.__name__} PID tol={tol}", "PF-ODE", "diffrax",
                        dx(cls(), ode=True, controller=dfx.PIDController(rtol=tol, atol=tol))))
    return out


def compile_case(case: Case, prob: Problem, n: int, repeats: int = 1):
    """The compiled program of ``case`` and its compile time (median CPU seconds of ``repeats``)."""
    compiled, compile_s = compile_cpu_seconds(lambda k, p: case.run(k, prob.score_of(p), n),
                                              jax.random.PRNGKey(0), prob.params, repeats=repeats)
    temp = -1
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - backend-dependent
        pass
    return compiled, compile_s, temp


def bench_problem(name: str, n: int, n_quality: int, rounds: int, quick: bool, rows: list, summary: dict,
                  diffrax_tols: tuple[float, ...] | None = None, compile_repeats: int = 3):
    prob = make_problem(name)
    key = jax.random.PRNGKey(0)
    print(f"\n== {name}: shape={prob.shape}, n={n} timed, n={n_quality} for quality", flush=True)
    todo = cases(prob, quick, diffrax_tols)
    programs, by_label = {}, {}
    for case in todo:
        compiled, compile_s, temp = compile_case(case, prob, n, compile_repeats)
        sol = jax.block_until_ready(compiled(key, prob.params))  # warm-up
        if n_quality != n:
            sol_q = jax.block_until_ready(compile_case(case, prob, n_quality)[0](key, prob.params))
        else:
            sol_q = sol
        report = metrics.quality_report(jax.random.PRNGKey(99), prob.mixture, prob.sde, sol_q.x)
        nfe = np.asarray(sol.stats.nfe)
        row = dict(problem=name, family=case.family, lib=case.lib, solver=case.label, n=n, n_quality=n_quality,
                   mean_nfe=float(nfe.mean()), max_nfe=int(nfe.max()),
                   loop_iterations=int(np.asarray(sol.stats.num_steps).max()),
                   failed=int(np.sum(np.asarray(sol.result) != 0)), compile_s=compile_s, temp_mb=temp / 2**20,
                   **{k: float(report[k]) for k in ("sw2", "spread_w2", "mode_tv", "sw2_floor", "spread_w2_floor")})
        programs[case.label] = compiled
        by_label[case.label] = row
        rows.append(row)
        progress(row, "solver", "compile_s", "mean_nfe", "spread_w2", "spread_w2_floor", "sw2", "sw2_floor", "failed")
        if case.family == "PF-ODE":
            row["x"] = np.asarray(sol.x)
    times, _ = interleaved({label: (lambda c=c: c(key, prob.params)) for label, c in programs.items()}, rounds,
                           rotate=False, warmup=False)
    for label, row in by_label.items():
        row["wall_s"] = statistics.median(times[label])
        row["wall_all_s"] = times[label]
        print(f"  {label:40s} wall={row['wall_s']:8.3f}s NFE={row['mean_nfe']:7.1f}", flush=True)

    def ratio(a, b):  # median over rounds of wall(a) / wall(b)
        return statistics.median([x / y for x, y in zip(times[a], times[b], strict=True)])

    def within(a, b):  # a's quality no worse than b's, up to noise (half the exact-vs-exact floor)
        return (a["spread_w2"] <= b["spread_w2"] + 0.5 * b["spread_w2_floor"]
                and a["sw2"] <= b["sw2"] + 0.5 * b["sw2_floor"])

    def exact_like(a):
        return within(a, dict(spread_w2=a["spread_w2_floor"], sw2=a["sw2_floor"], spread_w2_floor=a["spread_w2_floor"],
                              sw2_floor=a["sw2_floor"]))

    adaptive = [r for r in by_label.values() if r["family"] == "adaptive SDE" and r["failed"] == 0]
    ggf = [r for r in adaptive if r["lib"] == "jaxsde"]
    dfx_rows = [r for r in adaptive if r["lib"] == "diffrax"]
    matches = []
    for mine, theirs in ((ggf, dfx_rows), (dfx_rows, ggf)):
        for a in mine:
            ok = [b for b in theirs if within(b, a)]
            b = min(ok, key=lambda r: r["wall_s"]) if ok else None
            g, d = (a, b) if a["lib"] == "jaxsde" else (b, a)
            matches.append(dict(setting=a["solver"], matched=b["solver"] if b else None,
                                ggf=g["solver"] if g else None, diffrax=d["solver"] if d else None,
                                speedup=ratio(d["solver"], g["solver"]) if (g and d) else None,
                                nfe_ratio=d["mean_nfe"] / g["mean_nfe"] if (g and d) else None))
    best = {}
    for lib, group in (("jaxsde", ggf), ("diffrax", dfx_rows)):
        ok = [r for r in group if exact_like(r)]
        best[lib] = min(ok, key=lambda r: r["wall_s"])["solver"] if ok else None
    em, eu = (next(r["solver"] for r in by_label.values() if r["family"] == "fixed-step EM" and r["lib"] == lib)
              for lib in ("jaxsde", "diffrax"))
    pf = [r for r in by_label.values() if r["family"] == "PF-ODE"]
    pf_j = next(r for r in pf if r["lib"] == "jaxsde")  # the default (stage loop)
    pf_ratios = {("unrolled " if "unroll" in j["solver"] else "") + r["solver"].split()[1]:
                 dict(wall_ratio=ratio(j["solver"], r["solver"]), nfe_ratio=j["mean_nfe"] / r["mean_nfe"],
                      max_abs_diff=float(np.max(np.abs(r["x"] - j["x"]))),
                      compile_ratio=j["compile_s"] / r["compile_s"])
                 for j in pf if j["lib"] == "jaxsde" for r in pf if r["lib"] == "diffrax"}
    for r in pf:
        r.pop("x")
    default = next((m for m in matches if m["setting"] == "jaxsde GGF rtol=0.05"), None)
    summary[name] = dict(
        n=n, n_quality=n_quality, matches=matches, default=default,
        exact_like=dict(ggf=best["jaxsde"], diffrax=best["diffrax"],
                        speedup=ratio(best["diffrax"], best["jaxsde"]) if all(best.values()) else None,
                        nfe_ratio=(by_label[best["diffrax"]]["mean_nfe"] / by_label[best["jaxsde"]]["mean_nfe"]
                                   if all(best.values()) else None)),
        em_per_step_ratio=ratio(em, eu), em_compile_s=by_label[em]["compile_s"],
        euler_compile_s=by_label[eu]["compile_s"],
        pf_ode=pf_ratios, pf_compile_s=pf_j["compile_s"],
        compile_s={r["solver"]: r["compile_s"] for r in by_label.values()})
    print(json.dumps(summary[name], indent=1), flush=True)


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def render(data: dict) -> str:
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
    parser.add_argument("--problems", default="gmm64,gmm3072,conv")
    parser.add_argument("--compile-repeats", type=int, default=3, help="compile each program this many times; "
                        "compile time = median CPU seconds")
    parser.add_argument("--diffrax-tols", default=None, help="comma-separated rtol=atol of the diffrax SDE rows "
                        "(default 0.3,0.1,0.03,0.01)")


def run(args, ctx):
    sizes = QUICK_SIZES if args.quick else SIZES
    machine = machine_info("diffrax")
    rows, summary = [], {}
    t0 = time.time()
    for problem in args.problems.split(","):
        n, n_quality = sizes[problem]
        tols = tuple(float(v) for v in args.diffrax_tols.split(",")) if args.diffrax_tols else None
        bench_problem(problem, n, n_quality, args.rounds, args.quick, rows, summary, tols, args.compile_repeats)
    ctx.save(args.name + ("_quick" if args.quick else ""), dict(machine=machine, summary=summary, rows=rows))
    print(f"total {time.time() - t0:.0f}s", flush=True)
