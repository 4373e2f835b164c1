"""Spatially sparse inference for editing (SIGE-style) on the DigitsUNet family and diffusers' DDPM UNet2D.

Idea (Li et al., "Efficient Spatially Sparse Inference for Conditional GANs and Diffusion
Models", NeurIPS 2022; https://www.cs.cmu.edu/~sige/): when an edit touches a small region,
run the network on the *original* image once and cache every layer's output; for the edited
image, recompute each convolution only on the tiles that the edit touches and take every
other value from the cache. This module is an independent JAX implementation of that idea
(no code from the SIGE repository), written as explicit functional forward passes over the
Flax params trees of :class:`jaxsde.models.unet.DigitsUNet` and
:class:`jaxsde.models.ddpm_unet.UNet2D` (ddpm-cifar10's layout: GroupNorm two-pass variance,
explicit paddings, scale_shift time conditioning, any activation, self-attention).

Pieces:

* :class:`SparseUNet` (``net = SparseUNet(model)``): ``net.apply(params, x, t)`` (dense, equals
  ``model.apply`` on one sample), ``net.record(params, x, t) -> (eps, cache)`` (dense, with
  every layer's output and every GroupNorm's statistics), ``net.apply_sparse(params, x, t,
  cache, plan)`` and ``net.apply_masked(params, x, t, cache, plan)`` (the dense reference
  with the same semantics as the sparse engine), ``net.apply_frozen(params, x, t, cache)``
  (the dense network with the cached GroupNorm statistics).
* :meth:`SparseUNet.plan` (host side, numpy): the edit mask -> active tiles, in one of two modes
  (below), tile counts padded to buckets so that a new edit of similar size reuses a compiled
  program, or a dense fallback when the edit is large (estimated convolution FLOPs above
  ``dense_above`` of dense). :func:`plan_tiles` is the input mode's per-level tiling alone.
* :func:`sparse_sdedit`: SDEdit of an edited image with a fixed-grid solver, reusing the
  original image's per-step cache (same key, same grid), sparse, masked or dense.

Semantics of the sparse engine (what :meth:`SparseUNet.apply_masked` computes densely):
every layer ``L`` (a convolution with its fused pre-op ``act(GroupNorm(.))``, post-op bias,
residual and scale) writes ``out_L = where(active_L, L(mixed inputs), cache_L)``, ``active_L`` the
layer's active tiles; the inputs it reads, including the halo of a 3x3 convolution around a
tile, are the *mixed* maps (cache outside the active tiles). With a ``roi`` (exact plans) the
final output is ``where(roi, out, cached output)``. The sparse engine computes exactly this,
touching only the active tiles: it gathers each tile with its halo (2 for a 3x3 convolution
at stride 1; 2b + 1 input rows for a stride-2 tile of size b; the low-resolution halo for a
nearest-upsample + conv), stacks the tiles on the batch axis, convolves with VALID padding,
and scatters into the cached output map. A layer whose bucket is every tile of its map is
computed as a dense layer on the mixed maps followed by the same ``where`` (cheaper than
gathering everything); a layer with no active tile is the cache. All maps are kept with a
zero border of ``PAD`` pixels, so the image edge is the convolution's zero padding (the halo
of an edge tile is zero *after* the fused normalisation + activation, as in the dense network).

Plans (``net.plan(mask, blocks, mode=...)``):

* ``mode="input"`` (default; :func:`plan_tiles`): every layer recomputes the tiles of the
  (optionally ``dilate``-grown) edit mask at its resolution. Cheap, but an approximation: a
  3x3 convolution changes its output one pixel beyond its changed input, so cached values
  just outside the tiles are stale and the error reaches the edited pixels (relative L2 error
  on the edited pixels 0.22 for a drastic 4.8% edit of the 64x64 DigitsUNet; 0.006 with
  ``dilate=4``; ``benchmarks/results/editing.md``).
* ``mode="exact"`` (receptive-field-exact): the network graph is traced once per image size
  and the changed-input mask is propagated layer by layer (:func:`propagate`, numpy): forward,
  the pixels each layer's output changes (3x3 footprint at stride 1, the stride-2 and
  upsample+conv footprints, the union over concatenated skips and the residual branch);
  backward from the output ``roi`` (default the edit mask; ``"all"`` for every pixel), the
  pixels the roi depends on. A layer recomputes the tiles holding any pixel that is both
  changed and needed, buckets per layer (``per_octave=4`` sub-octave buckets, less padding;
  layers above ``layer_dense_above`` of their tiles are computed densely). With
  ``stats="reuse"`` the result on the roi equals :meth:`SparseUNet.apply_frozen` (the dense
  network with the original's GroupNorm statistics) to float rounding, tested at 1e-5; the
  output outside the roi is the cached original, so in an SDEdit trajectory x keeps changing
  only on the edit mask and one plan holds for every step. The price: the receptive field of
  a UNet is wide (38 px radius for the 2-level "large" DigitsUNet), so the active region is
  much larger than the edit (see ``benchmarks/results/editing.md``: 2.2x / 1.6x faster than
  dense at 0.9% / 4.8% of a 64x64 image, 3.4x / 2.1x at 1% / 5% of 128x128). The default
  ``dense_above`` is 0.75 for exact plans.

GroupNorm statistics: ``stats="reuse"`` (default, SIGE's choice): the mean and variance of
the original image's activations at the same step, from the cache; normalisation is then a
per-channel affine map, local, and the sparse layer equals the masked-dense layer exactly.
``stats="recompute"``: statistics of the current mixed map (a full-map reduction per
normalisation, O(HWC), no convolution work). Either way the statistics are global: in the
true dense network on the edited image every pixel's normalisation changes a little, which
the mask propagation does not follow (it treats normalisation as a per-pixel map). So even
an exact plan differs from the *true* dense network: with ``reuse`` by exactly the
frozen-statistics network's deviation; with ``recompute`` by the stale cached values outside
the active region whose inputs changed only through the statistics (and, for a ``roi``
smaller than the image, the computed-but-unneeded tile pixels that enter the statistics).
Both are measured by the tests and the benchmark; they vanish with the dense fallback.
Attention (UNet2D): ``(attend(norm(x)) + x) / scale`` with queries from the active tiles only
and keys/values projected from the whole *mixed* map (cache outside the active tiles, the new
values inside) -- a dense O(HW C^2) projection and O(n_active HW C) attention at that level,
no convolution work; its GroupNorm statistics follow ``stats`` like the others. Attention is
global, so for an exact plan every layer after the first attention on the changed path is
changed (and needed) everywhere: on ddpm-cifar10's layout (attention at 16x16 of a 32x32 input)
the exact plan is close to dense, and the input plan is the useful (approximate) one.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .models.ddpm_unet import ACTIVATIONS, UNet2D, timestep_embedding
from .models.score import input_scale, output_to_score
from .models.unet import DigitsUNet, _groups

Array = jax.Array

__all__ = ["SparseUNet", "TilePlan", "plan_tiles", "propagate", "diff_mask", "bucket_size", "sparse_sdedit",
           "run_fixed_grid", "cache_bytes", "PAD"]

PAD = 2  # zero border kept around every stored map (>= the largest halo, 1, plus the stride-2 overhang)
GN_EPS = 1e-6  # flax.linen.GroupNorm's default epsilon


# --------------------------------------------------------------------------------------------
# tile planning (host side, numpy)
# --------------------------------------------------------------------------------------------


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
    """Pixels (H, W) where the two images differ by more than ``atol`` in any channel."""
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


def _check_mask(mask, levels, blocks, dilate):
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


def _tiles_of(active, b, per_octave=1):
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
    m0, m, blocks = _check_mask(mask, levels, blocks, dilate)
    H, W = m.shape
    origins, masks, counts, totals, buckets = [], [], [], [], []
    dense = False
    for r, b in enumerate(blocks):
        f = 1 << r
        mr = m.reshape(H // f, f, W // f, f).any(axis=(1, 3))
        org, tmask, n, total, bucket = _tiles_of(mr, b)
        if bucket > dense_above * total:
            dense = True
        origins.append(jnp.asarray(org))
        masks.append(jnp.asarray(tmask))
        counts.append(n)
        totals.append(total)
        buckets.append(bucket)
    return TilePlan((H, W), blocks, buckets, dense, origins, masks, tuple(counts), tuple(totals), float(np.mean(m0)))


# --------------------------------------------------------------------------------------------
# primitives
# --------------------------------------------------------------------------------------------


def _conv(x, kernel, bias, stride=1, padding="SAME"):
    """NHWC convolution (flax's ``nn.Conv``: SAME padding by default, explicit pairs, or VALID)."""
    y = lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def _group_stats(x, groups, two_pass=False):
    """Per-group mean and variance of one sample's map ``x`` (H, W, C): flax's fast variance
    ``E[x^2] - E[x]^2`` (DigitsUNet), or the two-pass ``E[(x - mean)^2]`` (UNet2D, as torch)."""
    H, W, C = x.shape
    xg = x.reshape(H * W, groups, C // groups)
    mean = jnp.mean(xg, axis=(0, 2))
    if two_pass:
        var = jnp.mean(jnp.square(xg - mean[None, :, None]), axis=(0, 2))
    else:
        var = jnp.maximum(jnp.mean(jnp.square(xg), axis=(0, 2)) - jnp.square(mean), 0.0)
    return mean, var


class _Norm:
    """A fused pre-op: GroupNorm with params ``p`` (``groups=None``: DigitsUNet's rule), an
    optional ``x (1 + scale) + shift`` (UNet2D's scale_shift time conditioning), then ``act``."""

    def __init__(self, p, groups=None, eps=GN_EPS, two_pass=False, act=jax.nn.silu, scale_shift=None):
        self.p, self.groups, self.eps, self.two_pass, self.act, self.scale_shift = (p, groups, eps, two_pass, act,
                                                                                   scale_shift)

    def n_groups(self, channels):
        return _groups(channels) if self.groups is None else self.groups

    def stats(self, x):
        return _group_stats(x, self.n_groups(x.shape[-1]), self.two_pass)

    def __call__(self, x, stats):
        """Normalise ``x`` (any leading axes, channels last) with the given statistics."""
        C = x.shape[-1]
        mean, var = stats
        per = C // self.n_groups(C)
        a = self.p["scale"] * jnp.repeat(lax.rsqrt(var + self.eps), per)
        x = x * a + (self.p["bias"] - jnp.repeat(mean, per) * a)
        if self.scale_shift is not None:
            scale, shift = self.scale_shift
            x = x * (1 + scale) + shift
        return x if self.act is None else self.act(x)


def _padded(x):
    return jnp.pad(x, ((PAD, PAD), (PAD, PAD), (0, 0)))


def _gather(xp, origins, size):
    """Windows ``(n, size, size, C)`` of a padded map at padded-coordinate ``origins`` (n, 2)."""
    C = xp.shape[-1]
    return jax.vmap(lambda o: lax.dynamic_slice(xp, (o[0], o[1], 0), (size, size, C)))(origins)


def _scatter(xp, origins, tiles):
    """Write ``tiles`` (n, b, b, C) into the padded map at padded-coordinate ``origins``."""
    dnums = lax.ScatterDimensionNumbers(update_window_dims=(1, 2, 3), inserted_window_dims=(),
                                        scatter_dims_to_operand_dims=(0, 1))
    return lax.scatter(xp, origins, tiles, dnums, indices_are_sorted=False, unique_indices=False,
                       mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _inside(origins, size, limits):
    """(n, size, size, 1) float mask: 1 where a window of unpadded ``origins`` lies inside the image."""
    ar = jnp.arange(size)
    rows = origins[:, 0, None] + ar
    cols = origins[:, 1, None] + ar
    ok_r = (rows >= 0) & (rows < limits[0])
    ok_c = (cols >= 0) & (cols < limits[1])
    return (ok_r[:, :, None] & ok_c[:, None, :])[..., None]


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _attend(p, hq, hkv, heads):
    """Multi-head attention of queries ``hq`` (N, C) over keys/values ``hkv`` (M, C) (normalised
    maps), with UNet2D's ``to_q``/``to_k``/``to_v``/``to_out_0`` projections: (N, C)."""
    C = hq.shape[-1]
    d = C // heads
    q = _dense(p["to_q"], hq).reshape(-1, heads, d)
    k = _dense(p["to_k"], hkv).reshape(-1, heads, d)
    v = _dense(p["to_v"], hkv).reshape(-1, heads, d)
    w = jnp.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
    return _dense(p["to_out_0"], jnp.einsum("hqk,khd->qhd", w, v).reshape(-1, C))


# --------------------------------------------------------------------------------------------
# engines: one layer = [norm pre-op(concat(srcs))] -> conv -> [+ bias] -> [(+ residual) / out_scale];
# one attention = (attend(norm(x)) + x) / out_scale
# --------------------------------------------------------------------------------------------


def _fourier(p, t):
    proj = 2 * jnp.pi * t * p["freqs"]
    h = jnp.concatenate([jnp.sin(proj), jnp.cos(proj)])
    return _dense(p["Dense_1"], jax.nn.silu(_dense(p["Dense_0"], h)))


class _Arrays:
    """Shared part of the engines that compute with arrays."""

    def compute(self, fn):
        """Side computations that are not per-pixel layers (time embeddings)."""
        return fn()


def _dense_layer(srcs, conv, stats, *, stride=1, up=False, norm=None, bias=None, res=None, padding=None,
                 out_scale=1.0):
    """One layer computed densely on unpadded maps; ``stats`` None = the maps' own statistics.
    Returns ``(output, statistics used or None)``."""
    x = jnp.concatenate(srcs, axis=-1) if len(srcs) > 1 else srcs[0]
    if norm is not None:
        if stats is None:
            stats = norm.stats(x)
        x = norm(x, stats)
    if up:
        x = jnp.repeat(jnp.repeat(x, 2, axis=0), 2, axis=1)
    y = _conv(x[None], conv["kernel"], conv["bias"], stride, "SAME" if padding is None else padding)[0]
    if bias is not None:
        y = y + bias
    if res is not None:
        r_srcs, r_conv = res
        r = jnp.concatenate(r_srcs, axis=-1) if len(r_srcs) > 1 else r_srcs[0]
        if r_conv is not None:
            r = _conv(r[None], r_conv["kernel"], r_conv["bias"])[0]
        y = y + r
    if out_scale != 1.0:
        y = y / out_scale
    return y, stats


def _dense_attention(x, p, norm, stats, heads, out_scale):
    """Self-attention over the whole map ``x`` (H, W, C), with its residual and scale."""
    H, W, C = x.shape
    if norm is not None and stats is None:
        stats = norm.stats(x)
    h = x if norm is None else norm(x, stats)
    flat = h.reshape(H * W, C)
    y = (_attend(p, flat, flat, heads).reshape(H, W, C) + x) / out_scale
    return y, stats


class _Dense(_Arrays):
    """Dense engine. ``cache=None``: the true network (records outputs and statistics).
    With ``cache`` and ``plan``: the masked reference of the sparse engine. With ``cache``
    and no plan: the true network with the cached (original) GroupNorm statistics."""

    def __init__(self, cache=None, plan=None, stats="reuse"):
        self.cache, self.plan, self.stats = cache, plan, stats
        self.record: dict[str, Any] = {}

    def _cached_stats(self, name, norm):
        reuse = norm is not None and self.cache is not None and self.stats == "reuse"
        return self.cache["stats/" + name] if reuse else None

    def _finish(self, name, y, stats):
        if stats is not None:
            self.record["stats/" + name] = stats
        if self.cache is not None and self.plan is not None:
            level = int(round(math.log2(self.plan.shape[0] // y.shape[0])))
            mask = self.plan.tiles(name, level)[1]
            y = jnp.where(mask[..., None], y, self.cache[name])
        self.record[name] = y
        return y

    def layer(self, name, srcs, conv, *, norm=None, **kw):
        y, stats = _dense_layer(srcs, conv, self._cached_stats(name, norm), norm=norm, **kw)
        return self._finish(name, y, stats)

    def attention(self, name, x, p, *, norm=None, heads=1, out_scale=1.0):
        y, stats = _dense_attention(x, p, norm, self._cached_stats(name, norm), heads, out_scale)
        return self._finish(name, y, stats)

    def source(self, x):
        return x


class _Sparse(_Arrays):
    """Sparse engine: maps are padded full-resolution arrays; convolutions touch active tiles only."""

    def __init__(self, cache, plan: TilePlan, stats="reuse"):
        self.cache, self.plan, self.stats = cache, plan, stats

    def source(self, x):
        return _padded(x)

    def _level_of(self, xp):
        return int(round(math.log2(self.plan.shape[0] // (xp.shape[0] - 2 * PAD))))

    def _stats(self, name, norm, srcs):
        """The statistics for a norm pre-op: the cached ones or those of the mixed maps."""
        if norm is None:
            return None
        if self.stats == "recompute":
            full = [s[PAD:-PAD, PAD:-PAD] for s in srcs]
            return norm.stats(jnp.concatenate(full, axis=-1) if len(full) > 1 else full[0])
        return self.cache["stats/" + name]

    def layer(self, name, srcs, conv, *, stride=1, up=False, norm=None, bias=None, res=None, padding=None,
              out_scale=1.0):
        lin = self._level_of(srcs[0])
        lout = lin + 1 if stride == 2 else lin - 1 if up else lin
        b = self.plan.blocks[lout]
        org, mask, bucket = self.plan.tiles(name, lout)  # (n, 2) unpadded output-tile origins
        if bucket == 0:  # nothing to recompute at this layer
            return self.cache[name]
        stats = self._stats(name, norm, srcs)
        if bucket == self.plan.tile_total(lout):  # every tile: the dense layer on the mixed maps is cheaper
            inner = [s[PAD:-PAD, PAD:-PAD] for s in srcs]
            unpad = [[s[PAD:-PAD, PAD:-PAD] for s in res[0]], res[1]] if res is not None else None
            if norm is not None and stats is None:
                stats = norm.stats(jnp.concatenate(inner, axis=-1) if len(inner) > 1 else inner[0])
            y, _ = _dense_layer(inner, conv, stats, stride=stride, up=up, norm=norm, bias=bias, res=unpad,
                                padding=padding, out_scale=out_scale)
            return _padded(jnp.where(mask[..., None], y, self.cache[name][PAD:-PAD, PAD:-PAD]))
        k = conv["kernel"].shape[0]
        H_in = srcs[0].shape[0] - 2 * PAD
        W_in = srcs[0].shape[1] - 2 * PAD
        if up:  # nearest-upsample then 3x3 (padding 1): low-res window with a 1-pixel halo, upsampled, cropped
            lo = org // 2 - 1
            in_org, in_size = lo, b // 2 + 2
        else:
            if padding is None:
                out_H = -(-H_in // stride)
                pad_lo = max((out_H - 1) * stride + k - H_in, 0) // 2
            else:
                pad_lo = padding[0][0]
            in_org = org * stride - pad_lo
            in_size = (b - 1) * stride + k
        g = [_gather(s, in_org + PAD, in_size) for s in srcs]
        x = jnp.concatenate(g, axis=-1) if len(g) > 1 else g[0]
        if norm is not None:
            x = norm(x, stats) * _inside(in_org, in_size, (H_in, W_in)).astype(x.dtype)
        if up:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)[:, 1:-1, 1:-1]
        y = _conv(x, conv["kernel"], conv["bias"], stride, "VALID")
        if bias is not None:
            y = y + bias
        if res is not None:
            r_srcs, r_conv = res
            rg = [_gather(s, org + PAD, b) for s in r_srcs]
            r = jnp.concatenate(rg, axis=-1) if len(rg) > 1 else rg[0]
            if r_conv is not None:
                r = _conv(r, r_conv["kernel"], r_conv["bias"], 1, "VALID")
            y = y + r
        if out_scale != 1.0:
            y = y / out_scale
        return _scatter(self.cache[name], org + PAD, y)

    def attention(self, name, x, p, *, norm=None, heads=1, out_scale=1.0):
        """Queries from the active tiles only; keys and values from the whole mixed map."""
        lvl = self._level_of(x)
        b = self.plan.blocks[lvl]
        org, mask, bucket = self.plan.tiles(name, lvl)
        if bucket == 0:
            return self.cache[name]
        full = x[PAD:-PAD, PAD:-PAD]
        H, W, C = full.shape
        stats = self._stats(name, norm, [x])
        if bucket == self.plan.tile_total(lvl):
            y, _ = _dense_attention(full, p, norm, stats, heads, out_scale)
            return _padded(jnp.where(mask[..., None], y, self.cache[name][PAD:-PAD, PAD:-PAD]))
        h = full if norm is None else norm(full, stats)
        q = _gather(_padded(h), org + PAD, b).reshape(-1, C)
        y = _attend(p, q, h.reshape(H * W, C), heads).reshape(-1, b, b, C)
        y = (y + _gather(x, org + PAD, b)) / out_scale
        return _scatter(self.cache[name], org + PAD, y)


# --------------------------------------------------------------------------------------------
# receptive-field-exact planning: the network graph traced once, masks propagated (numpy)
# --------------------------------------------------------------------------------------------


class _Node:
    """A feature map in the traced graph (shape only)."""

    def __init__(self, index, shape):
        self.index, self.shape = index, tuple(shape)


class _Trace:
    """Engine that records the layer graph: which maps each layer reads (through its
    convolution and through its residual branch), its stride / upsampling / padding and kernel
    size; attention layers are global (every output reads every input)."""

    def __init__(self):
        self.layers: list[dict[str, Any]] = []
        self.shapes: list[tuple[int, ...]] = []

    def _node(self, shape):
        self.shapes.append(tuple(shape))
        return _Node(len(self.shapes) - 1, shape)

    def source(self, x):
        return self._node(x.shape)

    def compute(self, fn):
        return None

    def layer(self, name, srcs, conv, *, stride=1, up=False, norm=None, bias=None, res=None, padding=None,
              out_scale=1.0):
        H, W = srcs[0].shape[:2]
        H, W = (H * 2, W * 2) if up else (-(-H // stride), -(-W // stride))
        kshape = tuple(conv["kernel"].shape)
        out = self._node((H, W, kshape[-1]))
        self.layers.append(dict(name=name, srcs=[s.index for s in srcs], res=[s.index for s in res[0]] if res else [],
                                out=out.index, k=kshape[0], stride=stride, up=up, attention=False,
                                pad_lo=None if padding is None else padding[0][0],
                                cost=kshape[0] * kshape[1] * kshape[2] * kshape[3]))
        return out

    def attention(self, name, x, p, *, norm=None, heads=1, out_scale=1.0):
        H, W, C = x.shape
        out = self._node(x.shape)
        # per query pixel: q and output projections, and attention over H W keys; K/V: 2 C^2 per pixel
        self.layers.append(dict(name=name, srcs=[x.index], res=[], out=out.index, attention=True,
                                cost=2 * C * C + 2 * H * W * C, kv_cost=2 * C * C * H * W))
        return out


def _reads(n_in, n_out, k, stride, up, pad_lo=None):
    """``R[i, j]``: output row ``i`` of the layer reads input row ``j`` (SAME padding, or
    ``pad_lo`` rows before the first; with ``up``, a nearest 2x upsampling before the
    stride-1 convolution)."""
    R = np.zeros((n_out, n_in), np.int64)
    for i in range(n_out):
        if up:
            lo, hi = i - (k - 1) // 2, i - (k - 1) // 2 + k - 1  # rows of the upsampled map
            lo, hi = max(lo, 0) // 2, min(hi, 2 * n_in - 1) // 2
        else:
            if pad_lo is None:
                pad_lo = max((n_out - 1) * stride + k - n_in, 0) // 2
            lo, hi = max(i * stride - pad_lo, 0), min(i * stride - pad_lo + k - 1, n_in - 1)
        R[i, lo:hi + 1] = 1
    return R


def propagate(graph: _Trace, changed, roi=None):
    """Per layer: ``(changed, needed)`` boolean maps at the layer's output resolution.

    ``changed``: the output pixels whose receptive field contains a changed input pixel
    (forward: the input ``changed`` mask pushed through every convolution's footprint, stride,
    padding, upsampling, concatenation and residual add; an attention layer changes every
    pixel once any input changed). ``needed``: the pixels that the final output's ``roi``
    (level-0 bool mask; None = every pixel) depends on (backward, the transposed footprints;
    an attention layer needs every input once any output is needed). GroupNorm statistics are
    treated as fixed (a per-channel affine map); see the module docstring.
    """
    changed = np.asarray(changed, bool)
    maps = {0: changed}
    mats = []
    for L in graph.layers:
        src_shape, out_shape = graph.shapes[L["srcs"][0]], graph.shapes[L["out"]]
        cin = np.zeros(src_shape[:2], bool)
        for s in L["srcs"]:
            cin |= maps[s]
        if L["attention"]:
            mats.append(None)
            out = np.full(out_shape[:2], cin.any())
        else:
            R = _reads(src_shape[0], out_shape[0], L["k"], L["stride"], L["up"], L["pad_lo"])
            C = _reads(src_shape[1], out_shape[1], L["k"], L["stride"], L["up"], L["pad_lo"])
            mats.append((R, C))
            out = (R @ cin @ C.T) > 0
        for s in L["res"]:
            out |= maps[s]
        maps[L["out"]] = out
    last = graph.layers[-1]["out"]
    needed = {i: np.zeros(shape[:2], bool) for i, shape in enumerate(graph.shapes)}
    needed[last] = np.ones(graph.shapes[last][:2], bool) if roi is None else np.asarray(roi, bool)
    for L, mat in zip(reversed(graph.layers), reversed(mats), strict=True):
        n = needed[L["out"]]
        if mat is None:
            back = np.full(graph.shapes[L["srcs"][0]][:2], n.any())
        else:
            R, C = mat
            back = (R.T @ n @ C) > 0
        for s in L["srcs"]:
            needed[s] |= back
        for s in L["res"]:
            needed[s] |= n
    return {L["name"]: (maps[L["out"]], needed[L["out"]]) for L in graph.layers}


# --------------------------------------------------------------------------------------------
# the forward passes (DigitsUNet, UNet2D), written over their params trees
# --------------------------------------------------------------------------------------------


class SparseUNet:
    """Dense, recording, masked-reference and sparse forward passes of a U-Net.

    Supported: :class:`jaxsde.models.unet.DigitsUNet` and :class:`jaxsde.models.ddpm_unet.UNet2D`
    (diffusers' DDPM U-Net; its self-attention layers take sparse queries, the active tiles,
    against keys and values of the whole mixed map). All passes take ONE sample ``x: (H, W,
    C)`` (the network's input: for DigitsUNet already scaled by ``c_in``) and a scalar ``t``
    (DigitsUNet's time; UNet2D's timestep), and return the network output ``(H, W, C)``.
    """

    def __init__(self, model):
        if not isinstance(model, DigitsUNet | UNet2D):
            raise TypeError(f"SparseUNet supports jaxsde.models.unet.DigitsUNet and jaxsde.models.ddpm_unet.UNet2D, "
                            f"got {type(model).__name__}")
        self.model = model
        if isinstance(model, DigitsUNet):
            self.levels = len(model.channels)
            self.in_channels = 1
        else:
            self.levels = len(model.block_out_channels)
            self.in_channels = model.in_channels
        self._graphs: dict[tuple[int, int], _Trace] = {}

    # the forward pass, shared by every engine
    def _forward(self, eng, params, x, t):
        p = params["params"] if "params" in params else params
        if isinstance(self.model, DigitsUNet):
            return self._digits_forward(eng, p, x, t)
        return self._ddpm_forward(eng, p, x, t)

    def _digits_forward(self, eng, p, x, t):
        chans, nb = tuple(self.model.channels), self.model.blocks_per_level
        emb = eng.compute(lambda: _fourier(p["FourierTime_0"], jnp.asarray(t, x.dtype)))
        conv_i = iter(range(100))
        block_i = iter(range(1000))

        def conv_name():
            return f"Conv_{next(conv_i)}"

        def resblock(hs, ch):
            name = f"ResBlock_{next(block_i)}"
            q = p[name]
            cin = sum(int(h.shape[-1]) for h in hs)
            bias = eng.compute(lambda: _dense(q["Dense_0"], jax.nn.silu(emb)))
            h1 = eng.layer(name + "/a", hs, q["Conv_0"], norm=_Norm(q["GroupNorm_0"]), bias=bias)
            skip = q["Conv_2"] if cin != ch else None
            return eng.layer(name + "/b", [h1], q["Conv_1"], norm=_Norm(q["GroupNorm_1"]), res=(hs, skip))

        xs = eng.source(x)
        name = conv_name()
        h = eng.layer(name, [xs], p[name])
        skips = [h]
        for level, ch in enumerate(chans):
            for _ in range(nb):
                h = resblock([h], ch)
                skips.append(h)
            if level < len(chans) - 1:
                name = conv_name()
                h = eng.layer(name, [h], p[name], stride=2)
                skips.append(h)
        h = resblock([h], chans[-1])
        for level in reversed(range(len(chans))):
            ch = chans[level]
            for _ in range(nb + 1):
                h = resblock([h, skips.pop()], ch)
            if level > 0:
                name = conv_name()
                h = eng.layer(name, [h], p[name], up=True)
        name = conv_name()
        out = eng.layer(name, [h], p[name], norm=_Norm(p["GroupNorm_0"]))
        return out, name

    def _ddpm_forward(self, eng, p, x, t):
        m = self.model
        act = ACTIVATIONS[m.act_fn]
        chans = tuple(m.block_out_channels)
        last = len(chans) - 1
        same = ((1, 1), (1, 1))
        if m.center_input_sample and not isinstance(eng, _Trace):
            x = 2 * x - 1.0

        def embed():
            ts = jnp.reshape(jnp.asarray(t, jnp.float32), (1,))
            e = timestep_embedding(ts, chans[0], m.flip_sin_to_cos, m.freq_shift)[0].astype(x.dtype)
            q = p["time_embedding"]
            return _dense(q["linear_2"], jax.nn.silu(_dense(q["linear_1"], e)))

        temb = eng.compute(embed)

        def norm(q, groups=m.norm_num_groups, activation=act, scale_shift=None):
            return _Norm(q, groups, m.norm_eps, True, activation, scale_shift)

        def resnet(q, name, hs, ch, scale=1.0):
            cin = sum(int(h.shape[-1]) for h in hs)
            proj = eng.compute(lambda: _dense(q["time_emb_proj"], act(temb)))
            bias, ss = proj, None
            if m.resnet_time_scale_shift == "scale_shift":
                bias, ss = None, eng.compute(lambda: tuple(jnp.split(proj, 2)))
            h1 = eng.layer(name + "/conv1", hs, q["conv1"], norm=norm(q["norm1"]), bias=bias, padding=same)
            short = q["conv_shortcut"] if cin != ch else None
            return eng.layer(name + "/conv2", [h1], q["conv2"], norm=norm(q["norm2"], scale_shift=ss),
                             res=(hs, short), padding=same, out_scale=scale)

        def attention(q, name, h, groups, scale=1.0):
            head_dim = m.attention_head_dim or int(h.shape[-1])
            nrm = None if groups is None else norm(q["group_norm"], groups, None)
            return eng.attention(name, h, q, norm=nrm, heads=int(h.shape[-1]) // head_dim, out_scale=scale)

        xs = eng.source(x)
        h = eng.layer("conv_in", [xs], p["conv_in"], padding=same)
        skips = [h]
        for i, (kind, ch) in enumerate(zip(m.down_block_types, chans, strict=True)):
            d, prefix = p[f"down_blocks_{i}"], f"down_blocks_{i}/"
            for j in range(m.layers_per_block):
                h = resnet(d[f"resnets_{j}"], prefix + f"resnets_{j}", [h], ch)
                if kind == "AttnDownBlock2D":
                    h = attention(d[f"attentions_{j}"], prefix + f"attentions_{j}", h, m.norm_num_groups)
                skips.append(h)
            if i < last:
                dp = m.downsample_padding
                pad = ((0, 1), (0, 1)) if dp == 0 else ((dp, dp), (dp, dp))
                h = eng.layer(prefix + "downsamplers_0", [h], d["downsamplers_0"]["conv"], stride=2, padding=pad)
                skips.append(h)
        if m.mid_block:
            q, s = p["mid_block"], m.mid_block_scale_factor
            attn_groups = m.attn_norm_num_groups
            if attn_groups is None and m.resnet_time_scale_shift == "default":
                attn_groups = m.norm_num_groups
            h = resnet(q["resnets_0"], "mid_block/resnets_0", [h], chans[-1], s)
            if m.add_attention:
                h = attention(q["attentions_0"], "mid_block/attentions_0", h, attn_groups, s)
            h = resnet(q["resnets_1"], "mid_block/resnets_1", [h], chans[-1], s)
        for i, (kind, ch) in enumerate(zip(m.up_block_types, reversed(chans), strict=True)):
            n = m.layers_per_block + 1
            block_skips, skips = skips[-n:], skips[:-n]
            u, prefix = p[f"up_blocks_{i}"], f"up_blocks_{i}/"
            for j in range(n):
                h = resnet(u[f"resnets_{j}"], prefix + f"resnets_{j}", [h, block_skips[-1 - j]], ch)
                if kind == "AttnUpBlock2D":
                    h = attention(u[f"attentions_{j}"], prefix + f"attentions_{j}", h, m.norm_num_groups)
            if i < last:
                h = eng.layer(prefix + "upsamplers_0", [h], u["upsamplers_0"]["conv"], up=True, padding=same)
        out = eng.layer("conv_out", [h], p["conv_out"], norm=norm(p["conv_norm_out"]), padding=same)
        return out, "conv_out"

    def apply(self, params, x, t):
        """The dense network (equals ``model.apply(params, x[None], t[None])[0]``)."""
        return self._forward(_Dense(), params, x, t)[0]

    def record(self, params, x, t):
        """Dense forward returning ``(out, cache)``: each layer's output and normalisation stats."""
        eng = _Dense()
        out, _ = self._forward(eng, params, x, t)
        return out, eng.record

    def apply_frozen(self, params, x, t, cache):
        """The dense network with every GroupNorm's statistics taken from ``cache`` (the
        original image's): the network that ``stats="reuse"`` computes exactly on a
        receptive-field-exact plan's ``roi``."""
        return self._forward(_Dense(cache, None, "reuse"), params, x, t)[0]

    def apply_masked(self, params, x, t, cache, plan: TilePlan, stats: str = "reuse"):
        """Dense reference with the sparse engine's semantics (see the module docstring)."""
        _check_stats(stats)
        out, name = self._forward(_Dense(cache, plan, stats), params, x, t)
        return out if plan.roi is None else jnp.where(plan.roi[..., None], out, cache[name])

    def apply_sparse(self, params, x, t, cache, plan: TilePlan, stats: str = "reuse"):
        """Sparse forward: only the plan's active tiles are computed; the rest comes from
        ``cache`` (from :meth:`record` on the original image, same ``t``). With
        ``plan.dense`` this is the dense network (:meth:`apply`)."""
        _check_stats(stats)
        if plan.dense:
            return self.apply(params, x, t)
        self._check_plan(x, plan)
        padded = {k: (v if k.startswith("stats/") else _padded(v)) for k, v in cache.items()}
        out, name = self._forward(_Sparse(padded, plan, stats), params, x, t)
        out = out[PAD:-PAD, PAD:-PAD]
        return out if plan.roi is None else jnp.where(plan.roi[..., None], out, cache[name])

    def _check_plan(self, x, plan):
        if tuple(x.shape[:2]) != plan.shape:
            raise ValueError(f"the plan is for images of size {plan.shape}, x has spatial shape {x.shape[:2]}")
        if len(plan.blocks) != self.levels:
            raise ValueError(f"the plan has {len(plan.blocks)} levels, the network {self.levels}")

    def graph(self, shape) -> _Trace:
        """The layer graph for images of spatial ``shape`` (traced once, cached)."""
        shape = tuple(int(s) for s in shape[:2])
        if shape not in self._graphs:
            x = jnp.zeros((1, *shape, self.in_channels))
            params = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), x, jnp.zeros((1,)))
            eng = _Trace()
            self._forward(eng, params, jax.ShapeDtypeStruct((*shape, self.in_channels), jnp.float32), 0.0)
            self._graphs[shape] = eng
        return self._graphs[shape]

    def _work(self, shape, blocks, buckets_of):
        """Estimated convolution FLOPs of a plan / dense: ``buckets_of(layer, level)`` tiles per layer."""
        graph = self.graph(shape)
        H = shape[0]
        work = dense_work = 0.0
        for L in graph.layers:
            Hr, Wr = graph.shapes[L["out"]][:2]
            r = int(round(math.log2(H // Hr)))
            bucket = buckets_of(L, r)
            work += bucket * blocks[r] ** 2 * L["cost"] + (L.get("kv_cost", 0) if bucket else 0)
            dense_work += Hr * Wr * L["cost"] + L.get("kv_cost", 0)
        return work / dense_work

    def _input_plan(self, mask, blocks, dilate, dense_above, layer_dense_above):
        plan = plan_tiles(mask, self.levels, blocks, dilate=dilate, dense_above=1.0)
        origins, buckets = list(plan.origins), list(plan.buckets)
        for r, b in enumerate(plan.blocks):
            if buckets[r] > layer_dense_above * plan.totals[r]:  # the engine's all-tiles (dense) path
                org, _, _, _, buckets[r] = _tiles_of(np.ones(np.asarray(plan.masks[r]).shape, bool), b)
                origins[r] = jnp.asarray(org)
        work = self._work(plan.shape, plan.blocks, lambda L, r: buckets[r])
        return TilePlan(plan.shape, plan.blocks, buckets, work > dense_above, origins, plan.masks, plan.counts,
                        plan.totals, plan.edited, work=work)

    def plan(self, mask, blocks=8, *, mode: str = "input", roi="edit", dilate: int = 0,
             dense_above: float | None = None, per_octave: int = 4, layer_dense_above: float = 0.5) -> TilePlan:
        """Active tiles for an edit ``mask`` (``(H, W)``, True = changed input pixel).

        ``mode="exact"``: receptive-field-exact, per layer (:func:`propagate`): a
        layer recomputes the tiles holding any output pixel that is both *changed* (its
        receptive field touches a changed input) and *needed* (the final output's ``roi``
        depends on it). ``roi="edit"`` (default): the edit mask itself; the output outside it
        is the cached original (so in a trajectory the changed region stays the edit mask);
        ``roi="all"``: every pixel (the whole output equals the dense network, a larger
        active region); or a ``(H, W)`` bool array. With ``stats="reuse"`` the result equals
        :meth:`apply_frozen` on ``roi`` (the dense network with the original's GroupNorm
        statistics). ``dense_above`` (default 0.75): fall back to dense when the bucketed tiles'
        convolution FLOPs (``plan.work``) exceed this fraction of the dense network's.

        ``mode="input"`` (default): every layer recomputes the tiles of the (``dilate``-grown)
        input mask at its resolution (:func:`plan_tiles`): cheaper, an approximation (stale
        cached values just outside the tiles); ``roi`` is ignored. A level whose bucket exceeds
        ``layer_dense_above`` of its tiles is computed densely (same result); the plan falls back
        to dense when its estimated convolution FLOPs exceed ``dense_above`` (default 0.5) of dense.
        """
        if mode == "input":
            return self._input_plan(mask, blocks, dilate, 0.5 if dense_above is None else dense_above,
                                    layer_dense_above)
        if mode != "exact":
            raise ValueError(f"mode must be 'exact' or 'input', got {mode!r}")
        m0, m, blocks = _check_mask(mask, self.levels, blocks, dilate)
        if isinstance(roi, str):
            if roi not in ("edit", "all"):
                raise ValueError(f"roi must be 'edit', 'all' or a (H, W) bool array, got {roi!r}")
            roi_mask = m0 if roi == "edit" else None
        else:
            roi_mask = np.asarray(roi, bool)
            if roi_mask.shape != m0.shape:
                raise ValueError(f"roi has shape {roi_mask.shape}, the mask {m0.shape}")
        H, W = m.shape
        graph = self.graph((H, W))
        prop = propagate(graph, m, roi_mask)
        layers, l_origins, l_masks, l_counts = [], [], [], []
        union = [np.zeros((H >> r, W >> r), bool) for r in range(self.levels)]
        work = dense_work = 0.0
        for L in graph.layers:
            changed, needed = prop[L["name"]]
            r = int(round(math.log2(H // changed.shape[0])))
            org, tmask, n, total, bucket = _tiles_of(changed & needed, blocks[r], per_octave)
            if bucket > layer_dense_above * total:  # computed densely (the engine's bucket == total path)
                org, _, _, _, bucket = _tiles_of(np.ones_like(changed), blocks[r])
            layers.append((L["name"], r, bucket))
            l_origins.append(jnp.asarray(org))
            l_masks.append(jnp.asarray(tmask))
            l_counts.append(n)
            union[r] |= tmask
            work += bucket * blocks[r] ** 2 * L["cost"] + (L.get("kv_cost", 0) if bucket else 0)
            dense_work += changed.size * L["cost"] + L.get("kv_cost", 0)
        origins, counts, totals, buckets = [], [], [], []
        for r, b in enumerate(blocks):
            org, _, n, total, bucket = _tiles_of(union[r], b)
            origins.append(jnp.asarray(org))
            counts.append(n)
            totals.append(total)
            buckets.append(bucket)
        frac = work / dense_work
        dense = frac > (0.75 if dense_above is None else dense_above)
        return TilePlan((H, W), blocks, buckets, dense, origins, [jnp.asarray(u) for u in union],
                        tuple(counts), tuple(totals), float(np.mean(m0)), layers=layers, layer_origins=l_origins,
                        layer_masks=l_masks, roi=None if roi_mask is None else jnp.asarray(roi_mask), mode="exact",
                        layer_counts=tuple(l_counts), work=frac)


def _check_stats(stats):
    if stats not in ("reuse", "recompute"):
        raise ValueError(f"stats must be 'reuse' or 'recompute', got {stats!r}")


def cache_bytes(cache) -> int:
    """Bytes held by one step's cache (layer outputs and statistics)."""
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(cache)))


# --------------------------------------------------------------------------------------------
# trajectories: a fixed-grid solve with a per-step, per-call network cache
# --------------------------------------------------------------------------------------------


def run_fixed_grid(key, sde, solver, x_start, t_start: float, t_end: float, score_call, xs=None):
    """Run a fixed-grid solver like :func:`jaxsde.solve` (fresh noise from ``key``, final
    Tweedie step), as a ``lax.scan`` whose step ``k`` sees ``xs[k]``.

    ``score_call(xs_k, j, x, t) -> (score, aux)`` is called for the ``j``-th score evaluation
    of step ``k`` (``xs_k = None`` when ``xs`` is None); the ``aux`` of every call is returned,
    stacked over steps: ``(x_final, auxs, aux_final)`` with ``auxs`` a tuple over ``j`` and
    ``aux_final`` the final denoising call's (with ``xs_final``, the last element of ``xs``'s
    tuple ``(per_step, final)``). Noise: step ``k`` draws ``normal(fold_in(key, k))``, as
    the driver's default ``FreshNoise``, so the result equals ``solve``'s.
    """
    from .solvers.base import FixedGridSolver

    if not isinstance(solver, FixedGridSolver):
        raise TypeError(f"sparse editing needs a fixed-grid solver (DDIM, EulerMaruyama, ...), got "
                        f"{type(solver).__name__}: the per-step cache is indexed by grid step")
    dtype = x_start.dtype

    def no_score(x, t):
        raise TypeError("the solver's init evaluated the score; not supported by run_fixed_grid")

    first = solver.init(sde, no_score, x_start, jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype))
    t_end_arr = jnp.asarray(t_end, dtype)
    npa = solver.noise_per_attempt
    per_step, final = (None, None) if xs is None else xs

    def body(carry, xs_k):
        x, t, h, state, k = carry
        auxs = []

        def score(x_, t_):
            s, aux = score_call(xs_k, len(auxs), x_, t_)
            auxs.append(aux)
            return s

        z = jax.random.normal(jax.random.fold_in(key, k), (npa, *x.shape), dtype) if npa else None
        out = solver.step(sde, score, x, t, h, state, z, t_end_arr)
        return (out.x, out.t, out.h, out.state, k + 1), tuple(auxs)

    init = (x_start, jnp.asarray(t_start, dtype), jnp.asarray(first.h, dtype), first.state, jnp.zeros((), jnp.int32))
    (x, t, _, _, _), auxs = lax.scan(body, init, per_step, length=solver.num_steps)
    s, aux_final = score_call(final, 0, x, t)
    return sde.tweedie(x, t, s), auxs, aux_final


def sparse_sdedit(key, sde, solver, net: SparseUNet, params, x_orig, x_edit, t0: float, plan: TilePlan | None,
                  *, mode: str = "sparse", stats: str = "reuse", parameterization: str = "eps",
                  sigma_data: float = 0.5, cache=None):
    """SDEdit of ``x_edit`` reusing the original image's trajectory (one sample each).

    Runs the original SDEdit of ``x_orig`` (dense, recording every layer at every score call;
    skipped when ``cache`` from an earlier call is given), then the SDEdit of ``x_edit`` with
    the same key (same noise at ``t0``, same noise per step, same grid) with the network in
    ``mode``: ``"sparse"`` (the plan's tiles only), ``"masked"`` (the dense reference with the
    same semantics) or ``"dense"`` (the true network; equals :func:`jaxsde.editing.sdedit`).

    Returns ``(x_edited, x_original, cache)``; ``cache`` is ``(per_step, final)`` as
    :func:`run_fixed_grid` takes it (memory: :func:`cache_bytes` x score calls).
    The keys follow :func:`jaxsde.editing.sdedit`: ``noise_key, solve_key = split(key)``.
    """
    from .editing import _check_t0, sdedit_start

    if mode not in ("sparse", "masked", "dense"):
        raise ValueError(f"mode must be 'sparse', 'masked' or 'dense', got {mode!r}")
    if not isinstance(net.model, DigitsUNet):
        raise TypeError("sparse_sdedit drives the DigitsUNet family (its time and input scaling); for a UNet2D "
                        "call SparseUNet.record / apply_sparse per step with the model's timesteps")
    if mode != "dense" and plan is None:
        raise ValueError(f"mode {mode!r} needs a TilePlan")
    t0 = _check_t0(sde, t0, None)
    x_orig, x_edit = jnp.asarray(x_orig), jnp.asarray(x_edit)
    if x_orig.shape != x_edit.shape:
        raise ValueError(f"x_orig {x_orig.shape} and x_edit {x_edit.shape} must have the same shape")
    noise_key, solve_key = jax.random.split(key)
    t_end = sde.eps

    def scaled(x, t):
        return input_scale(sde, t, sigma_data) * x

    def to_score(out, x, t):
        return output_to_score(sde, out, x, t, parameterization)

    x_orig_out = None
    if cache is None:
        def rec_call(_, j, x, t):
            out, c = net.record(params, scaled(x, t), t)
            return to_score(out, x, t), c

        x_orig_out, auxs, aux_final = run_fixed_grid(solve_key, sde, solver, sdedit_start(noise_key, sde, x_orig, t0),
                                                     t0, t_end, rec_call)
        cache = (auxs, (aux_final,))

    def edit_call(xs_k, j, x, t):
        c = xs_k[j]
        xin = scaled(x, t)
        if mode == "sparse":
            out = net.apply_sparse(params, xin, t, c, plan, stats)
        elif mode == "masked":
            out = net.apply_masked(params, xin, t, c, plan, stats)
        else:
            out = net.apply(params, xin, t)
        return to_score(out, x, t), None

    x_edit_out, _, _ = run_fixed_grid(solve_key, sde, solver, sdedit_start(noise_key, sde, x_edit, t0), t0, t_end,
                                      edit_call, cache)
    return x_edit_out, x_orig_out, cache
