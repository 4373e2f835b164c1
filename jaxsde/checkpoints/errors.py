"""The one error type of the checkpoint loaders, and the tree check they share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded: the message names the file, and where it
    applies the parameter path and the expected vs found shape."""


def flatten_tree(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            flat.update(flatten_tree(v, path))
        else:
            flat[path] = v
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """``{'a/b': v}`` -> ``{'a': {'b': v}}`` (the inverse of the ``/``-joined flat form)."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


def check_tree(path: str, expected: Mapping, found: Mapping, dtype=np.float32) -> dict:
    """Return ``found`` as a nested dict of NumPy arrays shaped exactly like ``expected``
    (a tree of arrays or ``jax.ShapeDtypeStruct``), or raise :class:`CheckpointError` listing
    missing keys, unexpected keys and shape mismatches (each with its parameter path)."""
    want, got = flatten_tree(expected), flatten_tree(found)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    problems = []
    if missing:
        problems.append(f"missing parameters ({len(missing)}): " + ", ".join(missing[:8])
                        + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected parameters ({len(unexpected)}): " + ", ".join(unexpected[:8])
                        + (" ..." if len(unexpected) > 8 else ""))
    out, mismatches = {}, []
    for k in sorted(set(want) & set(got)):
        arr = np.asarray(got[k])
        if tuple(arr.shape) != tuple(want[k].shape):
            mismatches.append(f"{k}: expected shape {tuple(want[k].shape)}, found {tuple(arr.shape)}")
        elif not np.issubdtype(arr.dtype, np.floating):
            mismatches.append(f"{k}: expected a floating-point array, found dtype {arr.dtype}")
        else:
            out[k] = arr.astype(dtype)
    problems += mismatches[:8]
    if len(mismatches) > 8:
        problems.append(f"... and {len(mismatches) - 8} more mismatched parameters")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return unflatten(out)
