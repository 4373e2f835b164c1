"""Likelihood accuracy against cost: exact trace vs Hutchinson probes vs k-diffusion, one process.

A VE Gaussian mixture (4 modes, data in [0, 1], sigma_max 50) whose ``log p_eps`` is exact; ``n`` data points.
Rows: ``jaxsde.log_likelihood`` with the exact divergence and K = 1, 4, 16 Rademacher probes, and k-diffusion
0.1.1's ``log_likelihood`` (torchdiffeq dopri5, one probe, one step sequence per batch) on the same mixture's
torch denoiser, at rtol = atol = 1e-4 and 1e-5. Per row: error of ``log_p`` in nats per dimension (bias +- its
standard error, RMS; includes the prior's mismatch with the true ``p_T``, reported), mean NFE, wall time per
likelihood (median of ``repeats`` interleaved rounds after a warm-up; compile time apart).
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

import jaxsde
from jaxsde.likelihood import log_likelihood_batch
from jaxsde.testing.targets import GaussianMixture

from ..harness.cli import options
from ..harness.kdiffusion import sampling_module
from ..harness.machine import describe, machine_info
from ..harness.timing import interleaved
from ..harness.writer import columns, progress

ESTIMATORS = {"exact": dict(divergence="exact"), **{f"K={k}": dict(divergence="hutchinson", num_probes=k)
                                                  for k in (1, 4, 16)}}


def torch_denoiser(gm: GaussianMixture, torch):
    """The mixture's exact denoiser ``D(x, sigma) = x + sigma^2 score`` for a VE batch ``x`` ``(n, d)``."""
    means = torch.tensor(np.asarray(gm.means).reshape(gm.num_modes, -1))
    scales = torch.tensor(np.asarray(gm.scales))
    log_w = torch.log(torch.tensor(np.asarray(gm.weights)))
    d = means.shape[1]

    def denoiser(x, sigma):
        s2 = (sigma.reshape(-1, 1) ** 2).to(x.dtype)
        var = scales[None, :].to(x.dtype) ** 2 + s2
        diff = x[:, None, :] - means[None].to(x.dtype)
        logits = log_w[None].to(x.dtype) - 0.5 * (diff**2).sum(-1) / var - 0.5 * d * torch.log(2 * math.pi * var)
        r = torch.softmax(logits, dim=-1)
        score = -(r[..., None] * diff / var[..., None]).sum(1)
        return x + s2 * score

    return denoiser


def arguments(parser):
    parser.add_argument("--dim", type=int, default=16, help="the mixture's dimension (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (default 3)")
    options(parser, n=64, name="likelihood")


def run(args, ctx):
    import torch
    kd = sampling_module()
    if kd is None:
        raise SystemExit("k-diffusion is not installed: pip install --no-deps k-diffusion==0.1.1.post1")
    torch.set_num_threads(os.cpu_count() or 1)

    sde = jaxsde.VESDE(sigma_max=50.0)
    gm = GaussianMixture.random(jax.random.PRNGKey(0), 4, (args.dim,), scale=0.1, data_range=sde.data_range)
    xs = gm.sample(jax.random.PRNGKey(1), args.n)
    true = np.asarray(gm.log_prob(sde, xs, sde.eps), np.float64)
    score = gm.score(sde)
    denoiser = torch_denoiser(gm, torch)
    sigma_min = float(sde.sigma(sde.eps))
    xs_torch = torch.tensor(np.asarray(xs).reshape(args.n, -1))

    rows = {}
    for tol in (1e-4, 1e-5):
        for label, kw in ESTIMATORS.items():
            fn = jax.jit(lambda k, xs, kw=kw, tol=tol: log_likelihood_batch(k, sde, score, xs, rtol=tol, atol=tol,
                                                                             **kw))
            t0 = time.perf_counter()
            compiled = fn.lower(jax.random.PRNGKey(2), xs).compile()
            rows[f"jaxsde {label}, tol {tol:g}"] = dict(kind="jaxsde", tol=tol, label=label,
                                                        compile_s=time.perf_counter() - t0, call=lambda c=compiled:
                                                        jax.block_until_ready(c(jax.random.PRNGKey(2), xs)))

        def kd_call(tol=tol):
            torch.manual_seed(2)
            return kd.log_likelihood(denoiser, xs_torch, sigma_min, sde.sigma_max, atol=tol, rtol=tol)

        rows[f"k-diffusion K=1, tol {tol:g}"] = dict(kind="k-diffusion", tol=tol, label="K=1", compile_s=0.0,
                                                     call=kd_call)
    times, outputs = interleaved({name: row["call"] for name, row in rows.items()}, args.repeats, rotate=False)
    d = args.dim
    results_rows, mismatch = [], None
    for name, row in rows.items():
        out = outputs[name]
        if row["kind"] == "jaxsde":
            log_p = np.asarray(out.log_p, np.float64)
            nfe = float(np.mean(np.asarray(out.stats.nfe)))
            failed = int(np.sum(np.asarray(out.result) != 0))
            if row["label"] == "exact" and row["tol"] == 1e-5:
                true_T = np.asarray(gm.log_prob(sde, out.x_T, sde.T), np.float64)
                mismatch = float(np.mean(true_T - np.asarray(out.prior_log_p)) / d)
        else:
            ll, info = out
            log_p = ll.detach().numpy().astype(np.float64)
            nfe, failed = float(info["fevals"]), 0
        err = (log_p - true) / d
        results_rows.append(dict(row=name, kind=row["kind"], tol=row["tol"], estimator=row["label"],
                                 bias=float(err.mean()), bias_se=float(err.std(ddof=1) / math.sqrt(len(err))),
                                 rms=float(np.sqrt(np.mean(err**2))), mean_nfe=nfe, failed=failed,
                                 wall_per_likelihood_ms=1e3 * float(np.median(times[name])) / args.n,
                                 compile_s=row["compile_s"], times_s=times[name]))
        progress(results_rows[-1], "row", "bias", "bias_se", "rms", "mean_nfe", "wall_per_likelihood_ms")

    by = {r["row"]: r for r in results_rows}
    ratios = {tol: by[f"k-diffusion K=1, tol {tol:g}"]["wall_per_likelihood_ms"]
              / by[f"jaxsde K=1, tol {tol:g}"]["wall_per_likelihood_ms"] for tol in (1e-4, 1e-5)}
    ctx.save(args.name, dict(machine=machine_info("torch", "k-diffusion"), dim=d, n=args.n, repeats=args.repeats,
                             prior_mismatch_per_dim=mismatch, kd_over_jaxsde_wall_k1=ratios, rows=results_rows))


def render(data: dict) -> str:
    d, n, ratios = data["dim"], data["n"], {float(k): v for k, v in data["kd_over_jaxsde_wall_k1"].items()}
    repeats = data.get("repeats", len(data["rows"][0]["times_s"]))
    lines = [f"# Likelihood: accuracy vs cost, jaxsde vs k-diffusion (VE mixture, d = {d})", "",
             f"Command: `{data['command']}`", "",
             f"{describe(data['machine'])}; n = {n} points from the data, the same points in every row; error = "
             f"(log_p - exact log p_eps) / d in nats per dimension. Every row's error includes the prior's "
             f"mismatch with the true p_T, mean {data['prior_mismatch_per_dim']:+.2e} nats/dim here. Wall time: the "
             f"batch's time / n, median of {repeats} interleaved repeats after a warm-up (compile apart).", "",
             f"**wall time per likelihood, k-diffusion / jaxsde, one probe each: {ratios[1e-4]:.1f}x at tol 1e-4, "
             f"{ratios[1e-5]:.1f}x at tol 1e-5**", "",
             *columns(data["rows"], {"row": "{row}", "bias (nats/dim) +- se": "{bias:+.2e} +- {bias_se:.1e}",
                                     "RMS error": "{rms:.2e}", "mean NFE": "{mean_nfe:.1f}",
                                     "ms per likelihood": "{wall_per_likelihood_ms:.2f}",
                                     "compile s": "{compile_s:.1f}", "failed": "{failed}"})]
    lines += ["", "k-diffusion's NFE is its batch's (one step sequence for all n points); jaxsde's is the mean of "
              "the per-sample step sequences. The exact divergence costs d Jacobian-vector products per evaluation, "
              "K probes cost K."]
    return "\n".join(lines)
