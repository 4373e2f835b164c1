"""jaxsde vs diffusers (PyTorch) on CPU: DDIM on the same ``UNet2DModel`` weights, side by side.

The network: diffusers' ``UNet2DModel`` in google/ddpm-cifar10-32's layout, random weights, both sides
(:mod:`benchmarks.harness.diffusers`). ``--stage sampling``: diffusers' DDIM loop vs ``jaxsde.DDIM`` on its grid (K
evaluations each, the same ``x_T``) for each ``--steps``, alternating rounds (medians), with compile times
(``--compile-probe``: also without the Tweedie step and with the network not shared), under ``--flags`` (XLA_FLAGS).
``--stage compile``: each program compiled twice. Every measurement runs in a child process pinned to ``--threads``
cores; ``NAME.{json,md}`` accumulates the stages and is rewritten after each one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from ..harness.cli import options
from ..harness.diffusers import ddim_loop, ddim_program, ddim_setup, ddim_solver, difference, save_weights, unet_config
from ..harness.machine import ROOT, machine_info, normalize
from ..harness.timing import interleaved, medians
from ..harness.writer import table


def median_rounds(fns: dict, rounds: int) -> tuple[dict, dict, dict]:
    """Every fn once (warm-up), then ``rounds`` rounds in a fixed order: (median s, all times, last outputs)."""
    times, outputs = interleaved(fns, rounds, rotate=False)
    return medians(times), dict(times), outputs


def compile_s(fn, *args) -> float:
    """Seconds to compile ``fn`` from a fresh ``jax.jit`` (a new function object: jax's caches are keyed on it)."""
    import jax

    t0 = time.perf_counter()
    jax.jit(lambda *b: fn(*b)).lower(*args).compile()
    return time.perf_counter() - t0


def child_sampling(args) -> dict:
    """DDIM with each ``--steps``: diffusers' loop and the compiled jaxsde program, alternating; compile times."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxsde

    ckpt, tnet, sched, x_T, x_T_j, keys = ddim_setup(args.weights, args.batch)
    result: dict = dict(threads=args.threads, batch=args.batch, steps={}, forward_compile_s=compile_s(
        ckpt.model.apply, ckpt.params, jnp.zeros((args.batch, *ckpt.shape)), jnp.zeros((args.batch,))))
    for k_steps in args.steps:
        solver = ddim_solver(sched, k_steps)
        t0 = time.perf_counter()
        compiled = jax.jit(ddim_program(ckpt, solver, keys)).lower(ckpt.params, x_T_j).compile()
        row: dict = dict(steps=k_steps, compile_s=time.perf_counter() - t0)
        if args.compile_probe:
            row["compile_s_without_tweedie"] = compile_s(ddim_program(ckpt, solver, keys, denoise=False),
                                                         ckpt.params, x_T_j)
            from jaxsde.models.score import output_to_score

            def unshared(p):  # before the shared network: model.apply called (so traced) at each call site
                def score(x, t):
                    t = jnp.asarray(t, x.dtype)
                    out = ckpt.model.apply(p, x[None], ckpt.sde.timestep(t)[None])[0]
                    return output_to_score(ckpt.sde, out, x, t, "eps")
                return score

            row["compile_s_unshared_network"] = compile_s(
                lambda p, x, s=solver: jaxsde.solve_batch(keys, ckpt.sde, unshared(p), s, x).x, ckpt.params, x_T_j)
        med, times, out = median_rounds({"diffusers": lambda k=k_steps: ddim_loop(tnet, sched, x_T, k),
                                         "jaxsde": lambda c=compiled: c(ckpt.params, x_T_j)}, args.rounds)
        xj, nfe = (np.asarray(a) for a in out["jaxsde"])
        row.update(diffusers_s=med["diffusers"], jaxsde_s=med["jaxsde"], times=times,
                   ratio_jaxsde_over_diffusers=med["jaxsde"] / med["diffusers"],
                   diffusers_sps=args.batch / med["diffusers"], jaxsde_sps=args.batch / med["jaxsde"],
                   diffusers_step_s=med["diffusers"] / k_steps, jaxsde_step_s=med["jaxsde"] / k_steps,
                   nfe=int(nfe.max()), nfe_min=int(nfe.min()), **difference(xj, out["diffusers"]),
                   compile_ratio=row["compile_s"] / result["forward_compile_s"])
        result["steps"][str(k_steps)] = row
        print(json.dumps({"partial": row}), flush=True)
    return result


def child_compile(args) -> dict:
    """Each program compiled twice from a fresh ``jax.jit``: one batched forward, then DDIM with each ``--steps``,
    with and without the final Tweedie step (the first compile of a process pays one-time costs)."""
    import jax
    import jax.numpy as jnp
    from diffusers import DDIMScheduler

    import jaxsde

    ckpt = jaxsde.checkpoints.load(args.weights, "diffusers")
    sched = DDIMScheduler.from_pretrained(args.weights)
    xs, ts = jnp.zeros((args.batch, *ckpt.shape)), jnp.zeros((args.batch,))
    keys = jax.random.split(jax.random.PRNGKey(0), args.batch)
    out: dict = dict(forward=[compile_s(lambda p, x, t: ckpt.model.apply(p, x, t), ckpt.params, xs, ts)
                              for _ in range(2)], ddim={})
    for k_steps in args.steps:
        solver = ddim_solver(sched, k_steps)
        for denoise in (True, False):
            f = ddim_program(ckpt, solver, keys, denoise)
            out["ddim"][f"{k_steps} steps, denoise={denoise}"] = [  # the program of the samples alone
                compile_s(lambda p, x, f=f: f(p, x)[0], ckpt.params, xs) for _ in range(2)]
    return out


def run_child(args, mode: str, flags: str, timeout: float) -> dict:
    """``mode`` in a child process with ``XLA_FLAGS=flags``: its result, ``wall_s`` and the load after it."""
    cmd = [sys.executable, "-m", "benchmarks", "run", "vs_diffusers", "--child", mode, "--weights", args.weights,
           "--batch", str(args.batch), "--threads", str(args.threads), "--rounds", str(args.rounds),
           "--steps", *map(str, args.steps)] + ["--compile-probe"] * args.compile_probe
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s", wall_s=time.perf_counter() - t0)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(error=f"exit {proc.returncode}: " + " | ".join(tail)[-400:], wall_s=time.perf_counter() - t0)
    # load_avg_after: other jobs on the machine (2 = both cores busy)
    return dict(json.loads(lines[-1]), wall_s=time.perf_counter() - t0, load_avg_after=list(os.getloadavg()))


def render(d: dict) -> str:
    m = normalize(d["machine"])
    lines = ["# jaxsde vs diffusers (PyTorch): DDIM on the same UNet2DModel weights, CPU", "",
             f"Command: `{m['command']}`  ", f"Date: {m['date']}, commit {m['git_commit'][:10]}  ",
             f"Machine: {m['cpu']} ({m['cpus']} cores), {m['threads']} threads for each side; "
             f"load average at start {', '.join(f'{v:.1f}' for v in m['load'])}  ",
             f"Versions: Python {m['python']}, jax {m['jax']}, torch {m['versions']['torch']}, "
             f"diffusers {m['versions']['diffusers']}  ", f"Network: {d['network']}; batch {d['batch']}.", ""]
    titles = {"sampling": "DDIM sampling ({key}; XLA_FLAGS `{flags}`)", "compile": "Compile times ({key})"}
    for section, title in titles.items():
        for key, s in (d.get(section) or {}).items():
            lines += [f"## {title.format(key=key, flags=s.get('flags') or '')}", "",
                      f"Command: `{s.get('command')}`, {s.get('date')}.", ""]
            lines += [f"error: {s['error']}", ""] if "error" in s else (sampling_md if section == "sampling" else
                                                                        compile_md)(s)
    if d.get("notes"):
        lines += ["## Notes", "", *d["notes"], ""]
    return "\n".join(lines)


def sampling_md(s: dict) -> list[str]:
    def opt(v):
        return "" if v is None else f"{v:.2f}"

    return [f"Compile time of one jitted batched forward: {s['forward_compile_s']:.2f} s.", "",
            *table(["steps", "NFE (jaxsde)", "diffusers s", "jaxsde s", "jaxsde / diffusers", "diffusers samples/s",
                    "jaxsde samples/s", "s/step diffusers", "s/step jaxsde", "jaxsde compile s",
                    "compile / forward compile", "compile s without Tweedie call", "compile s, network not shared",
                    "max abs diff"],
                   [[k, r["nfe"], f"{r['diffusers_s']:.2f}", f"{r['jaxsde_s']:.2f}",
                     f"{r['ratio_jaxsde_over_diffusers']:.3f}", f"{r['diffusers_sps']:.3f}", f"{r['jaxsde_sps']:.3f}",
                     f"{r['diffusers_step_s']:.3f}", f"{r['jaxsde_step_s']:.3f}", f"{r['compile_s']:.2f}",
                     f"{r['compile_ratio']:.2f}", opt(r.get("compile_s_without_tweedie")),
                     opt(r.get("compile_s_unshared_network")),
                     f"{r['max_abs_diff']:.1e} (outputs up to {r['out_abs_max']:.1f}; relative L2 "
                     f"{r.get('rel_l2_diff', float('nan')):.1e})"] for k, r in s["steps"].items()]), ""]


def compile_md(c: dict) -> list[str]:
    f1, f2 = c["forward"]
    return ["Each program compiled twice in one process, from a fresh `jax.jit` each time "
            "(`jit(...).lower(...).compile()`), after one batched forward compiled twice: the first "
            "compile of the process pays one-time costs, the second is the program's own. Ratios: "
            "against the forward's first compile and against its second.", "",
            f"One batched forward: {f1:.2f} s, then {f2:.2f} s.", "",
            *table(["program", "first compile s", "second compile s", "first / forward first",
                    "second / forward second"],
                   [[f"DDIM {name}", f"{a:.2f}", f"{b:.2f}", f"{a / f1:.2f}", f"{b / f2:.2f}"]
                    for name, (a, b) in c["ddim"].items()]), ""]


def arguments(parser):
    parser.add_argument("--stage", choices=("sampling", "compile"), default="sampling")
    parser.add_argument("--flags", default="", help="XLA_FLAGS of the measured process (default none)")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile-probe", action="store_true",
                        help="also compile the program without the Tweedie step and with the network not shared")
    options(parser, batch=16, rounds=3, name="vs_diffusers", quick="small network, batch 2, 3 steps, 1 round")
    parser.add_argument("--weights", default=None, help="folder for the random-weight UNet2DModel (default: a temp "
                        "dir)")
    parser.add_argument("--child", choices=("sampling", "compile"), help=argparse.SUPPRESS)


def run(args, ctx):
    if args.child:  # in the child process: restrict it to ``threads`` cores before jax / torch start their pools
        cpus = sorted(os.sched_getaffinity(0))
        if args.threads < len(cpus):
            os.sched_setaffinity(0, cpus[:args.threads])
        import torch

        torch.set_num_threads(args.threads)
        child = dict(sampling=child_sampling, compile=child_compile)[args.child]
        print(json.dumps(child(args)), flush=True)
        return
    if args.quick:
        args.batch, args.steps, args.rounds = 2, [3], 1
    tmp = None
    if args.weights is None:
        tmp = tempfile.TemporaryDirectory(prefix="vs_diffusers_")
        args.weights = tmp.name
    save_weights(args.weights, unet_config(args.quick))
    from jaxsde.models.ddpm_unet import UNet2D, param_count, sample_shape

    model = UNet2D.from_config(unet_config(args.quick))
    data: dict = {}
    if os.path.exists(ctx.path(args.name, "json")):  # the stages accumulate in one file
        with open(ctx.path(args.name, "json")) as f:
            data = json.load(f)
    machine = dict(machine_info("torch", "diffusers"), threads=args.threads, command=ctx.command)
    data.update(machine=machine, batch=args.batch, rounds=args.rounds,
                network=f"UNet2DModel, DDPM CIFAR-10 layout{' (reduced: --quick)' if args.quick else ''}, "
                        f"{param_count(model, sample_shape(model)):,} parameters, random weights")

    def measure(section: str, key: str, stage: str, flags: str, timeout: float, **extra) -> None:
        """One child run of ``stage``, stored as ``data[section][key]`` (the file rewritten after it)."""
        print(f"{stage} ({key}) ...", flush=True)
        res = run_child(args, stage, flags, timeout)
        data.setdefault(section, {})[key] = dict(flags=flags, command=machine["command"], date=machine["date"],
                                                 **extra, **res)
        print("  ", json.dumps({k: v for k, v in res.items() if k != "times"})[:2000], flush=True)
        ctx.save(args.name, data)

    if args.stage == "sampling":
        measure("sampling", f"batch {args.batch}, threads {args.threads}, " + (args.flags or "default flags"),
                "sampling", args.flags, timeout=1800, load_avg=machine["load"])
    else:
        measure("compile", f"batch {args.batch}, " + (args.flags or "default flags"), "compile", args.flags,
                timeout=900)
    if tmp is not None:
        tmp.cleanup()
