"""galaxygrad's published score models: NFE and wall time at matched quality, per sampler family.

galaxygrad 0.2.1's score nets (weights read from the installed wheel) via ``jaxsde.checkpoints.load(path,
"galaxygrad")``; statistics on the flux images ``ckpt.to_data(y)`` (``GalaxyMetrics``: pixel sliced W2, power
spectrum in dex, flux-histogram TV, each +- its bootstrap sd). Reference: ``REF_MULT * n`` PF-ODE samples at
rtol = atol = 1e-5; a second set of ``n`` on the rows' keys is the noise floor. Rows (sample i: ``fold_in(seed,
i)``): EM, GGF, the PF-ODE, DPM-Solver++ 2M, ``AdaptiveDPMSolver`` / ``AdaptiveMultistepSolver`` (eta / tau 0 and
1; tau 0 also with ``max_step = MAX_STEP``) and k-diffusion's ``sample_dpm_adaptive`` on the same jitted score
(:mod:`benchmarks.harness.kdiffusion`), atol ``default_atol * rtol / 0.05``. *Within noise* of a row A: every
statistic ``q <= q_A + 2 sqrt(sd^2 + sd_A^2)``, no failures; ``anchor`` = the finest EM row, ``ref`` = the
floor. Wall: one run after ahead-of-time compilation (jaxsde) or a warm-up call (k-diffusion). The ``.json`` is
rewritten after each model.
"""

from __future__ import annotations

import datetime
import importlib.util
import math
import os
import platform
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.testing.metrics.galaxies import GalaxyMetrics

from ..harness.cli import options
from ..harness.kdiffusion import k_diffusion_model
from ..harness.machine import git_commit
from ..harness.samplers import prior, sample_chunks
from ..harness.writer import columns, progress, yes

MODELS = {
    "hsc32": "eqx_hsc_ScoreNet32.eqx",
    "hsc64": "eqx_hsc_ScoreNet64.eqx",
    "lsst60": "eqx_lsst_ScoreNet60.eqx",
    "ztf32": "eqx_ZTF_ScoreNet32.eqx",
    "ztf64": "eqx_ZTF_ScoreNet64.eqx",
}
METRICS = {"sw2": "sliced W2 (flux)", "ps": "power spectrum (dex)", "hist": "flux histogram TV"}


def galaxygrad_dir() -> str:
    """The installed galaxygrad package folder (found without importing it: the import fails on Linux)."""
    spec = importlib.util.find_spec("galaxygrad")
    if spec is None or spec.origin is None:
        raise RuntimeError("galaxygrad is not installed: pip install galaxygrad==0.2.1")
    return os.path.dirname(spec.origin)


class Row(NamedTuple):
    family: str
    setting: str
    lib: str  # "jaxsde" | "k-diffusion"
    make: Any  # () -> jaxsde solver, or k-diffusion keyword arguments


REF_MULT = 2  # the reference set: REF_MULT * n samples
GGF_RTOLS = (0.5, 0.2, 0.1, 0.05)
RTOLS = (0.2, 0.05, 0.01)  # the exponential integrators' and k-diffusion's
MAX_STEP = 0.5  # the capped AdaptiveMultistepSolver's step cap in half log-SNR (adaptive --mode kd's KD_MAX_STEP)


def rows(quick: bool, atol0: float, ggf_rtols: tuple[float, ...] = GGF_RTOLS,
         rtols: tuple[float, ...] = RTOLS, families: tuple[str, ...] = ()) -> list[Row]:
    """The sweep; the first row is the EM anchor ("EM-1000" in a full run). ``families``: substrings; when given,
    only the rows whose family contains one (EM included only if named)."""
    em = (1000, 300, 100, 30) if not quick else (50, 10)
    ggf = ggf_rtols if not quick else (0.2,)
    pf = (1e-2, 1e-3) if not quick else ()  # + the reference sampler's own row (the floor set)
    dpmpp = (10, 20, 40) if not quick else (10,)
    rtols = rtols if not quick else (0.1,)
    etas = (0.0, 1.0) if not quick else (0.0,)

    def atol(r):
        return round(atol0 * r / 0.05, 6)

    out = [Row("EM", str(s), "jaxsde", lambda s=s: jaxsde.EulerMaruyama(s)) for s in em]
    out += [Row("GottaGoFast", f"rtol={r:g}", "jaxsde", lambda r=r: jaxsde.GottaGoFast(rtol=r)) for r in ggf]
    out += [Row("ProbabilityFlow", f"tol={t:g}", "jaxsde", lambda t=t: jaxsde.ProbabilityFlow(t, t)) for t in pf]
    out += [Row("DPMSolverPP-2M", str(k), "jaxsde", lambda k=k: jaxsde.DPMSolverPP(num_steps=k)) for k in dpmpp]
    for eta in etas:
        out += [Row(f"AdaptiveDPMSolver eta={eta:g}", f"rtol={r:g}", "jaxsde",
                    lambda r=r, eta=eta: jaxsde.AdaptiveDPMSolver(rtol=r, atol=atol(r), eta=eta)) for r in rtols]
    for tau in etas:
        out += [Row(f"AdaptiveMultistepSolver tau={tau:g}", f"rtol={r:g}", "jaxsde",
                    lambda r=r, tau=tau: jaxsde.AdaptiveMultistepSolver(rtol=r, atol=atol(r), tau=tau))
                for r in rtols]
    out += [Row(f"AdaptiveMultistepSolver tau=0 max_step={MAX_STEP:g}", f"rtol={r:g}", "jaxsde",
                lambda r=r: jaxsde.AdaptiveMultistepSolver(rtol=r, atol=atol(r), tau=0.0, max_step=MAX_STEP))
            for r in rtols]
    for eta in etas:
        out += [Row(f"k-diffusion dpm_adaptive eta={eta:g}", f"rtol={r:g}", "k-diffusion",
                    lambda r=r, eta=eta: dict(rtol=r, atol=atol(r), eta=eta)) for r in rtols]
    return [r for r in out if any(f in r.family for f in families)] if families else out


# --- runners ------------------------------------------------------------------------------------
def run_jaxsde(ckpt, solver, seed: int, n: int) -> dict:
    """``n`` samples (sample i: fold_in(PRNGKey(seed), i)) -> x (log space), per-sample NFE, failures, times."""
    out = sample_chunks(ckpt.sde, ckpt.score_fn, ckpt.params, ckpt.shape, solver, n, seed, n)
    return dict(zip(("x", "nfe", "failed", "wall_s", "compile_s"), out, strict=True))


def k_diffusion_runner(ckpt):
    """k-diffusion's ``sample_dpm_adaptive`` on the jitted jaxsde score -> ``run(kwargs, x_T, seed)``."""

    km = k_diffusion_model(ckpt.sde, ckpt.score_fn(ckpt.params))  # k-diffusion's x = x_VP / alpha, sigma / alpha

    def run(kwargs, x_T, seed):
        xt = km.initial(x_T)
        sig_e = jnp.full((len(x_T),), km.sigma_min, jnp.float32)
        jax.block_until_ready(km.denoise(jnp.asarray(xt.numpy()), sig_e))  # compile + warm-up at this batch size
        t0 = time.perf_counter()
        x, nfe = km.sample_adaptive(xt, seed, **kwargs)  # + the final denoising call (+1 NFE)
        wall = time.perf_counter() - t0
        return dict(x=x, nfe=np.full((len(x),), nfe),
                    failed=int(np.sum(~np.isfinite(x).all(axis=(1, 2, 3)))), wall_s=wall, compile_s=0.0)

    return run


# --- decisions ----------------------------------------------------------------------------------
def within(res: dict, anchor: dict) -> bool:
    """Every statistic of ``res`` within 2 combined bootstrap sds of ``anchor``'s (or below it), no failures."""
    return res.get("failed", 0) == 0 and all(
        res[m] <= anchor[m] + 2.0 * math.hypot(res[m + "_sd"], anchor[m + "_sd"]) for m in METRICS)


def _best(results: list[dict], key: str) -> dict:
    best = {}
    for r in results:
        if r[key] and (r["family"] not in best or r["mean_nfe"] < best[r["family"]]["mean_nfe"]):
            best[r["family"]] = r
    return best


PAIRS = {  # jaxsde's adaptive exponential integrators vs k-diffusion's, like with like
    "deterministic": (("AdaptiveDPMSolver eta=0", "AdaptiveMultistepSolver tau=0",
                       f"AdaptiveMultistepSolver tau=0 max_step={MAX_STEP:g}"),
                      ("k-diffusion dpm_adaptive eta=0",)),
    "stochastic": (("AdaptiveDPMSolver eta=1", "AdaptiveMultistepSolver tau=1"),
                   ("k-diffusion dpm_adaptive eta=1",)),
}


def headline(results: list[dict], floor: dict) -> dict:
    """Mark every row ``within_anchor`` / ``within_ref``; per family the fewest mean NFE under each; ratios.
    Without EM rows (``--families``) only the reference criterion is decided (``anchor`` None)."""
    em_rows = [r for r in results if r["family"] == "EM"]
    anchor = max(em_rows, key=lambda r: int(r["setting"])) if em_rows else None
    for r in results:
        r["within_anchor"] = None if anchor is None else within(r, anchor)
        r["within_ref"] = within(r, floor)
    out = dict(anchor=None, anchor_nfe=None) if anchor is None else dict(
        anchor=f"EM-{anchor['setting']}", anchor_nfe=anchor["mean_nfe"])
    vs_kd = []
    for crit in ("ref",) if anchor is None else ("anchor", "ref"):
        best = _best(results, "within_" + crit)
        out["best" if crit == "anchor" else "best_ref"] = {
            f: dict(setting=r["setting"], mean_nfe=r["mean_nfe"], max_nfe=r["max_nfe"], wall_s=r["wall_s"])
            for f, r in best.items()}
        for kind, (ours_f, kd_f) in PAIRS.items():
            ours = [best[f] for f in ours_f if f in best]
            kd = [best[f] for f in kd_f if f in best]
            if ours and kd:
                o, k = min(ours, key=lambda r: r["mean_nfe"]), min(kd, key=lambda r: r["mean_nfe"])
                vs_kd.append(dict(criterion=crit, kind=kind, ours=f"{o['family']} {o['setting']}",
                                  ours_nfe=o["mean_nfe"], kd=f"{k['family']} {k['setting']}", kd_nfe=k["mean_nfe"],
                                  nfe_ratio=k["mean_nfe"] / o["mean_nfe"], wall_ratio=k["wall_s"] / o["wall_s"]))
    out["vs_k_diffusion"] = vs_kd
    ggf, em = out.get("best", {}).get("GottaGoFast"), out.get("best", {}).get("EM")
    if ggf is not None and anchor is not None:
        out["ggf_vs_anchor"] = anchor["mean_nfe"] / ggf["mean_nfe"]
        if em is not None:
            out["ggf_vs_cheapest_em"] = em["mean_nfe"] / ggf["mean_nfe"]
    return out


# --- one model ----------------------------------------------------------------------------------
def bench_model(name: str, n: int, n_ref: int, quick: bool, seed: int, log,
                ggf_rtols: tuple[float, ...] = GGF_RTOLS, rtols: tuple[float, ...] = RTOLS,
                families: tuple[str, ...] = ()) -> dict:
    path = os.path.join(galaxygrad_dir(), MODELS[name])
    ckpt = jaxsde.checkpoints.load(path, "galaxygrad")
    ref_tol = 1e-3 if quick else 1e-5
    ref_solver, ref_label = jaxsde.ProbabilityFlow(ref_tol, ref_tol), f"ProbabilityFlow({ref_tol:g}, {ref_tol:g})"

    def flux(x):
        return np.asarray(ckpt.to_data(jnp.asarray(x)))

    t0 = time.perf_counter()
    ref = run_jaxsde(ckpt, ref_solver, seed + 1, n_ref)
    second = run_jaxsde(ckpt, ref_solver, seed, n)  # the rows' keys, independent of the reference's
    gm = GalaxyMetrics(flux(ref["x"]), jax.random.PRNGKey(seed + 3))
    floor = gm.floor(flux(second["x"]))
    log(f"{name}: reference {ref_label} n={n_ref}: NFE {ref['nfe'].mean():.1f} (max {ref['nfe'].max()}) "
        f"{time.perf_counter() - t0:.0f}s; floor " + " ".join(f"{m} {floor[m]:.4g}+-{floor[m + '_sd']:.2g}"
                                                              for m in METRICS))
    results = []
    kd_run = None
    x_T = prior(ckpt, seed, n)
    sweep = rows(quick, ckpt.sde.default_atol, ggf_rtols, rtols, families)
    for row in sweep + [Row("ProbabilityFlow", f"tol={ref_tol:g}", "jaxsde", None)]:
        if row.make is None:  # the reference sampler on the rows' keys: the floor set, already run
            res = second
        elif row.lib == "jaxsde":
            res = run_jaxsde(ckpt, row.make(), seed, n)
        else:
            kd_run = kd_run or k_diffusion_runner(ckpt)
            res = kd_run(row.make(), x_T, seed)
        q = gm.report(flux(res["x"]))
        r = dict(family=row.family, setting=row.setting, lib=row.lib, mean_nfe=float(res["nfe"].mean()),
                 max_nfe=int(res["nfe"].max()), wall_s=res["wall_s"], compile_s=res["compile_s"],
                 failed=res["failed"], **q)
        results.append(r)
        progress(r, "family", "setting", "mean_nfe", "max_nfe", *(k for m in METRICS for k in (m, m + "_sd")),
                 "wall_s", "compile_s", "failed")
    head = headline(results, floor)
    return dict(file=MODELS[name], shape=list(ckpt.shape), n=n, n_ref=n_ref, reference=ref_label,
                ref_mean_nfe=float(ref["nfe"].mean()), ref_failed=ref["failed"] + second["failed"],
                floor=floor, rows=results, headline=head)


# --- report -------------------------------------------------------------------------------------
def fmt(r: dict, m: str) -> str:
    return f"{r[m]:.4g} +- {r[m + '_sd']:.2g}"


def markdown(meta: dict, models: dict) -> str:
    lines = ["# galaxygrad models: NFE and wall time at matched quality", "",
             f"`{meta['command']}`", "",
             f"{meta['date']}; {meta['machine']}; jax {meta['jax']}; git {meta['git']}; load average at start "
             f"{meta['load_start']}, at end {meta['load_end']}; total {meta['total_s']:.0f} s." + (
                 " **--quick smoke run: sizes too small for any conclusion.**" if meta["quick"] else ""), "",
             "Statistics on flux images (`ckpt.to_data`): " + ", ".join(f"`{k}` = {v}" for k, v in METRICS.items())
             + ", each +- its bootstrap sd. `anchor`: within noise of the finest EM row (every statistic "
             "<= EM's + 2 combined sd); `ref`: the same against the floor (a second reference-sampler set "
             "against the reference). Wall: one run after ahead-of-time compilation (jaxsde) or after a "
             "warm-up call (k-diffusion), on a shared CPU.", ""]
    asked = meta["command"].split("--models ")[1].split()[0].split(",") if "--models " in meta["command"] else []
    unfinished = [m for m in asked if m not in models]
    if unfinished:
        lines += [f"**Not in this file: {', '.join(unfinished)}** (the run was stopped before these models finished; "
                  "the JSON is written after each model).", ""]
    for name, mod in models.items():
        h, fl = mod["headline"], mod["floor"]
        lines += [f"## {name} (`{mod['file']}`, {'x'.join(map(str, mod['shape']))}, n = {mod['n']})", "",
                  f"Reference: {mod['reference']}, {mod['n_ref']} samples (mean NFE {mod['ref_mean_nfe']:.1f}, "
                  f"{mod['ref_failed']} failed). Floor (n = {mod['n']} independent reference samples): "
                  + ", ".join(f"{m} {fmt(fl, m)}" for m in METRICS) + ".", "",
                  ]
        anchor_row = next((r for r in mod["rows"] if r["family"] == "EM" and f"EM-{r['setting']}" == h["anchor"]),
                          None)
        if anchor_row is None:
            lines += ["No EM rows (`--families`): only the reference criterion.", ""]
        elif not anchor_row["within_ref"]:
            lines += [f"{h['anchor']} itself is not within noise of the reference: read `anchor` as \"at least as "
                      f"close to the reference as {h['anchor']}\", and `ref` as the stricter test.", ""]
        for key, title in (("best", f"within noise of {h['anchor']}** ({h['anchor_nfe'] or 0:.0f} NFE)"),
                           ("best_ref", "within noise of the reference** (floor)")):
            if key not in h:
                continue
            lines += [f"**Fewest mean NFE {title}:", "", *columns(
                [dict(b, family=f) for f, b in sorted(h[key].items(), key=lambda kv: kv[1]["mean_nfe"])],
                {"family": "{family}", "setting": "{setting}", "mean NFE": "{mean_nfe:.1f}", "max NFE": "{max_nfe}",
                 "wall s": "{wall_s:.2f}"})]
            missing = sorted({r["family"] for r in mod["rows"]} - set(h[key]))
            if missing:
                lines += ["", "Not within noise at any setting swept: " + ", ".join(missing) + "."]
            lines.append("")
        if "ggf_vs_anchor" in h:
            s = f"GGF (cheapest within noise of {h['anchor']}): {h['anchor']} NFE / GGF NFE = {h['ggf_vs_anchor']:.2f}"
            if "ggf_vs_cheapest_em" in h:
                em = h["best"]["EM"]["setting"]
                s += f"; cheapest EM within noise (EM-{em}) NFE / GGF NFE = {h['ggf_vs_cheapest_em']:.2f}"
            lines += [s + " (above 1: GGF needs fewer NFE).", ""]
        elif h["anchor"] is not None and any(r["family"] == "GottaGoFast" for r in mod["rows"]):
            lines += [f"GGF: no setting swept is within noise of {h['anchor']}.", ""]
        for a in h.get("vs_k_diffusion", []):
            crit = h["anchor"] if a["criterion"] == "anchor" else "the reference"
            lines += [f"{a['kind'].capitalize()} adaptive exponential integrators vs k-diffusion, cheapest within "
                      f"noise of {crit}: {a['ours']} {a['ours_nfe']:.1f} NFE vs {a['kd']} {a['kd_nfe']:.1f} NFE: "
                      f"k-diffusion / jaxsde NFE = {a['nfe_ratio']:.2f}, wall = {a['wall_ratio']:.2f} (above 1: "
                      "jaxsde's is cheaper).", ""]
        lines += [*columns(mod["rows"], {"family": "{family}", "setting": "{setting}", "mean NFE": "{mean_nfe:.1f}",
                                          "max NFE": "{max_nfe}", **{m: lambda r, m=m: fmt(r, m) for m in METRICS},
                                          "anchor": lambda r: "-" if r["within_anchor"] is None else yes(
                                              r["within_anchor"]),
                                          "ref": lambda r: yes(r["within_ref"]), "wall s": "{wall_s:.2f}",
                                          "compile s": "{compile_s:.1f}", "failed": "{failed}"}), ""]
    return "\n".join(lines)


def arguments(parser):
    parser.add_argument("--models", default="hsc32,hsc64,lsst60", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--n", default="256,64,64", help="samples per row: one value, or one per model")
    options(parser, seed=0, name="galaxies", quick="a tiny smoke run (few rows, loose reference)")
    parser.add_argument("--ggf-rtols", default=",".join(map(str, GGF_RTOLS)), help="GGF's rtol sweep, comma-separated")
    parser.add_argument("--rtols", default=",".join(map(str, RTOLS)),
                        help="the rtol sweep of the adaptive exponential integrators and k-diffusion, comma-separated")
    parser.add_argument("--families", default="", help="comma-separated substrings: only the rows whose family has "
                        "one (without EM only the reference criterion is decided)")


def run(args, ctx):
    command = ctx.command
    names = args.models.split(",")
    ns = [int(v) for v in args.n.split(",")]
    if len(ns) == 1:
        ns = ns * len(names)
    if len(ns) != len(names) or any(v < 2 for v in ns) or any(m not in MODELS for m in names):
        ctx.error(f"--models from {list(MODELS)} and one --n >= 2 per model (or one for all)")
    start = time.perf_counter()
    meta = dict(command=command, date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                machine=f"{platform.machine()} {os.cpu_count()} CPUs ({jax.devices()[0].platform})",
                jax=jax.__version__, git=git_commit(), quick=args.quick, load_start=round(os.getloadavg()[0], 2))

    models = {}
    for name, n in zip(names, ns, strict=True):
        models[name] = bench_model(name, n, REF_MULT * n, args.quick, args.seed, lambda s: print(s, flush=True),
                                   tuple(float(v) for v in args.ggf_rtols.split(",")),
                                   tuple(float(v) for v in args.rtols.split(",")),
                                   tuple(f for f in args.families.split(",") if f))
        meta.update(load_end=round(os.getloadavg()[0], 2), total_s=time.perf_counter() - start)
        data = ctx.save(args.name, dict(meta=meta, models=models))  # after each model
    return data


def render(data: dict) -> str:
    for mod in data["models"].values():  # the decisions, from the stored measurements
        mod["headline"] = headline(mod["rows"], mod["floor"])
    return markdown(data["meta"], data["models"])
