"""``jit`` for the test modules that compile many small solver programs: XLA's CPU loop emitters.

XLA's CPU fusion emitters (its default since 2025) compile a fusion about twice as slowly as the loop
emitters they replace: the 19 registry solvers' guided sampling programs (``tests/test_guidance.py``) take
19.1 s with the default and 10.4 s with the loop emitters, one process on this 2-core machine. The two round
some operations differently, so a module asserts float-rounding agreement only between programs compiled
the same way: the modules that compare their programs with the library's own jitted ones at rounding level
(``test_generate``, ``test_driver``, ``test_traced_settings``, ...) keep the default, which is what users get.
"""

from __future__ import annotations

import functools

import jax


@functools.cache
def loop_emitters() -> dict:
    """The compile option that selects the loop emitters, or ``{}`` where this XLA does not know it."""
    options = {"xla_cpu_use_fusion_emitters": False}
    try:
        jax.jit(lambda x: x + 1.0, compiler_options=options).lower(1.0).compile()
    except Exception:  # an XLA without the option refuses it: compile with its default
        return {}
    return options


def jit(fn=None, **kwargs):
    """``jax.jit(fn, **kwargs)`` compiled with :func:`loop_emitters` (usable as a decorator, with or
    without keyword arguments)."""
    if fn is None:
        return functools.partial(jit, **kwargs)
    return jax.jit(fn, compiler_options=loop_emitters(), **kwargs)
