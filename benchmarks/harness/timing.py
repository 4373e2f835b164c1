"""The one interleaved-timing helper: compile every program first, then time them all in rounds (wall and process
CPU), so that load from other jobs on a shared machine hits every program alike.

Single-program timing is :mod:`jaxsde.timing` (``time_compiled``, ``compile_cpu_seconds``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


class Times(dict):
    """``{name: [wall seconds]}`` with ``.cpu = {name: [process CPU seconds]}`` alongside (all threads of this
    process: what the program cost, largely insensitive to other processes competing for the cores)."""

    cpu: dict[str, list[float]]


def compile_all(fns: dict[str, tuple[Callable, tuple]]) -> dict[str, tuple[Any, tuple, float]]:
    """Compile every ``(fn, args)``; ``{name: (compiled, args, compile wall seconds)}``."""
    out = {}
    for name, (fn, args) in fns.items():
        t0 = time.perf_counter()
        out[name] = (jax.jit(fn).lower(*args).compile(), args, time.perf_counter() - t0)
    return out


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, rotate: bool = True,
                warmup: bool = True) -> tuple[Times, dict[str, Any]]:
    """Run every zero-argument call once (``warmup``), then ``repeats`` rounds of each in turn, each blocked until
    ready (the order rotates each round if ``rotate``). Returns ``(Times, {name: last output})``."""
    outputs = {name: jax.block_until_ready(f()) for name, f in calls.items()} if warmup else {}
    times = Times({name: [] for name in calls})
    times.cpu = {name: [] for name in calls}
    names = list(calls)
    for r in range(max(repeats, 1)):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[name] = jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - t0)
            times.cpu[name].append(time.process_time() - c0)
    return times, outputs


def run_interleaved(compiled: dict[str, tuple], repeats: int) -> tuple[Times, dict[str, Any]]:
    """:func:`interleaved` over :func:`compile_all`'s programs (warmed up, rotating order)."""
    return interleaved({name: (lambda c=c: c[0](*c[1])) for name, c in compiled.items()}, repeats)


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(v) for name, v in times.items()}


def ratio(times: Times, num: str, den: str) -> dict[str, float]:
    """Wall time: ratio of medians, of minima (the least disturbed runs on a shared machine) and the median, min
    and max of the per-round ratios; CPU time (if recorded): ratio of medians and of minima."""
    paired = [a / b for a, b in zip(times[num], times[den], strict=True)]
    out = {
        "ratio_of_medians": statistics.median(times[num]) / statistics.median(times[den]),
        "ratio_of_minima": min(times[num]) / min(times[den]),
        "median_paired_ratio": statistics.median(paired),
        "min_paired_ratio": min(paired),
        "max_paired_ratio": max(paired),
    }
    cpu = getattr(times, "cpu", None)
    if cpu:
        out["cpu_ratio_of_medians"] = statistics.median(cpu[num]) / statistics.median(cpu[den])
        out["cpu_ratio_of_minima"] = min(cpu[num]) / min(cpu[den])
    return out
