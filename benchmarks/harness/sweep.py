"""What the tolerance-sweep suites share: option parsing, the cheapest matching row, per-family NFE curves."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def floats(spec: str | None) -> tuple[float, ...] | None:
    """``"0.1, 0.01"`` -> ``(0.1, 0.01)``; None or "" -> None."""
    return tuple(float(v) for v in spec.split(",")) if spec else None


def stem(base: str, name: str) -> str:
    """A results stem: ``base``, with ``_name`` appended when ``name`` is not empty."""
    return f"{base}_{name}" if name else base


def cheapest(rows: Iterable[dict], ok: Callable[[dict], bool] = lambda r: True, key: str = "mean_nfe") -> dict | None:
    """The row with the smallest ``key`` among those with ``ok(row)`` (the first of equals); None if there is none."""
    return min((r for r in rows if ok(r)), key=lambda r: r[key], default=None)


def family_axes(ax, rows: list[dict], *, xlabel: str, ylabel: str, title: str, hlines=(), y: str = "quality",
                **style) -> None:
    """One log-log line of ``y`` against ``mean_nfe`` per ``family`` of ``rows`` (first-seen order; dashed where the
    family's ``lib`` is ``"k-diffusion"``), marker ``o`` and ``style``; ``hlines``: ``(y, axhline keywords)``
    drawn after the curves; legend at font size 6."""
    for fam in dict.fromkeys(r["family"] for r in rows):
        rs = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["mean_nfe"])
        ax.plot([r["mean_nfe"] for r in rs], [r[y] for r in rs], "--" if rs[0]["lib"] == "k-diffusion" else "-",
                marker="o", label=fam, **style)
    for level, kw in hlines:
        ax.axhline(level, **kw)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=6)
