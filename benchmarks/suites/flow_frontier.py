"""Fixed-budget sampling of flow models at 5 / 10 / 20 NFE: jaxsde vs diffusers' flow schedulers and k-diffusion.

    python -m benchmarks run flow_frontier [--n 1000] [--seed 0] [--quick]

The flow ODE of :class:`jaxsde.FlowSDE` (``x_t = (1 - t) x_0 + t noise``) with the exact velocity of
two Gaussian mixtures in d = 64 (``jaxsde.testing.targets.GaussianMixture.ring``: 8 modes on a ring
of radius 0.6, std 0.05 ``ring8`` or 0.01 ``ring8-narrow``, whose velocity turns sharply near the
data), every library from the same ``N(0, I)`` draws, float32, in one process:

* jaxsde (the model ``jaxsde.Prediction(v, "velocity")``, from ``t = 1`` exactly, on
  ``jaxsde.flow.flow_grid(K, shift=s)`` or on ``t = 1`` followed by k-diffusion's ``K - 1`` Karras /
  exponential sigmas as times (:func:`sigma_grid`, rows ``[karras sigmas]``), the final denoising
  step ``x - t v`` counted): flow-matching
  Euler (``DDIM``), the native Heun (``EDMHeun(variables="native")``), DPM-Solver++ 2M / 3M
  (``"midpoint"``, diffusers' coefficients, and 3M ``"taylor"``), UniPC-2 / UniPC-3 (``bh2``), each
  at its defaults otherwise. (DEIS, iPNDM, LMS, SA-Solver and EDM's scaled-variable Heun refuse
  ``t_start = 1``; they are not in the table.)
* diffusers: ``FlowMatchEulerDiscreteScheduler`` and ``FlowMatchHeunDiscreteScheduler``
  (``shift``), ``DPMSolverMultistepScheduler`` and ``UniPCMultistepScheduler`` with
  ``use_flow_sigmas=True, prediction_type="flow_prediction"`` (``flow_shift``; ``solver_order`` 2,
  their default, and 3), every other setting at its default; the model is called at the state's
  ``sigma`` (``sched.sigmas[i]``: exact, not the truncated integer timestep a pipeline passes).
* k-diffusion 0.1.1: ``sample_dpmpp_2m``, ``sample_euler``, ``sample_heun``, ``sample_dpm_2`` through
  the exact change of variables ``sigma = t / (1 - t)``, ``x_kd = x / (1 - t)``, denoiser
  ``D(x_kd, sigma) = x - t v(x, t)`` at ``t = sigma / (1 + sigma)``, ``x = x_kd / (1 + sigma)``, on
  ``get_sigmas_karras`` (rho 7) and ``get_sigmas_exponential`` from ``sigma_max`` to
  ``sigma_min = 0.002`` then 0. ``sigma_max = inf`` (``t = 1``) is not representable: the sampler
  starts at a finite ``sigma_max`` (swept over ``KD_SIGMA_MAX``) from ``x_kd = sigma_max x_T``,
  k-diffusion's own start (the flow state ``t_max x_T`` at ``t_max``: the marginal with ``x_0``
  dropped).

Budgets: a 1-evaluation-per-step sampler gets ``B`` evaluations (``B - 1`` steps + the final
denoising step on jaxsde's side; ``B`` sigmas then 0 on diffusers' and k-diffusion's); a
2-evaluation one (Heun, DPM-2) ``K = (B + 1) // 2`` grid points, ``2K - 1`` NFE (5, 9, 19). NFE
is counted (model calls), never assumed. Every sampler is swept over the time shift
``SHIFTS`` (jaxsde and diffusers alike; k-diffusion over ``sigma_max`` and its two schedules), and
the best setting per budget is reported (chosen on the evaluation draws, for every library alike).

Quality: ``jaxsde.testing.metrics.mode_spread_w2`` against the data law (per mode, location and
spread in whitened units; count-weighted RMS) with its 30-resample bootstrap sd; its floor is the
same for ``n`` exact data samples. Secondary, pathwise: per sample the RMS over coordinates of
``x - x_ref``, ``x_ref`` the flow ODE's map to ``t = 0`` (jaxsde ``ProbabilityFlow`` at ``rtol =
atol = 1e-10`` in float64 to ``t = 1e-6``, then ``x - t v``), its mean over samples and that mean's
sd (``std / sqrt(n)``). A verdict says "jaxsde better" / "peer better" where the difference of
the two best rows exceeds 2 combined sd (``hypot`` of their sds), else "tie". Wall time: the batch,
one run after compilation (jaxsde) or the whole loop (the torch peers, whose model calls cross
from torch to the jitted JAX velocity and back: not a speed comparison).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.flow import flow_grid
from jaxsde.testing import metrics
from jaxsde.testing.targets import GaussianMixture

from ..harness.kdiffusion import sampling_module
from ..harness.problems import exact_target
from ..harness.samplers import prior
from ..harness.writer import table

BUDGETS = (5, 10, 20)
SHIFTS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
TARGETS = {"ring8": 0.05, "ring8-narrow": 0.01}
DIM = 64
KD_SIGMA_MIN = 0.002
KD_SIGMA_MAX = (10.0, 80.0, 1000.0)
KD_SAMPLERS = {"dpmpp_2m": 1, "euler": 1, "heun": 2, "dpm_2": 2}
SDE = jaxsde.FlowSDE()
LIBS = ("jaxsde", "diffusers", "k-diffusion")


def mixture(name: str, dtype=jnp.float32) -> GaussianMixture:
    return GaussianMixture.ring(8, (DIM,), radius=0.6, scale=TARGETS[name], key=jax.random.PRNGKey(1234), dtype=dtype)


def sigma_grid(k: int, schedule: str, sigma_max: float) -> tuple[float, ...]:
    """``k`` flow times from ``t = 1``: 1, then k-diffusion's ``k - 1`` Karras (rho 7) or exponential sigmas from
    ``sigma_max`` to ``KD_SIGMA_MIN`` as times ``t = sigma / (1 + sigma)`` (its grid, with a first step out of
    ``t = 1`` instead of starting at ``sigma_max``)."""
    ramp = np.linspace(0.0, 1.0, k - 1)
    if schedule == "karras":
        lo, hi = KD_SIGMA_MIN ** (1 / 7), sigma_max ** (1 / 7)
        sig = (hi + ramp * (lo - hi)) ** 7
    else:
        sig = np.exp(np.log(sigma_max) + ramp * (np.log(KD_SIGMA_MIN) - np.log(sigma_max)))
    return (1.0, *(float(v) for v in sig / (1.0 + sig)))


def grid_points(budget: int, per_step: int) -> int:
    """The number of grid times (diffusers' ``num_inference_steps``) at budget ``B``."""
    return budget if per_step == 1 else (budget + 1) // 2


# --- jaxsde ------------------------------------------------------------------------------------------------------
JAXSDE = {  # name -> (evaluations per step, (steps, grid) -> solver)
    "Euler (DDIM)": (1, lambda k, g: jaxsde.DDIM(k, grid=g)),
    "Heun (native)": (2, lambda k, g: jaxsde.EDMHeun(k, variables="native", grid=g)),
    "DPM-Solver++ 2M": (1, lambda k, g: jaxsde.DPMSolverPP(k, order=2, grid=g)),
    "DPM-Solver++ 3M": (1, lambda k, g: jaxsde.DPMSolverPP(k, order=3, grid=g)),
    "DPM-Solver++ 3M taylor": (1, lambda k, g: jaxsde.DPMSolverPP(k, order=3, solver_type="taylor", grid=g)),
    "UniPC-2": (1, lambda k, g: jaxsde.UniPC(k, order=2, grid=g)),
    "UniPC-3": (1, lambda k, g: jaxsde.UniPC(k, order=3, grid=g)),
}


@jax.jit
def _jaxsde_solve(mix, solver, x_T):
    """One program per solver structure and grid length (the grid and the mixture are traced)."""
    model = jaxsde.Prediction(mix.velocity(SDE), "velocity")
    keys = jax.random.split(jax.random.PRNGKey(0), x_T.shape[0])
    sol = jaxsde.solve_batch(keys, SDE, model, solver, x_T)
    return sol.x, sol.stats.nfe, sol.result


def run_jaxsde(mix, solver, x_T):
    out = jax.block_until_ready(_jaxsde_solve(mix, solver, x_T))  # compiles once per structure
    t0 = time.perf_counter()
    x, nfe, result = jax.block_until_ready(_jaxsde_solve(mix, solver, x_T))
    return np.asarray(out[0]), np.asarray(nfe), int(np.sum(np.asarray(result) != 0)), time.perf_counter() - t0


def reference(name: str, x_T) -> np.ndarray:
    """The flow ODE's map of ``x_T`` to ``t = 0`` (float64, Dormand-Prince at 1e-10 to 1e-6, then ``x - t v``)."""
    with jax.enable_x64(True):
        mix = mixture(name, jnp.float64)
        model = jaxsde.Prediction(mix.velocity(SDE), "velocity")
        x = jnp.asarray(np.asarray(x_T), jnp.float64)
        keys = jax.random.split(jax.random.PRNGKey(0), x.shape[0])
        sol = jax.jit(lambda x: jaxsde.solve_batch(keys, SDE, model, jaxsde.ProbabilityFlow(rtol=1e-10, atol=1e-10),
                                                   x, t_end=1e-6, max_steps=100_000))(x)
        assert np.all(np.asarray(sol.result) == 0), "reference failed"
        return np.asarray(sol.x)


# --- the torch peers ---------------------------------------------------------------------------------------------
class TorchVelocity:
    """The mixture's velocity as torch float32 ``v(x (B, d), t)`` (the jitted JAX function, batched), counting calls."""

    def __init__(self, mix):
        self.fn = jax.jit(jax.vmap(mix.velocity(SDE), in_axes=(0, None)))
        self.calls = 0

    def __call__(self, x, t: float):
        import torch

        self.calls += 1
        return torch.from_numpy(np.array(self.fn(jnp.asarray(x.numpy()), jnp.float32(t))))


def diffusers_scheduler(name: str, shift: float, order: int):
    import diffusers

    if name == "FlowMatchEulerDiscreteScheduler":
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    if name == "FlowMatchHeunDiscreteScheduler":
        return diffusers.FlowMatchHeunDiscreteScheduler(shift=shift)
    return getattr(diffusers, name)(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
                                    solver_order=order)


DIFFUSERS = {  # row name -> (class, evaluations per step, solver_order)
    "FlowMatchEuler": ("FlowMatchEulerDiscreteScheduler", 1, 1),
    "FlowMatchHeun": ("FlowMatchHeunDiscreteScheduler", 2, 2),
    "DPMSolverMultistep (order 2)": ("DPMSolverMultistepScheduler", 1, 2),
    "DPMSolverMultistep (order 3)": ("DPMSolverMultistepScheduler", 1, 3),
    "UniPCMultistep (order 2)": ("UniPCMultistepScheduler", 1, 2),
    "UniPCMultistep (order 3)": ("UniPCMultistepScheduler", 1, 3),
}
DIFFUSERS_DEFAULTS = {"shift": 1.0, "order": 2}  # the classes' defaults (shift / flow_shift 1, solver_order 2)


def run_diffusers(velocity: TorchVelocity, cls: str, shift: float, order: int, k: int, x_T):
    import torch

    sched = diffusers_scheduler(cls, shift, order)
    sched.set_timesteps(k)
    velocity.calls = 0
    t0 = time.perf_counter()
    x = torch.from_numpy(np.asarray(x_T, np.float32))
    with torch.no_grad():
        for i, ts in enumerate(sched.timesteps):
            x = sched.step(velocity(x, float(sched.sigmas[i])), ts, x).prev_sample
    return x.numpy(), velocity.calls, time.perf_counter() - t0


def run_k_diffusion(ks, velocity: TorchVelocity, sampler: str, schedule: str, sigma_max: float, budget: int, x_T):
    """``sample_<sampler>`` on the flow through ``sigma = t / (1 - t)``, ``x_kd = x / (1 - t)``."""
    import torch

    def denoiser(x_kd, sigma):
        s = float(sigma.reshape(-1)[0])  # k-diffusion passes the step's sigma for the whole batch
        t = s / (1.0 + s)
        x = x_kd / (1.0 + s)
        return x - t * velocity(x, t)

    steps = grid_points(budget, KD_SAMPLERS[sampler])
    make = ks.get_sigmas_karras if schedule == "karras" else ks.get_sigmas_exponential
    sigmas = make(steps, KD_SIGMA_MIN, sigma_max)
    velocity.calls = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        out = getattr(ks, "sample_" + sampler)(denoiser, sigma_max * torch.from_numpy(np.asarray(x_T, np.float32)),
                                               sigmas, disable=True)
    return out.numpy(), velocity.calls, time.perf_counter() - t0


# --- the suite ---------------------------------------------------------------------------------------------------
def arguments(parser):
    parser.add_argument("--n", type=int, default=1000, help="samples (the same N(0, I) draws for every sampler)")
    parser.add_argument("--seed", type=int, default=0, help="the draws' seed (jaxsde's prior draws of that seed)")
    parser.add_argument("--quick", action="store_true", help="128 samples, 5 NFE, shifts 1 and 3, ring8 only")


def run(args, ctx):
    import torch

    torch.set_num_threads(2)
    n = 128 if args.quick else args.n
    budgets = BUDGETS[:1] if args.quick else BUDGETS
    shifts = (1.0, 3.0) if args.quick else SHIFTS
    sigma_maxes = (80.0,) if args.quick else KD_SIGMA_MAX
    names = ("ring8",) if args.quick else tuple(TARGETS)
    ks = sampling_module()
    if ks is None:
        ctx.error("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    results = {}
    for tname in names:
        t_start = time.perf_counter()
        mix = mixture(tname)
        spread = jax.jit(lambda x, mix=mix: metrics.mode_spread_w2(mix, x))
        target = exact_target(tname, SDE, mix, lambda x, f=spread: float(f(jnp.asarray(x, jnp.float32))),
                              "mode-spread W2 (whitened) against the data law")
        x_T = prior(target, args.seed, n)
        x_ref = reference(tname, x_T)
        floor_q, floor_sd = target.quality(np.asarray(mix.sample(jax.random.PRNGKey(args.seed + 17), n)))
        velocity = TorchVelocity(mix)
        rows = []

        for b in budgets:
            for name, (per_step, make) in JAXSDE.items():
                k = grid_points(b, per_step)
                for s in shifts:
                    x, nfe, failed, wall = run_jaxsde(mix, make(k - 1, flow_grid(k, shift=s)), x_T)
                    rows.append(row(target, x_ref, "jaxsde", name, f"flow_grid({k}, shift={s:g})", b, x, nfe, failed,
                                    wall, shift=s))
                for schedule in ("karras", "exponential"):
                    for smax in sigma_maxes:
                        if k < 3:
                            continue
                        x, nfe, failed, wall = run_jaxsde(mix, make(k - 1, sigma_grid(k, schedule, smax)), x_T)
                        rows.append(row(target, x_ref, "jaxsde", f"{name} [{schedule} sigmas]",
                                        f"t = 1, then {k - 1} {schedule} sigmas {smax:g} .. {KD_SIGMA_MIN}", b, x, nfe,
                                        failed, wall, sigma_max=smax))
            for name, (cls, per_step, order) in DIFFUSERS.items():
                k = grid_points(b, per_step)
                for s in shifts:
                    x, calls, wall = run_diffusers(velocity, cls, s, order, k, x_T)
                    default = s == DIFFUSERS_DEFAULTS["shift"] and "order 3" not in name
                    rows.append(row(target, x_ref, "diffusers", name, f"{cls}, num_inference_steps={k}, shift={s:g}",
                                    b, x, calls, 0, wall, default=default, shift=s))
            for sampler in KD_SAMPLERS:
                for schedule in ("karras", "exponential"):
                    for smax in sigma_maxes:
                        x, calls, wall = run_k_diffusion(ks, velocity, sampler, schedule, smax, b, x_T)
                        rows.append(row(target, x_ref, "k-diffusion", f"sample_{sampler} ({schedule})",
                                        f"{grid_points(b, KD_SAMPLERS[sampler])} sigmas {smax:g} .. {KD_SIGMA_MIN} "
                                        "then 0", b, x, calls, 0, wall, sigma_max=smax))
            done = [r for r in rows if r["budget"] == b]
            print(f"  {tname} {b} NFE: {len(done)} rows, best " + ", ".join(
                f"{lib} {best['quality']:.4f} ({best['sampler']}, {best['setting']})"
                for lib in LIBS if (best := _best(done, lib, b, 'quality'))), flush=True)
        results[tname] = dict(scale=TARGETS[tname], floor=floor_q, floor_sd=floor_sd, rows=rows,
                              summary=summarize(rows, budgets), seconds=time.perf_counter() - t_start)
    ctx.save("flow_frontier", dict(n=n, seed=args.seed, dim=DIM, budgets=list(budgets), shifts=list(shifts),
                                   kd_sigma_max=list(sigma_maxes), kd_sigma_min=KD_SIGMA_MIN, targets=results))


def row(target, x_ref, lib, sampler, setting, budget, x, nfe, failed, wall, default=False, **extra) -> dict:
    """One result row: quality with its bootstrap sd, pathwise error with its sd, NFE, failures, wall."""
    x = np.asarray(x, np.float64)
    ok = bool(np.all(np.isfinite(x)))
    q, sd = target.quality(x) if ok else (float("nan"), float("nan"))
    err = np.sqrt(np.mean((x - x_ref) ** 2, axis=1))
    nfe = np.asarray(nfe)
    return dict(lib=lib, sampler=sampler, setting=setting, budget=budget, mean_nfe=float(nfe.mean()),
                max_nfe=int(nfe.max()), failed=int(failed) + (0 if ok else len(x)), quality=q, sd=sd,
                path_error=float(err.mean()), path_sd=float(err.std() / np.sqrt(len(err))), wall_s=wall,
                default=default, **extra)


def _best(rows, lib, budget, field, default_only=False):
    cands = [r for r in rows if r["lib"] == lib and r["budget"] == budget and r["failed"] == 0
             and r["mean_nfe"] <= budget and np.isfinite(r[field]) and (r["default"] or not default_only)]
    return min(cands, key=lambda r: r[field]) if cands else None


def verdict(j, p, field, sd_field):
    """jaxsde's best ``j`` vs a peer's best ``p`` on ``field`` (lower is better), in combined sds."""
    diff = p[field] - j[field]
    sd = float(np.hypot(j[sd_field], p[sd_field]))
    word = "jaxsde better" if diff > 2 * sd else "peer better" if diff < -2 * sd else "tie"
    return dict(diff=diff, combined_sd=sd, verdict=word)


def summarize(rows, budgets):
    out = {}
    keep = ("sampler", "setting", "quality", "sd", "path_error", "path_sd", "mean_nfe", "wall_s")
    for b in budgets:
        entry = {}
        for field, sd_field in (("quality", "sd"), ("path_error", "path_sd")):
            best = {lib: _best(rows, lib, b, field) for lib in LIBS}
            best["diffusers (defaults)"] = _best(rows, "diffusers", b, field, default_only=True)
            e = {lib: r and {k: r[k] for k in keep} for lib, r in best.items()}
            for peer in ("diffusers", "diffusers (defaults)", "k-diffusion"):
                if best["jaxsde"] and best[peer]:
                    e["vs " + peer] = verdict(best["jaxsde"], best[peer], field, sd_field)
            entry[field] = e
        out[str(b)] = entry
    return out


# --- the report --------------------------------------------------------------------------------------------------
def _q(r, field="quality", sd="sd"):
    return "-" if r is None else f"{r[field]:.4f} ± {r[sd]:.4f}" if field == "quality" else \
        f"{r[field]:.2e} ± {r[sd]:.0e}"


def render(data):
    lines = ["# Fixed-budget sampling of flow models: jaxsde vs diffusers vs k-diffusion", "",
             f"Reproduce: `{data['command']}`", "",
             f"FlowSDE, the exact velocity of an 8-mode Gaussian mixture in d = {data['dim']} (ring of radius 0.6), "
             f"{data['n']} samples from the same N(0, I) draws (seed {data['seed']}), float32, one process. Each "
             f"sampler at {', '.join(map(str, data['budgets']))} NFE (counted model calls; 2-evaluation samplers "
             "at 5 / 9 / 19), swept over the time shift "
             f"{', '.join(f'{s:g}' for s in data['shifts'])} (jaxsde's `flow_grid(K, shift)`, diffusers' "
             "`shift` / `flow_shift`) and, for k-diffusion, Karras (rho 7) and exponential sigmas from "
             f"sigma_max in {', '.join(f'{s:g}' for s in data['kd_sigma_max'])} (t = 1 is sigma = inf: k-diffusion "
             f"starts at that finite sigma from x = sigma_max x_T) to {data['kd_sigma_min']} then 0, through "
             "sigma = t / (1 - t), x_kd = x / (1 - t). The best setting per library and budget, chosen on these "
             "draws for every library alike.", "",
             "Quality: mode-spread W2 (whitened, against the data law; lower is better) ± its 30-resample "
             "bootstrap sd. Pathwise: mean over samples of the RMS distance to the flow ODE's exact map to t = 0 "
             "(float64 reference) ± the sd of that mean. Verdict: the difference of the two best rows against 2 "
             "combined sd; \"tie\" where it is within. \"diffusers (defaults)\": its schedulers at their class "
             "defaults (shift 1, solver_order 2). Wall: the batch (jaxsde: one compiled run; the peers' loops "
             "call the jitted JAX velocity through torch, so their wall is not a speed comparison).", ""]
    for tname, res in data["targets"].items():
        rows = res["rows"]
        lines += [f"## {tname} (component std {res['scale']})", "",
                  f"Floor (n exact data samples): {res['floor']:.4f} ± {res['floor_sd']:.4f}.", ""]
        for field, title in (("quality", "mode-spread W2"), ("path_error", "pathwise error")):
            lines += [f"### Best per library: {title}", ""]
            body = []
            for b, entry in res["summary"].items():
                e = entry[field]
                sd = "sd" if field == "quality" else "path_sd"

                def cell(r, field=field, sd=sd):
                    return "-" if r is None else f"{_q(r, field, sd)} ({r['sampler']}, {r['setting']}; NFE " \
                                                 f"{r['mean_nfe']:g})"

                body.append([b, cell(e["jaxsde"]), cell(e["diffusers"]), cell(e["diffusers (defaults)"]),
                             cell(e["k-diffusion"]),
                             *(e[k]["verdict"] if k in e else "-" for k in ("vs diffusers", "vs diffusers (defaults)",
                                                                           "vs k-diffusion"))])
            lines += table(["NFE", "jaxsde best", "diffusers best", "diffusers at defaults", "k-diffusion best",
                            "vs diffusers", "vs diffusers defaults", "vs k-diffusion"], body) + [""]
        lines += ["### Every sampler at its best shift / sigma_max (mode-spread W2), and at shift 1 and 3", ""]
        body = []
        samplers = list(dict.fromkeys((r["lib"], r["sampler"]) for r in rows))
        for lib, sampler in samplers:
            cells = []
            for b in data["budgets"]:
                rs = [r for r in rows if r["lib"] == lib and r["sampler"] == sampler and r["budget"] == b
                      and r["failed"] == 0 and np.isfinite(r["quality"])]
                if not rs:
                    cells += ["-", "-", "-"]
                    continue
                best = min(rs, key=lambda r: r["quality"])
                knob = f"shift {best['shift']:g}" if "shift" in best else f"sigma_max {best['sigma_max']:g}"
                cells.append(f"{_q(best)} ({knob}; NFE {best['mean_nfe']:g}, {best['wall_s'] * 1e3:.0f} ms)")
                for s in (1.0, 3.0):
                    at = [r for r in rs if r.get("shift") == s]
                    cells.append(_q(at[0]) if at else "-")
            body.append([lib, sampler, *cells])
        head = ["library", "sampler"]
        for b in data["budgets"]:
            head += [f"{b} NFE: best", f"{b}: shift 1", f"{b}: shift 3"]
        lines += table(head, body) + [""]
    return "\n".join(lines)
