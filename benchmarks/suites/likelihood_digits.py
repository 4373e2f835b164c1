"""Bits/dim of the held-out digits under the embedded models (``jaxsde likelihood``), with a check of
the Hutchinson estimate against the exact divergence on a subset.

``jaxsde.apps.likelihood_job.run_likelihood`` at the CLI's defaults (Hutchinson, 4 probes, tolerance 1e-4) on the
first ``--n`` held-out digits, uniformly dequantized, then on the first ``--exact-n`` with the exact divergence at
1e-5 and the same noise: their paired difference is the Hutchinson and tolerance error. Writes
``likelihood_digits.{json,md}`` and a histogram per model.
"""

from __future__ import annotations

import math
import os

import numpy as np

from jaxsde.apps.likelihood_job import run_likelihood

from ..harness.machine import describe
from ..harness.writer import table


def arguments(parser):
    parser.add_argument("--models", default="digits,digits-ve")
    parser.add_argument("--n", type=int, default=359)
    parser.add_argument("--exact-n", type=int, default=48)


def run(args, ctx):
    os.makedirs(args.out, exist_ok=True)
    reports = []
    for model in args.models.split(","):
        hist = os.path.join(args.out, f"likelihood_{model}_hist.png")
        main_run = run_likelihood(model=model, n=args.n, out=hist)
        exact = run_likelihood(model=model, n=args.exact_n, divergence="exact", rtol=1e-5, atol=1e-5,
                               batch_size=args.exact_n)
        diff = np.asarray(main_run["per_sample"][:args.exact_n]) - np.asarray(exact["per_sample"])
        check = dict(n=args.exact_n, mean_diff=float(diff.mean()),
                     diff_se=float(diff.std(ddof=1) / math.sqrt(diff.size)))
        reports.append(dict(model=model, hist=os.path.basename(hist), main=main_run, exact=exact, check=check))
        print(f"{model}: {main_run['bits_per_dim']:.4f} +- {main_run['std_err']:.4f} bits/dim (n={args.n}, NFE "
              f"{main_run['mean_nfe']:.1f}, {main_run['wall_s']:.0f} s); exact on {args.exact_n}: "
              f"{exact['bits_per_dim']:.4f} (NFE {exact['mean_nfe']:.1f}, {exact['wall_s']:.0f} s); paired diff "
              f"{check['mean_diff']:+.4f} +- {check['diff_se']:.4f}", flush=True)
    ctx.save("likelihood_digits", dict(reports=reports))


def render(data: dict) -> str:
    reports = data["reports"]
    lines = ["# Bits/dim of the held-out digits under the embedded models", "", f"Command: `{data['command']}`", "",
             f"{describe(data['machine'])}. The digits take 17 values per pixel: each held-out digit is dequantized "
             "uniformly over "
             f"its 17 cells (`jaxsde.dequantize`, levels = 17) and its log-density converted with "
             f"`jaxsde.bits_per_dim` (uniform noise: log2(17) = {math.log2(17):.3f} bits/dim). Standard errors are "
             f"over the digits (dequantization and probe noise included).", "",
             *table(["model", "bits/dim +- se", "n", "divergence", "tol", "mean NFE", "max NFE", "failed", "wall s"],
                    [[r["model"], f"{x['bits_per_dim']:.4f} +- {x['std_err']:.4f}", x["n"],
                      f"hutchinson, K = {x['num_probes']}" if x["divergence"] == "hutchinson" else x["divergence"],
                      f"{x['rtol']:g}", f"{x['mean_nfe']:.1f}", x["max_nfe"], x["num_failed"], f"{x['wall_s']:.0f}"]
                     for r in reports for x in (r["main"], r["exact"])]),
             "", "Hutchinson (K = 4, tol 1e-4) minus exact (tol 1e-5) on the same dequantized digits, paired:",
             *(f"- {r['model']}: {c['mean_diff']:+.4f} +- {c['diff_se']:.4f} bits/dim over {c['n']} digits"
               for r in reports for c in [r["check"]]), "", *(f"![{r['model']}]({r['hist']})" for r in reports)]
    return "\n".join(lines)
