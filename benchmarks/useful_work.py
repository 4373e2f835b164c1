"""Useful-work fraction of continuous batching (``generate``) vs plain ``sample``, untimed.

    python benchmarks/useful_work.py [--runs digits:16:20,digits:64:20,digits-ve:64:20] [--out DIR]

Each run ``model:batch:per_slot`` generates n = batch x per_slot samples with
``jaxsde.generate`` (GGF rtol 0.05, ``batch`` slots) and reports its useful work (sum of
per-sample NFE / score evaluations the loop computed: every slot every iteration, plus the
refill passes). Plain ``sample`` at the same batch size computes, for batch b, batch x (max NFE in
b) evaluations; its useful work follows from the same per-sample NFEs (sample i has the same NFE
in both, tested), so it is computed from them without a second run. Nothing here is timed: both
fractions are deterministic counts, unaffected by machine load (``throughput.py`` times them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import jax
import numpy as np

import jaxsde
from jaxsde.generate import summarize_generate


def run(model: str, batch: int, per_slot: int) -> dict:
    ckpt = jaxsde.pretrained(model)
    n = batch * per_slot
    solver = jaxsde.GottaGoFast(rtol=0.05)
    fn = jax.jit(lambda k, p: jaxsde.generate(k, ckpt.sde, ckpt.score_fn(p), solver, ckpt.shape, n, batch))
    t0 = time.perf_counter()
    gen = jax.block_until_ready(fn(jax.random.PRNGKey(0), ckpt.params))
    s = summarize_generate(gen)
    nfe = np.asarray(gen.stats.nfe)  # index order = sample's batches
    batches = nfe.reshape(-1, batch)
    sample_uw = float(batches.sum() / (batch * batches.max(axis=1).sum()))
    return dict(model=model, batch=batch, per_slot=per_slot, n=n, mean_nfe=float(nfe.mean()), min_nfe=int(nfe.min()),
                max_nfe=int(nfe.max()), useful_work_generate=s.useful_work, useful_work_sample=sample_uw,
                ideal_speedup=s.useful_work / sample_uw, refills=s.refills, failed=s.num_failed,
                seconds=time.perf_counter() - t0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="digits:16:20,digits:64:20,digits-ve:64:20,digits:256:8")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    command = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    print(f"reproduce with: {command}", flush=True)
    rows = []
    for spec in args.runs.split(","):
        model, batch, per_slot = spec.split(":")
        row = run(model, int(batch), int(per_slot))
        rows.append(row)
        print(json.dumps(row), flush=True)
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "useful_work.json"), "w") as f:
        json.dump(dict(command=command, date=date, jax=jax.__version__, rows=rows), f, indent=1)
    lines = ["# Useful work: `generate` vs `sample` (GGF rtol 0.05, untimed counts)", "",
             f"Command: `{command}` ({date})", "",
             "useful work = sum of per-sample NFE / score evaluations computed. `sample`'s from the same "
             "per-sample NFEs in batches of `batch` (index order). ideal = generate / sample: the speed-up of "
             "`generate` if a loop iteration cost the same in both.", "",
             "| model | batch | samples per slot | n | NFE mean (min-max) | useful work sample | "
             "useful work generate | ideal speed-up | failed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['per_slot']} | {r['n']} | {r['mean_nfe']:.1f} "
                     f"({r['min_nfe']}-{r['max_nfe']}) | {r['useful_work_sample']:.3f} | "
                     f"**{r['useful_work_generate']:.3f}** | {r['ideal_speedup']:.3f}x | {r['failed']} |")
    with open(os.path.join(args.out, "useful_work.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
