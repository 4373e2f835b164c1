"""What ``import jaxsde`` costs on top of ``import jax``, and which heavy modules it loads.

Fresh interpreters import jax, then time ``import jaxsde`` from the given tree (an editable install's finder
removed); ``--compare`` times a second tree (e.g. a ``git worktree`` of an older commit) interleaved; medians.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from ..harness.machine import ROOT, describe
from ..harness.writer import columns

HEAVY = ("optax", "diffrax", "torch", "flax", "jaxsde.training", "jaxsde.sparse", "jaxsde.batching",
         "jaxsde.generate")

PROBE = """
import sys, time, json
root = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, root)
import jax, jax.numpy
t = time.perf_counter()
import jaxsde
dt = time.perf_counter() - t
assert jaxsde.__file__.startswith(root), jaxsde.__file__
print(json.dumps({"s": dt, "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def measure(root: str) -> dict:
    code = PROBE.replace("HEAVY", repr(HEAVY))
    out = subprocess.run([sys.executable, "-c", code, root], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def arguments(parser):
    parser.add_argument("--compare", default=None, help="a second source tree to time in the same run")
    parser.add_argument("--rounds", type=int, default=5)


def run(args, ctx):
    here = ROOT
    trees = {"this tree": here, **({"compared tree": os.path.abspath(args.compare)} if args.compare else {})}
    runs = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, root in trees.items():
            runs[name].append(measure(root))
    rows = [dict(tree=name, root=trees[name], median_s=statistics.median(r["s"] for r in rs),
                 all_s=[r["s"] for r in rs], loaded=rs[-1]["loaded"]) for name, rs in runs.items()]
    for r in rows:
        print(f"{r['tree']:14s} import jaxsde after jax: median {r['median_s']:.3f} s  loads {r['loaded']}")
    ctx.save("import_time", dict(rounds=args.rounds, rows=rows))


def render(data):
    lines = ["# `import jaxsde` on top of `import jax`", "", f"Command: `{data['command']}`", "",
             f"{describe(data['machine'])}; {data['rounds']} interleaved rounds, a fresh interpreter each.", "",
             *columns(data["rows"], {"tree": "{tree}", "median s": "{median_s:.3f}",
                                     "all s": lambda r: ", ".join(f"{v:.3f}" for v in r["all_s"]),
                                     "heavy modules loaded": lambda r: ", ".join(r["loaded"]) or "none"})]
    return "\n".join(lines)
