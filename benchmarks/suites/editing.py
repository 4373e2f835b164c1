"""Spatially sparse editing (jaxsde.sparse) vs the dense network, per sampling step, on CPU.

A DigitsUNet "large" (random weights) at ``--size`` px, square edits of ``--fractions`` of the image. Per plan
(:data:`VARIANTS`, tiles of ``--blocks`` px per level): XLA FLOPs, wall time interleaved with dense, cache bytes, and
errors against the true dense network, the masked dense reference and (on the plan's roi) the dense network with
the original's GroupNorm statistics. Also: mask dilation (``--dilate``), a second size (``--large-size``), the DDPM
UNet2D at 32x32 (``--ddpm``), whole ``sparse_sdedit`` trajectories (``--sdedit-steps``). Writes ``NAME.{json,md}``.
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsde.models.ddpm_unet import ddpm_cifar10
from jaxsde.models.unet import SIZES, DigitsUNet
from jaxsde.sparse import PAD, SparseUNet, cache_bytes, propagate, random_params

from ..harness.cli import options
from ..harness.timing import interleaved
from ..harness.writer import columns, progress, table

LARGE_BLOCKS, LARGE_ROUNDS = [8, 4], 5  # --large-size: tiles per level, interleaved rounds
DDPM_BLOCKS, DDPM_ROUNDS = [4, 4, 2, 2], 5  # --ddpm: the same
PAPER = dict(source="SIGE (Li et al., NeurIPS 2022), https://www.cs.cmu.edu/~sige/ — the paper's figures, not ours",
             edited_area_percent=1.2, ddim_compute_reduction=7.5, ddim_latency_speedup_rtx3090=3.0,
             ddim_latency_speedup_m1pro_cpu=6.6, gaugan_compute_reduction=18.0)


def flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan")))


def square_mask(size, frac, offset):
    side = max(1, int(round(size * np.sqrt(frac))))
    m, y0, x0 = np.zeros((size, size), bool), min(offset, size - side), min(offset + 3, size - side)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def _errors(y, ref, region):
    d = np.abs(np.asarray(y) - np.asarray(ref))[region]
    r = np.asarray(ref)[region]
    return dict(max_abs=float(d.max()), rel_l2=float(np.linalg.norm(d) / np.linalg.norm(r)))


def work_breakdown(net, mask, plan, roi):
    """An exact plan's estimated convolution work as fractions of dense: ideal (changed & needed pixels),
    whole active tiles, bucketed (= ``plan.work``), and the bucketed work's share per level."""
    size = mask.shape[0]
    graph = net.graph(mask.shape)
    prop = propagate(graph, mask, mask if roi == "edit" else None)
    ideal = tiles = bucketed = dense = 0.0
    per_level, dense_level = np.zeros(net.levels), np.zeros(net.levels)
    for L, (name, r, bucket), n in zip(graph.layers, plan.layers, plan.layer_counts, strict=True):
        changed, needed = prop[name]
        assert changed.shape[0] == size >> r and name == L["name"]
        b2, kv = plan.blocks[r] ** 2, L.get("kv_cost", 0)
        ideal += float((changed & needed).sum()) * L["cost"] + (kv if n else 0)
        tiles += n * b2 * L["cost"] + (kv if n else 0)
        w = bucket * b2 * L["cost"] + (kv if bucket else 0)
        bucketed += w
        per_level[r] += w
        dense += changed.size * L["cost"] + kv
        dense_level[r] += changed.size * L["cost"] + kv
    dense_layers = sum(1 for (_, r, b) in plan.layers if b == plan.tile_total(r))
    return dict(ideal=ideal / dense, tiles=tiles / dense, bucketed=bucketed / dense,
                level_share=[float(v / bucketed) for v in per_level],
                level_share_dense=[float(v / dense) for v in dense_level], dense_layers=dense_layers,
                layers=len(plan.layers))


VARIANTS = {
    # name: (plan kwargs, description)
    "input": (dict(mode="input"), "input mode: the edit mask's tiles at every layer (approximate)"),
    "exact": (dict(mode="exact", roi="edit", dense_above=1.0), "exact, roi = edit: receptive-field-exact on the "
              "edited pixels, output outside = the original's (sparse path forced: dense_above=1)"),
    "exact-all": (dict(mode="exact", roi="all", dense_above=1.0), "exact, roi = all: receptive-field-exact on every "
                  "pixel (sparse path forced)"),
    "input-inplace": (dict(mode="input"), "the input plan on the in-place fast path: the cache stored pre-padded "
                      "(`pad_cache`), `apply_sparse_inplace` jitted with it donated (the tiles written into the "
                      "cached maps), the overwritten tiles saved before and restored after (`save_tiles` / "
                      "`restore_tiles`, two more jitted calls, timed with it); output bitwise = `input`'s"),
    "exact-inplace": (dict(mode="exact", roi="edit", dense_above=1.0), "the exact plan on the in-place fast path "
                      "(as input-inplace); output bitwise = `exact`'s"),
}


def measure(net, params, size, blocks, fractions, variants, rounds, seed=0, channels=1, t=0.5):
    """Rows of FLOPs, interleaved wall time and errors, one per (edited fraction, plan variant)."""
    x = jax.random.normal(jax.random.PRNGKey(seed), (size, size, channels))
    t = jnp.float32(t)
    dense_c = jax.jit(net.apply).lower(params, x, t).compile()
    dense_flops = flops(dense_c)
    sparse = jax.jit(net.apply_sparse, static_argnums=5)
    masked = jax.jit(net.apply_masked, static_argnums=5)
    frozen = jax.jit(net.apply_frozen)
    _, cache = jax.jit(net.record)(params, x, t)
    # the in-place fast path: the cache padded once, donated to each call, its overwritten tiles restored
    inplace = jax.jit(net.apply_sparse_inplace, static_argnums=5, donate_argnums=3)
    save = jax.jit(net.save_tiles)
    restore = jax.jit(net.restore_tiles, donate_argnums=0)
    state = {"padded": jax.jit(net.pad_cache)(cache)} if any(v.endswith("-inplace") for v in variants) else {}

    def run_inplace(step, plan):
        saved = save(state["padded"], plan)
        y, padded = step(params, x_edit, t, state["padded"], plan)
        state["padded"] = restore(padded, plan, saved)
        return y

    maps = {k: v for k, v in cache.items() if not k.startswith("stats/")}
    # one pass over the cache: every cached map padded by PAD (what apply_sparse does to the cache on each call)
    cache_pass = jax.jit(lambda c: {k: jnp.pad(v, ((PAD, PAD), (PAD, PAD), (0, 0))) for k, v in c.items()})
    cache_pass = cache_pass.lower(maps).compile()
    rows = []
    for frac in fractions:
        mask = square_mask(size, frac, size // 3 + 1)
        x_edit = jnp.where(mask[..., None], -x, x)
        y_true = dense_c(params, x_edit, t)
        y_frozen = frozen(params, x_edit, t, cache)
        everywhere = np.ones_like(mask)
        progs, frow = {}, []
        for name in variants:
            kw = VARIANTS[name][0]
            tp = time.perf_counter()
            plan = net.plan(mask, tuple(blocks), **kw)
            plan_ms = 1e3 * (time.perf_counter() - tp)
            tc = time.perf_counter()
            step, c_in = (inplace, state["padded"]) if name.endswith("-inplace") else (sparse, cache)
            comp = {s: step.lower(params, x_edit, t, c_in, plan, s).compile() for s in ("reuse", "recompute")}
            compile_s = time.perf_counter() - tc
            row = dict(edited_percent=100 * float(mask.mean()), edited_pixels=int(mask.sum()), plan=name, size=size,
                       dense_fallback=plan.dense,
                       active_tiles=list(plan.counts), bucketed_tiles=list(plan.buckets), tiles=list(plan.totals),
                       active_pixel_percent=[100 * f for f in plan.fraction], plan_ms=plan_ms,
                       compile_s=compile_s, flops_dense=dense_flops)
            if plan.layers:
                row.update(layer_tiles=list(plan.layer_counts), layer_buckets=[b for (_, _, b) in plan.layers],
                           work_estimate=plan.work, default_dense_fallback=bool(net.plan(
                               mask, tuple(blocks), **{**kw, "dense_above": None}).dense))
                if hasattr(net.model, "channels"):  # the DigitsUNet (no attention): the work decomposition
                    row["work_breakdown"] = work_breakdown(net, mask, plan, kw.get("roi"))
            fl = {s: flops(c) for s, c in comp.items()}
            row.update(flops_sparse=fl["reuse"], flops_sparse_recompute=fl["recompute"],
                       flop_ratio=dense_flops / fl["reuse"], flop_ratio_recompute=dense_flops / fl["recompute"])
            errs = {}
            for s, c in comp.items():
                if name.endswith("-inplace"):
                    y = run_inplace(c, plan)
                    ref = sparse(params, x_edit, t, cache, plan, s)
                    row.setdefault("inplace_vs_apply_sparse_max_abs", {})[s] = float(jnp.max(jnp.abs(y - ref)))
                else:
                    y = c(params, x_edit, t, cache, plan)
                e = dict(vs_true_edited=_errors(y, y_true, mask), vs_true_all=_errors(y, y_true, everywhere))
                if not plan.dense:
                    e["vs_masked_max_abs"] = float(jnp.max(jnp.abs(y - masked(params, x_edit, t, cache, plan, s))))
                if s == "reuse":
                    roi = mask if kw.get("roi") == "edit" else everywhere
                    e["vs_frozen_roi"] = _errors(y, y_frozen, roi)
                errs[s] = e
            row.update(errors=errs, output_scale=float(jnp.max(jnp.abs(y_true))))
            progs[name] = (comp["reuse"], plan)
            frow.append(row)
        # warm up, then interleaved rounds: dense, one pass over the cache and every variant, the order rotating
        calls = {"dense": lambda x_edit=x_edit: dense_c(params, x_edit, t), "cache-pass": lambda: cache_pass(maps)}
        for name, (c, plan) in progs.items():
            calls[name] = ((lambda c=c, plan=plan: (run_inplace(c, plan), state["padded"])) if name.endswith(
                "-inplace") else (lambda c=c, plan=plan, x_edit=x_edit: c(params, x_edit, t, cache, plan)))
        wall, _ = interleaved(calls, rounds)
        if state:  # the fast path's save / restore left the padded cache as recorded, bit for bit
            restored = bool(all(jnp.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(net.unpad_cache(
                state["padded"])), jax.tree_util.tree_leaves(cache), strict=True)))
            assert restored, "the in-place path did not restore the cache"
        for row in frow:
            if row["plan"].endswith("-inplace"):
                row["cache_restored"] = restored
            d, s = 1e3 * np.asarray(wall["dense"]), 1e3 * np.asarray(wall[row["plan"]])
            row.update(ms_dense_median=float(np.median(d)), ms_sparse_median=float(np.median(s)),
                       ms_dense_min=float(d.min()), ms_sparse_min=float(s.min()), speedup_min=float(d.min() / s.min()),
                       speedup_median=float(np.median(d) / np.median(s)), speedup_paired_median=float(np.median(d / s)),
                       ms_cache_pass_median=1e3 * float(np.median(wall["cache-pass"])))
            rows.append(row)
            progress(row, "size", "edited_percent", "plan", "flop_ratio", "ms_dense_median", "ms_sparse_median",
                     "speedup_median", "speedup_paired_median")
    return rows, dense_flops, cache


def dilation_rows(net, params, size, blocks, dilations, rounds, cache, dense_flops):
    """The input plan vs dilation of the edit mask, at ~5% edited: errors vs the true and the frozen-stats
    dense network (receptive-field error vs statistics), FLOPs, interleaved wall time."""
    dilation = []
    if not dilations:
        return dilation
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (size, size, 1))
    t = jnp.float32(0.5)
    mask = square_mask(size, 0.05, size // 3 + 1)
    x_edit = jnp.where(mask[..., None], -x, x)
    dense_c = jax.jit(net.apply).lower(params, x_edit, t).compile()
    y_true = dense_c(params, x_edit, t)
    y_frozen = jax.jit(net.apply_frozen)(params, x_edit, t, cache)
    sparse = jax.jit(net.apply_sparse)
    progs = []
    for d in dilations:
        plan = net.plan(mask, tuple(blocks), dilate=d, dense_above=1.0)
        c = sparse.lower(params, x_edit, t, cache, plan).compile()
        y = c(params, x_edit, t, cache, plan)
        true, frozen = _errors(y, y_true, mask), _errors(y, y_frozen, mask)
        dilation.append(dict(dilate=d, active_pixel_percent=100 * plan.fraction[0], flop_ratio=dense_flops / flops(c),
                             rel_err_vs_true_edited=true["rel_l2"], max_err_vs_true_edited=true["max_abs"],
                             rel_err_vs_frozen_edited=frozen["rel_l2"], max_err_vs_frozen_edited=frozen["max_abs"]))
        progs.append((c, plan))
    wall, _ = interleaved({0: lambda: dense_c(params, x_edit, t), **{i + 1: (
        lambda c=c, plan=plan: c(params, x_edit, t, cache, plan)) for i, (c, plan) in enumerate(progs)}}, rounds)
    for i, row in enumerate(dilation):
        d, s = 1e3 * float(np.median(wall[0])), 1e3 * float(np.median(wall[i + 1]))
        row.update(ms_dense_median=d, ms_sparse_median=s, speedup_median=d / s)
        print(f"dilate {row['dilate']}: {row}", flush=True)
    return dilation


def sdedit_rows(net, params, size, blocks, fractions, steps, rounds):
    """Whole SDEdit trajectories (``sparse_sdedit``, VPSDE, DDIM(``steps``), t0 = 0.5, the exact plan):
    the dense edit and the sparse edit as one jitted ``lax.scan`` (cache an argument) vs the sparse edit's
    eager Python loop (one jitted program per step, the pre-padded step caches donated, in place, the
    overwritten tiles saved and restored); interleaved rounds, the recording pass excluded."""
    import jaxsde
    from jaxsde.sparse import StepPrograms, sparse_sdedit

    x = jnp.tanh(jax.random.normal(jax.random.PRNGKey(0), (size, size, 1)))
    sde, solver, key, t0 = jaxsde.VPSDE(), jaxsde.DDIM(steps), jax.random.PRNGKey(1), 0.5
    rows = []
    for frac in fractions:
        mask = square_mask(size, frac, size // 3 + 1)
        x_edit = jnp.where(mask[..., None], -x, x)
        plan = net.plan(mask, tuple(blocks), mode="exact", dense_above=1.0)

        programs = StepPrograms()  # the python loop's step programs, compiled once for all rounds

        def edit(p, c, mode, x_edit=x_edit, plan=plan, programs=programs):
            return sparse_sdedit(key, sde, solver, net, p, x, x_edit, t0, plan, mode=mode, cache=c,
                                 programs=programs)[0]

        _, _, scache = jax.jit(lambda p, x_edit=x_edit, plan=plan: sparse_sdedit(
            key, sde, solver, net, p, x, x_edit, t0, plan, mode="dense"))(params)
        scan = {m: jax.jit(edit, static_argnums=2).lower(params, scache, m).compile() for m in ("dense", "sparse")}
        _, _, pcache = sparse_sdedit(key, sde, solver, net, params, x, x_edit, t0, plan, mode="dense", loop="python")
        y_scan = scan["sparse"](params, scache)
        y_loop = edit(params, pcache, "sparse")
        wall, _ = interleaved({"dense (scan)": lambda scan=scan, c=scache: scan["dense"](params, c),
                               "sparse (scan)": lambda scan=scan, c=scache: scan["sparse"](params, c),
                               "sparse (python loop, in place)": lambda edit=edit, c=pcache: edit(params, c, "sparse")},
                              rounds)
        names = list(wall)
        d = np.asarray(wall["dense (scan)"])
        row = dict(edited_percent=100 * float(mask.mean()), steps=steps, calls=steps + 1, work_estimate=plan.work,
                   ms_median={n: 1e3 * float(np.median(wall[n])) for n in names},
                   speedup_paired_median={n: float(np.median(d / np.asarray(wall[n]))) for n in names},
                   max_abs_scan_vs_loop=float(jnp.max(jnp.abs(y_scan - y_loop))),
                   output_scale=float(jnp.max(jnp.abs(y_scan))))
        rows.append(row)
        print(f"SDEdit {size}px {row['edited_percent']:.1f}% DDIM({steps}): " + "; ".join(
            f"{n} {row['ms_median'][n]:.0f} ms ({row['speedup_paired_median'][n]:.2f}x)" for n in names)
            + f"; max |scan - loop| {row['max_abs_scan_vs_loop']:.1e}", flush=True)
        del scache, pcache, scan
    return rows


def arguments(parser):
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 4], help="tile size per level")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.10, 0.25])
    options(parser, rounds=9, name="editing", quick="32x32, 3 rounds, no second size, no DDPM (a smoke run)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps for the cache-memory figure")
    parser.add_argument("--dilate", type=int, nargs="*", default=[0, 2, 4, 8],
                        help="mask dilations (accuracy table); none: skip the table")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="plans to measure")
    parser.add_argument("--large-size", type=int, default=128, help="second size for the input/exact plans (0: skip)")
    parser.add_argument("--ddpm", type=int, default=1, help="1: also the DDPM UNet2D (ddpm-cifar10 layout) at 32x32")
    parser.add_argument("--sdedit-steps", type=int, default=0,
                        help="also whole sparse_sdedit trajectories with DDIM(N) (scan vs python loop) at --size for "
                             "--fractions; 0: skip")


def run(args, ctx):
    if args.quick:
        args.size, args.rounds, args.large_size, args.ddpm = 32, 3, 0, 0
    size = args.size
    model = DigitsUNet(**SIZES["large"])
    net = SparseUNet(model)
    params = random_params(model, (1, size, size, 1))
    nparams = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
    t0 = time.perf_counter()
    rows, dense_flops, cache = measure(net, params, size, args.blocks, args.fractions, args.variants, args.rounds)
    step_bytes = cache_bytes(cache)
    print(f"DigitsUNet large ({nparams:,} params) at {size}x{size}; dense {dense_flops / 1e9:.3f} GFLOP per step; "
          f"cache {step_bytes / 2**20:.2f} MiB per step ({time.perf_counter() - t0:.0f} s)", flush=True)

    dilation = dilation_rows(net, params, size, args.blocks, args.dilate, args.rounds, cache, dense_flops)

    sdedit = sdedit_rows(net, params, size, args.blocks, args.fractions, args.sdedit_steps,
                         args.rounds) if args.sdedit_steps else []

    large, ddpm, ddpm_cache, ddpm_params = [], [], None, None
    if args.large_size:
        t1 = time.perf_counter()
        lp = random_params(model, (1, args.large_size, args.large_size, 1))
        large, _, _ = measure(net, lp, args.large_size, LARGE_BLOCKS, [0.01, 0.05], ["input", "exact"], LARGE_ROUNDS)
        print(f"{args.large_size}x{args.large_size}: {time.perf_counter() - t1:.0f} s", flush=True)
    if args.ddpm:
        dmodel = ddpm_cifar10()
        dp = random_params(dmodel, (1, 32, 32, 3))
        ddpm_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(dp))
        ddpm, _, dcache = measure(SparseUNet(dmodel), dp, 32, DDPM_BLOCKS, [0.01, 0.05, 0.10, 0.25],
                                  ["input", "exact"], DDPM_ROUNDS, channels=3, t=500.0)
        ddpm_cache = cache_bytes(dcache)

    result = dict(
        command=ctx.command, jax=jax.__version__, backend=jax.default_backend(), machine=platform.machine(),
        cpus=os.cpu_count(), date=datetime.datetime.now().isoformat(timespec="seconds"),
        model="DigitsUNet(**SIZES['large']), random weights", params=nparams, size=size, blocks=args.blocks,
        rounds=args.rounds, fractions=args.fractions, cache_bytes_per_step=step_bytes,
        cache_bytes_per_edit=step_bytes * (args.steps + 1), steps=args.steps, dense_flops=dense_flops,
        rows=rows, dilation=dilation, sdedit=sdedit, large=large, large_size=args.large_size, large_blocks=LARGE_BLOCKS,
        large_rounds=LARGE_ROUNDS, variants={k: VARIANTS[k][1] for k in args.variants}, paper=PAPER,
        ddpm=ddpm, ddpm_blocks=DDPM_BLOCKS, ddpm_rounds=DDPM_ROUNDS, ddpm_params=ddpm_params,
        ddpm_cache_bytes_per_step=ddpm_cache,
        seconds=time.perf_counter() - t0,
    )
    ctx.save(args.name, result)
    return result


def _edited(r):
    return "1 px" if r.get("edited_pixels") == 1 else f"{r['edited_percent']:.1f}"


def _work_table(rows):
    """The exact plans' estimated work, decomposed (see the module docstring), beside FLOPs and wall time."""
    rows = [r for r in rows if r.get("work_breakdown")]
    return table(["edited %", "plan", "est. work: ideal", "whole tiles", "bucketed (plan.work)", "share at low res.",
                  "dense layers", "XLA FLOPs / dense", "wall / dense (paired median)", "cache pass / dense"],
                 [[_edited(r), r["plan"], f"{w['ideal']:.3f}", f"{w['tiles']:.3f}", f"{w['bucketed']:.3f}",
                   f"{100 * w['level_share'][-1]:.0f}% ({100 * w['level_share_dense'][-1]:.0f}%)",
                   f"{w['dense_layers']} / {w['layers']}", f"{1 / r['flop_ratio']:.3f}",
                   f"{1 / r['speedup_paired_median']:.3f}", "" if r.get("ms_cache_pass_median") is None else
                   f"{r['ms_cache_pass_median'] / r['ms_dense_median']:.3f}"]
                  for r in rows for w in [r["work_breakdown"]]]) if rows else []


def _speed_table(rows):
    def tiles(r):
        t = ", ".join(f"{a} ({b}) / {c}" for a, b, c in zip(r["active_tiles"], r["bucketed_tiles"], r["tiles"],
                                                             strict=True))
        return ("union: " if r.get("layer_tiles") is not None else "") + t + (
            " (dense fallback)" if r["dense_fallback"] else "")

    def work(r):
        return ("" if r.get("work_estimate") is None else f"{r['work_estimate']:.2f}") + (
            " (default: dense)" if r.get("default_dense_fallback") else "")

    return table(["edited %", "plan", "active tiles (bucket) / tiles per level", "est. work", "GFLOP sparse",
                  "FLOPs fewer", "ms dense", "ms sparse", "speedup median (paired)"],
                 [[_edited(r), r["plan"], tiles(r), work(r), f"{r['flops_sparse'] / 1e9:.3f}",
                   f"{r['flop_ratio']:.2f}x", f"{r['ms_dense_median']:.1f}", f"{r['ms_sparse_median']:.1f}",
                   f"**{r['speedup_median']:.2f}x** ({r['speedup_paired_median']:.2f}x)"] for r in rows])


def _error_table(rows):
    def pair(e):
        return f"{e['max_abs']:.2e} / {e['rel_l2']:.2e}"

    return table(["edited %", "plan", "stats", "vs true dense, edited px: max abs / rel. L2",
                  "vs true dense, all px: max abs / rel. L2", "vs masked-dense (max abs)",
                  "vs frozen-stats dense on roi (max abs)"],
                 [[_edited(r), r["plan"], s, pair(e["vs_true_edited"]), pair(e["vs_true_all"]),
                   "n/a (dense)" if e.get("vs_masked_max_abs") is None else f"{e['vs_masked_max_abs']:.1e}",
                   "" if e.get("vs_frozen_roi") is None or r["plan"].startswith("input") else
                   f"{e['vs_frozen_roi']['max_abs']:.1e}"]
                  for r in rows for s, e in ((s, r["errors"][s]) for s in ("reuse", "recompute"))])


def _inplace_note(rows):
    rows = [r for r in rows if r["plan"].endswith("-inplace")]
    if not rows:
        return []
    worst = max(v for r in rows for v in r["inplace_vs_apply_sparse_max_abs"].values())
    return [f"`-inplace` rows: the plan on `apply_sparse_inplace` (cache padded once, donated; `save_tiles` / "
            f"`restore_tiles` timed with it). Max |in-place - `apply_sparse`|: {worst:.1e}; cache restored bit for "
            f"bit: "
            f"{'yes' if all(r.get('cache_restored') for r in rows) else 'NO'}.", ""]


def _decomposition(res):
    lines = _work_table(res["rows"])
    if not lines:
        return []
    cp = [r["ms_cache_pass_median"] for r in res["rows"] if r.get("ms_cache_pass_median") is not None]
    d = [r["ms_dense_median"] for r in res["rows"]]
    return ["Exact plans' estimated convolution work / dense: *ideal* (changed and needed pixels), *whole tiles*, "
            "*bucketed* (`plan.work`; in parentheses dense's share at the lowest resolution), beside XLA FLOPs and "
            f"wall time / dense. *cache pass*: padding every cached map once "
            f"({res['cache_bytes_per_step'] / 2**20:.1f} MiB), median {np.median(cp):.0f} ms vs dense "
            f"{np.median(d):.0f} ms.", "", *lines, ""]


def render(res) -> str:
    lines = [
        "# Spatially sparse editing: sparse vs dense per sampling step (CPU)", "",
        f"Command: `{res['command']}` ({res.get('seconds', float('nan')):.0f} s)  ",
        f"jax {res['jax']}, {res['backend']} / {res['machine']}, {res['cpus']} CPUs (shared), {res['date']}; "
        f"{res['model']} ({res['params']:,} params) at {res['size']}x{res['size']}, tiles {res['blocks']} px per "
        f"level; {res['rounds']} interleaved rounds after a warm-up.", "",
        "Per step = one network evaluation. Plans: " + "; ".join(f"`{k}`: {v}" for k, v in res["variants"].items())
        + ". Wall: median over rounds (paired: median of per-round ratios). FLOPs: XLA `cost_analysis()` "
        "(stats=reuse). est. work: the plan's estimate / dense.", "",
        *_speed_table(res["rows"]), "", *_inplace_note(res["rows"]), *_decomposition(res),
        f"Errors of the output eps (max |eps| = {res['rows'][0]['output_scale']:.2f}) vs the true dense network, "
        "the masked dense reference (engine exactness) and the dense network with the original's GroupNorm "
        "statistics on the plan's roi (receptive-field exactness).", "",
        *_error_table(res["rows"]), "",
        f"Cache: {res['cache_bytes_per_step'] / 2**20:.2f} MiB per step; a {res['steps']}-step DDIM edit keeps "
        f"{res['steps'] + 1}: {res['cache_bytes_per_edit'] / 2**20:.0f} MiB."]
    if res.get("dilation"):
        lines += ["", "Input plan vs dilation of the ~5% edit (stats=reuse; active pixels at level 0; errors on the "
                  "edited pixels):", "",
                  *columns(res["dilation"], {
                      "dilate (px)": "{dilate}", "active pixels %": "{active_pixel_percent:.1f}",
                      "FLOPs fewer": "{flop_ratio:.2f}x", "speedup (median)": "{speedup_median:.2f}x",
                      "rel. L2 / max abs error vs true, edited": "{rel_err_vs_true_edited:.2e} / "
                                                                 "{max_err_vs_true_edited:.2e}",
                      "rel. L2 / max abs error vs frozen-stats, edited": "{rel_err_vs_frozen_edited:.2e} / "
                                                                        "{max_err_vs_frozen_edited:.2e}"})]
    if res.get("sdedit"):
        sd = res["sdedit"]
        names = list(sd[0]["ms_median"])
        lines += ["", f"## Whole trajectories: `sparse_sdedit`, VPSDE, DDIM({sd[0]['steps']}) ({sd[0]['calls']} "
                  f"network calls), t0 = 0.5, the exact plan ({res['rounds']} interleaved rounds)", "",
                  "scan: one jitted `lax.scan`, the stacked cache an argument; python loop: one jitted program per "
                  "step over pre-padded, donated step caches (tiles saved and restored). Recording not timed.", "",
                  *table(["edited %", *(f"ms {n}" for n in names), *(f"{n} vs dense (paired)" for n in names[1:]),
                          "max abs scan - loop (output scale)"],
                         [[f"{r['edited_percent']:.1f}", *(f"{r['ms_median'][n]:.0f}" for n in names),
                           *(f"**{r['speedup_paired_median'][n]:.2f}x**" for n in names[1:]),
                           f"{r['max_abs_scan_vs_loop']:.1e} ({r['output_scale']:.2f})"] for r in sd])]
    if res.get("large"):
        n = res["large_size"]
        lines += ["", f"## {n}x{n}, tiles {res['large_blocks']} px per level ({res['large_rounds']} interleaved "
                  "rounds)",
                  "", *_speed_table(res["large"]), "", *_error_table(res["large"])]
    if res.get("ddpm"):
        lines += ["", f"## DDPM UNet2D (google/ddpm-cifar10-32 layout, {res['ddpm_params']:,} params, random weights), "
                  f"32x32x3, timestep 500, tiles {res['ddpm_blocks']} px per level ({res['ddpm_rounds']} interleaved "
                  "rounds)", "",
                  "Attention is global: after the first attention on the changed path the exact plan recomputes "
                  f"everywhere. Cache: {res['ddpm_cache_bytes_per_step'] / 2**20:.2f} MiB per step.", "",
                  *_speed_table(res["ddpm"]), "", *_error_table(res["ddpm"])]
    lines += ["", "Target: >= 3x faster per step than dense at <= 5% edited area, identical results.", "",
              f"**The paper's figures ({PAPER['source']})**: at {PAPER['edited_area_percent']}% edited area, DDIM "
              f"{PAPER['ddim_compute_reduction']}x less compute, {PAPER['ddim_latency_speedup_rtx3090']}x lower "
              f"latency on an RTX 3090, {PAPER['ddim_latency_speedup_m1pro_cpu']}x on an M1 Pro CPU; "
              f"GauGAN {PAPER['gaugan_compute_reduction']}x less compute.", ""]
    return "\n".join(lines)
