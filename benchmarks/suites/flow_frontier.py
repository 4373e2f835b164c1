"""Fixed-budget sampling of flow models at 5 / 10 / 20 NFE: jaxsde vs diffusers' flow schedulers and k-diffusion.

The flow ODE of :class:`jaxsde.FlowSDE` with the exact velocity of 8-mode ring mixtures in d = 64 (:data:`TARGETS`:
component std), every library from the same ``N(0, I)`` draws, float32, one process. Each library's samplers are
swept over their schedule knobs (:data:`GRIDS`): diffusers' flow schedulers over shift, shift_terminal,
solver_order and lower_order_final (model called at ``sched.sigmas[i]``); k-diffusion over Karras / exponential
sigmas through ``sigma = t / (1 - t)``, ``x_kd = x / (1 - t)``, started at ``sigma_max``; jaxsde (the final ``x - t
v`` step counted) on ``flow_grid`` from t = 1, on those sigmas from t = 1 or from ``sigma_max``, and on diffusers'
exact grids. A 2-evaluation sampler gets ``(B + 1) // 2`` grid points; NFE is counted. Per library, sampler and
budget the best setting on the ``--seed`` draws is measured on the ``--seed + 1`` draws: mode-spread W2 with its
bootstrap sd and floor, mode TV, pathwise error (mean RMS to the float64 flow ODE map, :func:`reference`) and wall;
verdict "win" / "loss" beyond 2 combined sd, else "tie"; ``mirror``: max |x_jaxsde - x_peer| of the peers'
algorithms run by jaxsde on the peers' grids. ``--merge`` adds a run's targets and budgets to the stored
``flow_frontier.json``. Writes ``flow_frontier.{json,md}``.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.flow import diffusers_flow_grid, flow_grid
from jaxsde.testing import metrics
from jaxsde.testing.targets import GaussianMixture

from ..harness.frontier import usable, verdict
from ..harness.kdiffusion import sampling_module
from ..harness.problems import exact_target
from ..harness.samplers import prior
from ..harness.writer import table

BUDGETS = (5, 10, 20)
GRIDS = dict(shifts=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 6.0),
             sigma_max=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 1000.0),
             sigma_min=(0.002, 0.01, 0.03, 0.1, 0.2), shift_terminal=(None, 0.002, 0.01, 0.03, 0.1, 0.2))
QUICK_GRIDS = dict(shifts=(0.5, 1.0), sigma_max=(2.0, 80.0), sigma_min=(0.002, 0.1), shift_terminal=(None, 0.1))
TARGETS = {"ring8": 0.05, "ring8-narrow": 0.01}
DIM = 64
KD_SAMPLERS = {"dpmpp_2m": 1, "euler": 1, "heun": 2, "dpm_2": 2}  # name -> model calls per step
SDE = jaxsde.FlowSDE()
LIBS = ("jaxsde", "diffusers", "k-diffusion")


def mixture(name: str, dtype=jnp.float32) -> GaussianMixture:
    """The 8-mode ring (radius 0.6, key 1234) of :data:`TARGETS` ``[name]``'s component std in d = 64."""
    return GaussianMixture.ring(8, (DIM,), radius=0.6, scale=TARGETS[name], key=jax.random.PRNGKey(1234), dtype=dtype)


def kd_sigmas(k: int, schedule: str, sigma_max: float, sigma_min: float) -> np.ndarray:
    """k-diffusion's ``get_sigmas_karras`` (rho 7) / ``get_sigmas_exponential`` without the final 0, float64."""
    ramp = np.linspace(0.0, 1.0, k)
    if schedule == "karras":
        lo, hi = sigma_min ** (1 / 7), sigma_max ** (1 / 7)
        return (hi + ramp * (lo - hi)) ** 7
    return np.exp(np.log(sigma_max) + ramp * (np.log(sigma_min) - np.log(sigma_max)))


def sigma_grid(k: int, schedule: str, sigma_max: float, sigma_min: float, from_t1: bool) -> tuple[float, ...]:
    """``k`` flow times ``t = sigma / (1 + sigma)`` of :func:`kd_sigmas`; ``from_t1``: 1, then ``k - 1`` of them."""
    sig = kd_sigmas(k - 1 if from_t1 else k, schedule, sigma_max, sigma_min)
    times = tuple(float(v) for v in sig / (1.0 + sig))
    return (1.0, *times) if from_t1 else times


def grid_points(budget: int, per_step: int) -> int:
    return budget if per_step == 1 else (budget + 1) // 2


class Config(NamedTuple):
    """One setting of one sampler at one budget; ``run(x_T, timed=False)`` -> ``(x, nfe per sample, failed, wall)``."""

    lib: str
    sampler: str
    setting: str
    budget: int
    run: Callable
    default: bool = False


JAXSDE = {  # name -> (evaluations per step, multistep (takes lower_order_final), (steps, grid, lof) -> solver)
    "Euler (DDIM)": (1, False, lambda k, g, lof: jaxsde.DDIM(k, grid=g)),
    "Heun (native)": (2, False, lambda k, g, lof: jaxsde.EDMHeun(k, variables="native", grid=g)),
    "DPM-Solver++ 2M": (1, True, lambda k, g, lof: jaxsde.DPMSolverPP(k, order=2, grid=g, lower_order_final=lof)),
    "DPM-Solver++ 3M": (1, True, lambda k, g, lof: jaxsde.DPMSolverPP(k, order=3, grid=g, lower_order_final=lof)),
    "DPM-Solver++ 3M taylor": (1, True, lambda k, g, lof: jaxsde.DPMSolverPP(k, order=3, solver_type="taylor",
                                                                            grid=g, lower_order_final=lof)),
    "UniPC-2": (1, True, lambda k, g, lof: jaxsde.UniPC(k, order=2, grid=g, lower_order_final=lof)),
    "UniPC-3": (1, True, lambda k, g, lof: jaxsde.UniPC(k, order=3, grid=g, lower_order_final=lof)),
}
SCALED_HEUN = "Heun (EDM scaled)"  # only below t = 1


@jax.jit
def _jaxsde_solve(mix, solver, x_start):
    """One program per solver structure and grid length (grid, start and mixture traced), from the grid's first time."""
    keys = jax.random.split(jax.random.PRNGKey(0), x_start.shape[0])
    sol = jaxsde.solve_batch(keys, SDE, jaxsde.Prediction(mix.velocity(SDE), "velocity"), solver, x_start)
    return sol.x, sol.stats.nfe, sol.result


def jaxsde_config(mix, sampler, setting, budget, solver, scale=1.0) -> Config:
    """A jaxsde row: ``solver`` from ``scale * x_T``; timed: a second run after the compiling one."""

    def run(x_T, timed=False):
        x_start = jnp.asarray(scale * np.asarray(x_T))
        x, nfe, result = jax.block_until_ready(_jaxsde_solve(mix, solver, x_start))
        t0 = time.perf_counter()
        if timed:
            jax.block_until_ready(_jaxsde_solve(mix, solver, x_start))
        wall = time.perf_counter() - t0 if timed else float("nan")
        return np.asarray(x), np.asarray(nfe), int(np.sum(np.asarray(result) != 0)), wall

    return Config("jaxsde", sampler, setting, budget, run)


def reference(name: str, x_T) -> np.ndarray:
    """The flow ODE's map of ``x_T`` to ``t = 0`` (float64, Dormand-Prince at 1e-10 to 1e-6, then ``x - t v``)."""
    with jax.enable_x64(True):
        model = jaxsde.Prediction(mixture(name, jnp.float64).velocity(SDE), "velocity")
        x = jnp.asarray(np.asarray(x_T), jnp.float64)
        keys = jax.random.split(jax.random.PRNGKey(0), x.shape[0])
        sol = jax.jit(lambda x: jaxsde.solve_batch(keys, SDE, model, jaxsde.ProbabilityFlow(rtol=1e-10, atol=1e-10),
                                                   x, t_end=1e-6, max_steps=100_000))(x)
        assert np.all(np.asarray(sol.result) == 0), "reference failed"
        return np.asarray(sol.x)


class TorchVelocity:
    """The mixture's velocity as torch float32 ``v(x (B, d), t)`` (the jitted JAX function, batched), counting calls."""

    def __init__(self, mix):
        self.fn, self.calls = jax.jit(jax.vmap(mix.velocity(SDE), in_axes=(0, None))), 0

    def __call__(self, x, t: float):
        import torch

        self.calls += 1
        return torch.from_numpy(np.array(self.fn(jnp.asarray(x.numpy()), jnp.float32(t))))

    def loop(self, x_T, body):
        """``body(torch x_T)`` under ``no_grad`` from zero calls: ``(x, calls per sample, failed, wall s)``; a
        ``RuntimeError`` (UniPC's linear solve on a singular system) fails every sample."""
        import torch

        self.calls, t0 = 0, time.perf_counter()
        x = torch.from_numpy(np.array(x_T, np.float32))
        try:
            with torch.no_grad():
                x, failed = body(x).numpy(), 0
        except RuntimeError:
            x, failed = np.full(x.shape, np.nan, np.float32), len(x)
        return x, np.full(len(x), self.calls), failed, time.perf_counter() - t0


DIFFUSERS = {  # row name -> (class, evaluations per step, solver_order)
    "FlowMatchEuler": ("FlowMatchEulerDiscreteScheduler", 1, 1),
    "FlowMatchHeun": ("FlowMatchHeunDiscreteScheduler", 2, 2),
    "DPMSolverMultistep (order 2)": ("DPMSolverMultistepScheduler", 1, 2),
    "DPMSolverMultistep (order 3)": ("DPMSolverMultistepScheduler", 1, 3),
    "UniPCMultistep (order 2)": ("UniPCMultistepScheduler", 1, 2),
    "UniPCMultistep (order 3)": ("UniPCMultistepScheduler", 1, 3),
}
DIFFUSERS_DEFAULTS = {"shift": 1.0, "order": 2}  # the classes' defaults (shift / flow_shift 1, solver_order 2)


def run_diffusers(velocity: TorchVelocity, cls: str, shift: float, order: int, shift_terminal, lof: bool, k: int,
                  x_T):
    """diffusers' ``cls`` at these settings (``use_flow_sigmas``, ``flow_prediction``), ``k`` steps."""
    import diffusers

    extra = {} if shift_terminal is None else {"shift_terminal": shift_terminal}
    if cls == "FlowMatchEulerDiscreteScheduler":
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift, **extra)
    elif cls == "FlowMatchHeunDiscreteScheduler":
        sched = diffusers.FlowMatchHeunDiscreteScheduler(shift=shift)
    else:
        sched = getattr(diffusers, cls)(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
                                        solver_order=order, lower_order_final=lof, **extra)
    sched.set_timesteps(k)

    def body(x):
        for i, ts in enumerate(sched.timesteps):
            x = sched.step(velocity(x, float(sched.sigmas[i])), ts, x).prev_sample
        return x

    return velocity.loop(x_T, body)


def diffusers_mirror(cls: str, order: int, k: int, grid, lof: bool):
    """(jaxsde sampler name, solver) that is diffusers' ``cls`` at these settings on its grid ``grid``."""
    if cls == "FlowMatchEulerDiscreteScheduler":
        return "Euler (DDIM)", jaxsde.DDIM(k - 1, grid=grid)
    if cls == "FlowMatchHeunDiscreteScheduler":
        return "Heun (native)", jaxsde.EDMHeun(k - 1, variables="native", grid=grid)
    if cls == "DPMSolverMultistepScheduler":
        return (f"DPM-Solver++ {order}M",
                jaxsde.DPMSolverPP(k - 1, order=order, grid=grid, denoise_is_last_step=True, lower_order_final=lof))
    return (f"UniPC-{order}", jaxsde.UniPC(k - 1, order=order, variant="bh2", grid=grid, denoise_is_last_step=True,
                                           lower_order_final="always" if lof else False))


def run_k_diffusion(ks, velocity: TorchVelocity, sampler: str, schedule: str, sigma_max: float, sigma_min: float,
                    budget: int, x_T):
    """``sample_<sampler>`` on the flow through ``sigma = t / (1 - t)``, ``x_kd = x / (1 - t)``, from ``sigma_max``."""

    def denoiser(x_kd, sigma):
        s = float(sigma.reshape(-1)[0])  # k-diffusion passes the step's sigma for the whole batch
        t, x = s / (1.0 + s), x_kd / (1.0 + s)
        return x - t * velocity(x, t)

    make = ks.get_sigmas_karras if schedule == "karras" else ks.get_sigmas_exponential
    sigmas = make(grid_points(budget, KD_SAMPLERS[sampler]), sigma_min, sigma_max)
    return velocity.loop(x_T, lambda x: getattr(ks, "sample_" + sampler)(denoiser, sigma_max * x, sigmas,
                                                                         disable=True))


KD_MIRROR = {"euler": ("Euler (DDIM)", False), "dpmpp_2m": ("DPM-Solver++ 2M", False), "heun": (SCALED_HEUN, False)}


def _g(v) -> str:
    return "None" if v is None else f"{v:g}"


def _mirror(mirror: dict, peer: str, x, x_peer, where: str) -> None:
    dx = float(np.max(np.abs(x - x_peer)))
    if dx > mirror[peer]:
        mirror[peer], mirror[peer + " worst"] = dx, where
    mirror[peer + " pairs"] += 1


def sweep(mix, ks, velocity, budget, grids, x_sel, x_ref, mirror) -> tuple[list[Config], list[dict]]:
    """Every setting of every sampler at ``budget`` on the selection draws ``x_sel``: the configurations and their
    point values; the mirror pairs' max ``|x_jaxsde - x_peer|`` go to ``mirror``."""
    configs, rows = [], []
    spread = jax.jit(lambda x: metrics.mode_spread_w2(mix, x))

    def add(cfg):
        x, nfe, failed, _ = cfg.run(x_sel)
        ok = bool(np.all(np.isfinite(x)))
        q = float(spread(jnp.asarray(x, jnp.float32))) if ok else float("nan")
        err = float(np.mean(np.sqrt(np.mean((np.asarray(x, np.float64) - x_ref) ** 2, axis=1)))) if ok else np.nan
        configs.append(cfg)
        rows.append(dict(lib=cfg.lib, sampler=cfg.sampler, setting=cfg.setting, budget=budget,
                         mean_nfe=float(np.mean(nfe)), max_nfe=int(np.max(nfe)),
                         failed=int(failed) + (0 if ok else len(x)), quality=q, path_error=err, default=cfg.default))
        return x

    for name, (per_step, multistep, make) in JAXSDE.items():  # jaxsde on flow_grid from t = 1
        k = grid_points(budget, per_step)
        for s, lof in itertools.product(grids["shifts"], (True, False) if multistep else (True,)):
            add(jaxsde_config(mix, f"{name} [flow_grid]", f"flow_grid({k}, shift={s:g})" + ("" if lof else
                              ", lower_order_final=False"), budget, make(k - 1, flow_grid(k, shift=s), lof)))
    # k-diffusion and jaxsde on sigma schedules (jaxsde: from t = 1 and from sigma_max)
    for schedule, smax, smin in itertools.product(("karras", "exponential"), grids["sigma_max"], grids["sigma_min"]):
        if smin >= smax:
            continue
        peer = {sampler: add(Config("k-diffusion", f"sample_{sampler}",
                                    f"{grid_points(budget, per_step)} {schedule} sigmas {smax:g} .. {smin:g} then 0",
                                    budget, lambda x_T, timed=False, sampler=sampler, a=(schedule, smax, smin):
                                    run_k_diffusion(ks, velocity, sampler, *a, budget, x_T)))
                for sampler, per_step in KD_SAMPLERS.items()}
        for name, (per_step, multistep, make) in {**JAXSDE, SCALED_HEUN: (2, False, lambda k, g, lof: jaxsde.EDMHeun(
                k, grid=g))}.items():
            k = grid_points(budget, per_step)
            for from_t1, lof in itertools.product((True, False), (True, False) if multistep else (True,)):
                if from_t1 and (name == SCALED_HEUN or k < 3):
                    continue
                g = sigma_grid(k, schedule, smax, smin, from_t1)
                scale = 1.0 if from_t1 else float(SDE.marginal(g[0])[1])
                start = "sigmas from t = 1" if from_t1 else "sigmas from sigma_max"
                setting = (f"t = 1, then {k - 1}" if from_t1 else f"from t = {g[0]:.4g} (x = {scale:.4g} x_T), {k}") + \
                    f" {schedule} sigmas {smax:g} .. {smin:g}" + ("" if lof else ", lower_order_final=False")
                x = add(jaxsde_config(mix, f"{name} [{start}]", setting, budget, make(k - 1, g, lof), scale))
                for sampler, (mname, mlof) in KD_MIRROR.items():
                    if not from_t1 and name == mname and lof == mlof:
                        _mirror(mirror, "k-diffusion", x, peer[sampler],
                                f"sample_{sampler}, {schedule}, sigma_max {smax:g}, sigma_min {smin:g}")
    for name, (cls, per_step, order) in DIFFUSERS.items():  # diffusers, and jaxsde on diffusers' grid and settings
        k = grid_points(budget, per_step)
        terminals = grids["shift_terminal"] if cls in ("FlowMatchEulerDiscreteScheduler",
                                                       "UniPCMultistepScheduler") else (None,)
        for s, st, lof in itertools.product(grids["shifts"], terminals,
                                            (True, False) if order > 1 and "Heun" not in cls else (True,)):
            try:
                grid = diffusers_flow_grid(cls, k, shift=s, shift_terminal=st)
            except ValueError:
                continue
            setting = (f"{cls}, num_inference_steps={k}, shift={s:g}" + ("" if st is None else f", shift_terminal="
                       f"{st:g}") + ("" if lof else ", lower_order_final=False"))
            default = s == DIFFUSERS_DEFAULTS["shift"] and order <= DIFFUSERS_DEFAULTS["order"] and st is None and lof
            x_peer = add(Config("diffusers", name, setting, budget, lambda x_T, timed=False, a=(cls, s, order, st, lof,
                                k): run_diffusers(velocity, *a, x_T), default))
            mname, solver = diffusers_mirror(cls, order, k, grid, lof)
            x = add(jaxsde_config(mix, f"{mname} [diffusers {name.split(' ')[0]} grid]", setting, budget, solver))
            if np.all(np.isfinite(x_peer)):
                _mirror(mirror, "diffusers", x, x_peer, setting)
            else:
                mirror["diffusers failed"] += 1
    return configs, rows


def evaluate(cfg: Config, target, mix, x_T, x_ref, selection: dict) -> dict:
    """``cfg`` on the draws ``x_T``: quality with its bootstrap sd, pathwise error with its sd, mode TV, NFE, failures,
    wall; ``selection`` its point values on the selection draws."""
    x, nfe, failed, wall = cfg.run(x_T, timed=True)
    x = np.asarray(x, np.float64)
    ok = bool(np.all(np.isfinite(x)))
    q, sd = target.quality(x) if ok else (float("nan"), float("nan"))
    err = np.sqrt(np.mean((x - x_ref) ** 2, axis=1))
    return dict(lib=cfg.lib, sampler=cfg.sampler, setting=cfg.setting, budget=cfg.budget,
                mean_nfe=float(np.mean(nfe)), max_nfe=int(np.max(nfe)), failed=int(failed) + (0 if ok else len(x)),
                quality=q, sd=sd, mode_tv=float(metrics.mode_weight_tv(mix, x)) if ok else float("nan"),
                path_error=float(err.mean()), path_sd=float(err.std() / np.sqrt(len(err))),
                wall_s=wall, default=cfg.default, selection_quality=selection["quality"],
                selection_path_error=selection["path_error"])


def _argbest(rows, idx, field):
    return min((i for i in idx if usable(rows[i], field)), key=lambda i: rows[i][field], default=None)


def arguments(parser):
    parser.add_argument("--n", type=int, default=1000, help="samples per draw set (selection and held out)")
    parser.add_argument("--seed", type=int, default=0, help="the selection draws' seed (held out: seed + 1)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {', '.join(TARGETS)}")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="comma-separated NFE budgets")
    parser.add_argument("--merge", action="store_true", help="add this run's targets and budgets to the stored "
                        "flow_frontier.json of the same --n, --seed and grids (a full run in pieces)")
    parser.add_argument("--quick", action="store_true", help="128 samples, 5 NFE, ring8, two values of each knob")


def run(args, ctx):
    import torch

    torch.set_num_threads(2)
    names, grids, n = tuple(args.targets.split(",")), GRIDS, args.n
    try:
        budgets = tuple(int(b) for b in args.budgets.split(","))
    except ValueError:
        ctx.error(f"--budgets takes comma-separated integers, got {args.budgets!r}")
    if unknown := [t for t in names if t not in TARGETS]:
        ctx.error(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
    if any(b < 3 for b in budgets):
        ctx.error("every budget must be >= 3 NFE")
    if args.quick:
        n, budgets, names, grids = 128, (5,), ("ring8",), QUICK_GRIDS
    if (ks := sampling_module()) is None:
        ctx.error("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    results = {}
    for tname in names:
        mix = mixture(tname)
        spread = jax.jit(lambda x, mix=mix: metrics.mode_spread_w2(mix, x))
        target = exact_target(tname, SDE, mix, lambda x, f=spread: float(f(jnp.asarray(x, jnp.float32))),
                              "mode-spread W2 (whitened) against the data law")
        x_sel, x_held = prior(target, args.seed, n), prior(target, args.seed + 1, n)
        ref_sel, ref_held = reference(tname, x_sel), reference(tname, x_held)
        exact = np.asarray(mix.sample(jax.random.PRNGKey(args.seed + 17), n))
        floor_q, floor_sd = target.quality(exact)
        velocity, per_budget = TorchVelocity(mix), {}
        for b in budgets:
            t0 = time.perf_counter()
            mirror = {"diffusers": 0.0, "diffusers worst": "", "diffusers pairs": 0, "diffusers failed": 0,
                      "k-diffusion": 0.0, "k-diffusion worst": "", "k-diffusion pairs": 0}
            configs, rows = sweep(mix, ks, velocity, b, grids, x_sel, ref_sel, mirror)
            chosen = {}  # config index -> the roles it is chosen for
            for fld in ("quality", "path_error"):
                for lib in LIBS:
                    idx = [i for i, r in enumerate(rows) if r["lib"] == lib]
                    chosen.setdefault(_argbest(rows, idx, fld), []).append(f"best {lib} {fld}")
                defaults = [i for i, r in enumerate(rows) if r["lib"] == "diffusers" and r["default"]]
                chosen.setdefault(_argbest(rows, defaults, fld), []).append(f"best diffusers (defaults) {fld}")
            for key in dict.fromkeys((r["lib"], r["sampler"]) for r in rows):
                idx = [i for i, r in enumerate(rows) if (r["lib"], r["sampler"]) == key]
                chosen.setdefault(_argbest(rows, idx, "quality"), []).append("best of its sampler")
            chosen.pop(None, None)
            held = [dict(evaluate(configs[i], target, mix, x_held, ref_held, rows[i]), roles=roles)
                    for i, roles in chosen.items()]
            per_budget[str(b)] = dict(settings={lib: sum(r["lib"] == lib for r in rows) for lib in LIBS},
                                      mirror=mirror, rows=held, summary=summarize(held, b),
                                      seconds=time.perf_counter() - t0)
            print(f"  {tname} {b} NFE: {len(rows)} settings, held out best " + ", ".join(
                f"{lib} {r['quality']:.4f} ± {r['sd']:.4f} ({r['sampler']}, {r['setting']})" for lib in LIBS
                if (r := _role(held, b, f"best {lib} quality"))) + f"; mirror {mirror}", flush=True)
        results[tname] = dict(scale=TARGETS[tname], floor=floor_q, floor_sd=floor_sd,
                              floor_tv=float(metrics.mode_weight_tv(mix, exact)), budgets=per_budget)
    data = dict(n=n, seed=args.seed, dim=DIM, grids=grids, targets=results, commands=[ctx.command])
    if args.merge and os.path.exists(path := ctx.path("flow_frontier", "json")):
        data = merge(path, data, ctx)
    data["command"] = " && ".join(data["commands"])
    ctx.save("flow_frontier", data)


def merge(path: str, new: dict, ctx) -> dict:
    """``new``'s targets and budgets added to the results stored at ``path`` (replacing the same target and
    budget); the runs must share ``n``, ``seed`` and the knob grids."""
    with open(path) as f:
        old = json.load(f)
    same = json.loads(json.dumps({k: new[k] for k in ("n", "seed", "dim", "grids")}))
    if "commands" not in old or any(old.get(k) != v for k, v in same.items()):
        ctx.error(f"--merge: {path} is not a run with the same --n, --seed and knob grids (or an older format)")
    for tname, res in new["targets"].items():
        old["targets"].setdefault(tname, dict(res, budgets={}))["budgets"].update(res["budgets"])
    old["targets"] = {t: old["targets"][t] for t in TARGETS if t in old["targets"]}
    for res in old["targets"].values():
        res["budgets"] = dict(sorted(res["budgets"].items(), key=lambda kv: int(kv[0])))
    old["commands"] = [c for c in old["commands"] if c != new["commands"][0]] + new["commands"]
    for key in ("suite", "command", "machine"):
        old.pop(key, None)  # set again by the writer for this run
    return old


def _role(rows, budget, role):
    return next((r for r in rows if r["budget"] == budget and role in r["roles"]), None)


def summarize(rows, b):
    """Per field: each library's best row at budget ``b`` (held out) and jaxsde's verdict against each peer."""
    out = {}
    keep = ("sampler", "setting", "quality", "sd", "mode_tv", "path_error", "path_sd", "mean_nfe", "wall_s",
            "selection_quality", "selection_path_error")
    for fld, sd_field in (("quality", "sd"), ("path_error", "path_sd")):
        best = {lib: _role(rows, b, f"best {lib} {fld}") for lib in (*LIBS, "diffusers (defaults)")}
        e = {lib: r and {k: r[k] for k in keep} for lib, r in best.items()}
        for peer in ("diffusers", "diffusers (defaults)", "k-diffusion"):
            if best["jaxsde"] and best[peer] and usable(best["jaxsde"], fld) and usable(best[peer], fld):
                e["vs " + peer] = verdict(best["jaxsde"], best[peer], fld, sd_field)
        out[fld] = e
    return out


def _q(r, field="quality", sd="sd"):
    return "-" if r is None else f"{r[field]:.4f} ± {r[sd]:.4f}" if field == "quality" else \
        f"{r[field]:.2e} ± {r[sd]:.0e}"


def _verdicts(e, peers):
    return [e[k]["verdict"] if k in e else "-" for k in peers]


def render(data):
    g, commands = data["grids"], data.get("commands", [data["command"]])
    budgets = sorted({int(b) for res in data["targets"].values() for b in res["budgets"]})
    lines = ["# Fixed-budget sampling of flow models: jaxsde vs diffusers vs k-diffusion", "",
             "Reproduce: " + (f"`{commands[0]}`" if len(commands) == 1 else "the runs " + ", then ".join(
                 f"`{c}`" for c in commands) + " (one run in pieces, each held under 12 minutes; `--merge` adds a "
                 "piece to the stored results)"), "",
             f"FlowSDE, the exact velocity of an 8-mode Gaussian mixture in d = {data['dim']} (ring of radius 0.6), "
             f"float32, one process per run. Each sampler at {', '.join(map(str, budgets))} NFE (counted model "
             "calls; 2-evaluation samplers at 5 / 9 / 19), every library swept over its schedule knobs: diffusers "
             f"over the shift ({', '.join(map(_g, g['shifts']))}), FlowMatchEuler's and UniPC's `shift_terminal` "
             f"({', '.join(map(_g, g['shift_terminal']))}; None: the class's own), DPM-Solver's and UniPC's "
             "`solver_order` 2 / 3 and `lower_order_final`; k-diffusion over Karras (rho 7) and exponential sigmas "
             f"from sigma_max ({', '.join(map(_g, g['sigma_max']))}; t = 1 is sigma = inf: k-diffusion starts at "
             "that finite sigma from x_kd = sigma_max x_T) to sigma_min "
             f"({', '.join(map(_g, g['sigma_min']))}) then 0, through sigma = t / (1 - t), x_kd = x / (1 - t); "
             "jaxsde over the same shifts on `flow_grid(K, shift)` from t = 1 (`[flow_grid]`), the same sigma "
             "schedules after a first step from t = 1 (`[sigmas from t = 1]`) or started like k-diffusion at "
             "t_max = sigma_max / (1 + sigma_max) from x = t_max x_T (`[sigmas from sigma_max]`), and diffusers' "
             "exact configurations (`[diffusers <class> grid]`: `diffusers_flow_grid` and diffusers' settings), "
             "its multistep solvers with `lower_order_final` on and off.", "",
             f"Selection and held-out draws: every setting runs once on {data['n']} N(0, I) draws (seed "
             f"{data['seed']}); per library, sampler and budget the setting with the lowest value there is then run "
             f"on {data['n']} other draws (seed {data['seed'] + 1}), and every number below is from those held-out "
             "draws (the selection-draw value is in the `.json`), so the library with the most settings gains "
             "nothing from the choice itself.", "",
             "Quality: mode-spread W2 (whitened, against the data law; lower is better) ± its 30-resample "
             "bootstrap sd. Pathwise: mean over samples of the RMS distance to the flow ODE's exact map to t = 0 "
             "(float64 reference) ± the sd of that mean. Mode TV (a diagnostic): the total variation between the "
             "samples' mode weights (nearest mode) and the mixture's; mode-spread W2 does not see the weights. "
             "Verdict (jaxsde's best vs the peer's best): \"win\" / "
             "\"loss\" where the difference exceeds 2 combined sd (hypot of the two sds), \"tie\" where it is "
             "within. \"diffusers (defaults)\": its schedulers at their class defaults (shift 1, solver_order 2, "
             "no shift_terminal). Wall: the batch (jaxsde: one compiled run; the peers' loops call the jitted JAX "
             "velocity through torch, so their wall is not a speed comparison).", "",
             "## Summary: best per library (mode-spread W2, held-out draws)", ""]
    lines += table(["target", "NFE", "jaxsde", "diffusers", "k-diffusion", "vs diffusers", "vs k-diffusion",
                    "jaxsde's best sampler"],
                   [[tname, b, *(_q(e[lib]) for lib in LIBS), *_verdicts(e, ("vs diffusers", "vs k-diffusion")),
                     e["jaxsde"]["sampler"] if e["jaxsde"] else "-"]
                    for tname, res in data["targets"].items() for b, part in res["budgets"].items()
                    for e in [part["summary"]["quality"]]]) + [""]
    for tname, res in data["targets"].items():
        parts = res["budgets"]
        lines += [f"## {tname} (component std {res['scale']})", "",
                  f"Floor (n exact data samples): {res['floor']:.4f} ± {res['floor_sd']:.4f}; their mode weights' "
                  f"total variation from the mixture's: {res['floor_tv']:.3f}.", "",
                  "Settings run per budget, and the mirror pairs (the peer's algorithm on the peer's grid run by "
                  "jaxsde, on the selection draws: max |x_jaxsde - x_peer| over the pairs, float32 samples of norm "
                  "~0.6 in the ring's plane; diffusers failed: settings where diffusers' own loop raised, UniPC's "
                  "linear solve on a singular system, counted as failed rows):", ""]
        lines += table(["NFE", "jaxsde settings", "diffusers settings", "k-diffusion settings",
                        "diffusers mirror max dx (pairs)", "diffusers failed", "k-diffusion mirror max dx (pairs)",
                        "seconds"],
                       [[b, *(part["settings"][lib] for lib in LIBS), f"{m['diffusers']:.1e} ({m['diffusers pairs']})",
                         m["diffusers failed"], f"{m['k-diffusion']:.1e} ({m['k-diffusion pairs']})",
                         f"{part['seconds']:.0f}"] for b, part in parts.items() for m in [part["mirror"]]]) + [""]
        lines += ["Largest mirror differences at: " + "; ".join(
            f"{b} NFE: {part['mirror'].get('diffusers worst', '?')} / {part['mirror'].get('k-diffusion worst', '?')}"
            for b, part in parts.items()) + ".", ""]
        for fld, title, sd in (("quality", "mode-spread W2", "sd"), ("path_error", "pathwise error", "path_sd")):
            def cell(r, fld=fld, sd=sd):
                return "-" if r is None else f"{_q(r, fld, sd)} ({r['sampler']}, {r['setting']}; NFE " \
                                             f"{r['mean_nfe']:g}; mode TV {r['mode_tv']:.3f})"

            lines += [f"### Best per library: {title} (held-out draws)", ""]
            lines += table(["NFE", "jaxsde best", "diffusers best", "diffusers at defaults", "k-diffusion best",
                            "vs diffusers", "vs diffusers defaults", "vs k-diffusion"],
                           [[b, *(cell(e[lib]) for lib in ("jaxsde", "diffusers", "diffusers (defaults)",
                                                          "k-diffusion")),
                             *_verdicts(e, ("vs diffusers", "vs diffusers (defaults)", "vs k-diffusion"))]
                            for b, part in parts.items() for e in [part["summary"][fld]]]) + [""]
        lines += ["### Every sampler at its best setting (chosen on the selection draws; mode-spread W2 on the "
                  "held-out draws)", ""]
        rows = [r for part in parts.values() for r in part["rows"]]
        body = []
        for lib, sampler in sorted(dict.fromkeys((r["lib"], r["sampler"]) for r in rows),
                                   key=lambda ls: (LIBS.index(ls[0]), ls[1])):
            rs = {b: next((r for r in part["rows"] if r["lib"] == lib and r["sampler"] == sampler
                           and "best of its sampler" in r["roles"]), None) for b, part in parts.items()}
            body.append([lib, sampler, *("-" if r is None else f"{_q(r)} ({r['setting']}; NFE {r['mean_nfe']:g}, "
                                         f"{r['wall_s'] * 1e3:.0f} ms)" for r in rs.values())])
        lines += table(["library", "sampler", *(f"{b} NFE" for b in parts)], body) + [""]
    return "\n".join(lines)
