"""The one results writer: ``.json`` with the exact reproducing command and the machine, ``.md`` / ``.png`` from it.

A suite calls ``ctx.save(stem, data)``: ``data`` gets ``suite``, ``command`` and ``machine`` (unless the suite
set them), is written atomically to ``<out>/<stem>.json``, and the suite's ``render(data)`` / ``plot(data, path)``
write ``<stem>.md`` / ``<stem>.png`` from what was stored, so ``python -m benchmarks report`` rebuilds them from
the ``.json`` alone. A suite whose report is not a function of its ``.json`` passes ``md=`` text instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from types import ModuleType
from typing import Any

from jaxsde.checkpoints.io import atomic_write

from .machine import machine_info

RESULTS = os.path.join("benchmarks", "results")


def command_line(suite: str, argv: list[str]) -> str:
    """The exact command that reproduces a run of ``suite`` with ``argv``."""
    return shlex.join(["python", "-m", "benchmarks", "run", suite, *argv])


@dataclasses.dataclass
class Context:
    """What a suite's ``run(args, ctx)`` writes through: its module, exact command and output folder."""

    suite: ModuleType
    name: str
    argv: list[str]
    out: str = RESULTS

    @property
    def command(self) -> str:
        return command_line(self.name, self.argv)

    def error(self, message: str) -> None:
        """Refuse the options given (as argparse's ``parser.error``)."""
        raise SystemExit(f"{self.command}: error: {message}")

    def path(self, stem: str, ext: str) -> str:
        return os.path.join(self.out, f"{stem}.{ext}")

    def save(self, stem: str, data: dict, md: str | None = None) -> dict:
        """Store ``data`` as ``<stem>.json`` (with ``suite``, ``command``, ``machine``), then its ``.md``
        (``md`` or the suite's ``render(data)``) and ``.png`` (the suite's ``plot``, if any). Returns ``data``."""
        data.setdefault("suite", self.name)
        data.setdefault("command", self.command)
        data.setdefault("machine", machine_info())
        os.makedirs(self.out, exist_ok=True)
        atomic_write(self.path(stem, "json"), (json.dumps(data, indent=1, default=_plain) + "\n").encode())
        render(self.suite, data, os.path.join(self.out, stem), md=md)
        return data


def render(suite: ModuleType, data: dict, base: str, md: str | None = None) -> None:
    """Write ``base.md`` (``md`` or ``suite.render(data)``) and ``base.png`` (``suite.plot``; optional: a
    missing matplotlib skips it)."""
    text = md if md is not None else suite.render(data) if hasattr(suite, "render") else None
    if text is not None:
        atomic_write(base + ".md", (text.rstrip("\n") + "\n").encode())
    if hasattr(suite, "plot"):
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError as err:
            print(f"plot skipped: {err}")
            return
        suite.plot(data, base + ".png")


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (saying so) where matplotlib cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as err:  # noqa: BLE001 - plots are optional
        print(f"plot skipped: {err}")
        return None
    return plt
