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
    saved: list[str] = dataclasses.field(default_factory=list)  # the stems written, in order

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
        self.saved += [] if stem in self.saved else [stem]
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


def columns(rows: list[dict], spec: dict, missing: str | None = None) -> list[str]:
    """A Markdown table's lines, one row per dict in ``rows``: ``spec`` maps each column's header to a
    ``str.format`` template over the row's keys (``"{fd:.2f} +- {fd_std:.2f}"``) or to a function of the row;
    a cell whose key a row lacks is ``missing`` (None: the ``KeyError`` propagates)."""

    def cell(f, r):
        try:
            return f(r) if callable(f) else f.format(**r)
        except KeyError:
            if missing is None:
                raise
            return missing

    return table(list(spec), [[cell(f, r) for f in spec.values()] for r in rows])


def yes(flag) -> str:
    return "yes" if flag else "no"


def pivot(header: list[str], rows: list[dict], name: str, col: str, cols: list, cell) -> list[str]:
    """A Markdown table's lines: one row per distinct ``r[name]`` (in first-seen order), one column per value of
    ``r[col]`` in ``cols``: ``cell(r)`` of the first such row, "—" where there is none."""
    grid: dict = {}
    for r in rows:
        grid.setdefault(r[name], {}).setdefault(r[col], r)
    return table([str(h) for h in header],
                 [[k, *(cell(v[c]) if c in v else "—" for c in cols)] for k, v in grid.items()])


def curves(path: str, series: dict, *, xlabel: str, ylabel: str, title: str = "", hline=None, logx: bool = True,
           logy: bool = False, size=(6, 4), xticks=None, legend: int = 7) -> None:
    """A line plot saved to ``path``: ``series`` maps a label to ``(points, style)``, ``points`` ``[(x, y)]``
    (sorted by x here, non-finite y dropped; a series left empty is not drawn), ``style`` matplotlib keywords;
    ``hline = (y, label)``: a dotted gray line (left out where y is not finite)."""
    import math

    if (plt := pyplot()) is None:
        return
    fig, ax = plt.subplots(figsize=size)
    for label, (points, style) in series.items():
        points = sorted(p for p in points if math.isfinite(p[1]))
        if points:
            ax.plot(*zip(*points, strict=True), label=label, **style)
    if hline is not None and math.isfinite(hline[0]):
        ax.axhline(hline[0], ls=":", c="gray", label=hline[1])
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    if xticks is not None:
        ax.set_xticks(xticks, [str(x) for x in xticks])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=legend, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def progress(row: dict, *keys: str) -> None:
    """Print a measured row's ``keys`` on one line (a run's progress; floats to 4 significant digits)."""
    print("  ".join(f"{k} {row[k]:.4g}" if isinstance(row[k], float) else f"{k} {row[k]}" for k in keys if k in row),
          flush=True)
