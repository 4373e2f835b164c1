"""Honest wall-clock timing of compiled JAX functions: compile once, warm up, block, median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax


class Timing(NamedTuple):
    compile_s: float  # lower + compile
    median_s: float  # median wall time of `repeats` calls, each blocked until ready
    min_s: float
    repeats: int
    temp_bytes: int  # XLA's temporary buffer size of the compiled program (-1 if unknown)
    peak_bytes: int  # XLA's peak memory estimate (-1 if unknown)


def compile_cpu_seconds(fn: Callable, *args: Any, repeats: int = 1) -> tuple[Any, float]:
    """Trace, lower and compile ``fn`` for ``args`` ``repeats`` times, a fresh ``jax.jit`` each
    time (no cache hit); returns the last compiled program and the median CPU seconds. XLA
    compiles on one thread, so CPU seconds are what a quiet machine's wall time would be, and
    they are robust to other jobs on a shared one."""
    seconds, compiled = [], None
    for _ in range(max(repeats, 1)):
        t0 = time.process_time()
        compiled = jax.jit(lambda *a: fn(*a)).lower(*args).compile()
        seconds.append(time.process_time() - t0)
    return compiled, statistics.median(seconds)


def time_compiled(fn: Callable, *args: Any, repeats: int = 3) -> tuple[Any, Timing]:
    """Compile ``jax.jit(fn)`` for ``args``, run it once to warm up, then time ``repeats`` runs.

    Returns the last output and a :class:`Timing`.
    """
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    temp = peak = -1
    try:
        stats = compiled.memory_analysis()
        temp = int(getattr(stats, "temp_size_in_bytes", -1))
        peak = int(getattr(stats, "peak_memory_in_bytes", -1))
    except Exception:  # noqa: BLE001 - memory analysis is backend-dependent
        pass
    return out, Timing(compile_s, statistics.median(times), min(times), len(times), temp, peak)
