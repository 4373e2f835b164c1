"""What the fixed-budget frontier suites share: which rows count at a budget, the best of them and the verdict between
two libraries' best rows."""

from __future__ import annotations

import numpy as np


def usable(r: dict, field: str = "quality") -> bool:
    """A row that counts at its budget: no failed sample, mean NFE within ``r["budget"]``, a finite ``field``."""
    return r["failed"] == 0 and r["mean_nfe"] <= r["budget"] and bool(np.isfinite(r[field]))


def best(rows: list[dict], field: str = "quality") -> dict | None:
    """The :func:`usable` row with the lowest ``field`` (the first of equals), or None."""
    return min((r for r in rows if usable(r, field)), key=lambda r: r[field], default=None)


def verdict(j: dict, p: dict, field: str = "quality", sd: str = "sd", words=("win", "loss", "tie")) -> dict:
    """jaxsde's best row ``j`` against a peer's ``p`` on ``field`` (lower is better): ``diff = p - j``, the combined
    sd (``hypot`` of the rows' ``sd``) and ``words[0]`` / ``[1]`` / ``[2]`` where ``diff`` is above 2 combined sd,
    below -2, or within."""
    diff = p[field] - j[field]
    s = float(np.hypot(j[sd], p[sd]))
    return dict(diff=diff, combined_sd=s, verdict=words[0] if diff > 2 * s else words[1] if diff < -2 * s else words[2])

