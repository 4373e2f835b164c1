"""One-GPU throughput: samples/s, NFE and compile times of jaxsde's solvers on full-size networks.

Sections (``--budget`` seconds split by ``SECTION_SHARE``; an item that no longer fits is listed as skipped; the
results are rewritten after every item): ``hsc64`` (galaxygrad's HSC-64 network from ``--eqx``) and ``ddpmpp``
(score_sde's DDPM++ CIFAR-10, random weights): EM, DPM-Solver++, GGF, ``AdaptiveDPMSolver`` and
``AdaptiveMultistepSolver`` (at most ``max_steps`` iterations) at batch 256-4096, float32 and a bfloat16 network
(``bf16_ops``: the share of conv/matmul ops with bfloat16 operands); ``generate``: the throughput suite's
``generate`` vs ``sample`` on HSC-64 at a large batch; ``diffusers``: DDIM vs diffusers' loop on the same
``UNet2DModel`` weights (``--stage``: a folder of staged wheels). Per item: compile, one run (``first_s``), up to
``--repeats`` timed runs (median; ``warm`` false if none fitted). ``--smoke``: tiny networks on CPU (the code paths,
not a measurement). benchmarks/README.md gives the GPU command.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import traceback

from ..harness import diffusers as peer
from ..harness.machine import machine_info
from ..harness.writer import columns

SECTION_SHARE = {"hsc64": 0.25, "ddpmpp": 0.45, "generate": 0.1, "diffusers": 0.2}
PLANS = {  # --smoke: True
    False: dict(em_steps=20, dpm_steps=10, rtol=0.05, max_steps=64, hsc64_max_steps=2000, ddim_steps=10,
                gen_batch=1024, gen_per_slot=4, hsc64_batches=[256, 1024, 4096], hsc64_main=1024,
                ddpmpp_batches=[256, 1024, 4096], ddpmpp_main=256, diffusers_batch=256),
    True: dict(em_steps=4, dpm_steps=3, rtol=0.1, max_steps=6, hsc64_max_steps=6, ddim_steps=3, gen_batch=4,
               gen_per_slot=3, hsc64_batches=[4, 8], hsc64_main=4, ddpmpp_batches=[2, 4], ddpmpp_main=2,
               diffusers_batch=2),
}
F32, B16 = "float32", "bfloat16"


def solvers(cfg: dict) -> dict:
    """``{name: (solver, expected NFE per sample or None)}``."""
    import jaxsde

    em, dpm, rtol = cfg["em_steps"], cfg["dpm_steps"], cfg["rtol"]
    return {f"EulerMaruyama({em})": (jaxsde.EulerMaruyama(em), em + 1),
            f"DPMSolverPP({dpm})": (jaxsde.DPMSolverPP(dpm), dpm + 1),
            **{f"{c}(rtol={rtol})": (getattr(jaxsde, c)(rtol=rtol), None)
               for c in ("GottaGoFast", "AdaptiveDPMSolver", "AdaptiveMultistepSolver")}}


def items(section: str, cfg: dict, smoke: bool) -> list[tuple[str, str, int]]:
    """``(solver, dtype, batch)`` of a sampling section: every solver and dtype at the main batch, then DPM-Solver++
    (and on hsc64 GGF) at the other batches; ``smoke``: a few items (all five solvers on ddpmpp)."""
    names, main = list(solvers(cfg)), cfg[f"{section}_main"]
    others = [b for b in cfg[f"{section}_batches"] if b != main]
    if smoke:
        return {"hsc64": [(names[1], F32, main), (names[2], B16, others[0])],
                "ddpmpp": [(names[0], F32, main), (names[2], F32, main), (names[0], B16, main),
                           (names[3], F32, main), (names[4], F32, others[0])]}[section]
    wide = names[1:3] if section == "hsc64" else names[1:2]
    return [(s, dt, main) for s in names for dt in (F32, B16)] + [
        (s, dt, b) for b in others for dt in (F32, B16) for s in wide]


class Net:
    """A network: ``score(params, dtype)`` is the one-sample score with the network in ``dtype``, the rest float32."""

    def __init__(self, name, apply, params, sde, shape, label, parameterization, description):
        self.name, self.apply, self.params, self.sde, self.shape = name, apply, params, sde, tuple(shape)
        self.label, self.parameterization, self.description = label, parameterization, description

    def score(self, params, dtype):
        import jax.numpy as jnp

        from jaxsde.models.score import output_to_score

        def score(x, t):
            t = jnp.asarray(t, x.dtype)
            out = self.apply(params, x[None].astype(dtype), jnp.reshape(self.label(t), (1,)).astype(dtype))[0]
            out = out.astype(x.dtype)
            raw = self.parameterization == "raw"
            return out if raw else output_to_score(self.sde, out, x, t, self.parameterization)

        return score


def load_net(section: str, smoke: bool, eqx: str | None) -> Net:
    import jax
    import jax.numpy as jnp

    import jaxsde

    if section != "ddpmpp":  # hsc64, generate: galaxygrad's network
        ckpt = jaxsde.checkpoints.load(eqx, "galaxygrad")
        n = sum(a.size for a in jax.tree_util.tree_leaves(ckpt.params))
        return Net("hsc64", ckpt.model.apply, ckpt.params, ckpt.sde, ckpt.shape, lambda t: t, "raw",
                   f"galaxygrad {os.path.basename(eqx)} ({n:,} parameters, trained), shape {ckpt.shape}")
    over = dict(nf=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), image_size=8) if smoke else {}
    model = jaxsde.models.build("ddpmpp_cifar10_vp", **over)
    shape = (over.get("image_size", 32),) * 2 + (3,)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.full((1,), 500.0))
    n = sum(a.size for a in jax.tree_util.tree_leaves(params))
    return Net("ddpmpp", model.apply, params, jaxsde.VPSDE(), shape, lambda t: 999.0 * t, "eps",
               f"DDPM++ CIFAR-10 ({'reduced: --smoke, ' if smoke else ''}{n:,} parameters, random weights)")


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
    return dict(out=out, compile_s=compile_s, first_s=first, run_s=statistics.median(times) if times else first,
                repeats=len(times), warm=bool(times))


class Run:
    """The run's data (saved through ``ctx.save`` after every item) and the current section's deadline."""

    def __init__(self, ctx, name: str, budget_s: float, header: dict):
        self.ctx, self.name, self.t0, self.budget_s, self.end = ctx, name, time.perf_counter(), budget_s, 0.0
        self.data = dict(header, budget_s=budget_s, status="running", rows=[], generate=[], diffusers=[], skipped=[],
                         errors=[])

    def open(self, share: float) -> None:
        self.end = min(time.perf_counter() + share * self.budget_s, self.t0 + self.budget_s)

    def left(self) -> float:
        return self.end - time.perf_counter()

    def add(self, kind: str, row: dict) -> None:
        self.data[kind].append(row)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = time.perf_counter() - self.t0
        self.ctx.save(self.name, self.data)


def sampling_rows(run: Run, net: Net, cfg: dict, todo: list, repeats: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxsde
    from jaxsde.precision import cast_params, matmul_dtypes

    table, key, cost = solvers(cfg), jax.random.PRNGKey(0), {}  # cost: the most seconds per sample seen per dtype
    max_steps = cfg.get(f"{net.name}_max_steps", cfg["max_steps"])
    for sname, dtype_name, batch in todo:
        what = dict(section=net.name, model=net.description, solver=sname, dtype=dtype_name, batch=batch)
        est = cost.get(dtype_name, max(cost.values(), default=0.0)) * batch
        if run.left() <= est:
            run.add("skipped", dict(what, reason=f"section budget: {run.left():.0f} s left, estimated {est:.0f} s"))
            continue
        (solver, expected), dtype = table[sname], jnp.bfloat16 if dtype_name == B16 else jnp.float32
        params = net.params if dtype == jnp.float32 else cast_params(net.params, dtype)

        def program(p, k, solver=solver, dtype=dtype, batch=batch):
            sol = jaxsde.sample(k, net.sde, net.score(p, dtype), solver, net.shape, batch, max_steps=max_steps)
            return sol.stats.nfe, sol.result, jnp.all(jnp.isfinite(sol.x))

        t0 = time.perf_counter()
        try:
            ops: dict[str, int] = {}  # conv / dot_general equations by their first operand's dtype
            for (lhs, _), n in matmul_dtypes(net.score(params, dtype), jnp.zeros(net.shape), jnp.asarray(0.5)).items():
                ops[lhs] = ops.get(lhs, 0) + n
            m = timed(program, (params, key), repeats, run.left)
        except Exception as e:  # noqa: BLE001 - out of memory and the like: record and go on
            run.add("errors", dict(what, error=f"{type(e).__name__}: {str(e)[:300]}"))
            continue
        finally:
            cost[dtype_name] = max(cost.get(dtype_name, 0.0), (time.perf_counter() - t0) / batch)
        nfe, result, finite = (np.asarray(a) for a in m.pop("out"))
        low = sum(v for k, v in ops.items() if k in ("bfloat16", "float16"))
        run.add("rows", dict(what, **m, samples_per_s=batch / m["run_s"], nfe_mean=float(nfe.mean()),
                             nfe_min=int(nfe.min()), nfe_max=int(nfe.max()), nfe_expected=expected,
                             nfe_per_s=float(nfe.sum()) / m["run_s"], failed=int(np.sum(result != 0)),
                             all_finite=bool(finite), bf16_ops=low / max(sum(ops.values()), 1), op_dtypes=ops))
        print(f"  {net.name} {sname} {dtype_name} B={batch}: {batch / m['run_s']:.1f} samples/s, "
              f"NFE {nfe.mean():.1f}, compile {m['compile_s']:.1f} s", flush=True)


def section_generate(run: Run, net: Net, cfg: dict, repeats: int) -> None:
    """The throughput suite's ``generate`` vs ``sample`` (interleaved rounds) on ``net`` in float32, GGF."""
    import jax.numpy as jnp

    import jaxsde

    from .throughput import measure

    prob = dict(name=net.description, sde=net.sde, score_fn=lambda p: net.score(p, jnp.float32), params=net.params,
                shape=net.shape, solver=jaxsde.GottaGoFast(rtol=cfg["rtol"]), max_steps=cfg["hsc64_max_steps"])
    row = measure(prob, cfg["gen_batch"], cfg["gen_batch"] * cfg["gen_per_slot"], repeats)
    row.pop("nfe")
    run.add("generate", dict(row, section="generate", solver=f"GottaGoFast(rtol={cfg['rtol']})"))


def section_diffusers(run: Run, cfg: dict, smoke: bool, repeats: int) -> None:
    import numpy as np

    batch, k_steps = cfg["diffusers_batch"], cfg["ddim_steps"]
    row = dict(section="diffusers", solver=f"DDIM({k_steps} steps, trailing)", batch=batch, dtype=F32)
    try:
        import diffusers
        import torch
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken staged dependency
        run.add("skipped", dict(row, reason=f"cannot import diffusers ({type(e).__name__}: {e}); pass --stage"))
        return
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="gpu_unet_") as folder:
        peer.save_weights(folder, peer.unet_config(smoke, **({"sample_size": 16} if smoke else {})))
        ckpt, tnet, sched, x_T, x_T_j, keys = peer.ddim_setup(folder, batch, dev)
    row.update(model=f"UNet2DModel, DDPM CIFAR-10 layout{' (reduced: --smoke)' if smoke else ''}, "
                     f"{sum(p.numel() for p in tnet.parameters()):,} parameters, random weights",
               diffusers_version=diffusers.__version__, torch_version=torch.__version__, torch_device=dev,
               precision_note="jax: default matmul/conv precision (TF32 on NVIDIA GPUs since Ampere); torch: "
                              f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                              f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    program = peer.ddim_program(ckpt, peer.ddim_solver(sched, k_steps), keys)
    m = timed(program, (ckpt.params, x_T_j), repeats, run.left)
    xj, nfe = m.pop("out")
    out, first, times = repeat_runs(lambda: peer.ddim_loop(tnet, sched, x_T, k_steps, dev), repeats, run.left)
    t_s = statistics.median(times) if times else first
    run.add("diffusers", dict(row, **{f"jaxsde_{k}": v for k, v in m.items()}, nfe=int(np.max(nfe)),
                              jaxsde_samples_per_s=batch / m["run_s"], diffusers_first_s=first, diffusers_run_s=t_s,
                              diffusers_repeats=len(times), diffusers_samples_per_s=batch / t_s,
                              ratio_jaxsde_over_diffusers_time=m["run_s"] / t_s, **peer.difference(xj, out)))


def render(d: dict) -> str:
    m = d["machine"]
    lines = [f"# GPU throughput benchmark{' (--smoke: tiny networks, not a measurement)' if d['smoke'] else ''}", "",
             f"Command: `{m['command']}`  ",
             f"Date: {m['date']}, commit {m['git_commit'][:10]}, status: {d['status']}, "
             f"elapsed {d.get('elapsed_s', 0):.0f} s of a {d['budget_s']:.0f} s budget  ",
             f"Device: {m['devices']} ({m['backend']}); jax {m['jax']}, Python {m['python']}", ""]
    if d["rows"]:
        lines += ["## Solvers (`jaxsde.sample`, one compiled program per row)", "", *columns(d["rows"], {
            "network": "{section}", "solver": "{solver}", "dtype": "{dtype}", "batch": "{batch}",
            "samples/s": "{samples_per_s:.2f}", "NFE mean (min-max)": "{nfe_mean:.1f} ({nfe_min}-{nfe_max})",
            "expected NFE": lambda r: r["nfe_expected"] or "", "failed": "{failed}", "compile s": "{compile_s:.1f}",
            "run s": "{run_s:.3f}", "repeats": "{repeats}", "bf16 share of conv/dot ops": "{bf16_ops:.2f}"}),
            "", "Networks: " + "; ".join(sorted({f"{r['section']}: {r['model']}" for r in d["rows"]})), ""]
    if d["generate"]:
        lines += [f"## `generate` vs `sample` ({d['generate'][0]['solver']}, float32)", "", *columns(d["generate"], {
            "network": "{problem}", "batch": "{batch}", "n": "{n}", "samples/s sample / generate":
                "{sample_sps:.1f} / {generate_sps:.1f}", "speed-up (ideal)": "{speedup:.2f}x ({ideal_speedup:.2f}x)",
            "useful work sample / generate": "{sample_useful_work:.3f} / {generate_useful_work:.3f}",
            "compile s sample / generate": lambda r: " / ".join(f"{c:.1f}" for c in r["compile_s"])}), ""]
    for r in d["diffusers"]:
        lines += ["## DDIM: jaxsde vs diffusers (PyTorch) on the same UNet2DModel weights", "",
                  f"{r['model']}, {r['solver']}, batch {r['batch']}, {r['dtype']}; torch {r['torch_version']} on "
                  f"{r['torch_device']}, diffusers {r['diffusers_version']}: jaxsde {r['jaxsde_samples_per_s']:.2f} "
                  f"samples/s (NFE {r['nfe']}, compile {r['jaxsde_compile_s']:.1f} s) vs diffusers "
                  f"{r['diffusers_samples_per_s']:.2f} samples/s; time ratio jaxsde / diffusers "
                  f"{r['ratio_jaxsde_over_diffusers_time']:.3f}; max |diff| {r['max_abs_diff']:.1e}, relative L2 "
                  f"difference {r['rel_l2_diff']:.1e} (outputs up to {r['out_abs_max']:.1f}). Precision: "
                  f"{r['precision_note']}.", ""]
    for title, key in (("Skipped", "skipped"), ("Errors", "errors")):
        lines += [f"## {title}", "", *(f"- {r.get('section')} {r.get('solver', '')} {r.get('dtype', '')} batch "
                                       f"{r.get('batch', '')}: {r.get('reason') or r.get('error')}"
                                       for r in d[key]), ""] if d[key] else []
    return "\n".join(lines)


def arguments(parser):
    parser.add_argument("--smoke", action="store_true", help="tiny networks on CPU, under a minute")
    parser.add_argument("--eqx", default=None, help="galaxygrad HSC-64 .eqx file (eqx_hsc_ScoreNet64.eqx); "
                        "without it the hsc64 and generate sections are skipped")
    parser.add_argument("--stage", default=None, help="folder from benchmarks/gpu_prepare.sh: its .whl / .zip files "
                        "are appended to sys.path (the machine's own packages take precedence)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 420; smoke 90)")
    parser.add_argument("--sections", nargs="*", default=list(SECTION_SHARE), choices=list(SECTION_SHARE))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs after the first (default 2; smoke 1)")
    parser.add_argument("--name", default=None, help="results file stem (default gpu, smoke gpu_smoke)")


def run(args, ctx):
    if args.stage:
        sys.path += [os.path.abspath(os.path.join(args.stage, e)) for e in sorted(os.listdir(args.stage))
                     if e.endswith((".whl", ".zip"))]
    # jax takes 75% of a GPU's memory at start-up by default; leave room for the PyTorch column
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")
    cfg, repeats = PLANS[args.smoke], args.repeats if args.repeats is not None else (1 if args.smoke else 2)
    run = Run(ctx, args.name or ("gpu_smoke" if args.smoke else "gpu"),
              args.budget if args.budget is not None else (90.0 if args.smoke else 420.0),
              dict(machine=dict(machine_info("torch", "diffusers"), command=ctx.command), smoke=args.smoke, plan=cfg,
                   sections=args.sections))
    run.write()
    total = sum(SECTION_SHARE[s] for s in args.sections)
    try:
        for section in args.sections:  # the last section may use all the time left
            run.open(SECTION_SHARE[section] / total * (10 if section == args.sections[-1] else 1))
            print(f"section {section} ({run.left():.0f} s)", flush=True)
            why = ("no --eqx file given (galaxygrad HSC-64 .eqx)" if section in ("hsc64", "generate") and not args.eqx
                   else "section budget: no time left" if run.left() <= 0 else None)
            if why:
                run.add("skipped", dict(section=section, reason=why))
                continue
            try:
                if section == "diffusers":
                    section_diffusers(run, cfg, args.smoke, repeats)
                elif section == "generate":
                    section_generate(run, load_net(section, args.smoke, args.eqx), cfg, repeats)
                else:
                    sampling_rows(run, load_net(section, args.smoke, args.eqx), cfg, items(section, cfg, args.smoke),
                                  repeats)
            except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
                run.add("errors", dict(section=section, error=f"{type(e).__name__}: {e}",
                                       traceback=traceback.format_exc()[-2000:]))
        run.data["status"] = "complete"
    finally:
        if run.data["status"] == "running":
            run.data["status"] = "interrupted"
        run.write()
