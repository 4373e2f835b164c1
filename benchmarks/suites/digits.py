"""FD-digits and KID vs NFE on an embedded digits model, for EM, PC, the PF-ODE and GGF.

Every solver samples the same ``n`` keys; FD-digits / KID against the training set with the real-vs-real floor
(held-out digits, n <= 359) and each row's bootstrap sd (50 resamples); EM-1000 is rerun with a second seed.
"Within noise" of EM-1000: ``FD <= FD(EM-1000) + 2 sqrt(fd_std^2 + fd_std(EM-1000)^2)``. ``--solvers``: any
``EM <steps>`` / ``GGF <rtol>`` rows or the fixed ones. Writes ``digits_<model>[_quick][_<name>].*``.
"""

from __future__ import annotations

import numpy as np

import jaxsde
from jaxsde.testing.metrics.digits import DigitsMetrics

from ..harness.cli import options
from ..harness.machine import describe
from ..harness.samplers import sample_chunks
from ..harness.writer import columns, progress, yes


def parse_row(name: str):
    """``"EM <steps>"`` -> EulerMaruyama(steps); ``"GGF <rtol>"`` -> GottaGoFast(rtol)."""
    family, _, value = name.partition(" ")
    if family in ("EM", "GGF"):
        return jaxsde.EulerMaruyama(int(value)) if family == "EM" else jaxsde.GottaGoFast(rtol=float(value))
    raise ValueError(name)


def arguments(parser):
    options(parser, model="digits", n=1000, batch=500, name="", quick="64 samples; EM 1000, EM 50 and GGF 0.05")
    parser.add_argument("--solvers", default=None, help="comma-separated rows, e.g. 'EM 200,GGF 0.05' (EM 1000 "
                        "always runs)")


def run(args, ctx):
    ckpt, metrics = jaxsde.pretrained(args.model), DigitsMetrics()
    n = 64 if args.quick else args.n
    snr = 0.16 if ckpt.config["sde"] == "ve" else 0.01
    solvers = [*((f"EM {k}", jaxsde.EulerMaruyama(k)) for k in (1000, 200, 100, 50)),
               ("PC 100", jaxsde.PredictorCorrector(100, snr=snr)),
               *((f"PF {t}", jaxsde.ProbabilityFlow(rtol=float(t), atol=float(t))) for t in ("1e-3", "1e-5")),
               *((f"GGF {r}", jaxsde.GottaGoFast(rtol=r)) for r in (0.01, 0.02, 0.05, 0.1))]
    if args.quick:
        solvers = [solvers[0], solvers[3], solvers[-2]]
    elif args.solvers:
        known = dict(solvers)
        try:  # the fixed rows, or any "EM <steps>" / "GGF <rtol>"
            solvers = [(name, known[name] if name in known else parse_row(name)) for name in
                       ["EM 1000", *[w.strip() for w in args.solvers.split(",") if w.strip() != "EM 1000"]]]
        except ValueError:
            ctx.error(f"unknown solver rows in {args.solvers!r}: use 'EM <steps>', 'GGF <rtol>' or one of "
                      f"{list(known)}")

    def sample(solver, seed):
        return sample_chunks(ckpt.sde, ckpt.score_fn, ckpt.params, ckpt.shape, solver, n, seed, min(args.batch, n))

    rows = []
    for name, solver in solvers:
        x, nfe, fails, wall, compile_s = sample(solver, 0)
        rows.append(dict(solver=name, mean_nfe=float(nfe.mean()), max_nfe=int(nfe.max()), failed=fails, wall_s=wall,
                         compile_s=compile_s, **{k: float(v) for k, v in
                                                 metrics.report(x, ckpt.data_range, bootstrap=50).items()}))
        progress(rows[-1], "solver", "mean_nfe", "max_nfe", "fd", "fd_std", "kid", "confident", "class_tv", "wall_s",
                 "failed")
    fd_seed2 = metrics.report(sample(jaxsde.EulerMaruyama(1000), 1)[0], ckpt.data_range)["fd"]  # seed-to-seed noise
    em = rows[0]
    for row in rows:
        row["tolerance"] = 2.0 * float(np.hypot(row["fd_std"], em["fd_std"]))
        row["within_noise_of_em1000"] = bool(row["fd"] <= em["fd"] + row["tolerance"] and row["failed"] == 0)
    ok = [r for r in rows if r["solver"].startswith("GGF") and r["within_noise_of_em1000"]]
    best = min(ok, key=lambda r: r["mean_nfe"]) if ok else None
    headline = (f"smallest GGF NFE within noise of EM 1000 (FD <= {em['fd']:.3f} + 2 x combined std): "
                f"{best['solver']} at {best['mean_nfe']:.1f} mean NFE -> {em['mean_nfe'] / best['mean_nfe']:.2f}x "
                "fewer than EM 1000" if best else "no GGF setting within noise of EM 1000")
    print(headline, flush=True)
    ctx.save(f"digits_{args.model}" + ("_quick" if args.quick else "") + (f"_{args.name}" if args.name else ""),
             dict(model=args.model, n=n, rows=rows, fd_em1000_seed1=fd_seed2, tolerance=em["tolerance"],
                  headline=headline))


def render(data):
    rows = data["rows"]
    model = data.get("model") or data["command"].split("--model ")[1].split()[0]  # older files: the command's
    lines = [f"# {model}: FD-digits vs NFE", "", f"Command: `{data['command']}`", "",
             f"{describe(data['machine'])}; n = {data['n']} samples per solver, seed 0; EM-1000 seed 1 FD "
             f"{data['fd_em1000_seed1']:.3f}.", "", f"**{data['headline']}**", "",
             *columns(rows, {"solver": "{solver}", "mean NFE": "{mean_nfe:.1f}", "max NFE": "{max_nfe}",
                             "FD-digits +- bootstrap std": "{fd:.2f} +- {fd_std:.2f}", "KID": "{kid:.3f}",
                             "confident": "{confident:.2f}", "class TV": "{class_tv:.3f}", "wall s": "{wall_s:.1f}",
                             "failed": "{failed}",
                             "within noise of EM 1000": lambda r: yes(r["within_noise_of_em1000"])}),
             "", f"Real-vs-real floor: FD {rows[0]['fd_floor']:.3f}, KID {rows[0]['kid_floor']:.3f} "
             f"(n={int(rows[0]['n_floor'])} held-out vs train)."]
    return "\n".join(lines)
