"""Time grids for fixed-step solvers.

A grid is a strictly decreasing array of ``num_steps + 1`` times from ``t_start`` (usually
``sde.T``) to ``t_end`` (usually ``sde.eps``); its end points are exact, so the last step
lands on ``t_end``. Kinds:

* ``"uniform"``: uniform in ``t`` (score_sde's default);
* ``"logsnr"``: uniform in log-SNR ``lambda(t)`` (DPM-Solver's choice);
* ``"edm"``: the EDM/Karras grid, uniform in ``s^(1/rho)`` with ``s = sigma/alpha``,
  ``rho = 7``;
* a sequence of times: used as given (validated: strictly decreasing, inside ``(0, T]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from .sde import SDE
from .settings import is_traced

GRID_KINDS = ("uniform", "logsnr", "edm")

__all__ = ["GRID_KINDS", "time_grid", "validate_grid"]


def validate_grid(grid, num_steps: int | None = None) -> tuple[float, ...] | str:
    """Check a grid spec up front; returns a kind name or a tuple of times (Python floats, or JAX
    scalars when the times are traced: a traced grid is checked for its length only)."""
    if isinstance(grid, str):
        if grid not in GRID_KINDS:
            raise ValueError(f"unknown grid {grid!r}; choose one of {GRID_KINDS} or pass an array of times")
        return grid
    if any(is_traced(v) for v in (grid if isinstance(grid, tuple | list) else [grid])):
        times = tuple(grid) if isinstance(grid, tuple | list) else tuple(jnp.reshape(grid, (-1,)))
        if num_steps is not None and len(times) != num_steps + 1:
            raise ValueError(f"a custom grid for num_steps={num_steps} needs {num_steps + 1} times, got {len(times)}")
        return times
    times = np.asarray(grid, dtype=np.float64).reshape(-1)
    if times.size < 2:
        raise ValueError(f"a custom grid needs at least 2 times, got {times.size}")
    if not np.all(np.isfinite(times)) or not np.all(np.diff(times) < 0):
        raise ValueError("a custom grid must be finite and strictly decreasing (from T down to t_end)")
    if times[-1] <= 0:
        raise ValueError(f"a custom grid must end at a positive time, got {times[-1]}")
    if num_steps is not None and times.size != num_steps + 1:
        raise ValueError(f"a custom grid for num_steps={num_steps} needs {num_steps + 1} times, got {times.size}")
    return tuple(float(t) for t in times)


def time_grid(
    sde: SDE,
    num_steps: int,
    kind: str | Sequence[float] = "uniform",
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
    dtype=jnp.float32,
):
    """The ``num_steps + 1`` decreasing times of a fixed-step solve, end points exact.

    Args:
        sde: the SDE, whose ``T``, ``eps`` and log-SNR place the times.
        num_steps: the number of steps (>= 1).
        kind: ``"uniform"`` in ``t``, ``"logsnr"`` (uniform in log-SNR), ``"edm"`` (Karras et
            al.'s ``rho`` grid), or the times themselves (decreasing, from ``t_start`` to ``t_end``).
        t_start: the first time (default ``sde.T``).
        t_end: the last time (default ``sde.eps``).
        rho: the EDM grid's exponent.
        dtype: the times' dtype.

    Returns:
        The times, shape ``(num_steps + 1,)``.

    Raises:
        ValueError: ``num_steps < 1``, an unknown ``kind``, or times that do not decrease."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t_start = sde.T if t_start is None else t_start
    t_end = sde.eps if t_end is None else t_end
    spec = validate_grid(kind, num_steps)
    if isinstance(spec, tuple):
        return jnp.stack([jnp.asarray(t, dtype) for t in spec])
    frac = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)
    if spec == "uniform":
        ts = t_start + frac * (t_end - t_start)
    elif spec == "logsnr":
        lam0, lam1 = sde.log_snr(jnp.asarray(t_start, dtype)), sde.log_snr(jnp.asarray(t_end, dtype))
        ts = sde.inverse_log_snr(lam0 + frac * (lam1 - lam0))
    else:  # edm
        s0 = jnp.exp(-0.5 * sde.log_snr(jnp.asarray(t_start, dtype)))
        s1 = jnp.exp(-0.5 * sde.log_snr(jnp.asarray(t_end, dtype)))
        s = (s0 ** (1 / rho) + frac * (s1 ** (1 / rho) - s0 ** (1 / rho))) ** rho
        ts = sde.inverse_log_snr(-2.0 * jnp.log(s))
    ts = ts.astype(dtype)
    return ts.at[0].set(t_start).at[-1].set(t_end)
