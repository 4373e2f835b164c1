"""Per-sample result codes, threaded through the compiled solve loop.

Inside ``jit`` a failure never raises: it becomes an int32 code in ``Solution.result``.
Call :func:`raise_if_failed` on the host to turn codes into an exception.
"""

from __future__ import annotations

import numpy as np

SUCCESS = 0
MAX_STEPS_REACHED = 1
NONFINITE = 2
NOISE_EXHAUSTED = 3
INVALID_SETTING = 4

MESSAGES = {
    SUCCESS: "success",
    MAX_STEPS_REACHED: (
        "the solver ran out of attempts before reaching t_end; increase `max_steps`, "
        "loosen the tolerances, or use more grid steps"
    ),
    NONFINITE: (
        "a non-finite value (NaN/inf) appeared in the state or the score (with check_finite=True, "
        "the default, the returned x is the last finite state, at time sol.t; with "
        "check_finite=False it is the non-finite final state). Check the score network, the time "
        "conditioning and the data range of x_T"
    ),
    NOISE_EXHAUSTED: (
        "the GivenNoise array ran out: the adaptive solve needed more attempts than z has entries; "
        "x is the state at sol.t after the last attempt that had noise. Give z more entries "
        "(max_steps is a safe count) or use FreshNoise"
    ),
    INVALID_SETTING: (
        "a traced solver or controller setting (a value passed into the compiled program, e.g. rtol or "
        "eta of a solver given as a jit argument) is non-finite or out of its range; nothing was "
        "integrated: x is x_T at t_start. Pass settings in range (the solver's constructor names them)"
    ),
}

__all__ = ["SUCCESS", "MAX_STEPS_REACHED", "NONFINITE", "NOISE_EXHAUSTED", "INVALID_SETTING", "MESSAGES", "describe",
           "raise_if_failed"]


def describe(code: int) -> str:
    """Human-readable meaning of a result code.

    Args:
        code: a result code (an int, or a scalar array).

    Returns:
        The code's meaning, one sentence."""
    return MESSAGES.get(int(code), f"unknown result code {int(code)}")


def raise_if_failed(sol) -> None:
    """Host-side check: raise ``RuntimeError`` naming the failed samples and why.

    Args:
        sol: a :class:`~jaxsde.Solution` (of one sample or a batch), or anything with a
            ``result`` field of codes.

    Raises:
        RuntimeError: some sample's code is not ``SUCCESS``."""
    result = np.asarray(sol.result).reshape(-1)
    bad = np.flatnonzero(result != SUCCESS)
    if bad.size:
        codes = sorted(set(result[bad].tolist()))
        reasons = "; ".join(f"code {c}: {describe(c)}" for c in codes)
        raise RuntimeError(f"{bad.size} of {result.size} samples failed (first: {bad[:8].tolist()}): {reasons}")
