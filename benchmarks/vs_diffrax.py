"""jaxsde vs diffrax, side by side in one process, same score, same samples, same machine.

    python benchmarks/vs_diffrax.py [--quick] [--out benchmarks/results]

Problems (VP SDE): an 8-mode Gaussian mixture with the exact score in d=64 and d=3072
(32x32x3), and "conv": a 16x16x3 mixture whose score adds 1e-3 x a small Flax conv net
(realistic cost, quality still measurable against the exact law). For each problem:

1. GGF (rtol 0.05) vs diffrax's adaptive SDE solve (Heun and ShARK with a PID controller
   and a VirtualBrownianTree, rtol swept): the cheapest diffrax setting whose quality is
   within noise of GGF's (spread_w2 and sw2 no worse than GGF's + half the exact-vs-exact
   floor) is the matched one; we report the wall-time and NFE ratios against it.
2. Fixed-step EM vs diffrax Euler on the same uniform grid (diffrax with
   UnsafeBrownianPath, its fast choice for fixed steps): time per step.
3. PF-ODE: jaxsde ProbabilityFlow (dopri5) vs diffrax Dopri5 and Tsit5, PID, same tolerance.

diffrax runs with ``adjoint=diffrax.ForwardMode()`` (a plain while loop; sampling needs no
gradients). Every timing: compiled once (compile time reported), warmed up, block_until_ready, median
of repeats. Memory: XLA's temp-buffer size of the compiled program.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import diffrax as dfx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde import metrics, reference
from jaxsde.targets import GaussianMixture
from jaxsde.timing import time_compiled

# Sampling needs no gradients: diffrax's forward-only loop is its fastest (and needed for
# UnsafeBrownianPath); measured in the quick run to beat the default checkpointed adjoint.
ADJOINT = dfx.ForwardMode()


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


def make_problem(name: str):
    sde = jaxsde.VPSDE()
    if name == "gmm64":
        shape = (64,)
    elif name == "gmm3072":
        shape = (32, 32, 3)
    else:
        shape = (16, 16, 3)
    mixture = GaussianMixture.ring(8, shape, radius=0.6, scale=0.02, key=jax.random.PRNGKey(1234))
    exact_score = mixture.score(sde)
    if name != "conv":
        return sde, mixture, exact_score, shape, None
    net = TinyConvNet()
    params = net.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(()))

    def make_score(p):
        return lambda x, t: exact_score(x, t) + 1e-3 * net.apply(p, x, t)

    return sde, mixture, make_score, shape, params


def run_case(label, fn, args, mixture, sde, repeats, rows, problem, family, quality=True, extra=None):
    sol, timing = time_compiled(fn, *args, repeats=repeats)
    nfe = np.asarray(sol.stats.nfe)
    steps = np.asarray(sol.stats.num_steps)
    row = dict(problem=problem, family=family, solver=label, mean_nfe=float(nfe.mean()), max_nfe=int(nfe.max()),
               loop_iterations=int(steps.max()), failed=int(np.sum(np.asarray(sol.result) != 0)),
               wall_s=timing.median_s, compile_s=timing.compile_s, temp_mb=timing.temp_bytes / 2**20)
    if quality:
        report = metrics.quality_report(jax.random.PRNGKey(99), mixture, sde, sol.x)
        row.update({k: float(report[k]) for k in ("sw2", "spread_w2", "mode_tv", "sw2_floor", "spread_w2_floor")})
    row.update(extra or {})
    rows.append(row)
    q = f" spread_w2={row['spread_w2']:.3f} sw2={row['sw2']:.4f}" if quality else ""
    print(f"  {label:34s} NFE mean={row['mean_nfe']:7.1f} max={row['max_nfe']:5d} wall={row['wall_s']:8.3f}s "
          f"compile={row['compile_s']:6.2f}s temp={row['temp_mb']:8.1f}MB failed={row['failed']}{q}", flush=True)
    return sol, row


def within(a, b):
    """a's quality is no worse than b's up to noise (half the exact-vs-exact floor)."""
    return (a["spread_w2"] <= b["spread_w2"] + 0.5 * b["spread_w2_floor"]
            and a["sw2"] <= b["sw2"] + 0.5 * b["sw2_floor"])


def bench_problem(problem, n, repeats, quick, rows, summary):
    sde, mixture, score_or_factory, shape, params = make_problem(problem)
    key = jax.random.PRNGKey(0)
    print(f"\n== {problem}: shape={shape}, n={n}", flush=True)

    if params is None:
        def with_score(sampler):
            return lambda k: sampler(k, score_or_factory)
        args = (key,)
    else:
        def with_score(sampler):
            return lambda k, p: sampler(k, score_or_factory(p))
        args = (key, params)

    def jx(solver):
        return with_score(lambda k, s: jaxsde.sample(k, sde, s, solver, shape, n))

    def dx(solver, **kw):
        return with_score(lambda k, s: reference.diffrax_sample(k, sde, s, solver, shape, n, adjoint=ADJOINT, **kw))

    # 1. adaptive SDE at matched quality
    _, ggf = run_case("jaxsde GGF rtol=0.05", jx(jaxsde.GottaGoFast(rtol=0.05)), args, mixture, sde, repeats, rows,
                      problem, "adaptive SDE")
    candidates = []
    tols = [0.1, 0.03] if quick else [0.1, 0.03, 0.01]
    for cls in (dfx.Heun, dfx.ShARK):
        for tol in tols:
            _, row = run_case(f"diffrax {cls.__name__} PID rtol={tol}",
                              dx(cls(), controller=dfx.PIDController(rtol=tol, atol=tol), dt0=0.01,
                                 brownian_tol=1e-3, max_steps=20_000),
                              args, mixture, sde, repeats, rows, problem, "adaptive SDE")
            candidates.append(row)
    matched = [r for r in candidates if r["failed"] == 0 and within(r, ggf)]
    best = min(matched, key=lambda r: r["wall_s"]) if matched else None
    summary[problem] = dict(ggf=ggf["solver"], ggf_wall_s=ggf["wall_s"], ggf_nfe=ggf["mean_nfe"],
                            matched_diffrax=best["solver"] if best else None,
                            speedup_wall=best["wall_s"] / ggf["wall_s"] if best else None,
                            nfe_ratio=best["mean_nfe"] / ggf["mean_nfe"] if best else None,
                            ggf_compile_s=ggf["compile_s"],
                            diffrax_compile_s=best["compile_s"] if best else None)

    # 2. fixed-step EM vs diffrax Euler, same uniform grid
    steps = 50 if quick else 200
    ts = jaxsde.time_grid(sde, steps)
    _, em = run_case(f"jaxsde EM {steps}", jx(jaxsde.EulerMaruyama(steps)), args, mixture, sde, repeats, rows,
                     problem, "fixed-step EM")

    def euler_unsafe(k, s):
        prior_keys, solve_keys = jaxsde.sample_keys(k, n)
        x_T = jax.vmap(lambda kk: sde.prior_sample(kk, shape))(prior_keys)

        def one(kk, x):
            path = dfx.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(shape, x.dtype), key=kk)
            return reference.diffrax_solve(kk, sde, s, x, dfx.Euler(), ts=ts, path=path, adjoint=ADJOINT)

        return jax.vmap(one)(solve_keys, x_T)

    _, eu = run_case(f"diffrax Euler {steps} (UnsafeBrownianPath)", with_score(euler_unsafe), args, mixture, sde,
                     repeats, rows, problem, "fixed-step EM")
    summary[problem].update(em_per_step_ratio=em["wall_s"] / eu["wall_s"],
                            em_compile_s=em["compile_s"], euler_compile_s=eu["compile_s"])

    # 3. PF-ODE at the same tolerance
    tol = 1e-5
    pf_sol, pf = run_case(f"jaxsde PF dopri5 tol={tol}", jx(jaxsde.ProbabilityFlow(rtol=tol, atol=tol)), args, mixture,
                          sde, repeats, rows, problem, "PF-ODE")
    ratios = {}
    for cls in (dfx.Dopri5, dfx.Tsit5):
        d_sol, row = run_case(f"diffrax {cls.__name__} PID tol={tol}",
                              dx(cls(), ode=True, controller=dfx.PIDController(rtol=tol, atol=tol)),
                              args, mixture, sde, repeats, rows, problem, "PF-ODE")
        row["max_abs_diff_vs_jaxsde"] = float(jnp.max(jnp.abs(d_sol.x - pf_sol.x)))
        ratios[cls.__name__] = dict(wall_ratio=pf["wall_s"] / row["wall_s"], nfe_ratio=pf["mean_nfe"] / row["mean_nfe"],
                                    max_abs_diff=row["max_abs_diff_vs_jaxsde"])
    summary[problem]["pf_ode"] = ratios
    summary[problem]["pf_compile_s"] = pf["compile_s"]


def write_markdown(path, rows, summary, command, machine):
    lines = ["# jaxsde vs diffrax", "", f"Command: `{command}`", "",
             f"Machine: {machine['cpu_count']} CPU cores, {machine['platform']}, jax {machine['jax']}, "
             f"diffrax {machine['diffrax']}, backend {machine['backend']}, {machine['date']}", "",
             "Wall times: compiled, warmed up, `block_until_ready`, median of repeats; ratios from one process.", "",
             "## Headline", "",
             "| problem | GGF vs matched diffrax adaptive SDE (wall) | NFE diffrax/GGF | EM / diffrax Euler per step | "
             "PF dopri5 / diffrax Dopri5 (wall) | / Tsit5 | compile s: GGF, diffrax SDE, EM, Euler |",
             "|---|---|---|---|---|---|---|"]
    for prob, s in summary.items():
        sp = "no diffrax setting matched"
        if s["speedup_wall"]:
            sp = f"{s['speedup_wall']:.1f}x faster ({s['matched_diffrax']})"
        nr = f"{s['nfe_ratio']:.2f}" if s["nfe_ratio"] else "-"
        dc = f"{s['diffrax_compile_s']:.1f}" if s["diffrax_compile_s"] else "-"
        lines.append(f"| {prob} | {sp} | {nr} | {s['em_per_step_ratio']:.2f} | "
                     f"{s['pf_ode']['Dopri5']['wall_ratio']:.2f} | {s['pf_ode']['Tsit5']['wall_ratio']:.2f} | "
                     f"{s['ggf_compile_s']:.1f}, {dc}, {s['em_compile_s']:.1f}, {s['euler_compile_s']:.1f} |")
    lines += ["", "## All runs", "",
              "| problem | family | solver | mean NFE | max NFE | wall s | compile s | temp MB | spread_w2 (floor) | "
              "sw2 (floor) | failed |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = (f"{r['spread_w2']:.3f} ({r['spread_w2_floor']:.3f}) | {r['sw2']:.4f} ({r['sw2_floor']:.4f})"
             if "sw2" in r else "- | -")
        lines.append(f"| {r['problem']} | {r['family']} | {r['solver']} | {r['mean_nfe']:.1f} | {r['max_nfe']} | "
                     f"{r['wall_s']:.3f} | {r['compile_s']:.2f} | {r['temp_mb']:.1f} | {q} | {r['failed']} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small n, few tolerances (smoke test)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--problems", default="gmm64,gmm3072,conv")
    args = parser.parse_args(argv)
    command = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    print(f"reproduce with: {command}", flush=True)
    sizes = dict(gmm64=1000, gmm3072=100, conv=64) if not args.quick else dict(gmm64=200, gmm3072=32, conv=16)
    repeats = 1 if args.quick else 2
    rows, summary = [], {}
    t0 = time.time()
    for problem in args.problems.split(","):
        bench_problem(problem, sizes[problem], repeats, args.quick, rows, summary)
    machine = dict(cpu_count=os.cpu_count(), platform=platform.platform(), jax=jax.__version__,
                   diffrax=dfx.__version__ if hasattr(dfx, "__version__") else "?", backend=jax.default_backend(),
                   date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    os.makedirs(args.out, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    with open(os.path.join(args.out, f"vs_diffrax{suffix}.json"), "w") as f:
        json.dump(dict(command=command, machine=machine, summary=summary, rows=rows), f, indent=1)
    write_markdown(os.path.join(args.out, f"vs_diffrax{suffix}.md"), rows, summary, command, machine)
    print(f"\nsummary: {json.dumps(summary, indent=1)}\ntotal {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
