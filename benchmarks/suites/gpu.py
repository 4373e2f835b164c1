"""One-GPU throughput benchmark: samples/s, NFE and compile times of jaxsde's solvers on full-size networks.

Sections (``--budget`` seconds split by ``SECTION_SHARE``; an item that no longer fits its section is skipped with
the reason; the results are rewritten atomically after every item): ``hsc64`` (galaxygrad's HSC-64 network from
``--eqx``, read with NumPy only) and ``ddpmpp`` (score_sde's DDPM++ CIFAR-10, random weights) with EM, DPM-Solver++,
GGF, ``AdaptiveDPMSolver``, ``AdaptiveMultistepSolver`` (at most ``--max-steps`` iterations) at batch 256-4096,
float32 and a bfloat16 network (``bf16_ops``: the share of conv/matmul ops with bfloat16 operands); ``generate`` vs
``sample`` at a large batch; ``diffusers``: DDIM vs diffusers' loop on the same ``UNet2DModel`` weights (skipped
with the reason if diffusers cannot be imported; ``--stage`` puts a staged wheel on the path). Per item: compile,
one run (``first_s``), then up to ``--repeats`` timed runs (median; ``warm = false`` if none fitted). ``--smoke``:
tiny networks on CPU (the code paths, not a measurement). benchmarks/README.md gives the GPU command.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import traceback

from ..harness.diffusers import ddim_loop, ddim_program, ddim_setup, ddim_solver, difference, save_weights, unet_config
from ..harness.machine import machine_info

SECTION_SHARE = {"hsc64": 0.25, "ddpmpp": 0.45, "generate": 0.1, "diffusers": 0.2}


# --- configuration ------------------------------------------------------------------------------
def plan(smoke: bool) -> dict:
    """Step counts, tolerances and batch sizes (full run, or ``--smoke``)."""
    if smoke:
        return dict(em_steps=4, dpm_steps=3, rtol=0.1, max_steps=6, hsc64_max_steps=6, ddim_steps=3, gen_batch=4,
                    gen_per_slot=3,
                    hsc64_batches=[4, 8], hsc64_main=4, ddpmpp_batches=[2, 4], ddpmpp_main=2, diffusers_batch=2)
    return dict(em_steps=20, dpm_steps=10, rtol=0.05, max_steps=64, hsc64_max_steps=2000, ddim_steps=10,
                gen_batch=1024, gen_per_slot=4,
                hsc64_batches=[256, 1024, 4096], hsc64_main=1024, ddpmpp_batches=[256, 1024, 4096], ddpmpp_main=256,
                diffusers_batch=256)


def solvers(cfg: dict) -> dict:
    import jaxsde

    return {
        f"EulerMaruyama({cfg['em_steps']})": (jaxsde.EulerMaruyama(cfg["em_steps"]), cfg["em_steps"] + 1),
        f"DPMSolverPP({cfg['dpm_steps']})": (jaxsde.DPMSolverPP(cfg["dpm_steps"]), cfg["dpm_steps"] + 1),
        f"GottaGoFast(rtol={cfg['rtol']})": (jaxsde.GottaGoFast(rtol=cfg["rtol"]), None),
        f"AdaptiveDPMSolver(rtol={cfg['rtol']})": (jaxsde.AdaptiveDPMSolver(rtol=cfg["rtol"]), None),
        f"AdaptiveMultistepSolver(rtol={cfg['rtol']})": (jaxsde.AdaptiveMultistepSolver(rtol=cfg["rtol"]), None),
    }


# --- models ----------------------------------------------------------------------------------------
class Net:
    """A network as (apply, params, sde, shape, label, parameterization); ``score(params, dtype)`` is the
    one-sample score with the network in ``dtype`` and everything else in float32."""

    def __init__(self, name, apply, params, sde, shape, label, parameterization, description):
        self.name, self.apply, self.params, self.sde, self.shape = name, apply, params, sde, tuple(shape)
        self.label, self.parameterization, self.description = label, parameterization, description

    def score(self, params, dtype):
        import jax.numpy as jnp

        from jaxsde.models.score import output_to_score

        def score(x, t):
            t = jnp.asarray(t, x.dtype)
            lab = jnp.reshape(self.label(t), (1,)).astype(dtype)
            out = self.apply(params, x[None].astype(dtype), lab)[0].astype(x.dtype)
            if self.parameterization == "raw":
                return out
            return output_to_score(self.sde, out, x, t, self.parameterization)

        return score


def ddpmpp_net(smoke: bool) -> Net:
    import jax
    import jax.numpy as jnp

    import jaxsde

    over = dict(nf=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), image_size=8) if smoke else {}
    model = jaxsde.models.build("ddpmpp_cifar10_vp", **over)
    size = over.get("image_size", 32)
    shape = (size, size, 3)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.full((1,), 500.0))
    n = sum(a.size for a in jax.tree_util.tree_leaves(params))
    return Net("ddpmpp", model.apply, params, jaxsde.VPSDE(), shape, lambda t: 999.0 * t, "eps",
               f"DDPM++ CIFAR-10 ({'reduced: --smoke, ' if smoke else ''}{n:,} parameters, random weights)")


def hsc_net(path: str) -> Net:
    import jaxsde

    ckpt = jaxsde.checkpoints.load(path, "galaxygrad")
    n = sum(a.size for a in __import__("jax").tree_util.tree_leaves(ckpt.params))
    return Net("hsc64", ckpt.model.apply, ckpt.params, ckpt.sde, ckpt.shape, lambda t: t, "raw",
               f"galaxygrad {os.path.basename(path)} ({n:,} parameters, trained), shape {ckpt.shape}")


# --- measuring --------------------------------------------------------------------------------------
def op_dtypes(fn, *args) -> dict:
    """Counts of convolution / dot_general equations in ``fn``'s jaxpr by their first operand's dtype
    (``jaxsde.precision.matmul_dtypes``, which counts by both operands' dtypes)."""
    from jaxsde.precision import matmul_dtypes

    counts: dict[str, int] = {}
    for (lhs, _), n in matmul_dtypes(fn, *args).items():
        counts[lhs] = counts.get(lhs, 0) + n
    return counts


def repeat_runs(call, repeats: int, time_left) -> tuple:
    """``call()`` once, then up to ``repeats`` timed calls while ``time_left()`` exceeds 1.5 calls:
    (last output, first call's seconds, the timed calls' seconds)."""
    t0 = time.perf_counter()
    out = call()
    first, times = time.perf_counter() - t0, []
    while len(times) < repeats and time_left() > 1.5 * (times[-1] if times else first):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    return out, first, times


def timed(fn, args: tuple, repeats: int, time_left) -> dict:
    """Compile, then :func:`repeat_runs` of the compiled program."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out, first, times = repeat_runs(lambda: jax.block_until_ready(compiled(*args)), repeats, time_left)
    run_s = statistics.median(times) if times else first
    return dict(out=out, compile_s=compile_s, first_s=first, run_s=run_s, repeats=len(times), warm=bool(times))


class Budget:
    """Per-section deadlines from one overall budget; cost estimates per model from what was measured."""

    def __init__(self, total: float, start: float):
        self.total, self.start, self.cost = total, start, {}
        self.section_end = start

    def open(self, section: str, share: float) -> None:
        now = time.perf_counter()
        self.section_end = min(now + share * self.total, self.start + self.total)

    def left(self) -> float:
        return min(self.section_end, self.start + self.total) - time.perf_counter()

    def record(self, model_key: str, seconds: float) -> None:
        self.cost[model_key] = max(self.cost.get(model_key, 0.0), seconds)


class Results:
    """The run's data, saved through ``ctx.save`` (``.json`` and ``.md``) after every item."""

    def __init__(self, ctx, name: str, header: dict):
        self.ctx, self.name = ctx, name
        self.data = dict(header, status="running", rows=[], generate=[], diffusers=[], skipped=[], errors=[])

    def add(self, kind: str, row: dict) -> None:
        self.data[kind].append(row)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = time.perf_counter() - T0
        self.ctx.save(self.name, self.data)


def sampling_rows(res: Results, budget: Budget, net: Net, cfg: dict, items: list, repeats: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxsde
    from jaxsde.precision import cast_params

    table = solvers(cfg)
    key = jax.random.PRNGKey(0)
    max_steps = cfg.get(f"{net.name}_max_steps", cfg["max_steps"])
    for sname, dtype_name, batch in items:
        what = dict(section=net.name, model=net.description, solver=sname, dtype=dtype_name, batch=batch)
        mkey = f"{net.name}/{dtype_name}/{batch}"
        est = budget.cost.get(mkey, budget.cost.get(f"{net.name}/any", 0.0) * (batch / cfg[f"{net.name}_main"]))
        if budget.left() <= est:
            res.add("skipped", dict(what, reason=f"section budget: {budget.left():.0f} s left, "
                                                 f"estimated {est:.0f} s"))
            continue
        solver, expected = table[sname]
        dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
        params = net.params if dtype == jnp.float32 else cast_params(net.params, dtype)

        def program(p, k, solver=solver, dtype=dtype, batch=batch):
            sol = jaxsde.sample(k, net.sde, net.score(p, dtype), solver, net.shape, batch, max_steps=max_steps)
            return sol.stats.nfe, sol.result, jnp.all(jnp.isfinite(sol.x))

        t0 = time.perf_counter()
        try:
            ops = op_dtypes(net.score(params, dtype), jnp.zeros(net.shape), jnp.asarray(0.5))
            m = timed(program, (params, key), repeats, budget.left)
        except Exception as e:  # noqa: BLE001 - out of memory and the like: record and go on
            res.add("errors", dict(what, error=f"{type(e).__name__}: {str(e)[:300]}"))
            budget.record(mkey, time.perf_counter() - t0)
            continue
        nfe, result, finite = (np.asarray(a) for a in m.pop("out"))
        budget.record(mkey, time.perf_counter() - t0)
        budget.record(f"{net.name}/any", time.perf_counter() - t0)
        low = sum(v for k, v in ops.items() if k in ("bfloat16", "float16"))
        res.add("rows", dict(what, **m, samples_per_s=batch / m["run_s"], nfe_mean=float(nfe.mean()),
                             nfe_min=int(nfe.min()), nfe_max=int(nfe.max()), nfe_expected=expected,
                             nfe_per_s=float(nfe.sum()) / m["run_s"], failed=int(np.sum(result != 0)),
                             all_finite=bool(finite), bf16_ops=low / max(sum(ops.values()), 1), op_dtypes=ops))
        print(f"  {net.name} {sname} {dtype_name} B={batch}: {batch / m['run_s']:.1f} samples/s, "
              f"NFE {nfe.mean():.1f}, compile {m['compile_s']:.1f} s", flush=True)


def section_generate(res: Results, budget: Budget, net: Net, cfg: dict, repeats: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxsde

    batch, n = cfg["gen_batch"], cfg["gen_batch"] * cfg["gen_per_slot"]
    solver = jaxsde.GottaGoFast(rtol=cfg["rtol"])
    key = jax.random.PRNGKey(1)
    offsets = jnp.arange(0, n, batch, dtype=jnp.int32)

    def plain(p):
        sol = jax.lax.map(lambda off: jaxsde.sample(key, net.sde, net.score(p, jnp.float32), solver, net.shape,
                                                    batch, offset=off, max_steps=cfg["hsc64_max_steps"]), offsets)
        return sol.stats.nfe

    def continuous(p):
        g = jaxsde.generate(key, net.sde, net.score(p, jnp.float32), solver, net.shape, n, batch,
                            devices=jax.devices()[:1], max_steps=cfg["hsc64_max_steps"])
        return g

    row = dict(section="generate", model=net.description, solver=f"GottaGoFast(rtol={cfg['rtol']})",
               batch=batch, n=n, dtype="float32")
    for name, fn in (("sample", plain), ("generate", continuous)):
        if budget.left() <= budget.cost.get("generate", 0.0):
            res.add("skipped", dict(row, what=name, reason=f"section budget: {budget.left():.0f} s left"))
            return
        t0 = time.perf_counter()
        try:
            m = timed(fn, (net.params,), repeats, budget.left)
        except Exception as e:  # noqa: BLE001
            res.add("errors", dict(row, what=name, error=f"{type(e).__name__}: {str(e)[:300]}"))
            return
        budget.record("generate", time.perf_counter() - t0)
        out = m.pop("out")
        if name == "sample":
            nfe = np.asarray(out)  # (n/B, B)
            useful = float(nfe.sum() / (batch * nfe.max(axis=1)).sum())
        else:
            useful = out.summary().useful_work
        row.update({f"{name}_{k}": v for k, v in m.items()})
        row[f"{name}_samples_per_s"] = n / m["run_s"]
        row[f"{name}_useful_work"] = useful
    row["speedup"] = row["generate_samples_per_s"] / row["sample_samples_per_s"]
    res.add("generate", row)
    print(f"  generate: {row['generate_samples_per_s']:.1f} vs sample {row['sample_samples_per_s']:.1f} samples/s, "
          f"useful work {row['generate_useful_work']:.2f} vs {row['sample_useful_work']:.2f}", flush=True)


def section_diffusers(res: Results, budget: Budget, cfg: dict, smoke: bool, repeats: int) -> None:
    import numpy as np


    batch, k_steps = cfg["diffusers_batch"], cfg["ddim_steps"]
    row = dict(section="diffusers", solver=f"DDIM({k_steps} steps, trailing)", batch=batch, dtype="float32")
    if budget.left() <= 0:
        res.add("skipped", dict(row, reason="section budget: no time left"))
        return
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken staged dependency
        res.add("skipped", dict(row, reason=f"diffusers (PyTorch) column skipped: cannot import diffusers "
                                                f"({type(e).__name__}: {e}); pass --stage with a staged wheel"))
        return
    import diffusers

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    config = unet_config(smoke, **({"sample_size": 16} if smoke else {}))
    with tempfile.TemporaryDirectory(prefix="gpu_unet_") as folder:
        save_weights(folder, config)
        ckpt, tnet, sched, x_T, x_T_j, keys = ddim_setup(folder, batch, dev)
    n_params = sum(p.numel() for p in tnet.parameters())
    row.update(model=f"UNet2DModel, DDPM CIFAR-10 layout{' (reduced: --smoke)' if smoke else ''}, {n_params:,} "
                     "parameters, random weights", diffusers_version=diffusers.__version__,
               torch_version=torch.__version__, torch_device=dev,
               precision_note="jax: default matmul/conv precision (TF32 on NVIDIA GPUs since Ampere); torch: "
                              f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                              f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    try:
        m = timed(ddim_program(ckpt, ddim_solver(sched, k_steps), keys), (ckpt.params, x_T_j), repeats, budget.left)
    except Exception as e:  # noqa: BLE001
        res.add("errors", dict(row, error=f"{type(e).__name__}: {str(e)[:300]}"))
        return
    xj, nfe = m.pop("out")
    row.update({f"jaxsde_{k}": v for k, v in m.items()}, jaxsde_samples_per_s=batch / m["run_s"],
               nfe=int(np.max(nfe)))

    out, first, times = repeat_runs(lambda: ddim_loop(tnet, sched, x_T, k_steps, dev), repeats, budget.left)
    t_s = statistics.median(times) if times else first
    row.update(diffusers_first_s=first, diffusers_run_s=t_s, diffusers_repeats=len(times),
               diffusers_samples_per_s=batch / t_s, ratio_jaxsde_over_diffusers_time=m["run_s"] / t_s,
               **difference(xj, out))
    res.add("diffusers", row)
    print(f"  DDIM {k_steps}: jaxsde {row['jaxsde_samples_per_s']:.1f} vs diffusers "
          f"{row['diffusers_samples_per_s']:.1f} samples/s", flush=True)


# --- report ------------------------------------------------------------------------------------------
def render(d: dict) -> str:
    m = d["machine"]
    lines = [f"# GPU throughput benchmark{' (--smoke: tiny networks, not a measurement)' if d['smoke'] else ''}", "",
             f"Command: `{m['command']}`  ",
             f"Date: {m['date']}, commit {m['git_commit'][:10]}, status: {d['status']}, "
             f"elapsed {d.get('elapsed_s', 0):.0f} s of a {d['budget_s']:.0f} s budget  ",
             f"Device: {m['devices']} ({m['backend']}); jax {m['jax']}, Python {m['python']}", ""]
    if d["rows"]:
        lines += ["## Solvers (`jaxsde.sample`, one compiled program per row)", "",
                  "| network | solver | dtype | batch | samples/s | NFE mean (min-max) | expected NFE | failed | "
                  "compile s | run s | repeats | bf16 share of conv/dot ops |", "|" + "---|" * 12]
        for r in d["rows"]:
            lines.append(f"| {r['section']} | {r['solver']} | {r['dtype']} | {r['batch']} | {r['samples_per_s']:.2f} | "
                         f"{r['nfe_mean']:.1f} ({r['nfe_min']}-{r['nfe_max']}) | {r['nfe_expected'] or ''} | "
                         f"{r['failed']} | {r['compile_s']:.1f} | {r['run_s']:.3f} | {r['repeats']} | "
                         f"{r['bf16_ops']:.2f} |")
        lines += ["", "Networks: " + "; ".join(sorted({f"{r['section']}: {r['model']}" for r in d["rows"]})), ""]
    for r in d["generate"]:
        lines += ["## `generate` vs `sample` at a large batch", "",
                  f"{r['model']}, {r['solver']}, {r['batch']} slots, n = {r['n']}: generate "
                  f"{r['generate_samples_per_s']:.1f} samples/s (useful work {r['generate_useful_work']:.3f}, compile "
                  f"{r['generate_compile_s']:.1f} s) vs sample {r['sample_samples_per_s']:.1f} samples/s (useful work "
                  f"{r['sample_useful_work']:.3f}, compile {r['sample_compile_s']:.1f} s): {r['speedup']:.2f}x.", ""]
    for r in d["diffusers"]:
        lines += ["## DDIM: jaxsde vs diffusers (PyTorch) on the same UNet2DModel weights", "",
                  f"{r['model']}, {r['solver']}, batch {r['batch']}, {r['dtype']}; torch {r['torch_version']} on "
                  f"{r['torch_device']}, diffusers {r['diffusers_version']}: jaxsde {r['jaxsde_samples_per_s']:.2f} "
                  f"samples/s (NFE {r['nfe']}, compile {r['jaxsde_compile_s']:.1f} s) vs diffusers "
                  f"{r['diffusers_samples_per_s']:.2f} samples/s; time ratio jaxsde / diffusers "
                  f"{r['ratio_jaxsde_over_diffusers_time']:.3f}; max |diff| {r['max_abs_diff']:.1e}, relative L2 "
                  f"difference {r['rel_l2_diff']:.1e} "
                  f"(outputs up to {r['out_abs_max']:.1f}). Precision: {r['precision_note']}.", ""]
    for title, key in (("Skipped", "skipped"), ("Errors", "errors")):
        if d[key]:
            lines += [f"## {title}", ""]
            lines += [f"- {r.get('section')} {r.get('solver', '')} {r.get('dtype', '')} batch {r.get('batch', '')}: "
                      f"{r.get('reason') or r.get('error')}" for r in d[key]]
            lines.append("")
    return "\n".join(lines)


T0 = time.perf_counter()


def arguments(parser):
    parser.add_argument("--smoke", action="store_true", help="tiny networks on CPU, under a minute")
    parser.add_argument("--eqx", default=None, help="galaxygrad HSC-64 .eqx file (eqx_hsc_ScoreNet64.eqx); "
                    "without it the hsc64 and generate sections are skipped")
    parser.add_argument("--stage", default=None, help="folder from benchmarks/gpu_prepare.sh: its diffusers wheel and "
                    "deps.zip are appended to sys.path (the machine's own packages take precedence)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 420; smoke 90, "
                    "more than its few items need)")
    parser.add_argument("--sections", nargs="*", default=list(SECTION_SHARE), choices=list(SECTION_SHARE))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs after the first (default 2; smoke 1)")
    parser.add_argument("--name", default=None)


def run(args, ctx):
    global T0
    T0 = time.perf_counter()
    if args.stage:
        for entry in sorted(os.listdir(args.stage)):
            if entry.endswith((".whl", ".zip")):
                sys.path.append(os.path.abspath(os.path.join(args.stage, entry)))
    # jax takes 75% of a GPU's memory at start-up by default; leave room for the PyTorch column
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")
    budget_s = args.budget if args.budget is not None else (90.0 if args.smoke else 420.0)
    repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 2)
    cfg = plan(args.smoke)
    name = args.name or ("gpu_smoke" if args.smoke else "gpu")
    res = Results(ctx, name, dict(machine=dict(machine_info("torch", "diffusers"), command=ctx.command),
                                  smoke=args.smoke, budget_s=budget_s, plan=cfg, sections=args.sections))
    res.write()
    budget = Budget(budget_s, T0)
    # keep the shares of the sections that run
    total_share = sum(SECTION_SHARE[s] for s in args.sections)
    f32, b16 = "float32", "bfloat16"
    names = list(solvers(cfg))
    try:
        for section in args.sections:
            budget.open(section, SECTION_SHARE[section] / total_share * (1.0 if section != args.sections[-1] else 10))
            print(f"section {section} ({budget.left():.0f} s)", flush=True)
            if section in ("hsc64", "generate") and not args.eqx:
                res.add("skipped", dict(section=section, reason="no --eqx file given (galaxygrad HSC-64 .eqx)"))
                continue
            try:
                if section == "hsc64":
                    net = hsc_net(args.eqx)
                    main_b, others = cfg["hsc64_main"], [b for b in cfg["hsc64_batches"] if b != cfg["hsc64_main"]]
                    items = [(s, dt, main_b) for s in names for dt in (f32, b16)]
                    items += [(s, dt, b) for b in others for dt in (f32, b16) for s in (names[1], names[2])]
                    if args.smoke:  # the code paths, few compilations
                        items = [(names[1], f32, main_b), (names[2], b16, others[0])]
                    sampling_rows(res, budget, net, cfg, items, repeats)
                elif section == "ddpmpp":
                    net = ddpmpp_net(args.smoke)
                    main_b, others = cfg["ddpmpp_main"], [b for b in cfg["ddpmpp_batches"] if b != cfg["ddpmpp_main"]]
                    items = [(s, dt, main_b) for s in names for dt in (f32, b16)]
                    items += [(names[1], dt, b) for b in others for dt in (b16, f32)]
                    if args.smoke:
                        items = [(names[0], f32, main_b), (names[2], f32, main_b), (names[0], b16, main_b),
                                 (names[3], f32, main_b), (names[4], f32, others[0])]  # all 5 solvers
                    sampling_rows(res, budget, net, cfg, items, repeats)
                elif section == "generate":
                    section_generate(res, budget, hsc_net(args.eqx), cfg, repeats)
                elif section == "diffusers":
                    section_diffusers(res, budget, cfg, args.smoke, repeats)
            except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
                res.add("errors", dict(section=section, error=f"{type(e).__name__}: {e}",
                                       traceback=traceback.format_exc()[-2000:]))
        res.data["status"] = "complete"
    finally:
        if res.data["status"] == "running":
            res.data["status"] = "interrupted"
        res.write()
    print(f"{time.perf_counter() - T0:.0f} s")
