"""The published score_sde_pytorch key tables (``../shared/research/keymap_*.tsv``): one row per
parameter of the CIFAR-10 checkpoints, ``torch key, torch shape, flax path, transform``.

They are written from the published checkpoints, not from jaxsde's converter, so tests built on
them check the loaders against an independent source. Outside CI a missing table skips the test;
in CI (``CI`` set) it fails: the tables must be there.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

RESEARCH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "research")
if not os.path.isdir(RESEARCH):
    RESEARCH = "/work/shared/research"
KEYMAPS = {
    "ncsnpp_cifar10_ve": "keymap_ve_cifar10_ncsnpp_continuous.tsv",
    "ddpmpp_cifar10_vp": "keymap_vp_cifar10_ddpmpp_continuous.tsv",
}


def read_keymap(name: str) -> list[tuple[str, tuple[int, ...], str, str]]:
    """Rows ``(torch_key, torch_shape, flax_path, transform)`` of config ``name``'s table, in the
    checkpoint's ``state_dict`` order (``module.sigmas``, a buffer, left out)."""
    path = os.path.join(RESEARCH, KEYMAPS[name])
    if not os.path.exists(path):
        message = f"{path} not available (the key tables live in ../shared/research beside the repository)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    assert rows[0][0] == "sigmas"
    return [(r[0], tuple(int(s) for s in r[1].strip("(),").split(",") if s.strip()), r[3], r[4]) for r in rows[1:]]


def to_flax(array: np.ndarray, transform: str) -> np.ndarray:
    """Apply a table's transform (``identity`` or ``transpose(p0,p1,...)``) to a torch-layout array."""
    if transform == "identity":
        return array
    assert transform.startswith("transpose(") and transform.endswith(")"), transform
    return np.transpose(array, [int(i) for i in transform[len("transpose("):-1].split(",")])


def flat_paths(tree, prefix: str = "params/") -> dict:
    """A nested parameter dict as ``{"params/A/b": leaf}``, the tables' spelling of a Flax path."""
    out = {}
    for k, v in tree.items():
        out.update(flat_paths(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out
