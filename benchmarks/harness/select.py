"""Exact-name selection of rows: ``--samplers "DDIM 5,UniPC 10"`` picks exactly those names, never substrings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def parse_names(spec: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; None or "" -> None (no selection)."""
    if not spec:
        return None
    return [name.strip() for name in spec.split(",") if name.strip()]


def select(rows: Iterable[tuple[str, T]], names: list[str] | None) -> list[tuple[str, T]]:
    """The ``(name, item)`` rows whose name is in ``names``, in ``names``' order (all rows if None).

    Raises ``ValueError`` naming the unknown names and the known ones: a name that matches nothing is an error,
    not an empty run."""
    rows = list(rows)
    if names is None:
        return rows
    known = dict(rows)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown names {unknown}; known: {list(known)}")
    return [(n, known[n]) for n in names]
