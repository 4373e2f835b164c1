"""Offline image data: scikit-learn's 8x8 digits.

1797 grey-scale images of handwritten digits 0-9 shipped inside scikit-learn (BSD-3;
the original UCI "optdigits" data is CC BY 4.0). Pixel values 0..16 are scaled to the
requested data range. The split is fixed (a seeded permutation): 80% train, 20% held out.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 20210531


class Digits(NamedTuple):
    images: np.ndarray  # (n, 8, 8, 1) float32 in data_range
    labels: np.ndarray  # (n,) int32 in 0..9


def load_digits(split: str = "train", data_range: tuple[float, float] = (-1.0, 1.0)) -> Digits:
    """The ``"train"``, ``"test"`` (held out) or ``"all"`` split, images scaled to ``data_range``."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    images = raw.images.astype(np.float32) / 16.0
    lo, hi = data_range
    images = (lo + (hi - lo) * images)[..., None]
    labels = raw.target.astype(np.int32)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = int(round(HELD_OUT_FRACTION * len(labels)))
    idx = {"test": order[:n_test], "train": order[n_test:], "all": np.arange(len(labels))}[split]
    return Digits(images[idx], labels[idx])


def to_unit_range(x: np.ndarray, data_range: tuple[float, float]) -> np.ndarray:
    """Map samples from ``data_range`` to [0, 1] (clipped), e.g. for display or metrics."""
    lo, hi = data_range
    return np.clip((np.asarray(x, np.float32) - lo) / (hi - lo), 0.0, 1.0)
