"""Useful-work fraction of continuous batching (``generate``) vs plain ``sample``, untimed.

Each run ``model:batch:per_slot`` (an embedded model, or ``mixture``: throughput's d = 16 mixture) generates
``batch x per_slot`` samples with ``jaxsde.generate`` (GGF rtol 0.05) once per ``--drain-halvings`` value: useful
work = sum NFE / evaluations computed. ``sample``'s follows from the same per-sample NFEs (batch x max NFE per
batch). Deterministic counts; docs/benchmarks.md gives the committed commands.
"""

from __future__ import annotations

import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde

from .throughput import mixture_problem


def count_work(model: str, batch: int, per_slot: int, halvings=(0,)) -> dict:
    """``generate`` (GGF rtol 0.05) of ``batch x per_slot`` samples of an embedded model or ``mixture``, once per
    ``halvings`` value (per-sample NFE must agree): useful work of each, and ``sample``'s from the same NFEs."""
    if model == "mixture":
        (sde, score), params, shape = mixture_problem(), jnp.zeros(()), (16,)
        score_fn = lambda p: score  # noqa: E731
    else:
        ckpt = jaxsde.pretrained(model)
        sde, score_fn, params, shape = ckpt.sde, ckpt.score_fn, ckpt.params, ckpt.shape
    n, solver = batch * per_slot, jaxsde.GottaGoFast(rtol=0.05)
    useful, seconds, nfe, failed = {}, {}, None, 0
    for h in halvings:
        fn = jax.jit(lambda k, p, h=h: jaxsde.generate(k, sde, score_fn(p), solver, shape, n, batch, drain_halvings=h))
        t0 = time.perf_counter()
        gen = jax.block_until_ready(fn(jax.random.PRNGKey(0), params))
        seconds[h], s = time.perf_counter() - t0, gen.summary()
        useful[h], failed = s.useful_work, max(failed, s.num_failed)
        if nfe is None:
            nfe = np.asarray(gen.stats.nfe)  # index order = sample's batches
        elif not np.array_equal(nfe, np.asarray(gen.stats.nfe)):
            raise RuntimeError(f"drain_halvings={h} changed a sample's NFE")
    batches = nfe.reshape(-1, batch)
    sample_uw = float(batches.sum() / (batch * batches.max(axis=1).sum()))
    return dict(model=model, batch=batch, per_slot=per_slot, n=n, mean_nfe=float(nfe.mean()), min_nfe=int(nfe.min()),
                max_nfe=int(nfe.max()), useful_work_generate=useful[halvings[0]], useful_work_sample=sample_uw,
                ideal_speedup=useful[halvings[0]] / sample_uw, failed=failed,
                useful_work_by_drain_halvings={str(h): u for h, u in useful.items()},
                seconds_with_compile={str(h): s for h, s in seconds.items()})


def arguments(parser):
    parser.add_argument("--runs", default="digits:16:20,digits:64:20,digits-ve:64:20,digits:256:8")
    parser.add_argument("--drain-halvings", type=int, nargs="+", default=[0],
                        help="generate's drain_halvings values, one run each (NFE must agree)")
    parser.add_argument("--name", default="", help="results file suffix: useful_work_NAME.{json,md}")


def run(args, ctx):
    rows = []
    for spec in args.runs.split(","):
        model, batch, per_slot = spec.split(":")
        rows.append(count_work(model, int(batch), int(per_slot), tuple(args.drain_halvings)))
        print(json.dumps(rows[-1]), flush=True)
    ctx.save("useful_work" + (f"_{args.name}" if args.name else ""),
             dict(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), jax=jax.__version__,
                  drain_halvings=list(args.drain_halvings), rows=rows))


def render(data: dict) -> str:
    hs = data.get("drain_halvings") or [int(h) for h in data["rows"][0]["useful_work_by_drain_halvings"]]
    lines = ["# Useful work: `generate` vs `sample` (GGF rtol 0.05, untimed counts)", "",
             f"Command: `{data['command']}` ({data['date']})", "",
             "useful work = sum of per-sample NFE / score evaluations computed. `sample`'s from the same "
             "per-sample NFEs in batches of `batch` (index order). ideal = generate / sample: the speed-up of "
             "`generate` if a loop iteration cost the same in both. `drain h`: `generate(..., drain_halvings=h)` "
             "(the last samples finish in loops of half the width, up to h times; per-sample NFE identical, "
             "checked). `s`: wall seconds of each generate run including its compile.", "",
             "| model | batch | samples per slot | n | NFE mean (min-max) | useful work sample | "
             + " | ".join(f"useful work generate, drain {h}" for h in hs) + " | ideal speed-up | s | failed |",
             "|---|---|---|---|---|---|" + "---|" * len(hs) + "---|---|---|"]
    for r in data["rows"]:
        uw = r["useful_work_by_drain_halvings"]
        cells = " | ".join(f"**{uw[str(h)]:.3f}**" for h in hs)
        ideal = " / ".join(f"{uw[str(h)] / r['useful_work_sample']:.3f}x" for h in hs)
        secs = " / ".join(f"{r['seconds_with_compile'][str(h)]:.0f}" for h in hs)
        lines.append(f"| {r['model']} | {r['batch']} | {r['per_slot']} | {r['n']} | {r['mean_nfe']:.1f} "
                     f"({r['min_nfe']}-{r['max_nfe']}) | {r['useful_work_sample']:.3f} | {cells} | {ideal} | {secs} "
                     f"| {r['failed']} |")
    return "\n".join(lines)
