"""Continuous batching: many samples through a fixed number of slots inside one compiled loop.

``sample`` vmaps whole solves: with an adaptive solver every sample of a batch waits for the
slowest one, so a batch pays ``n * max NFE`` for ``sum NFE`` of useful work. ``generate`` keeps
``batch_size`` slots busy instead. Each loop iteration steps every slot once (the driver's
per-sample :func:`~jaxsde.driver.step`); when a slot's sample is :func:`~jaxsde.driver.done`, a
refill pass (only on iterations where some slot finished) :func:`~jaxsde.driver.finalize`-s it
into an output buffer and starts the next unstarted sample ``k`` in that slot, with the very
key and prior draw :func:`jaxsde.sample` gives sample ``k`` (``split(fold_in(key, k))``). So
sample ``i`` of ``generate`` equals sample ``i`` of ``sample`` whatever ``batch_size``.

Refill passes handle ``refill_size`` slots at a time (gather, finalize + init, scatter back),
so a pass costs ``refill_size`` score evaluations for the denoising step, not ``batch_size``.
A pass runs only once ``refill_min`` slots are free (default ~slots/32; 1 below 33 slots), or
when nothing else can happen first (no slot running, or ``out`` about to fill): a pass has a
fixed cost (tens of small XLA ops), which dominates with a cheap score if paid on every
iteration that finishes a sample, while waiting costs each slot ~(refill_min - 1) / 2
iterations per sample (<= ~1.5% of the loop). The keys and prior draws of the samples a call
of the loop can start are computed once, vectorised, before the loop (not in every pass); the
``done`` mask is computed once per iteration and carried.

The tail: once every sample has started, slots go idle as the last ones finish (~1/(2k) of the
loop with k samples per slot). With ``drain_halvings`` > 0 the loop then moves the busy slots
into a loop of half the width whenever at most half are busy (:func:`_drain`).

Devices: the slots are split over ``devices`` (default: all local devices) with
``jax.shard_map``; each device runs its own loop over its own contiguous block of indices
(no collective inside the loop). Across hosts, each process generates its own index range
(:func:`process_range`), again without collectives.

:class:`Generator` is the host-side form: it keeps the slot state on the devices between calls
and hands finished samples to the host in chunks (``jaxsde generate`` writes them as shards).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import driver, results
from .driver import LoopState, Problem
from .noise import BrownianMemoryNoise, BrownianTreeNoise, FreshNoise
from .prediction import Model, prepare_model
from .progress import ProgressReporter
from .solution import Solution, Stats

Array = jax.Array

__all__ = ["generate", "Generated", "LoopStats", "GenerateSummary", "Generator", "Chunk",
           "process_range", "default_refill_size"]

_AXIS = "slots"


class LoopStats(NamedTuple):
    """What the loop paid for, one entry per device: iterations, slot-iterations (the loop's width
    summed over iterations: ``slots`` per iteration, fewer while draining), score evaluations
    computed by all slots (busy or idle) and by the refills, and refill passes. ``slots`` = slots
    per device."""

    slots: int
    iterations: Array
    slot_iterations: Array
    paid_nfe: Array
    refills: Array


class Generated(NamedTuple):
    """``generate``'s output: the fields of :class:`~jaxsde.Solution` (leading axis n, in index
    order) plus :class:`LoopStats`.

    Attributes:
        x: the samples, ``(n, *shape)``.
        t: the time each sample reached.
        stats: :class:`~jaxsde.Stats`, one entry per sample.
        result: the result codes.
        loop: :class:`LoopStats`, what the loop paid for.
    """

    x: Array
    t: Array
    stats: Stats
    result: Array
    loop: LoopStats

    def solution(self) -> Solution:
        return Solution(self.x, self.t, self.stats, self.result)

    def summary(self) -> GenerateSummary:
        """Host-side :class:`GenerateSummary`: what the samples needed vs what the loop paid for."""
        nfe = np.asarray(self.stats.nfe).reshape(-1).astype(np.int64)
        steps = np.asarray(self.stats.num_steps).reshape(-1).astype(np.int64)
        iters = np.asarray(self.loop.iterations).astype(np.int64)
        paid = int(np.asarray(self.loop.paid_nfe).astype(np.int64).sum())
        slot_iterations = int(np.asarray(self.loop.slot_iterations).astype(np.int64).sum())
        return GenerateSummary(
            n=int(nfe.size), mean_nfe=float(nfe.mean()), min_nfe=int(nfe.min()), max_nfe=int(nfe.max()),
            slots=int(self.loop.slots), loop_iterations=int(iters.max()), paid_nfe=paid,
            useful_work=float(nfe.sum() / max(paid, 1)),
            slot_utilisation=float(steps.sum() / max(slot_iterations, 1)),
            num_failed=int(np.sum(np.asarray(self.result) != results.SUCCESS)),
            refills=int(np.asarray(self.loop.refills).sum()),
        )


class _Work(NamedTuple):  # one device's work list
    index: Array  # (per,) int32 sample indices
    cond: Any  # the samples' conditions (leading axis per), or None (unconditional)


class _Slots(NamedTuple):  # one device's slots (leading axis = slots) and counters (scalars)
    loop: LoopState
    key: Array  # solve key of each slot's sample
    cond: Any  # condition of each slot's sample (leading axis slots), or None
    index: Array  # int32 sample index, -1 = empty slot
    fin: Array  # bool: the slot's sample is done (driver.done), computed once per iteration
    cursor: Array  # next position in the work list
    iterations: Array
    slot_iterations: Array  # sum over iterations of the loop's width (narrower while draining)
    paid: Array
    refills: Array


class _Plan(NamedTuple):  # static sizes of one device's loop
    size: int  # refill width: slots a refill pass processes
    due_at: int  # free slots that make a pass due
    capacity: int  # samples one call may finish into ``out`` (its buffer has ``size`` more rows)
    drain_halvings: int  # times the loop may still halve its width while draining


class _Out(NamedTuple):  # finished samples in completion order
    index: Array  # (capacity,) int32, -1 = unused
    sol: Solution
    count: Array


def default_refill_size(slots: int) -> int:
    """Slots refilled per refill pass (its width): ~1/32 of the slots, at least 2.

    Args:
        slots: the number of slots.

    Returns:
        The refill pass's width.
    """
    return max(2, math.ceil(slots / 32))


def _widths(batch_size: int, devices: int, refill_size: int | None, per_device: int) -> tuple[int, int]:
    """Slots per device and refill width. Slots: ``batch_size`` split over the devices, but no more
    than a device has samples to make (``per_device``): a slot that never gets a sample would
    compute every iteration for nothing. Both >= 2: XLA compiles a vmap of width 1 to unbatched
    code whose rounding differs from the batched code ``sample`` runs, and adaptive solvers can
    turn a 1-ulp difference into a different step sequence."""
    slots = max(2, min(math.ceil(batch_size / devices), per_device))
    return slots, min(max(2, refill_size or default_refill_size(slots)), slots)


def _due_at(slots: int, size: int, refill_min: int | None) -> int:
    """Free slots that make a refill pass due: default ~slots/32 (1 below 33 slots). A free slot
    idles ~(refill_min - 1) / 2 iterations per sample it finishes, ~(refill_min - 1) / (2 slots)
    of the loop (<= 1.5%), while a pass costs a fixed overhead shared by the samples it handles."""
    return min(size, refill_min or math.ceil(slots / 32))


def _init_rows(p: Problem, x_T: Array, cond: Any) -> LoopState:
    return jax.vmap(lambda x, c: driver.init(driver.bind(p, c), x))(x_T, cond)


def _finalize_rows(p: Problem, loop: LoopState, cond: Any) -> Solution:
    return jax.vmap(lambda s, c: driver.finalize(driver.bind(p, c), s))(loop, cond)


def _rows(tree: Any, rows: Array) -> Any:
    return jax.tree_util.tree_map(lambda a: a[rows], tree)


def _empty(p: Problem, key: Array, slots: int, work: _Work) -> _Slots:
    cond = _rows(work.cond, jnp.zeros((slots,), jnp.int32))  # placeholders: empty slots hold work row 0's
    loop = _init_rows(p, jnp.zeros((slots, *p.shape), p.dtype), cond)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.zeros((slots,), jnp.int32))
    zero = jnp.zeros((), jnp.int32)
    return _Slots(loop, keys, cond, jnp.full((slots,), -1, jnp.int32), jnp.zeros((slots,), bool), zero, zero, zero,
                  zero, zero)


def _empty_out(p: Problem, capacity: int, pad: int, work: _Work) -> _Out:
    """Room for ``capacity`` samples plus ``pad`` rows that a refill pass may overwrite with
    don't-care rows (index -1) past ``count``: writes are whole ``refill_size``-row blocks."""
    q = driver.bind(p, driver.first_condition(work.cond))
    sol = jax.eval_shape(partial(driver.finalize, q), jax.eval_shape(partial(driver.init, q),
                                                                       jax.ShapeDtypeStruct(p.shape, p.dtype)))
    sol = jax.tree_util.tree_map(lambda s: jnp.zeros((capacity + pad, *s.shape), s.dtype), sol)
    return _Out(jnp.full((capacity + pad,), -1, jnp.int32), sol, jnp.zeros((), jnp.int32))


class _Window(NamedTuple):  # the next work items' keys, x_T and conditions, drawn once per call of the loop
    start: Array  # work position of row 0
    key: Array  # solve keys
    x_T: Array
    cond: Any


def _window(p: Problem, key: Array, work: _Work, start: Array, width: int) -> _Window:
    """Sample ``work.index[start + j]``'s solve key and prior draw (and its condition), j < width
    (``sample``'s ``split(fold_in(key, i))``), vectorised once instead of inside every refill pass."""
    index = work.index
    idx = jax.lax.dynamic_slice(jnp.concatenate([index, jnp.zeros((width,), index.dtype)]), (start,), (width,))
    pairs = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(idx)
    x_T = jax.vmap(lambda k: p.sde.prior_sample(k, p.shape, p.dtype))(pairs[:, 0])
    cond = _rows(work.cond, jnp.clip(start + jnp.arange(width), 0, index.shape[0] - 1))
    return _Window(start, pairs[:, 1], x_T, cond)


def _room(plan: _Plan, out: _Out) -> Array:
    return plan.capacity - out.count


def _due(plan: _Plan, g: _Slots, out: _Out, num_work: Array) -> Array:
    """Whether a refill pass is due: it has ``due_at`` slots to process (finished, or empty with
    work left), or it has some and nothing else can happen first (no slot running: the start, the
    tail, fixed-step solvers), or the finished samples fill ``out``."""
    busy = g.index >= 0
    room = _room(plan, out)
    nfin = jnp.sum(g.fin, dtype=jnp.int32)
    nproc = jnp.minimum(nfin, room) + jnp.where(g.cursor < num_work, jnp.sum(~busy, dtype=jnp.int32), 0)
    running = jnp.any(busy & ~g.fin)
    return (nproc >= plan.due_at) | ((nproc > 0) & (~running | (nfin >= room)))


def _refill_pass(p: Problem, plan: _Plan, win: _Window, work: _Work, num_work: Array, g: _Slots, out: _Out):
    """Finalize up to ``plan.size`` finished slots into ``out`` and start the next samples in them."""
    nslots, size = g.index.shape[0], plan.size
    fin_ok = g.fin & (jnp.cumsum(g.fin.astype(jnp.int32)) <= _room(plan, out))
    proc = fin_ok | ((g.index < 0) & (g.cursor < num_work))
    rows = jnp.nonzero(proc, size=size, fill_value=nslots)[0]
    valid = rows < nslots
    rows_c = jnp.minimum(rows, nslots - 1)
    is_fin = valid & fin_ok[rows_c]
    # finished rows first (stable), written as one block at out.count; rows past the finished
    # ones land past the new count with index -1 and are overwritten by the next pass
    order = jnp.argsort(~is_fin, stable=True)
    src = rows_c[order]
    sol = _finalize_rows(p, _rows(g.loop, src), _rows(g.cond, src))
    index = jnp.where(is_fin[order], g.index[src], -1)

    def put(buf, v):
        return jax.lax.dynamic_update_slice(buf, v.astype(buf.dtype), (out.count,) + (0,) * (buf.ndim - 1))

    out = out._replace(index=put(out.index, index), sol=jax.tree_util.tree_map(put, out.sol, sol),
                       count=out.count + jnp.sum(is_fin, dtype=jnp.int32))
    pos = g.cursor + jnp.cumsum(valid.astype(jnp.int32)) - 1
    has = valid & (pos < num_work)
    new_index = jnp.where(has, work.index[jnp.clip(pos, 0, work.index.shape[0] - 1)], -1)
    w = jnp.clip(pos - win.start, 0, win.key.shape[0] - 1)
    fresh = _init_rows(p, win.x_T[w], _rows(win.cond, w))
    dst_rows = jnp.where(valid, rows, nslots)
    paid = jnp.sum(fresh.stats.nfe) + (size if p.denoise else 0)
    fin_new = has & jax.vmap(partial(driver.done, p))(fresh)

    def merge(buf, v):
        return buf.at[dst_rows].set(v, mode="drop")

    return _Slots(
        loop=jax.tree_util.tree_map(merge, g.loop, fresh),
        key=merge(g.key, win.key[w]),
        cond=jax.tree_util.tree_map(merge, g.cond, _rows(win.cond, w)),
        index=merge(g.index, new_index),
        fin=merge(g.fin, fin_new),
        cursor=g.cursor + jnp.sum(has, dtype=jnp.int32),
        iterations=g.iterations,
        slot_iterations=g.slot_iterations,
        paid=g.paid + paid,
        refills=g.refills + 1,
    ), out


def _refill(p, plan, win, work, num_work, g, out):
    def again(c):
        return _due(plan, c[0], c[1], num_work)

    def run(c):
        return jax.lax.while_loop(again, lambda c: _refill_pass(p, plan, win, work, num_work, *c), c)

    return jax.lax.cond(again((g, out)), run, lambda c: c, (g, out))


def _run(p: Problem, key: Array, work: _Work, num_work: Array, plan: _Plan, progress, device, g: _Slots, out: _Out,
         draining: bool = False):
    """One device's loop: step all slots, refill finished ones; stop when ``out`` is full or all
    work is finished. Once every sample has started and at most half the slots are busy (and
    their samples fit in ``out``), the busy slots move into a loop of half the width
    (:func:`_drain`), up to ``plan.drain_halvings`` times."""
    nslots = g.index.shape[0]
    # samples started in this call: at most one per slot empty at the start plus one per sample
    # finalized; none while draining
    win = _window(p, key, work, g.cursor, 1 if draining else min(work.index.shape[0], plan.capacity + nslots))
    g, out = _refill(p, plan, win, work, num_work, g, out)
    can_halve = plan.drain_halvings > 0 and nslots // 2 >= 2

    def halve_now(g, out):
        busy = jnp.sum(g.index >= 0, dtype=jnp.int32)
        return (g.cursor >= num_work) & (busy <= nslots // 2) & (busy <= _room(plan, out))

    def cond(c):
        g, out = c
        go = (out.count < plan.capacity) & (jnp.any(g.index >= 0) | (g.cursor < num_work))
        return go & ~halve_now(g, out) if can_halve else go

    def body(c):
        g, out = c
        busy = g.index >= 0
        loop, computed = driver.step_active(p, g.key, g.loop, busy & ~g.fin, cond=g.cond)
        paid = g.paid + jnp.sum(computed)
        fin = busy & jax.vmap(partial(driver.done, p))(loop)
        g = g._replace(loop=loop, fin=fin, iterations=g.iterations + 1, slot_iterations=g.slot_iterations + nslots,
                       paid=paid)
        g, out = _refill(p, plan, win, work, num_work, g, out)
        if progress is not None:
            every, fn = progress
            jax.lax.cond(g.iterations % every == 0,
                         lambda: jax.debug.callback(fn, device, out.count, g.iterations, g.paid), lambda: None)
        return g, out

    g, out = jax.lax.while_loop(cond, body, (g, out))
    if can_halve:
        drain = partial(_drain, p, key, work, num_work, plan, progress, device)
        g, out = jax.lax.cond(halve_now(g, out) & jnp.any(g.index >= 0), drain, lambda g, out: (g, out), g, out)
    if progress is not None and not draining:  # once, after every drain level
        jax.debug.callback(partial(progress[1], final=True), device, out.count, g.iterations, g.paid)
    return g, out


def _drain(p: Problem, key: Array, work: _Work, num_work: Array, plan: _Plan, progress, device, g: _Slots,
           out: _Out):
    """Finish the busy slots (at most half of them, all fitting in ``out``, no work left) in a
    loop of half the width, then put them back: an idle slot still costs a score evaluation
    every iteration, so the tail of a run costs half as much per iteration. Each halving is one
    more compiled copy of the loop (and of the score network)."""
    nslots = g.index.shape[0]
    half = nslots // 2
    rows = jnp.nonzero(g.index >= 0, size=half, fill_value=nslots)[0]  # every busy slot, then padding (nslots)
    valid = rows < nslots
    clipped = jnp.minimum(rows, nslots - 1)  # padding rows copy a stale slot and are marked empty

    def take(a):
        return a[clipped]

    narrow = g._replace(loop=jax.tree_util.tree_map(take, g.loop), key=take(g.key),
                        cond=jax.tree_util.tree_map(take, g.cond),
                        index=jnp.where(valid, take(g.index), -1), fin=valid & take(g.fin))
    size = min(plan.size, half)
    sub = plan._replace(size=size, due_at=min(plan.due_at, size), drain_halvings=plan.drain_halvings - 1)
    narrow, out = _run(p, key, work, num_work, sub, progress, device, narrow, out, draining=True)

    def put(wide, v):  # padding rows (index nslots) are dropped
        return wide.at[rows].set(v, mode="drop")

    return narrow._replace(loop=jax.tree_util.tree_map(put, g.loop, narrow.loop), key=put(g.key, narrow.key),
                           cond=jax.tree_util.tree_map(put, g.cond, narrow.cond),
                           index=put(jnp.full_like(g.index, -1), narrow.index),
                           fin=put(jnp.zeros_like(g.fin), narrow.fin)), out


_SCALARS = ("cursor", "iterations", "slot_iterations", "paid", "refills")


def _lift(g: _Slots) -> _Slots:  # per-device scalars -> shape (1,), so shard_map can stack them
    return g._replace(**{f: getattr(g, f)[None] for f in _SCALARS})


def _lower(g: _Slots) -> _Slots:
    return g._replace(**{f: getattr(g, f)[0] for f in _SCALARS})


def _device(mesh) -> Array:
    return jnp.zeros((), jnp.int32) if mesh is None else jax.lax.axis_index(_AXIS)


def _check(noise, batch_size, refill_size, refill_min=None, drain_halvings=0) -> None:
    if noise is not None and not isinstance(noise, FreshNoise | BrownianTreeNoise | BrownianMemoryNoise):
        raise ValueError("generate draws its noise from each sample's key (noise=None, FreshNoise(), "
                         "BrownianTreeNoise() or BrownianMemoryNoise()); per-sample noise arrays need `sample`")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if refill_size is not None and (not isinstance(refill_size, int) or refill_size < 1):
        raise ValueError(f"refill_size must be a positive integer, got {refill_size!r}")
    if refill_min is not None and (not isinstance(refill_min, int) or refill_min < 1):
        raise ValueError(f"refill_min must be a positive integer, got {refill_min!r}")
    if not isinstance(drain_halvings, int) or drain_halvings < 0:
        raise ValueError(f"drain_halvings must be an integer >= 0 (0: never halve), got {drain_halvings!r}")


def _mesh(devices) -> Mesh | None:
    devices = list(jax.local_devices() if devices is None else devices)
    return Mesh(np.array(devices), (_AXIS,)) if len(devices) > 1 else None


def _split(tree, d):  # (d*k, ...) per-device leading blocks <-> shard_map's local views
    return jax.tree_util.tree_map(lambda a: a.reshape(d, -1, *a.shape[1:]), tree)


def generate(
    key: Array,
    sde,
    score,
    solver,
    shape: tuple[int, ...],
    n: int,
    batch_size: int = 256,
    *,
    dtype=jnp.float32,
    offset: int | Array = 0,
    refill_size: int | None = None,
    refill_min: int | None = None,
    drain_halvings: int = 0,
    devices: Sequence[jax.Device] | None = None,
    progress: Callable[[dict], None] | bool | None = None,
    progress_every: int = 64,
    cond: Any = None,
    **solve_kwargs: Any,
) -> Generated:
    """Samples ``offset .. offset + n - 1`` of :func:`jaxsde.sample`'s sequence, by continuous batching.

    Sample ``i`` equals ``sample(key, sde, score, solver, shape, n)``'s sample ``i`` (x, stats,
    result), whatever ``batch_size`` (the number of slots, split over ``devices``, default all
    local devices; at most the samples each device makes), ``refill_size`` (slots refilled per refill pass, default
    :func:`default_refill_size`) and ``refill_min`` (free slots that trigger a pass; default
    ~slots/32, 1 for <= 32 slots; 1 = refill as soon as any slot finishes) and ``drain_halvings``.
    Pure and jit-able like ``sample``; other keyword arguments go to :func:`jaxsde.solve`
    (``t_start``, ``t_end``, ``denoise``, ``max_steps``).

    ``drain_halvings`` (default 0 = never): once every sample has started, a device's loop moves
    its busy slots into a loop of half the width as soon as at most half are busy, up to this
    many times, so the last samples do not pay for idle slots (the last wave's idle slots cost
    ~1/(2k) of a run with k samples per slot). Each halving compiles one more copy of the loop
    and of the score network, so it pays off when the compiled program is reused or runs long.
    The narrower programs may round differently from ``sample`` (same NFE, float rounding in
    ``x``). Useful work, compile time and the deviation from ``sample`` are measured in
    ``benchmarks/results/throughput_digits_drain.md`` and
    ``benchmarks/results/useful_work_mixture_drain.md``
    (``benchmarks/throughput.py``, ``benchmarks/useful_work.py``).

    ``progress`` (off by default, no effect on the results): ``True`` for a tqdm bar, or a callable
    receiving ``{"done", "total", "iterations", "paid_nfe"}``, called from inside the compiled
    loop every ``progress_every`` iterations (and at most ~4 times a second).

    ``cond`` (optional): the samples' conditions as for :func:`jaxsde.sample` (leading axis ``n``;
    row ``i`` goes with sample ``offset + i``; the score is ``score(x, t, cond)``). Each slot
    carries its sample's condition, so sample ``i`` still equals ``sample``'s sample ``i``.

    Returns :class:`Generated` (``.solution()`` gives a :class:`~jaxsde.Solution`); see
    :meth:`Generated.summary` for the useful-work fraction.

    Args:
        key: the run's PRNG key (the same as :func:`jaxsde.sample`'s).
        sde: the forward SDE.
        score: ``score(x, t)`` (or ``score(x, t, cond)``) of ONE sample.
        solver: any jaxsde solver.
        shape: one sample's shape.
        n: the number of samples (static).
        batch_size: the number of slots, over all devices.
        dtype: the samples' dtype.
        offset: the index of the first sample (may be traced).
        refill_size: slots refilled per refill pass.
        refill_min: free slots that trigger a refill pass.
        drain_halvings: how many times the loop may halve its width at the end (see above).
        devices: the devices to split the slots over (default all local devices).
        progress: ``True``, a callable, or None (see above).
        progress_every: loop iterations between progress calls.
        cond: the samples' conditions, leading axis ``n`` (optional).
        **solve_kwargs: passed to :func:`jaxsde.solve`.

    Returns:
        A :class:`Generated`.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    _check(solve_kwargs.get("noise"), batch_size, refill_size, refill_min, drain_halvings)
    shape = tuple(int(s) for s in shape)
    if cond is not None:
        driver.check_conditions(cond, n)
    p = driver.prepare(sde, score, solver, jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)),
                       cond=driver.first_condition(cond), **solve_kwargs)
    mesh = _mesh(devices)
    d = 1 if mesh is None else mesh.devices.size
    per = math.ceil(n / d)
    slots, size = _widths(batch_size, d, refill_size, per)
    work = jnp.arange(d * per, dtype=jnp.int32) + jnp.asarray(offset, jnp.int32)
    # the conditions in work order, padded to d * per rows (padding rows are never started)
    cond = _rows(cond, jnp.minimum(jnp.arange(d * per), n - 1))
    num_work = jnp.clip(n - per * jnp.arange(d, dtype=jnp.int32), 0, per)
    reporter = ProgressReporter(progress, n) if progress else None
    cb = None if reporter is None else (max(int(progress_every), 1), reporter)

    def local(key, index, num_work, cond):
        work = _Work(index, cond)
        plan = _Plan(size, _due_at(slots, size, refill_min), per, drain_halvings)
        g, out = _run(p, key, work, num_work[0], plan, cb, _device(mesh), _empty(p, key, slots, work),
                      _empty_out(p, per, size, work))
        return out._replace(count=out.count[None]), jnp.stack([g.iterations, g.slot_iterations, g.paid,
                                                               g.refills])[None]

    if mesh is None:
        out, counters = local(key, work, num_work, cond)
    else:
        out, counters = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(_AXIS), P(_AXIS), P(_AXIS)),
                                      out_specs=(P(_AXIS), P(_AXIS)), check_vma=False)(key, work, num_work, cond)
    pos = jnp.where(out.index >= 0, out.index - jnp.asarray(offset, jnp.int32), n)
    sol = jax.tree_util.tree_map(lambda a: jnp.zeros((n, *a.shape[1:]), a.dtype).at[pos].set(a, mode="drop"),
                                 out.sol)
    loop = LoopStats(slots, *(counters[:, i] for i in range(4)))
    return Generated(sol.x, sol.t, sol.stats, sol.result, loop)


class GenerateSummary(NamedTuple):
    """Host-side summary of :func:`generate`: what the samples needed vs what the loop paid for.

    Attributes:
        n: samples made.
        mean_nfe: mean score evaluations per sample.
        min_nfe: the fewest a sample took.
        max_nfe: the most a sample took.
        slots: slots per device.
        loop_iterations: the longest device's loop iterations.
        paid_nfe: score evaluations computed: every slot every iteration, plus refills.
        useful_work: sum of per-sample NFE / ``paid_nfe``.
        slot_utilisation: sum of per-sample loop iterations / slot-iterations, over devices.
        num_failed: samples whose result code is not 0.
        refills: refill passes.
    """

    n: int
    mean_nfe: float
    min_nfe: int
    max_nfe: int
    slots: int  # slots per device
    loop_iterations: int  # the longest device's iterations
    paid_nfe: int  # score evaluations computed: every slot every iteration, plus refills
    useful_work: float  # sum of per-sample NFE / paid_nfe
    slot_utilisation: float  # sum of per-sample loop iterations / slot-iterations, summed over devices
    num_failed: int
    refills: int

    def __str__(self) -> str:
        return (f"n={self.n} NFE mean={self.mean_nfe:.1f} min={self.min_nfe} max={self.max_nfe} "
                f"slots={self.slots} loop_iterations={self.loop_iterations} useful_work={self.useful_work:.3f} "
                f"slot_utilisation={self.slot_utilisation:.3f} refills={self.refills} failed={self.num_failed}")


def process_range(n: int, process_index: int | None = None, process_count: int | None = None) -> tuple[int, int]:
    """``(offset, count)`` of the samples process ``process_index`` of ``process_count`` generates
    (contiguous blocks; defaults: this process, from ``jax.process_index()``/``jax.process_count()``).

    Args:
        n: samples over all processes.
        process_index: this process (default ``jax.process_index()``).
        process_count: the number of processes (default ``jax.process_count()``).

    Returns:
        ``(offset, count)``.
    """
    i = jax.process_index() if process_index is None else process_index
    k = jax.process_count() if process_count is None else process_count
    start, stop = (n * i) // k, (n * (i + 1)) // k
    return start, stop - start


class Chunk(NamedTuple):
    """Finished samples handed to the host (numpy, completion order)."""

    index: np.ndarray  # (m,) int64
    x: np.ndarray
    t: np.ndarray
    stats: Stats
    result: np.ndarray


class Generator:
    """Host-driven continuous batching: yields :class:`Chunk`-s of finished samples.

    ``indices`` are the samples to make (any order, e.g. the ones a resumed job still lacks).
    ``pad_to`` pads the work list (the compiled program depends only on its padded length). The
    slot state stays on the devices between chunks; each call of the compiled loop runs
    until ``chunk_size`` samples (split over the devices) have finished. ``score_fn(params)``
    builds the score, so ``params`` are arguments of the compiled loop. The chunks hold exactly
    the samples ``sample`` gives those indices. ``drain_halvings`` as in :func:`generate`; a call
    drains only once every pending sample fits in its chunk. ``jaxsde generate`` leaves it at 0:
    a resumed job drains a different set of samples than an uninterrupted one, and its output
    must be bitwise the same.

    Args:
        key: the run's PRNG key (the same as :func:`jaxsde.sample`'s).
        sde: the forward SDE.
        score_fn: ``score_fn(params)`` builds the score of ONE sample.
        params: the network's parameters (arguments of the compiled loop).
        solver: any jaxsde solver.
        shape: one sample's shape.
        indices: the sample indices to make.
        batch_size: the number of slots, over all devices.
        chunk_size: finished samples per call of the compiled loop.
        refill_size: slots refilled per refill pass.
        refill_min: free slots that trigger a refill pass.
        drain_halvings: as in :func:`generate`.
        dtype: the samples' dtype.
        devices: the devices to split the slots over (default all local devices).
        pad_to: pad the work list to this length.
        **solve_kwargs: passed to :func:`jaxsde.solve`.
    """

    def __init__(self, key, sde, score_fn: Callable, params, solver, shape, indices, *, batch_size: int = 256,
                 chunk_size: int = 1024, refill_size: int | None = None, refill_min: int | None = None,
                 drain_halvings: int = 0, dtype=jnp.float32,
                 devices: Sequence[jax.Device] | None = None, pad_to: int | None = None, **solve_kwargs):
        _check(solve_kwargs.get("noise"), batch_size, refill_size, refill_min, drain_halvings)
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size == 0:
            raise ValueError("nothing to generate: indices is empty")
        mesh = _mesh(devices)
        d = 1 if mesh is None else mesh.devices.size
        per = math.ceil(max(indices.size, pad_to or 0) / d)  # pad_to: same program for any len(indices)
        self.slots, size = _widths(batch_size, d, refill_size, per)
        capacity = max(1, math.ceil(chunk_size / d))
        plan = _Plan(size, _due_at(self.slots, size, refill_min), capacity, drain_halvings)
        work = np.zeros(d * per, np.int32)
        work[: indices.size] = indices
        num_work = np.clip(indices.size - per * np.arange(d), 0, per).astype(np.int32)
        shape = tuple(int(s) for s in shape)
        p0 = driver.prepare(sde, score_fn(params), solver, jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)),
                            **solve_kwargs)

        def problem(params):
            # the score as prepare() made it: a Prediction becomes its Model (the exact x0 channel), in p0's dtype
            score = prepare_model(sde, score_fn(params))
            if isinstance(p0.score, Model):
                score = score.with_dtype(p0.score.dtype)
            return p0._replace(score=score)

        def local_init(key, params):
            return _lift(_empty(problem(params), key, self.slots, _Work(jnp.zeros((1,), jnp.int32), None)))

        def local_run(key, params, work, num_work, g):
            p = problem(params)
            w = _Work(work, None)
            g, out = _run(p, key, w, num_work[0], plan, None, _device(mesh), _lower(g),
                          _empty_out(p, capacity, size, w))
            return _lift(g), out._replace(count=out.count[None])

        if mesh is None:
            self._init = jax.jit(local_init)
            self._step = jax.jit(local_run, donate_argnums=(4,))
            self.work, self.num_work = jnp.asarray(work), jnp.asarray(num_work)
            self.state = self._init(key, params)
        else:
            rep, shard = P(), P(_AXIS)
            self._init = jax.jit(jax.shard_map(local_init, mesh=mesh, in_specs=(rep, rep), out_specs=shard,
                                                   check_vma=False))
            self._step = jax.jit(jax.shard_map(local_run, mesh=mesh, in_specs=(rep, rep, shard, shard, shard),
                                               out_specs=(shard, shard), check_vma=False),
                                 donate_argnums=(4,))
            put = partial(jax.device_put, device=NamedSharding(mesh, shard))
            self.work, self.num_work = put(work), put(num_work)
            self.state = self._init(key, params)
        self.key, self.params, self.total = key, params, int(indices.size)
        self.produced = 0

    def __iter__(self) -> Iterator[Chunk]:
        while self.produced < self.total:
            self.state, out = self._step(self.key, self.params, self.work, self.num_work, self.state)
            out = jax.device_get(out)
            keep = np.asarray(out.index) >= 0
            self.produced += int(keep.sum())
            sol = jax.tree_util.tree_map(lambda a, keep=keep: np.asarray(a)[keep], out.sol)
            yield Chunk(np.asarray(out.index)[keep].astype(np.int64), sol.x, sol.t, sol.stats, sol.result)

    def loop_stats(self) -> LoopStats:
        g = jax.device_get(self.state)
        d = np.asarray(g.iterations).reshape(-1)
        return LoopStats(self.slots, d, *(np.asarray(a).reshape(-1) for a in (g.slot_iterations, g.paid, g.refills)))
