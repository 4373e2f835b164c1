"""Throughput of continuous batching: ``generate`` vs plain ``sample`` at the same batch size.

    /work/venv/bin/python benchmarks/throughput.py            # batch sizes 16..1024
    /work/venv/bin/python benchmarks/throughput.py --quick    # batch sizes 16, 64

For each problem (the embedded digits model with GGF rtol 0.05; a Gaussian mixture d=16 with
its exact score) and batch size B, both methods make the same n = ``--per-slot`` x B samples
in one compiled program each, measured side by side in this process (compile, one warm-up
run, median of ``--repeats`` runs, each blocked until ready; ``jaxsde.timing.time_compiled``):

* ``sample``: ``lax.map`` over n/B batches of ``jaxsde.sample`` (each batch waits for its
  slowest sample); useful work = sum NFE / sum over batches of (B x max NFE in the batch).
* ``generate``: B slots, continuous batching; useful work = sum NFE / score evaluations the
  loop computed (every slot every iteration, busy or idle, plus the refill passes).

Then per-device scaling of ``generate`` with forced host devices (a subprocess with
``--xla_force_host_platform_device_count=8``): results must equal one device's; on CPU
the "devices" share the machine's cores, so this checks correctness and overhead, not speed-up.
Writes ``benchmarks/results/throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
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
from jaxsde import targets
from jaxsde.generate import summarize_generate
from jaxsde.timing import time_compiled

HERE = os.path.dirname(os.path.abspath(__file__))


def problems():
    ckpt = jaxsde.pretrained("digits")
    sde = jaxsde.VPSDE()
    mixture = targets.GaussianMixture.random(jax.random.PRNGKey(3), 8, (16,))
    return [
        dict(name="digits (8x8x1 U-Net, GGF rtol 0.05)", sde=ckpt.sde, score_fn=ckpt.score_fn, params=ckpt.params,
             shape=ckpt.shape, solver=jaxsde.GottaGoFast(rtol=0.05)),
        dict(name="Gaussian mixture d=16 (exact score, GGF rtol 0.05)", sde=sde,
             score_fn=lambda p: mixture.score(sde), params=jnp.zeros(()), shape=(16,),
             solver=jaxsde.GottaGoFast(rtol=0.05)),
    ]


def measure(prob: dict, batch: int, n: int, repeats: int) -> dict:
    key = jax.random.PRNGKey(0)
    sde, score_fn, solver, shape = prob["sde"], prob["score_fn"], prob["solver"], prob["shape"]
    offsets = jnp.arange(0, n, batch, dtype=jnp.int32)

    def plain(params):
        def one(off):
            return jaxsde.sample(key, sde, score_fn(params), solver, shape, batch, offset=off)
        return jax.lax.map(one, offsets)

    def continuous(params):
        return jaxsde.generate(key, sde, score_fn(params), solver, shape, n, batch, devices=jax.devices()[:1])

    sol, t_plain = time_compiled(plain, prob["params"], repeats=repeats)
    gen, t_gen = time_compiled(continuous, prob["params"], repeats=repeats)
    nfe = np.asarray(sol.stats.nfe)  # (n/B, B)
    plain_useful = float(nfe.sum() / (batch * nfe.max(axis=1)).sum())
    s = summarize_generate(gen)
    x_plain = np.asarray(sol.x).reshape(n, *shape)
    same_nfe = float(np.mean(np.asarray(gen.stats.nfe) == nfe.reshape(-1)))
    return dict(problem=prob["name"], batch=batch, n=n,
                sample_sps=n / t_plain.median_s, generate_sps=n / t_gen.median_s,
                speedup=t_plain.median_s / t_gen.median_s,
                sample_useful_work=plain_useful, generate_useful_work=s.useful_work,
                generate_slot_utilisation=s.slot_utilisation, mean_nfe=s.mean_nfe,
                sample_s=t_plain.median_s, generate_s=t_gen.median_s, compile_s=[t_plain.compile_s, t_gen.compile_s],
                same_nfe_fraction=same_nfe, max_abs_dx=float(np.abs(np.asarray(gen.x) - x_plain).max()))


SCALING = """
import json, time
import jax, jax.numpy as jnp, numpy as np
import jaxsde
from jaxsde import targets
sde = jaxsde.VPSDE()
score = targets.GaussianMixture.random(jax.random.PRNGKey(3), 8, (16,)).score(sde)
solver = jaxsde.GottaGoFast(rtol=0.05)
n, batch, rows, ref = {n}, {batch}, [], None
for d in (1, 2, 4, 8):
    run = jax.jit(lambda k: jaxsde.generate(k, sde, score, solver, (16,), n, batch, devices=jax.devices()[:d]))
    out = jax.block_until_ready(run(jax.random.PRNGKey(0)))
    times = []
    for _ in range({repeats}):
        t0 = time.perf_counter(); out = jax.block_until_ready(run(jax.random.PRNGKey(0)))
        times.append(time.perf_counter() - t0)
    ref = out if ref is None else ref
    rows.append(dict(devices=d, samples_per_s=n / float(np.median(times)),
                     max_abs_dx_vs_1_device=float(np.abs(np.asarray(out.x) - np.asarray(ref.x)).max()),
                     same_nfe_as_1_device=bool(np.array_equal(np.asarray(out.stats.nfe), np.asarray(ref.stats.nfe))),
                     useful_work=jaxsde.summarize(out).useful_work))
print(json.dumps(rows))
"""


def scaling(n: int, batch: int, repeats: int) -> list[dict]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    code = SCALING.format(n=n, batch=batch, repeats=repeats)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write(rows, scale, args, command):
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    meta = dict(command=command, jax=jax.__version__, backend=jax.default_backend(), cpu_count=os.cpu_count(),
                machine=platform.machine(), date=time.strftime("%Y-%m-%d %H:%M"), per_slot=args.per_slot,
                repeats=args.repeats)
    with open(os.path.join(HERE, "results", "throughput.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows, device_scaling=scale), f, indent=1)
    lines = ["# Throughput: continuous batching (`generate`) vs `sample`", "",
             f"Reproduce: `{command}` ({meta['backend']}, {meta['cpu_count']} cores, jax {meta['jax']}, "
             f"{meta['date']}; the machine was shared with other jobs, so absolute rates are noisy; the two "
             "methods of a row were measured back to back in one process).", "",
             "n = per_slot x batch samples per method. Useful work: sample = sum NFE / sum over batches of "
             "(batch x max NFE); generate = sum NFE / score evaluations computed (all slots every iteration, "
             "plus refills). `same NFE` / `max |dx|`: generate vs sample, sample by sample.", "",
             "| problem | batch | n | sample/s (sample) | sample/s (generate) | speed-up | useful work sample "
             "| useful work generate | mean NFE | same NFE | max abs dx |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['batch']} | {r['n']} | {r['sample_sps']:.1f} | {r['generate_sps']:.1f} "
                     f"| {r['speedup']:.2f}x | {r['sample_useful_work']:.3f} | {r['generate_useful_work']:.3f} "
                     f"| {r['mean_nfe']:.1f} | {100 * r['same_nfe_fraction']:.0f}% | {r['max_abs_dx']:.1e} |")
    lines += ["", f"## Per-device scaling of `generate` (forced host devices; Gaussian mixture d=16, "
              f"n={args.scale_n}, batch {args.scale_batch})", "",
              f"CPU 'devices' here share the same {meta['cpu_count']} cores: this checks that sharding over devices "
              "gives identical samples and what its overhead is; it cannot show a speed-up.", "",
              "| devices | samples/s | max abs dx vs 1 device | same NFE as 1 device | useful work |",
              "|---|---|---|---|---|"]
    for r in scale:
        lines.append(f"| {r['devices']} | {r['samples_per_s']:.1f} | {r['max_abs_dx_vs_1_device']:.1e} "
                     f"| {r['same_nfe_as_1_device']} | {r['useful_work']:.3f} |")
    with open(os.path.join(HERE, "results", "throughput.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch sizes 16 and 64 only, 1 repeat")
    parser.add_argument("--batches", type=int, nargs="*", default=None)
    parser.add_argument("--per-slot", type=int, default=8, help="samples per slot: n = per_slot x batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale-n", type=int, default=512)
    parser.add_argument("--scale-batch", type=int, default=64)
    args = parser.parse_args()
    batches = args.batches or ([16, 64] if args.quick else [16, 64, 256, 1024])
    if args.quick:
        args.repeats = 1
    rows = []
    for prob in problems():
        for b in batches:
            r = measure(prob, b, args.per_slot * b, args.repeats)
            print(json.dumps(r), flush=True)
            rows.append(r)
    scale = scaling(args.scale_n, args.scale_batch, args.repeats)
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    write(rows, scale, args, command.strip())


if __name__ == "__main__":
    main()
