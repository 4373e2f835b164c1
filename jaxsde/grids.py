"""Time grids for fixed-step solvers.

A grid is a strictly decreasing array of ``num_steps + 1`` times from ``t_start`` (usually
``sde.T``) to ``t_end`` (usually ``sde.eps``); its end points are exact, so the last step
lands on ``t_end``. Kinds:

* ``"uniform"``: uniform in ``t`` (score_sde's default);
* ``"logsnr"``: uniform in log-SNR ``lambda(t)`` (DPM-Solver's choice);
* ``"edm"``: the EDM/Karras grid, uniform in ``s^(1/rho)`` with ``s = sigma/alpha``,
  ``rho = 7``;
* a sequence of times: used as given (validated: strictly decreasing, inside ``(0, T]``).

The log-SNR-spaced kinds (``"logsnr"``, ``"edm"``) cannot start where ``alpha = 0`` (``t = 1``
on :class:`~jaxsde.FlowSDE`: ``lambda = -inf``, ``sigma/alpha = inf``). From such a start
:func:`time_grid` gives :func:`alpha_zero_grid`: ``t_start`` first, then the kind's spacing from
a finite top, ``sigma/alpha = sigma_max`` (default :data:`ALPHA_ZERO_SIGMA_MAX`), down to
``t_end``, with the same number of steps (the first step jumps from pure noise to the top).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from .sde import SDE
from .settings import is_traced

GRID_KINDS = ("uniform", "logsnr", "edm")

ALPHA_ZERO_SIGMA_MAX = 10.0
"""The default top of a log-SNR-spaced grid after a start where ``alpha = 0``
(:func:`alpha_zero_grid`): ``sigma/alpha = 10`` (``t = 10/11`` on :class:`~jaxsde.FlowSDE`).

k-diffusion's schedules start at a finite ``sigma_max`` (80 for EDM's image models); from ``t = 1``
the jump to the top is one exact step, so the top only decides where the other steps go. For data
of unit scale or less, ``sigma/alpha = 10`` is noise to within 1% of the variance: the remaining
steps cover the whole range where structure forms. With very few steps on data of small scale a
lower top can do better (``sigma_max`` of :func:`alpha_zero_grid`)."""

__all__ = ["ALPHA_ZERO_SIGMA_MAX", "GRID_KINDS", "alpha_zero_grid", "time_grid", "validate_grid"]


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

    From a ``t_start`` where ``alpha = 0`` (``t = 1`` on :class:`~jaxsde.FlowSDE`) the
    log-SNR-spaced kinds are :func:`alpha_zero_grid` (``t_start``, then the kind's spacing from
    ``sigma/alpha =`` :data:`ALPHA_ZERO_SIGMA_MAX` down to ``t_end``; same number of steps).

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
    else:
        lam0 = sde.log_snr(jnp.asarray(t_start, dtype))
        ts = _log_snr_spaced(sde, spec, lam0, sde.log_snr(jnp.asarray(t_end, dtype)), frac, rho)
    ts = ts.astype(dtype)
    ts = ts.at[0].set(t_start).at[-1].set(t_end)
    if spec != "uniform" and sde.alpha_vanishes_at_T:  # static: SDEs whose alpha never vanishes keep the grid
        top = _alpha_zero_times(sde, num_steps, spec, t_start, t_end, ALPHA_ZERO_SIGMA_MAX, rho, dtype)
        ts = jnp.where(jnp.isneginf(lam0), top, ts)
    return ts


def _log_snr_spaced(sde: SDE, kind: str, lam0, lam1, frac, rho: float):
    """Times at ``frac`` (0 .. 1) of the way from log-SNR ``lam0`` to ``lam1``: uniform in the
    log-SNR (``"logsnr"``) or in ``(sigma/alpha)^(1/rho)`` (``"edm"``)."""
    if kind == "logsnr":
        return sde.inverse_log_snr(lam0 + frac * (lam1 - lam0))
    s0, s1 = jnp.exp(-0.5 * lam0), jnp.exp(-0.5 * lam1)
    s = (s0 ** (1 / rho) + frac * (s1 ** (1 / rho) - s0 ** (1 / rho))) ** rho
    return sde.inverse_log_snr(-2.0 * jnp.log(s))


def alpha_zero_grid(
    sde: SDE,
    num_steps: int,
    kind: str = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    sigma_max: float = ALPHA_ZERO_SIGMA_MAX,
    rho: float = 7.0,
    dtype=jnp.float32,
):
    """A log-SNR-spaced grid from a start where ``alpha = 0`` (``t = 1`` on :class:`~jaxsde.FlowSDE`):
    ``t_start``, then ``num_steps`` times spaced by ``kind`` from ``sigma/alpha = sigma_max`` down to
    ``t_end``; ``num_steps + 1`` times in all.

    The log-SNR is ``-inf`` at ``t_start``, so neither kind can be spaced from there; the first
    step instead goes from pure noise to the top ``t_top`` (``sigma(t_top)/alpha(t_top) =
    sigma_max``; ``t_top = sigma_max / (1 + sigma_max)`` on a flow) and the other
    ``num_steps - 1`` are the kind's spacing from ``t_top`` to ``t_end``: k-diffusion's
    exponential (``"logsnr"``) or Karras (``"edm"``, exponent ``rho``) sigmas from ``sigma_max``,
    preceded by ``t = 1``. :func:`time_grid` returns this grid for these kinds from such a start
    (same number of steps, so a fixed-grid solver's NFE is unchanged); every solver steps out of
    ``alpha = 0`` exactly given the model's data prediction (a :class:`jaxsde.Prediction`).
    Where ``t_end`` lies at or above the top (``sigma/alpha >= sigma_max``) the grid is uniform
    in ``t`` instead. Traceable in ``t_start`` / ``t_end``.

    Args:
        sde: the SDE (``alpha(t_start) = 0``).
        num_steps: the number of steps (>= 1).
        kind: ``"logsnr"`` (uniform in log-SNR: exponential sigmas) or ``"edm"`` (Karras).
        t_start: the first time, where ``alpha = 0`` (default ``sde.T``).
        t_end: the last time (default ``sde.eps``).
        sigma_max: the top, in ``sigma/alpha`` units (> 0; default :data:`ALPHA_ZERO_SIGMA_MAX`,
            the best top in the flow benchmarks).
        rho: the Karras grid's exponent.
        dtype: the times' dtype.

    Returns:
        The times, shape ``(num_steps + 1,)``, decreasing, end points exact.

    Raises:
        ValueError: ``num_steps < 1``, a ``kind`` other than the two, ``sigma_max`` not a finite
            positive number, or a static ``t_start`` where ``alpha`` does not vanish.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if kind not in ("logsnr", "edm"):
        raise ValueError(f"alpha_zero_grid spaces 'logsnr' or 'edm' grids, got {kind!r}")
    if isinstance(sigma_max, bool) or not (isinstance(sigma_max, int | float) and 0 < sigma_max < math.inf):
        raise ValueError(f"sigma_max must be a finite number > 0, got {sigma_max!r}")
    t_start = sde.T if t_start is None else t_start
    t_end = sde.eps if t_end is None else t_end
    if not is_traced(t_start) and isinstance(t_start, int | float) and not sde.alpha_vanishes_at(t_start):
        raise ValueError(f"alpha_zero_grid starts where alpha = 0; alpha({t_start}) != 0 on {type(sde).__name__} "
                         f"(use time_grid)")
    return _alpha_zero_times(sde, num_steps, kind, t_start, t_end, sigma_max, rho, dtype)


def _alpha_zero_times(sde: SDE, num_steps: int, kind: str, t_start, t_end, sigma_max: float, rho: float, dtype):
    """:func:`alpha_zero_grid` without its checks."""
    t_start, t_end = jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype)
    lam_top = jnp.asarray(-2.0 * math.log(sigma_max), dtype)
    lam_end = sde.log_snr(t_end)
    frac = jnp.linspace(0.0, 1.0, num_steps, dtype=dtype)
    below = _log_snr_spaced(sde, kind, lam_top, lam_end, frac, rho).astype(dtype)
    ts = jnp.concatenate([t_start[None], below]).at[-1].set(t_end)
    uniform = t_start + jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype) * (t_end - t_start)
    return jnp.where(lam_end > lam_top, ts, uniform.at[0].set(t_start).at[-1].set(t_end))
