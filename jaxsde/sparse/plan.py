"""Tile planning (host side, numpy): edit masks -> active tiles per resolution level, padded to buckets.

:class:`TilePlan` is the pytree the engines read (see :mod:`jaxsde.sparse` for the semantics);
:func:`plan_tiles` is the input mode's per-level tiling; the per-layer (receptive-field-exact)
plans are built by :meth:`jaxsde.sparse.SparseUNet.plan` from :func:`jaxsde.sparse.propagate`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def bucket_size(n: int, total: int, per_octave: int = 1) -> int:
    """The padded tile count: the next power of two >= ``n`` (``per_octave=1``), at most ``total``.

    With ``per_octave = 2**j`` the buckets are ``2**e * (1 + i / per_octave)``, ``i < per_octave``
    (e.g. 4: 8, 10, 12, 14, 16, 20, ...): less padding, more distinct compiled programs.
    """
    if n < 1:
        raise ValueError(f"need at least one active tile, got {n}")
    if per_octave < 1 or per_octave & (per_octave - 1):
        raise ValueError(f"per_octave must be a power of two, got {per_octave}")
    n = int(n)
    e = max((n - 1).bit_length() - 1, 0)  # 2**e < n <= 2**(e+1) (n >= 2)
    step = max((1 << e) // per_octave, 1)
    return min(-(-n // step) * step, int(total))


def diff_mask(x_orig, x_edit, atol: float = 0.0) -> np.ndarray:
    """Pixels (H, W) where the two images differ by more than ``atol`` in any channel.

    Args:
        x_orig: the original image ``(H, W, C)``.
        x_edit: the edited image, same shape.
        atol: the largest difference that counts as equal.

    Returns:
        The ``(H, W)`` bool mask.
    """
    a, b = np.asarray(x_orig), np.asarray(x_edit)
    if a.shape != b.shape:
        raise ValueError(f"x_orig {a.shape} and x_edit {b.shape} must have the same shape")
    return np.any(np.abs(a - b) > atol, axis=-1)


class TilePlan:
    """Active tiles of an edit, per resolution level or per layer.

    Level ``r`` has spatial size ``(H, W) / 2**r``. Pytree: the leaves are ``origins[r]``
    (``(buckets[r], 2)`` int32 tile origins in pixels, padded by repeating the first active
    tile) and ``masks[r]`` (``(H_r, W_r)`` bool, the union of the active tiles), and, for a
    per-layer plan (``mode="exact"``, from :meth:`SparseUNet.plan`), ``layer_origins`` /
    ``layer_masks`` (one per layer, in the order of ``layers``) and ``roi`` (the level-0
    pixels whose output is computed; outside, the output is the cached original). The static
    part is ``(shape, blocks, buckets, dense, layers, mode)``, ``layers`` a tuple of
    ``(name, level, bucket)``, so jit recompiles only for a new combination of buckets.
    Host-side facts: ``counts`` (active tiles per level; union over layers for a per-layer
    plan), ``totals`` (tiles per level), ``fraction`` (active pixels / all pixels, per level),
    ``edited`` (fraction of level-0 pixels in the edit mask), ``layer_counts`` and ``work``
    (a per-layer plan's estimated convolution FLOPs as a fraction of dense, bucketed tiles).

    Attributes:
        shape: the level-0 ``(H, W)``.
        blocks: the tile size per level.
        buckets: the padded tile count per level (or per layer).
        dense: fall back to the dense network.
        origins: per level, the active tiles' origins.
        masks: per level, the union of the active tiles.
        counts: active tiles per level (host-side).
        totals: tiles per level (host-side).
        edited: the fraction of level-0 pixels in the edit mask (host-side).
        layers: a per-layer plan's ``(name, level, bucket)`` per layer.
        layer_origins: a per-layer plan's tile origins, per layer.
        layer_masks: a per-layer plan's masks, per layer.
        roi: the level-0 pixels whose output is computed (per-layer plan).
        mode: ``"input"`` (per level) or ``"exact"`` (per layer).
        layer_counts: active tiles per layer (host-side).
        work: estimated convolution FLOPs as a fraction of dense (host-side).
    """

    def __init__(self, shape, blocks, buckets, dense, origins, masks, counts=None, totals=None, edited=None, *,
                 layers=(), layer_origins=(), layer_masks=(), roi=None, mode="input", layer_counts=None, work=None):
        self.shape = tuple(shape)
        self.blocks = tuple(blocks)
        self.buckets = tuple(buckets)
        self.dense = bool(dense)
        self.origins = tuple(origins)
        self.masks = tuple(masks)
        self.counts = counts
        self.totals = totals
        self.edited = edited
        self.layers = tuple(layers)
        self.layer_origins = tuple(layer_origins)
        self.layer_masks = tuple(layer_masks)
        self.roi = roi
        self.mode = mode
        self.layer_counts = layer_counts
        self.work = work
        self._index = {name: i for i, (name, _, _) in enumerate(self.layers)}

    @property
    def fraction(self) -> tuple[float, ...]:
        return tuple(float(np.mean(np.asarray(m))) for m in self.masks)

    def tile_total(self, level: int) -> int:
        """Tiles at resolution ``level``."""
        b = self.blocks[level]
        return ((self.shape[0] >> level) // b) * ((self.shape[1] >> level) // b)

    def tiles(self, name: str, level: int):
        """``(origins, mask, bucket)`` of layer ``name`` (output at resolution ``level``)."""
        if self.layers:
            i = self._index[name]
            return self.layer_origins[i], self.layer_masks[i], self.layers[i][2]
        return self.origins[level], self.masks[level], self.buckets[level]

    def tree_flatten(self):
        return ((self.origins, self.masks, self.layer_origins, self.layer_masks, self.roi),
                (self.shape, self.blocks, self.buckets, self.dense, self.layers, self.mode))

    @classmethod
    def tree_unflatten(cls, aux, children):
        origins, masks, layer_origins, layer_masks, roi = children
        shape, blocks, buckets, dense, layers, mode = aux
        return cls(shape, blocks, buckets, dense, origins, masks, layers=layers, layer_origins=layer_origins,
                   layer_masks=layer_masks, roi=roi, mode=mode)

    def __repr__(self):
        extra = f", layers={len(self.layers)}, work={self.work:.3f}" if self.layers and self.work is not None else ""
        return (f"TilePlan(mode={self.mode!r}, shape={self.shape}, blocks={self.blocks}, counts={self.counts}, "
                f"buckets={self.buckets}, totals={self.totals}, dense={self.dense}{extra})")


jax.tree_util.register_pytree_node(TilePlan, TilePlan.tree_flatten, TilePlan.tree_unflatten)


def check_tile_mask(mask, levels, blocks, dilate):
    """Validated ``(mask, dilated mask, blocks)`` (see :func:`plan_tiles`)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"the edit mask must be 2-D (H, W), got shape {m.shape}")
    m = m.astype(bool)
    if not m.any():
        raise ValueError("the edit mask is empty: nothing changed, reuse the original result")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    blocks = (blocks,) * levels if isinstance(blocks, int) else tuple(int(b) for b in blocks)
    if len(blocks) != levels or any(b < 1 for b in blocks):
        raise ValueError(f"blocks must be a positive int or one per level ({levels}), got {blocks}")
    H, W = m.shape
    if H % (1 << (levels - 1)) or W % (1 << (levels - 1)):
        raise ValueError(f"image size {(H, W)} must be divisible by 2**(levels-1) = {1 << (levels - 1)}")
    for r, b in enumerate(blocks):
        Hr, Wr = H >> r, W >> r
        if Hr % b or Wr % b:
            raise ValueError(f"level {r} is {Hr}x{Wr}; tile size {b} must divide it")
        if r > 0 and b % 2:
            raise ValueError(f"tile size {b} at level {r} must be even (nearest-upsampling halo)")
    grown = m
    if dilate:
        if dilate < 0:
            raise ValueError(f"dilate must be >= 0, got {dilate}")
        padded = np.pad(m, dilate)
        grown = np.zeros_like(m)
        for dy in range(2 * dilate + 1):
            for dx in range(2 * dilate + 1):
                grown |= padded[dy:dy + H, dx:dx + W]
    return m, grown, blocks


def tiles_of(active, b, per_octave=1):
    """Tiles of size ``b`` holding any ``active`` pixel: ``(origins (bucket, 2), tile mask, n, total, bucket)``;
    ``bucket = 0`` (no origins) when nothing is active."""
    Hr, Wr = active.shape
    tiles = active.reshape(Hr // b, b, Wr // b, b).any(axis=(1, 3))
    ij = np.argwhere(tiles)
    n, total = len(ij), tiles.size
    bucket = bucket_size(n, total, per_octave) if n else 0
    pad = np.repeat(ij[:1], bucket - n, axis=0)
    origins = (np.concatenate([ij, pad]) * b).astype(np.int32).reshape(bucket, 2)
    return origins, np.kron(tiles, np.ones((b, b), bool)), n, total, bucket


def plan_tiles(mask, levels: int, blocks: int | tuple[int, ...] = 8, *, dilate: int = 0,
               dense_above: float = 0.5) -> TilePlan:
    """Active tiles of an edit ``mask`` (``(H, W)`` bool/0-1, True = edited) for ``levels`` levels.

    Args:
      mask: the edit, ``(H, W)`` bool or 0/1, True = edited.
      levels: resolution levels of the network (``len(model.channels)`` for DigitsUNet).
      blocks: tile size in pixels per level (an int for all levels); each level's size must
        be divisible by its tile size.
      dilate: grow the mask by this many level-0 pixels (a square neighbourhood) first.
      dense_above: fall back to dense (``plan.dense``) when, at any level, the bucketed tile
        count exceeds this fraction of the level's tiles.

    Level ``r``'s mask is the level-0 mask max-pooled by ``2**r``; a tile is active when it
    holds any masked pixel. Raises ``ValueError`` for an empty mask, a non-2-D mask, or sizes
    that do not divide.
    """
    m0, m, blocks = check_tile_mask(mask, levels, blocks, dilate)
    H, W = m.shape
    origins, masks, counts, totals, buckets = [], [], [], [], []
    dense = False
    for r, b in enumerate(blocks):
        f = 1 << r
        mr = m.reshape(H // f, f, W // f, f).any(axis=(1, 3))
        org, tmask, n, total, bucket = tiles_of(mr, b)
        if bucket > dense_above * total:
            dense = True
        origins.append(jnp.asarray(org))
        masks.append(jnp.asarray(tmask))
        counts.append(n)
        totals.append(total)
        buckets.append(bucket)
    return TilePlan((H, W), blocks, buckets, dense, origins, masks, tuple(counts), tuple(totals), float(np.mean(m0)))
