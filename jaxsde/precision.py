"""Mixed precision: the score network in bfloat16 or float16, the solver state in float32.

The solver state (``x``, times, step sizes, the SDE's coefficients) must be float32 or float64:
rounded to 16 bits a time grid repeats times and mis-sizes steps (a uniform 1000-step grid on
``[1e-3, 1]`` keeps 506 distinct times in bfloat16; in float16 its steps are off by up to 47%),
so :func:`jaxsde.solve` refuses a 16-bit ``x_T``. What may run in
low precision is the network. Two ways:

* :func:`mixed_precision` wraps any one-sample ``score(x, t)``: it calls ``score`` on ``x`` (and,
  by default, ``t``) cast to ``compute_dtype`` and casts the result back to ``x``'s dtype. The
  network's layers compute in low precision only if its parameters are low precision too
  (:func:`cast_params`) or the module is built with ``dtype=compute_dtype``.
* :func:`jaxsde.models.score.score_fn` with ``compute_dtype=`` (and so
  ``Checkpoint.score_fn(params, compute_dtype=...)`` of the embedded models) runs only the
  network in low precision and keeps the preconditioning ``c_in x`` and the conversion of the
  output to a score (``-eps / sigma``, ...) in the state's precision.

Either way the driver sees a score in the state's dtype; a score that returns a lower-precision
array without a wrapper is cast by the driver too. :func:`matmul_dtypes` checks which precision a
network's convolutions and matmuls really run in.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .sde import ScoreFn

__all__ = ["mixed_precision", "cast_params", "matmul_dtypes", "LOW_PRECISION"]

LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def _check_compute_dtype(compute_dtype: Any) -> jnp.dtype:
    dtype = jnp.dtype(compute_dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"compute_dtype must be a floating dtype (bfloat16, float16, float32), got {dtype}")
    return dtype


def mixed_precision(score: ScoreFn, compute_dtype: Any = jnp.bfloat16, *, cast_time: bool = True) -> ScoreFn:
    """``score`` evaluated in ``compute_dtype``, its output returned in ``x``'s dtype.

    Args:
      score: a one-sample ``score(x, t)``.
      compute_dtype: the dtype ``x`` (and ``t`` if ``cast_time``) are cast to before the call.
      cast_time: also cast ``t`` (default); ``False`` passes ``t`` in the state's precision, for
        networks whose time embedding should see the exact time.
    """
    if not callable(score):
        raise TypeError("score must be a callable score(x, t)")
    dtype = _check_compute_dtype(compute_dtype)

    def low_precision_score(x: jax.Array, t: jax.Array) -> jax.Array:
        t_in = jnp.asarray(t).astype(dtype) if cast_time else t
        return score(x.astype(dtype), t_in).astype(x.dtype)

    return low_precision_score


def cast_params(params: Any, compute_dtype: Any = jnp.bfloat16) -> Any:
    """Every floating leaf of a parameter pytree cast to ``compute_dtype`` (others unchanged).

    Args:
        params: a pytree of arrays (e.g. a Flax ``params`` dict).
        compute_dtype: the floating dtype to cast to.

    Returns:
        The same pytree, floating leaves cast."""
    dtype = _check_compute_dtype(compute_dtype)
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, params)


def matmul_dtypes(fn: Any, *args: Any) -> dict[tuple[str, str], int]:
    """How many convolutions and matmuls ``fn(*args)`` runs, by the dtypes of their operands.

    ``fn`` is traced (not run) with :func:`jax.make_jaxpr` on ``args`` (arrays, or anything
    ``make_jaxpr`` accepts); a jitted ``fn`` is traced the same way. Counted are the
    ``conv_general_dilated`` and ``dot_general`` equations of its jaxpr, including those in nested
    jaxprs (``jit``, ``scan``, ``cond``, ``while``, ``custom_jvp`` / ``custom_vjp`` bodies, ...): each
    equation once, however often a loop would run it. A network that really computes in bfloat16
    (:func:`cast_params` and a bfloat16 input) gives ``{("bfloat16", "bfloat16"): n}``; a float32
    operand that sneaked in (a float32 constant, time embedding, ...) shows up as a float32 key.

    Returns:
      a ``dict`` mapping ``(lhs dtype, rhs dtype)``, each the dtype's name (``str``, e.g.
      ``"bfloat16"``), to the number of such equations (``int``); keys in order of first
      occurrence, empty if ``fn`` has none.
    """
    counts: dict[tuple[str, str], int] = {}

    def walk(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                key = (str(eqn.invars[0].aval.dtype), str(eqn.invars[1].aval.dtype))
                counts[key] = counts.get(key, 0) + 1
            for p in eqn.params.values():
                for sub in p if isinstance(p, (list, tuple)) else (p,):
                    if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):  # a ClosedJaxpr
                        walk(sub.jaxpr)
                    elif hasattr(sub, "eqns"):  # a Jaxpr
                        walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return counts
