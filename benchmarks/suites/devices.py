"""Sample i across device counts: 1 vs 8 forced host devices, at the default and at a fixed per-device width.

digits, ``GottaGoFast(rtol)``, ``jaxsde.generate`` over 1 and 8 devices (256 slots), and 1 device at the 8-device
run's per-device width: each width compiles to its own program, whose rounding can change an adaptive step
sequence.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import datetime  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxsde  # noqa: E402


def arguments(parser):
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--rtol", type=float, default=0.05)


def run(args, ctx):
    command = ctx.command
    ckpt = jaxsde.pretrained("digits")
    solver = jaxsde.GottaGoFast(rtol=args.rtol)
    key = jax.random.PRNGKey(0)
    devices = jax.devices()
    assert len(devices) == 8, "needs 8 forced host devices (XLA_FLAGS set before jax is imported)"
    runs = {}
    for name, devs, batch in (("1 device, 256 slots", devices[:1], 256), ("8 devices, 256 slots", devices, 256),
                              ("1 device, the 8-device run's width", devices[:1], None)):
        if batch is None:
            batch = runs["8 devices, 256 slots"][2]
        gen = jaxsde.generate(key, ckpt.sde, ckpt.score, solver, ckpt.shape, args.n, batch_size=batch, devices=devs)
        sol = gen.solution()
        runs[name] = (np.asarray(sol.x), np.asarray(sol.stats.nfe), gen.loop.slots)
        print(name, "slots per device", gen.loop.slots, flush=True)
    ref_x, ref_nfe, _ = runs["8 devices, 256 slots"]
    lines = ["# Sample i across device counts (digits, GGF)", "",
             f"`{command}` ({datetime.date.today()}, jax {jax.__version__}, {devices[0].platform}, 8 forced host "
             f"devices; n = {args.n}, GottaGoFast(rtol={args.rtol}))", "",
             "| run | slots per device | max abs dx vs 8 devices | bitwise equal | samples with other NFE |",
             "|---|---|---|---|---|"]
    for name, (x, nfe, slots) in runs.items():
        lines.append(f"| {name} | {slots} | {np.abs(x - ref_x).max():.2e} | {np.array_equal(x, ref_x)} | "
                     f"{int(np.sum(nfe != ref_nfe))} |")
    ctx.save("devices", dict(n=args.n, rtol=args.rtol, lines=lines), md="\n".join(lines))
    print("\n".join(lines))
