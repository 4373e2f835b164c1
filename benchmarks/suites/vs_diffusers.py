"""jaxsde vs diffusers (PyTorch) on CPU: DDIM on the same ``UNet2DModel`` weights, side by side.

The network: diffusers' ``UNet2DModel`` in google/ddpm-cifar10-32's layout, random weights (``torch.manual_seed(0)``,
``save_pretrained``), loaded by ``jaxsde.checkpoints.load(dir, "diffusers")``; a ``DDIMScheduler`` (linear betas,
trailing spacing, ``set_alpha_to_one``). ``--stage sampling``: diffusers' ``DDIMPipeline`` loop (eta 0, no final
clamp) vs ``jaxsde.DDIM(K - 1, grid=diffusers_grid(...))`` with the final Tweedie step (K evaluations each, the same
``x_T``), compiled, warmed up, then alternating rounds (medians), ``--threads`` each (the child process is pinned to
that many cores); max |diff| of the outputs. ``--stage forward``: one batched forward per :data:`VARIANTS` entry (XLA
flags, matmul precision, NCHW / im2col convolutions, torch channels_last), each in a fresh process. ``--stage
compile``: each program compiled twice. Each stage runs in a child process; ``NAME.{json,md}`` accumulates the
stages and is rewritten after each measurement.
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

# name -> (XLA_FLAGS, options for the child); options: precision (jax_default_matmul_precision),
# conv ("nchw" | "im2col"), torch_channels_last
VARIANTS: dict[str, tuple[str, dict]] = {
    "default": ("", {}),
    "thunk_runtime=false": ("--xla_cpu_use_thunk_runtime=false", {}),
    "multi_thread_eigen=false": ("--xla_cpu_multi_thread_eigen=false", {}),
    "use_onednn": ("--xla_cpu_use_onednn=true", {}),
    "onednn_fusion=dot,eltwise": ("--xla_cpu_experimental_onednn_fusion_type=dot,eltwise", {}),
    "use_xnnpack": ("--xla_cpu_use_xnnpack=true", {}),
    "xnn_fusion=individual_convolution,individual_dot": (
        "--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot", {}),
    "xnn_graph_fusion=GREEDY": ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", {}),
    "ynn_fusion=individual_convolution,individual_dot": (
        "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot", {}),
    "ynn_fusion=individual_convolution": ("--xla_cpu_experimental_ynn_fusion_type=individual_convolution", {}),
    "ynn_fusion=individual_convolution,individual_dot,dot,eltwise,reduce": (
        "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot,dot,eltwise,reduce", {}),
    "ynn + conv im2col matmul": ("--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot",
                                 {"conv": "im2col"}),
    "enable_fast_math": ("--xla_cpu_enable_fast_math=true", {}),
    "matmul_precision=highest": ("", {"precision": "highest"}),
    "conv NCHW": ("", {"conv": "nchw"}),
    "conv im2col matmul": ("", {"conv": "im2col"}),
    "torch channels_last": ("", {"torch_channels_last": True}),
}


# --- shared -------------------------------------------------------------------------------------
def pin_threads(threads: int) -> list[int]:
    """Restrict this process to ``threads`` cores (before jax/torch start their pools)."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return cpus


def conv_interceptor(kind: str):
    """A ``flax.linen.intercept_methods`` interceptor computing every ``nn.Conv`` (no groups, no
    dilation) as NCHW ``lax.conv_general_dilated`` or as im2col + one matmul, same parameters."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    def conv(mod, x):
        k = mod.variables["params"]["kernel"]
        b = mod.variables["params"].get("bias")
        kh, kw, _, cout = k.shape
        strides = tuple(mod.strides or (1, 1)) if not isinstance(mod.strides, int) else (mod.strides,) * 2
        pad = mod.padding
        if isinstance(pad, str):
            pad = [((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)] if pad == "SAME" else [(0, 0), (0, 0)]
        pad = [tuple(p) for p in pad]
        if kind == "nchw":
            y = jax.lax.conv_general_dilated(jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(k, (3, 2, 0, 1)),
                                             strides, pad, dimension_numbers=("NCHW", "OIHW", "NCHW"))
            y = jnp.transpose(y, (0, 2, 3, 1))
        else:
            xp = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
            n, hp, wp, cin = xp.shape
            ho, wo = (hp - kh) // strides[0] + 1, (wp - kw) // strides[1] + 1
            cols = [xp[:, i:i + strides[0] * (ho - 1) + 1:strides[0], j:j + strides[1] * (wo - 1) + 1:strides[1], :]
                    for i in range(kh) for j in range(kw)]
            patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
            y = patches.reshape(n * ho * wo, kh * kw * cin) @ k.reshape(kh * kw * cin, cout)
            y = y.reshape(n, ho, wo, cout)
        return y + b if b is not None else y

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            return conv(context.module, *args)
        return next_fun(*args, **kwargs)

    return interceptor


def median_rounds(fns: dict, rounds: int) -> tuple[dict, dict]:
    """Every fn once (warm-up), then ``rounds`` rounds in a fixed order: (median s, all times)."""
    times, _ = interleaved(fns, rounds, rotate=False)
    return medians(times), dict(times)


# --- child: one forward --------------------------------------------------------------------------
def child_forward(args, opts: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from diffusers import UNet2DModel

    import jaxsde

    torch.set_num_threads(args.threads)
    if opts.get("precision"):
        jax.config.update("jax_default_matmul_precision", opts["precision"])
    ckpt = jaxsde.checkpoints.load(args.weights, "diffusers")
    tnet = UNet2DModel.from_pretrained(args.weights).eval()
    if opts.get("torch_channels_last"):
        tnet = tnet.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *ckpt.shape)).astype(np.float32)
    ts = np.full((args.batch,), 500, np.int64)

    def apply(p, x, t):
        if opts.get("conv"):
            import flax.linen as nn

            with nn.intercept_methods(conv_interceptor(opts["conv"])):
                return ckpt.model.apply(p, x, t)
        return ckpt.model.apply(p, x, t)

    xj, tj = jnp.asarray(x), jnp.asarray(ts, jnp.float32)
    t0 = time.perf_counter()
    fwd = jax.jit(apply).lower(ckpt.params, xj, tj).compile()
    compile_s = time.perf_counter() - t0
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    if opts.get("torch_channels_last"):
        xt = xt.contiguous(memory_format=torch.channels_last)
    tt = torch.from_numpy(ts)
    out = {}

    def run_jax():
        out["jax"] = jax.block_until_ready(fwd(ckpt.params, xj, tj))

    def run_torch():
        with torch.inference_mode():
            out["torch"] = tnet(xt, tt).sample

    med, times = median_rounds({"torch": run_torch, "jaxsde": run_jax}, args.rounds)
    diff = float(np.max(np.abs(np.asarray(out["jax"]) - out["torch"].numpy().transpose(0, 2, 3, 1))))
    return dict(compile_s=compile_s, jaxsde_s=med["jaxsde"], torch_s=med["torch"],
                ratio_jaxsde_over_torch=med["jaxsde"] / med["torch"], times=times, max_abs_diff=diff,
                out_scale=float(np.max(np.abs(out["torch"].numpy()))))


# --- child: DDIM sampling --------------------------------------------------------------------------
def child_sampling(args, opts: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    import jaxsde

    torch.set_num_threads(args.threads)
    ckpt, tnet, sched, x_T, x_T_j, keys = ddim_setup(args.weights, args.batch)
    result: dict = dict(threads=args.threads, batch=args.batch, steps={})

    # compile time of one batched forward, for the compile ratio
    xs, ts = jnp.zeros((args.batch, *ckpt.shape)), jnp.zeros((args.batch,))
    t0 = time.perf_counter()
    jax.jit(ckpt.model.apply).lower(ckpt.params, xs, ts).compile()
    result["forward_compile_s"] = time.perf_counter() - t0

    for k_steps in args.steps:
        solver = ddim_solver(sched, k_steps)
        row: dict = dict(steps=k_steps)
        t0 = time.perf_counter()
        compiled = jax.jit(ddim_program(ckpt, solver, keys)).lower(ckpt.params, x_T_j).compile()
        row["compile_s"] = time.perf_counter() - t0
        if args.compile_probe:
            t0 = time.perf_counter()
            jax.jit(ddim_program(ckpt, solver, keys, denoise=False)).lower(ckpt.params, x_T_j).compile()
            row["compile_s_without_tweedie"] = time.perf_counter() - t0
            # before the shared network: model.apply called (so traced) at each call site
            from jaxsde.models.score import output_to_score

            def unshared(p):
                def score(x, t):
                    t = jnp.asarray(t, x.dtype)
                    out = ckpt.model.apply(p, x[None], ckpt.sde.timestep(t)[None])[0]
                    return output_to_score(ckpt.sde, out, x, t, "eps")
                return score

            t0 = time.perf_counter()
            jax.jit(lambda p, x, s=solver: jaxsde.solve_batch(keys, ckpt.sde, unshared(p), s, x).x).lower(
                ckpt.params, x_T_j).compile()
            row["compile_s_unshared_network"] = time.perf_counter() - t0
        out = {}

        def run_jax(compiled=compiled, out=out):
            out["jax"] = jax.block_until_ready(compiled(ckpt.params, x_T_j))

        def run_torch(k_steps=k_steps, out=out):
            out["torch"] = ddim_loop(tnet, sched, x_T, k_steps)

        med, times = median_rounds({"diffusers": run_torch, "jaxsde": run_jax}, args.rounds)
        xj, nfe = (np.asarray(a) for a in out["jax"])
        row.update(diffusers_s=med["diffusers"], jaxsde_s=med["jaxsde"], times=times,
                   ratio_jaxsde_over_diffusers=med["jaxsde"] / med["diffusers"],
                   diffusers_sps=args.batch / med["diffusers"], jaxsde_sps=args.batch / med["jaxsde"],
                   diffusers_step_s=med["diffusers"] / k_steps, jaxsde_step_s=med["jaxsde"] / k_steps,
                   nfe=int(nfe.max()), nfe_min=int(nfe.min()), **difference(xj, out["torch"]),
                   compile_ratio=row["compile_s"] / result["forward_compile_s"])
        result["steps"][str(k_steps)] = row
        print(json.dumps({"partial": row}), flush=True)
    return result


# --- child: compile times -------------------------------------------------------------------------
def child_compile(args, opts: dict) -> dict:
    """Compile times, each program compiled twice from a fresh ``jax.jit``: one batched forward, then DDIM with
    ``K`` steps for each ``--steps``, with and without the final Tweedie step. The first compile of a process pays
    one-time costs (the network's first trace, XLA's first use of its passes); the second is the program's own."""
    import jax
    import jax.numpy as jnp
    from diffusers import DDIMScheduler

    import jaxsde

    ckpt = jaxsde.checkpoints.load(args.weights, "diffusers")
    sched = DDIMScheduler.from_pretrained(args.weights)
    xs, ts = jnp.zeros((args.batch, *ckpt.shape)), jnp.zeros((args.batch,))
    keys = jax.random.split(jax.random.PRNGKey(0), args.batch)

    def compile_s(fn, *a) -> float:  # a new function object each time: jax's caches are keyed on it
        t0 = time.perf_counter()
        jax.jit(lambda *b: fn(*b)).lower(*a).compile()
        return time.perf_counter() - t0

    def forward(p, x, t):
        return ckpt.model.apply(p, x, t)

    out: dict = dict(forward=[compile_s(forward, ckpt.params, xs, ts) for _ in range(2)], ddim={})
    for k_steps in args.steps:
        solver = ddim_solver(sched, k_steps)
        for denoise in (True, False):
            f = ddim_program(ckpt, solver, keys, denoise)
            out["ddim"][f"{k_steps} steps, denoise={denoise}"] = [  # the program of the samples alone
                compile_s(lambda p, x, f=f: f(p, x)[0], ckpt.params, xs) for _ in range(2)]
    return out


# --- parent ------------------------------------------------------------------------------------------
def run_child(args, mode: str, flags: str, opts: dict, timeout: float) -> dict:
    env = dict(os.environ, XLA_FLAGS=flags)
    cmd = [sys.executable, "-m", "benchmarks", "run", "vs_diffusers", "--child", mode, "--child-opts", json.dumps(opts),
           "--weights", args.weights, "--batch", str(args.batch), "--threads", str(args.threads),
           "--rounds", str(args.rounds), "--steps", *map(str, args.steps)]
    if args.compile_probe:
        cmd.append("--compile-probe")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s", wall_s=time.perf_counter() - t0)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(error=f"exit {proc.returncode}: " + " | ".join(tail)[-400:], wall_s=time.perf_counter() - t0)
    res = json.loads(lines[-1])
    res["wall_s"] = time.perf_counter() - t0
    res["load_avg_after"] = list(os.getloadavg())  # other jobs on the machine (2 = both cores busy)
    return res


def render(d: dict) -> str:
    m = normalize(d["machine"])
    lines = ["# jaxsde vs diffusers (PyTorch): DDIM on the same UNet2DModel weights, CPU", "",
             f"Command: `{m['command']}`  ", f"Date: {m['date']}, commit {m['git_commit'][:10]}  ",
             f"Machine: {m['cpu']} ({m['cpus']} cores), {m['threads']} threads for each side; "
             f"load average at start {', '.join(f'{v:.1f}' for v in m['load'])}  ",
             f"Versions: Python {m['python']}, jax {m['jax']}, torch {m['versions']['torch']}, "
             f"diffusers {m['versions']['diffusers']}  ",
             f"Network: {d['network']}; batch {d['batch']}.", ""]
    fw = d.get("forward_variants") or {}
    if fw:
        cmds = sorted({r.get("command", "") for r in fw.values()})
        rounds = "/".join(str(k) for k in sorted({len(r["times"]["jaxsde"]) for r in fw.values() if "times" in r}))
        lines += ["## One batched forward pass, per variant", "",
                  "Command(s): " + ", ".join(f"`{c}`" for c in cmds), "",
                  f"A fresh process per variant; compile, warm-up, then {rounds} alternating rounds "
                  "(torch, jaxsde), medians. `ratio` = jaxsde / torch (below 1: jaxsde faster).", "",
                  "`load` = the machine's 1-minute load average when the variant ended (this benchmark alone: "
                  "about 2; more means other jobs shared the cores and the row is not comparable).", "",
                  *table(["variant", "XLA_FLAGS / option", "compile s", "jaxsde forward s", "torch forward s",
                          "ratio", "max abs diff vs torch", "load", "date"],
                         [[name, "`" + (" ".join(x for x in (r.get("flags"), json.dumps(r["opts"]) if r.get("opts")
                                                              else "") if x) or "(none)") + "`",
                           *([f"error: {r['error'][:160]}", "", "", "", ""] if "error" in r else
                             [f"{r['compile_s']:.2f}", f"{r['jaxsde_s']:.3f}", f"{r['torch_s']:.3f}",
                              f"{r['ratio_jaxsde_over_torch']:.3f}", f"{r['max_abs_diff']:.1e}"]),
                           f"{r['load_avg_after'][0]:.1f}" if r.get("load_avg_after") else "n/a", r.get("date", "")]
                          for name, r in fw.items()]), ""]
    for key, s in (d.get("sampling") or {}).items():
        lines += [f"## DDIM sampling ({key}; XLA_FLAGS `{s.get('flags') or ''}`)", "",
                  f"Command: `{s.get('command')}`, {s.get('date')}.", ""]
        if "error" in s:
            lines += [f"error: {s['error']}", ""]
            continue
        lines += [f"Compile time of one jitted batched forward: {s['forward_compile_s']:.2f} s.", "",
                  "| steps | NFE (jaxsde) | diffusers s | jaxsde s | jaxsde / diffusers | diffusers samples/s | "
                  "jaxsde samples/s | s/step diffusers | s/step jaxsde | jaxsde compile s | compile / forward "
                  "compile | compile s without Tweedie call | compile s, network not shared | max abs diff |",
                  "|" + "---|" * 14]
        for k, r in s["steps"].items():
            no_tw, unsh = r.get("compile_s_without_tweedie"), r.get("compile_s_unshared_network")
            lines.append(f"| {k} | {r['nfe']} | {r['diffusers_s']:.2f} | {r['jaxsde_s']:.2f} | "
                         f"{r['ratio_jaxsde_over_diffusers']:.3f} | {r['diffusers_sps']:.3f} | {r['jaxsde_sps']:.3f} | "
                         f"{r['diffusers_step_s']:.3f} | {r['jaxsde_step_s']:.3f} | {r['compile_s']:.2f} | "
                         f"{r['compile_ratio']:.2f} | {'' if no_tw is None else f'{no_tw:.2f}'} | "
                         f"{'' if unsh is None else f'{unsh:.2f}'} | "
                         f"{r['max_abs_diff']:.1e} (outputs up to {r['out_abs_max']:.1f}; relative L2 "
                         f"{r.get('rel_l2_diff', float('nan')):.1e}) |")
        lines.append("")
    for key, c in (d.get("compile") or {}).items():
        lines += [f"## Compile times ({key})", "", f"Command: `{c.get('command')}`, {c.get('date')}.", ""]
        if "error" in c:
            lines += [f"error: {c['error']}", ""]
            continue
        f1, f2 = c["forward"]
        lines += ["Each program compiled twice in one process, from a fresh `jax.jit` each time "
                  "(`jit(...).lower(...).compile()`), after one batched forward compiled twice: the first "
                  "compile of the process pays one-time costs, the second is the program's own. Ratios: "
                  "against the forward's first compile and against its second.", "",
                  f"One batched forward: {f1:.2f} s, then {f2:.2f} s.", "",
                  "| program | first compile s | second compile s | first / forward first | second / forward second |",
                  "|---|---|---|---|---|"]
        for name, (a, b) in c["ddim"].items():
            lines.append(f"| DDIM {name} | {a:.2f} | {b:.2f} | {a / f1:.2f} | {b / f2:.2f} |")
        lines.append("")
    if d.get("notes"):
        lines += ["## Notes", "", *d["notes"], ""]
    return "\n".join(lines)


def arguments(parser):
    parser.add_argument("--stage", choices=("all", "forward", "sampling", "compile"), default="all")
    parser.add_argument("--variants", nargs="*", default=None, help="forward variants to run (default: all)")
    parser.add_argument("--flags", default=None, help="XLA_FLAGS for the sampling stage (default: the fastest "
                    "forward variant's flags measured in this run or already in the results file, else none)")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile-probe", action="store_true",
                        help="also compile the program without the Tweedie step")
    options(parser, batch=16, rounds=3, name="vs_diffusers", quick="small network, batch 2, 3 steps, 1 round")
    parser.add_argument("--weights", default=None,
                        help="folder for the random-weight UNet2DModel (default: a temp dir)")
    parser.add_argument("--child", choices=("forward", "sampling", "compile"), help=argparse.SUPPRESS)
    parser.add_argument("--child-opts", default="{}", help=argparse.SUPPRESS)


def run(args, ctx):

    if args.child:
        pin_threads(args.threads)
        opts = json.loads(args.child_opts)
        res = dict(forward=child_forward, sampling=child_sampling, compile=child_compile)[args.child](args, opts)
        print(json.dumps(res), flush=True)
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

    def measure(section: str, key: str, stage: str, flags: str, opts=None, timeout: float = 600, **extra) -> None:
        """One child run of ``stage``, stored as ``data[section][key]`` (the file rewritten after it)."""
        print(f"{stage} ({key}) ...", flush=True)
        res = run_child(args, stage, flags, opts or {}, timeout)
        data.setdefault(section, {})[key] = dict(flags=flags, **({} if opts is None else {"opts": opts}),
                                                 command=machine["command"], date=machine["date"], **extra, **res)
        print("  ", json.dumps({k: v for k, v in res.items() if k != "times"})[:2000], flush=True)
        ctx.save(args.name, data)

    if args.stage in ("all", "forward"):
        for name in args.variants if args.variants is not None else VARIANTS:
            measure("forward_variants", name, "forward", *VARIANTS[name])
    if args.stage in ("all", "sampling"):
        flags = args.flags
        if flags is None:  # the fastest forward variant's XLA flags (measured now or stored), else none
            ok = [v for v in data.get("forward_variants", {}).values() if "error" not in v and not v.get("opts")]
            flags = min(ok, key=lambda v: v["jaxsde_s"])["flags"] if ok else ""
        measure("sampling", f"batch {args.batch}, threads {args.threads}, " + (flags or "default flags"), "sampling",
                flags, timeout=1800, load_avg=machine["load"])
    if args.stage == "compile":
        measure("compile", f"batch {args.batch}, " + (args.flags or "default flags"), "compile", args.flags or "",
                timeout=900)
    if tmp is not None:
        tmp.cleanup()
