"""The harness' smoke suite: the smallest run of the suites that tests exercise, into one folder.

Each item is ``(suite, argv)`` run through the same ``python -m benchmarks run`` path as a user's command; an item
whose optional peer (galaxygrad's weights, k-diffusion) is missing is recorded as skipped. ``smoke.json`` lists
what ran, what was skipped and why; each item writes its own results files next to it.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from ..harness.machine import machine_info


def galaxygrad_eqx(name: str) -> str | None:
    spec = importlib.util.find_spec("galaxygrad")  # not imported: `import galaxygrad` fails on Linux
    path = None if spec is None or spec.origin is None else os.path.join(os.path.dirname(spec.origin), name)
    return path if path and os.path.exists(path) else None


def has_k_diffusion() -> bool:
    return "k_diffusion" in sys.modules or importlib.util.find_spec("k_diffusion") is not None


def items(only: list[str] | None) -> list[tuple[str, list[str], str | None]]:
    """``(suite, argv, why it cannot run or None)``."""
    eqx32 = galaxygrad_eqx("eqx_hsc_ScoreNet32.eqx")
    no_kd = None if has_k_diffusion() else "k-diffusion is not installed"
    plan = [
        ("gpu", ["--smoke", "--budget", "600", *(["--eqx", eqx32] if eqx32 else [])], None),
        ("quality_vs_nfe", ["--frontier", "--quick"], no_kd),
        ("galaxies", ["--quick", "--models", "hsc32", "--n", "6"],
         no_kd or (None if eqx32 else "galaxygrad==0.2.1 (its HSC-32 weights) is not installed")),
    ]
    return [item for item in plan if only is None or item[0] in only]


def arguments(parser):
    parser.add_argument("--only", default=None, help="comma-separated suites of the smoke plan (exact names)")


def run(args, ctx):
    from ..harness import cli

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    ran, skipped = [], []
    for suite, argv, why in items(only):
        if why:
            skipped.append(dict(suite=suite, reason=why))
            continue
        cli.run(suite, [*argv, "--out", ctx.out])
        ran.append(dict(suite=suite, argv=argv))
    ctx.save("smoke", dict(ran=ran, skipped=skipped, machine=machine_info()))


def render(data: dict) -> str:
    lines = ["# Benchmark smoke run", "", f"Command: `{data['command']}`", ""]
    lines += [f"- ran `{r['suite']}` {' '.join(r['argv'])}" for r in data["ran"]]
    lines += [f"- skipped `{s['suite']}`: {s['reason']}" for s in data["skipped"]]
    return "\n".join(lines)
