"""Continuous batching: ``generate`` vs plain ``sample`` at the same batch size, timed side by side.

Problems: the embedded digits models (GGF ``--digits-rtol``) and a d = 16 Gaussian mixture (exact score, GGF rtol
0.05). Per batch B both make n = per_slot x B samples in one compiled program each, timed in alternating rounds
(medians): ``sample`` as ``lax.map`` over n/B batches, ``generate`` with B slots (and ``drain_halvings=H``); useful
work = sum NFE / evaluations computed. Then ``generate`` over 1/2/4/8 forced host devices in a subprocess.
Writes ``throughput[_NAME].{json,md}``; docs/benchmarks.md gives the commands of the committed variants.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.testing import targets

from ..harness.cli import options
from ..harness.machine import ROOT
from ..harness.samplers import timed_runs
from ..harness.timing import compile_all, interleaved, medians
from ..harness.writer import columns, table


def mixture_problem():
    """The Gaussian mixture benchmark problem: VP SDE and the exact score of 8 modes in d=16."""
    sde = jaxsde.VPSDE()
    return sde, targets.GaussianMixture.random(jax.random.PRNGKey(3), 8, (16,)).score(sde)


def problems(args):
    sde, mixture_score = mixture_problem()
    out = []
    for name in args.models:
        ckpt = jaxsde.pretrained(name)
        out.append(dict(name=f"{name} (8x8x1 U-Net, {type(ckpt.sde).__name__}, GGF rtol {args.digits_rtol:g})",
                        sde=ckpt.sde, score_fn=ckpt.score_fn, params=ckpt.params, shape=ckpt.shape,
                        solver=jaxsde.GottaGoFast(rtol=args.digits_rtol), batches=args.digits_batches,
                        per_slot=args.digits_per_slot, repeats=args.digits_repeats))
    if not args.batches:
        return out
    out.append(dict(name="Gaussian mixture d=16 (exact score, GGF rtol 0.05)", sde=sde,
                    score_fn=lambda p: mixture_score, params=jnp.zeros(()), shape=(16,),
                    solver=jaxsde.GottaGoFast(rtol=0.05), batches=args.batches, per_slot=args.per_slot,
                    repeats=args.repeats))
    return out


def measure(prob: dict, batch: int, n: int, repeats: int, drain: int = 0) -> dict:
    """``sample`` vs ``generate`` (and drained) on ``prob`` (name, sde, score_fn, params, shape, solver, optional
    max_steps) at ``batch``, n samples: one row."""
    key = jax.random.PRNGKey(0)
    sde, score_fn, solver, shape = prob["sde"], prob["score_fn"], prob["solver"], prob["shape"]
    offsets = jnp.arange(0, n, batch, dtype=jnp.int32)
    kw = {"max_steps": prob["max_steps"]} if prob.get("max_steps") else {}

    def plain(params):
        return jax.lax.map(lambda off: jaxsde.sample(key, sde, score_fn(params), solver, shape, batch, offset=off,
                                                     **kw), offsets)

    def continuous(params, halvings=0):
        return jaxsde.generate(key, sde, score_fn(params), solver, shape, n, batch, devices=jax.devices()[:1],
                               drain_halvings=halvings, **kw)

    fns = dict(sample=plain, generate=continuous)
    if drain:
        fns["drained"] = lambda params: continuous(params, drain)
    # no untimed warm-up run for the slow digits models (minutes); their compile is separate anyway
    compiled = compile_all({k: (f, (prob["params"],)) for k, f in fns.items()})
    times, outs = interleaved({k: (lambda c=c: c[0](*c[1])) for k, c in compiled.items()}, repeats, rotate=False,
                              warmup=not prob["name"].startswith("digits"))
    med, compile_s = medians(times), {k: c[2] for k, c in compiled.items()}
    sol, gen = outs["sample"], outs["generate"]
    nfe = np.asarray(sol.stats.nfe)  # (n/B, B)
    plain_useful = float(nfe.sum() / (batch * nfe.max(axis=1)).sum())
    plain_iters = int(np.asarray(sol.stats.num_steps).max(axis=1).sum())
    s = gen.summary()
    x_plain = np.asarray(sol.x).reshape(n, *shape)
    same_nfe = float(np.mean(np.asarray(gen.stats.nfe) == nfe.reshape(-1)))
    t_plain, t_gen = med["sample"], med["generate"]
    drained = {}
    if drain:
        d, sd = outs["drained"], outs["drained"].summary()
        drained = dict(drain_halvings=drain, drained_sps=n / med["drained"], drained_speedup=t_plain / med["drained"],
                       drained_useful_work=sd.useful_work, drained_ideal_speedup=sd.useful_work / plain_useful,
                       drained_s=med["drained"], drained_compile_s=compile_s["drained"],
                       drained_same_nfe_fraction=float(np.mean(np.asarray(d.stats.nfe) == nfe.reshape(-1))),
                       drained_max_abs_dx=float(np.abs(np.asarray(d.x) - x_plain).max()))
    return dict(problem=prob["name"], batch=batch, n=n, rounds=repeats,
                sample_sps=n / t_plain, generate_sps=n / t_gen, speedup=t_plain / t_gen,
                sample_useful_work=plain_useful, generate_useful_work=s.useful_work,
                ideal_speedup=s.useful_work / plain_useful,
                sample_iterations=plain_iters, generate_iterations=s.loop_iterations, refills=s.refills,
                sample_us_per_iteration=1e6 * t_plain / plain_iters,
                generate_us_per_iteration=1e6 * t_gen / s.loop_iterations,
                generate_slot_utilisation=s.slot_utilisation, mean_nfe=s.mean_nfe, min_nfe=s.min_nfe,
                max_nfe=s.max_nfe, sample_s=t_plain, generate_s=t_gen,
                compile_s=[compile_s["sample"], compile_s["generate"]],
                same_nfe_fraction=same_nfe, max_abs_dx=float(np.abs(np.asarray(gen.x) - x_plain).max()),
                nfe=np.asarray(gen.stats.nfe).tolist(), **drained)


def sample_useful_by_batch(nfe: np.ndarray, batches) -> dict:
    """What ``sample`` would achieve at batch B on these per-sample NFEs (index order, whole batches)."""
    out = {}
    for b in batches:
        m = (nfe.size // b) * b
        if m:
            c = nfe[:m].reshape(-1, b)
            out[b] = float(c.sum() / (b * c.max(axis=1)).sum())
    return out


def scaling_rows(n: int, batch: int, repeats: int) -> list[dict]:
    """``generate`` on the d = 16 mixture over 1/2/4/8 devices (run in :func:`scaling`'s child process)."""
    sde, score = mixture_problem()
    solver, rows, ref = jaxsde.GottaGoFast(rtol=0.05), [], None
    for d in (1, 2, 4, 8):
        run = jax.jit(lambda k, d=d: jaxsde.generate(k, sde, score, solver, (16,), n, batch, devices=jax.devices()[:d]))
        out, wall = timed_runs(lambda run=run: jax.block_until_ready(run(jax.random.PRNGKey(0))), repeats)
        ref = out if ref is None else ref
        rows.append(dict(devices=d, samples_per_s=n / wall,
                         max_abs_dx_vs_1_device=float(np.abs(np.asarray(out.x) - np.asarray(ref.x)).max()),
                         same_nfe_as_1_device=bool(np.array_equal(*(np.asarray(o.stats.nfe) for o in (out, ref)))),
                         useful_work=jaxsde.summarize(out).useful_work))
    return rows


def scaling(n: int, batch: int, repeats: int) -> list[dict]:
    """:func:`scaling_rows` in a subprocess with 8 forced host devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    code = f"import json; from {__name__} import scaling_rows; print(json.dumps(scaling_rows({n}, {batch}, {repeats})))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(data: dict) -> str:
    meta, rows, by_batch, scale = (data[k] for k in ("meta", "rows", "sample_useful_work_by_batch",
                                                     "device_scaling"))
    lines = ["# Throughput: continuous batching (`generate`) vs `sample`", "",
             f"Reproduce: `{meta['command']}` ({meta['backend']}, {meta['cpu_count']} cores, jax {meta['jax']}, "
             f"{meta['date']}; the machine was shared with other jobs, so absolute rates are noisy; the "
             "methods of a row were compiled first, then timed in alternating rounds in one process, medians of "
             "`rounds`).", "",
             "n = per_slot x batch samples per method. Useful work: sample = sum NFE / sum over batches of "
             "(batch x max NFE); generate = sum NFE / score evaluations computed (all slots every iteration, "
             "plus refills). ideal = useful work generate / useful work sample (the speed-up if a loop iteration "
             "cost the same in both). us/it = wall time / loop iterations (sample: summed over its batches). "
             "`same NFE` / `max |dx|`: generate vs sample, sample by sample.", ""]
    if any("drained_sps" in r for r in rows):
        lines += ["## `generate` with drain halvings vs without, and `sample`", "",
                  "`generate` (drain 0) and `generate(..., drain_halvings=h)` (drain h: once every sample has "
                  "started, the busy slots move into loops of half the width, up to h times) in the same "
                  "alternating rounds as `sample`. Compile seconds are not in the rates: each halving compiles one "
                  "more copy of the loop and the score network.", "",
                  *columns([r for r in rows if "drained_sps" in r], {
                      "problem": "{problem}", "batch": "{batch}", "n": "{n}", "h": "{drain_halvings}",
                      "sample/s: sample / drain 0 / drain h":
                          "{sample_sps:.1f} / {generate_sps:.1f} / {drained_sps:.1f}",
                      "speed-up drain 0 / drain h (ideal)":
                          "{speedup:.2f}x / **{drained_speedup:.2f}x** ({drained_ideal_speedup:.2f}x)",
                      "useful work sample / drain 0 / drain h":
                          "{sample_useful_work:.3f} / {generate_useful_work:.3f} / **{drained_useful_work:.3f}**",
                      "compile s sample / drain 0 / drain h":
                          lambda r: f"{r['compile_s'][0]:.1f} / {r['compile_s'][1]:.1f} / {r['drained_compile_s']:.1f}",
                      "same NFE, max abs dx (drain h vs sample)":
                          lambda r: f"{100 * r['drained_same_nfe_fraction']:.0f}%, {r['drained_max_abs_dx']:.1e}"}),
                  "", "## `generate` (drain 0) vs `sample`", ""]
    lines += columns(rows, {
        "problem": "{problem}", "batch": "{batch}", "n": "{n}", "rounds": "{rounds}",
        "sample/s (sample)": "{sample_sps:.1f}", "sample/s (generate)": "{generate_sps:.1f}",
        "speed-up": "{speedup:.2f}x", "ideal": "{ideal_speedup:.2f}x",
        "useful work sample": "{sample_useful_work:.3f}", "useful work generate": "{generate_useful_work:.3f}",
        "us/it sample": "{sample_us_per_iteration:.0f}", "us/it generate": "{generate_us_per_iteration:.0f}",
        "refills": "{refills}", "NFE mean (min-max)": "{mean_nfe:.1f} ({min_nfe}-{max_nfe})",
        "same NFE": lambda r: f"{100 * r['same_nfe_fraction']:.0f}%", "max abs dx": "{max_abs_dx:.1e}"})
    if by_batch:
        sizes = sorted({int(b) for v in by_batch.values() for b in v["useful_work"]})
        lines += ["", "## `sample`'s useful work at larger batches (from the per-sample NFEs measured above)", "",
                  "The per-sample NFEs of a problem's largest run above (index order) grouped into whole batches "
                  "of B: the useful-work fraction plain `sample` gets at batch B (generate's: the table above). "
                  "The last column is a single batch, so it is noisy.", "",
                  *table(["problem", "samples", *(f"B={b}" for b in sizes)], [
                      [name, v["n"], *(f"{u[b]:.3f}" if b in u else "" for b in sizes)] for name, v in by_batch.items()
                      for u in [{int(k): x for k, x in v["useful_work"].items()}]])]
    if scale:
        lines += ["", f"## Per-device scaling of `generate` (forced host devices; Gaussian mixture d=16, "
                  f"n={meta.get('scale_n', 512)}, batch {meta.get('scale_batch', 64)})", "",
                  f"CPU 'devices' here share the same {meta['cpu_count']} cores: this checks that sharding over "
                  "devices gives identical samples and what its overhead is; it cannot show a speed-up.", "",
                  *columns(scale, {"devices": "{devices}", "samples/s": "{samples_per_s:.1f}",
                                   "max abs dx vs 1 device": "{max_abs_dx_vs_1_device:.1e}",
                                   "same NFE as 1 device": "{same_nfe_as_1_device}",
                                   "useful work": "{useful_work:.3f}"})]
    return "\n".join(lines)


def arguments(parser):
    options(parser, quick="batch sizes 16 and 64, few samples, 1 round", name="")
    for flag, kind, default, text in (
            ("--batches", int, [16, 64, 256, 1024], "mixture batch sizes; none skips the mixture"),
            ("--models", str, ["digits", "digits-ve"], "embedded digits models"),
            ("--digits-batches", int, [16, 64], "digits batch sizes")):
        parser.add_argument(flag, type=kind, nargs="*", default=default, help=text)
    for flag, kind, default, text in (
            ("--per-slot", int, 20, "mixture samples per slot: n = per_slot x batch"),
            ("--repeats", int, 5, "mixture timing rounds"), ("--digits-per-slot", int, 4, "digits samples per slot"),
            ("--digits-repeats", int, 2, "digits timing rounds"),
            ("--digits-rtol", float, 0.05, "GGF rtol on the digits models"),
            ("--scale-n", int, 512, "samples of the device-scaling run; 0 skips it"),
            ("--scale-batch", int, 64, "batch of the device-scaling run"),
            ("--drain-halvings", int, 3, "also time generate(..., drain_halvings=H) in the same rounds; 0 skips")):
        parser.add_argument(flag, type=kind, default=default, help=text)


def run(args, ctx):
    if args.quick:
        args.batches, args.digits_batches = [16, 64], [16]
        args.per_slot, args.digits_per_slot, args.repeats, args.digits_repeats = 6, 2, 1, 1
    rows, by_batch = [], {}
    t0 = time.perf_counter()
    for prob in problems(args):
        for b in prob["batches"]:
            r = measure(prob, b, prob["per_slot"] * b, prob["repeats"], args.drain_halvings)
            nfe = np.asarray(r.pop("nfe"))
            print(json.dumps(r), f"[{time.perf_counter() - t0:.0f} s]", flush=True)
            rows.append(r)
            if prob["name"].startswith("digits"):
                by_batch[prob["name"]] = dict(n=int(nfe.size), useful_work=sample_useful_by_batch(
                    nfe, sorted({16, 64, 256, 1024, nfe.size} & set(range(1, nfe.size + 1)))))
    scale = scaling(args.scale_n, args.scale_batch, max(args.repeats, 3)) if args.scale_n > 0 else []
    meta = dict(command=ctx.command, jax=jax.__version__, backend=jax.default_backend(), cpu_count=os.cpu_count(),
                machine=platform.machine(), date=time.strftime("%Y-%m-%d %H:%M"), per_slot=args.per_slot,
                repeats=args.repeats, digits_per_slot=args.digits_per_slot, digits_repeats=args.digits_repeats,
                scale_n=args.scale_n, scale_batch=args.scale_batch)
    ctx.save("throughput" + (f"_{args.name}" if args.name else ""),
             dict(meta=meta, rows=rows, sample_useful_work_by_batch=by_batch, device_scaling=scale))
