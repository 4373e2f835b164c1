"""Configuration objects (solvers, controllers) whose float settings are pytree leaves.

A *settings class* is a frozen dataclass registered as a JAX pytree in which the fields named in
its ``traced_settings`` are children (leaves: numbers, arrays, ``None``, or nested settings objects
such as a solver's controller) and every other attribute is static structure (orders, numbers of
steps, methods, strings, callables). So:

* a solver passed as an argument of a ``jax.jit``-compiled function is one compiled program for
  every value of its float settings: a sweep of ``rtol`` or ``eta`` compiles once;
* ``jax.grad`` can differentiate a sample statistic with respect to a float setting;
* a solver closed over by the jitted function keeps Python floats (constants), as before.

Attributes a class derives from its settings at construction (``__post_init__`` setting them with
``object.__setattr__``, e.g. whether ``eta > 0`` draws noise) are static structure too: they are
fixed by the values the object was built with, so ``DDIM(eta=0.0)`` (deterministic, no noise) and
``DDIM(eta=0.5)`` are two programs while every ``eta > 0`` shares one. A setting that is a tracer
at construction (built inside ``jit``) counts as nonzero there.

Validation: construction checks concrete values and raises ``ValueError`` naming the setting;
traced values cannot be checked on the host, so :func:`settings_valid` gives the in-program check
(every traced setting finite and within its :class:`Bound`) that the driver turns into the result
code ``jaxsde.results.INVALID_SETTING``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["Bound", "POSITIVE", "NONNEGATIVE", "UNIT", "FINITE", "GRID_TIMES", "settings_class", "is_traced",
           "check_static", "nonzero",
           "settings_valid", "Settings"]


class Bound(NamedTuple):
    """The values a traced setting may take: ``low < v`` (``low <= v`` when not ``low_open``) and
    ``v <= high`` (``v < high`` when ``high_open``); finite unless ``infinite`` (then only NaN is
    refused). ``names``: a string value is a kind name that its owner validates (a grid kind), not
    a number. A callable value (a schedule, e.g. SA-Solver's ``tau(t)``) is static structure that
    its owner validates."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    infinite: bool = False
    names: bool = False

    def holds(self, value: Array, xp: Any = jnp) -> Array:
        """Whether ``value`` (an array, possibly traced) is within the bound (elementwise all);
        ``xp=numpy`` checks a concrete value on the host (also while a program is being traced)."""
        v = xp.asarray(value)
        ok = ~xp.isnan(v) if self.infinite else xp.isfinite(v)
        ok &= (v > self.low) if self.low_open else (v >= self.low)
        ok &= (v < self.high) if self.high_open else (v <= self.high)
        return xp.all(ok)

    def describe(self) -> str:
        """The bound in words, as error messages give it (``"a finite number > 0"``)."""
        kind = "a number (not NaN)" if self.infinite else "a finite number"
        if self.low == -math.inf and self.high == math.inf:
            return kind
        if self.high == math.inf:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        if self.low == -math.inf:
            return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        return (f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")

    def check(self, owner: str, name: str, value: Any) -> None:
        """Raise ``ValueError`` naming ``owner.name`` unless the concrete ``value`` (a number, an
        array or a tuple or list of numbers; ``None``, callables and tracers pass: see
        :func:`settings_valid`) is
        within the bound."""
        values = value if isinstance(value, tuple | list) else (value,)
        for v in values:
            if v is None or is_traced(v) or callable(v) or (self.names and isinstance(v, str)):
                continue
            number = isinstance(v, int | float | np.ndarray | np.generic | jax.Array) and not isinstance(v, bool)
            ok = number and np.issubdtype(np.asarray(v).dtype, np.number) and bool(self.holds(np.asarray(v), np))
            if not ok:
                what = name if v is value and np.ndim(v) == 0 else f"every entry of {name}"
                raise ValueError(f"{owner}: {what} must be {self.describe()}, got {value!r}")


POSITIVE = Bound(0.0, low_open=True)
NONNEGATIVE = Bound(0.0)
UNIT = Bound(0.0, 1.0, low_open=True)  # (0, 1]
FINITE = Bound()
GRID_TIMES = Bound(names=True)  # a grid: a kind name (validated by its owner) or finite times


def is_traced(value: Any) -> bool:
    """True for a JAX tracer (a value known only inside a transformation)."""
    return isinstance(value, jax.core.Tracer)


def check_static(owner: str, name: str, value: Any) -> None:
    """Refuse a traced value for a setting that is structure (an order, a number of steps): it
    shapes the compiled program, so it must be a Python value."""
    if is_traced(value):
        raise TypeError(f"{owner}: {name} is structure (it shapes the compiled program) and must be a Python "
                        f"value, got a traced one; pass it as a constant (or mark it static in jax.jit)")


def nonzero(value: Any) -> bool:
    """Static truth of a setting: ``value != 0`` for a concrete number, ``True`` for a tracer."""
    if value is None:
        return False
    if is_traced(value):
        return True
    return bool(np.any(np.asarray(value) != 0))


class Settings:
    """Base of settings classes: ``traced_settings`` maps each traced field to its :class:`Bound`
    (``None``: a leaf that is not a setting to validate, e.g. an array of data, or a nested
    settings object, which validates itself)."""

    traced_settings: ClassVar[dict[str, Bound | None]] = {}

    def check_contract(self) -> None:
        """Raise ``TypeError`` if the class leaves part of its contract unimplemented (called at
        construction, before :meth:`derive`)."""

    def derive(self) -> dict[str, Any]:
        """Static attributes derived from the settings at construction (after ``__post_init__``),
        e.g. whether a solver draws noise; they are part of the pytree's static structure."""
        return {}


def _is_child(value: Any) -> bool:
    if value is None or isinstance(value, Settings):
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float | np.ndarray | np.generic | jax.Array):
        return True
    return isinstance(value, tuple) and all(_is_child(v) and not isinstance(v, tuple) for v in value)


def _flatten(obj: Settings):
    children_names = tuple(name for name in type(obj).traced_settings if _is_child(obj.__dict__[name]))
    children = tuple(obj.__dict__[name] for name in children_names)
    static = tuple(sorted(((k, v) for k, v in obj.__dict__.items() if k not in children_names),
                          key=lambda kv: kv[0]))
    return children, (children_names, static)


def _unflatten(cls, aux, children):
    children_names, static = aux
    obj = object.__new__(cls)
    obj.__dict__.update(static)
    obj.__dict__.update(zip(children_names, children, strict=True))
    return obj


def settings_class(cls):
    """Decorator: frozen dataclass registered as a pytree whose ``traced_settings`` are children
    (see the module docstring). Apply it to every concrete subclass; its ``traced_settings`` add to
    those of its bases."""
    checks = getattr(cls, "__post_init__", None)  # the class's own validation (or its base's)

    def post_init(self):
        self.check_contract()
        for name, bound in type(self).traced_settings.items():  # concrete values (tracers: settings_valid)
            if bound is not None:
                bound.check(type(self).__name__, name, self.__dict__[name])
        if checks is not None:
            checks(self)
        for name, value in self.derive().items():
            object.__setattr__(self, name, value)

    cls.__post_init__ = post_init
    cls = dataclasses.dataclass(frozen=True)(cls)
    merged: dict[str, Bound | None] = {}  # a subclass adds to its bases' traced settings
    for base in reversed(cls.__mro__):
        merged.update(vars(base).get("traced_settings", {}))
    cls.traced_settings = merged
    unknown = sorted(set(cls.traced_settings) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__}.traced_settings names {unknown}, which are not fields")
    jax.tree_util.register_pytree_node(cls, _flatten, lambda aux, children: _unflatten(cls, aux, children))
    return cls


def settings_valid(obj: Any) -> Array | None:
    """In-program validity of ``obj``'s traced settings (nested settings objects included): a bool
    array, True when every setting that is a tracer is finite and within its bound; ``None`` when no
    setting is traced (concrete ones were checked at construction)."""
    if not isinstance(obj, Settings):
        return None
    checks = []
    for name, bound in type(obj).traced_settings.items():
        value = obj.__dict__.get(name)
        if isinstance(value, Settings):
            nested = settings_valid(value)
            if nested is not None:
                checks.append(nested)
        elif bound is None:
            continue
        elif isinstance(value, tuple):
            checks.extend(bound.holds(v) for v in value if is_traced(v))
        elif is_traced(value):
            checks.append(bound.holds(value))
    if not checks:
        return None
    return jnp.all(jnp.stack(checks))
