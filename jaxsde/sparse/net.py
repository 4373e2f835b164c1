"""The network: :class:`SparseUNet`, the dense, recording, masked-reference and sparse forward
passes of a DigitsUNet, UNet2D or NCSNpp (DDPM++), and its planner (input mode or receptive-field-exact)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..models.ddpm_unet import UNet2D
from ..models.ncsnpp import NCSNpp
from ..models.unet import DigitsUNet
from .digits import digits_forward
from .engine import PAD, DenseEngine, SparseEngine, gather_tiles, pad_map, scatter_tiles
from .graph import GraphTrace, propagate
from .ncsnpp import check_config, ncsnpp_forward
from .plan import TilePlan, check_tile_mask, plan_tiles, tiles_of
from .unet2d import unet2d_forward


class SparseUNet:
    """Dense, recording, masked-reference and sparse forward passes of a U-Net.

    Supported: :class:`jaxsde.models.unet.DigitsUNet`, :class:`jaxsde.models.ddpm_unet.UNet2D`
    (diffusers' DDPM U-Net; its self-attention layers take sparse queries, the active tiles,
    against keys and values of the whole mixed map) and :class:`jaxsde.models.ncsnpp.NCSNpp`
    (DDPM++ and NCSN++; only FIR kernels over 4 taps raise ``NotImplementedError``). All passes
    take ONE sample ``x: (H, W, C)`` (the network's input: for DigitsUNet already scaled by
    ``c_in``) and a scalar ``t`` (DigitsUNet's time; UNet2D's timestep; NCSNpp's ``time_cond``:
    sigma for Fourier embeddings, the label ``t * 999`` for positional ones), and return the
    network output ``(H, W, C)``.

    Args:
        model: the Flax module (one of the three above).

    Raises:
        NotImplementedError: a network or layer it does not support.
    """

    def __init__(self, model):
        if not isinstance(model, DigitsUNet | UNet2D | NCSNpp):
            raise TypeError(f"SparseUNet supports jaxsde.models.unet.DigitsUNet, jaxsde.models.ddpm_unet.UNet2D and "
                            f"jaxsde.models.ncsnpp.NCSNpp, got {type(model).__name__}")
        self.model = model
        if isinstance(model, DigitsUNet):
            self.levels = len(model.channels)
            self.in_channels = 1
        elif isinstance(model, NCSNpp):
            check_config(model.config)
            self.levels = len(model.config.ch_mult)
            self.in_channels = model.config.num_channels
        else:
            self.levels = len(model.block_out_channels)
            self.in_channels = model.in_channels
        self._graphs: dict[tuple[int, int], GraphTrace] = {}

    # the forward pass, shared by every engine
    def _forward(self, eng, params, x, t):
        p = params["params"] if "params" in params else params
        if isinstance(self.model, DigitsUNet):
            return digits_forward(eng, self.model, p, x, t)
        if isinstance(self.model, NCSNpp):
            return ncsnpp_forward(eng, self.model, p, x, t)
        return unet2d_forward(eng, self.model, p, x, t)

    def apply(self, params, x, t):
        """The dense network (equals ``model.apply(params, x[None], t[None])[0]``)."""
        return self._forward(DenseEngine(), params, x, t)[0]

    def record(self, params, x, t, *, padded: bool = False):
        """Dense forward returning ``(out, cache)``: each layer's output and normalisation stats.
        ``padded=True``: the maps stored with the engine's zero border (:meth:`pad_cache`), the cache
        that :meth:`apply_sparse_inplace` takes."""
        eng = DenseEngine()
        out, _ = self._forward(eng, params, x, t)
        return out, (self.pad_cache(eng.record) if padded else eng.record)

    @staticmethod
    def pad_cache(cache):
        """The cache with every layer map stored with a zero border of ``PAD`` pixels (what
        :meth:`apply_sparse` does to the cache on every call; the statistics are unchanged):
        the buffers :meth:`apply_sparse_inplace` writes into. One pass over the cache: do it once."""
        return {k: (v if k.startswith("stats/") else pad_map(v)) for k, v in cache.items()}

    @staticmethod
    def unpad_cache(padded_cache):
        """The inverse of :meth:`pad_cache` (the cache :meth:`apply_sparse` and :meth:`apply_masked` take)."""
        return {k: (v if k.startswith("stats/") else v[PAD:-PAD, PAD:-PAD]) for k, v in padded_cache.items()}

    def apply_frozen(self, params, x, t, cache):
        """The dense network with every GroupNorm's statistics taken from ``cache`` (the
        original image's): the network that ``stats="reuse"`` computes exactly on a
        receptive-field-exact plan's ``roi``."""
        return self._forward(DenseEngine(cache, None, "reuse"), params, x, t)[0]

    def apply_masked(self, params, x, t, cache, plan: TilePlan, stats: str = "reuse"):
        """Dense reference with the sparse engine's semantics (see :mod:`jaxsde.sparse`)."""
        _check_stats(stats)
        out, name = self._forward(DenseEngine(cache, plan, stats), params, x, t)
        return out if plan.roi is None else jnp.where(plan.roi[..., None], out, cache[name])

    def apply_sparse(self, params, x, t, cache, plan: TilePlan, stats: str = "reuse"):
        """Sparse forward: only the plan's active tiles are computed; the rest comes from
        ``cache`` (from :meth:`record` on the original image, same ``t``). With
        ``plan.dense`` this is the dense network (:meth:`apply`)."""
        _check_stats(stats)
        if plan.dense:
            return self.apply(params, x, t)
        return self.apply_sparse_inplace(params, x, t, self.pad_cache(cache), plan, stats)[0]

    def apply_sparse_inplace(self, params, x, t, padded_cache, plan: TilePlan, stats: str = "reuse"):
        """:meth:`apply_sparse` on a cache stored pre-padded (:meth:`pad_cache`, or :meth:`record`
        with ``padded=True``), writing the recomputed tiles into the cached maps themselves:
        returns ``(out, cache)``, ``out`` equal to :meth:`apply_sparse`'s bit for bit.

        Meant to be jitted with the cache *donated*, so that XLA updates the cached maps in place
        and the call touches only the active tiles (:meth:`apply_sparse` pads every cached map and
        writes each layer's tiles into a full-size copy: a pass over the whole cache per call).
        The donated cache is *consumed*: its arrays are deleted by the call, and the returned
        ``cache`` holds the original maps with the edited image's tiles written in (on the layers
        that scatter tiles; the maps of layers computed densely or not at all are the input's):
        the cache of no image. To edit the same original again, save the tiles it overwrites
        before (:meth:`save_tiles`) and write them back after (:meth:`restore_tiles`), each a
        separate jitted call (in one program XLA would copy the maps to order the reads and writes)::

            padded = net.pad_cache(cache)  # once (or net.record(params, x, t, padded=True))
            step = jax.jit(net.apply_sparse_inplace, static_argnames="stats", donate_argnums=3)
            save = jax.jit(net.save_tiles)
            restore = jax.jit(net.restore_tiles, donate_argnums=0)
            saved = save(padded, plan)
            out, padded = step(params, x_edit, t, padded, plan)  # rebind: the argument is consumed
            padded = restore(padded, plan, saved)  # == the padded original cache, bit for bit

        (A buffer still viewed from outside, e.g. by ``np.asarray`` on CPU, cannot be donated: XLA then
        copies it.) Without donation nothing is consumed (XLA copies every map into the output: one pass over
        the cache, as :meth:`apply_sparse`). With ``plan.dense``: ``(apply(params, x, t), padded_cache)``.
        """
        _check_stats(stats)
        if plan.dense:
            return self.apply(params, x, t), padded_cache
        self._check_plan(x, plan)
        _check_padded(padded_cache, x)
        eng = SparseEngine(padded_cache, plan, stats)
        out, name = self._forward(eng, params, x, t)
        out = out[PAD:-PAD, PAD:-PAD]
        if plan.roi is not None:
            out = jnp.where(plan.roi[..., None], out, padded_cache[name][PAD:-PAD, PAD:-PAD])
        return out, {**padded_cache, **eng.written}

    def _scattered(self, plan: TilePlan):
        """``(name, level)`` of the layers whose tiles the sparse engine scatters into the cached maps
        (not the layers computed densely, nor those with no active tile)."""
        if plan.dense:
            return []
        graph = self.graph(plan.shape)
        out = []
        for L in graph.layers:
            r = int(round(math.log2(plan.shape[0] // graph.shapes[L["out"]][0])))
            bucket = plan.tiles(L["name"], r)[2]
            if 0 < bucket < plan.tile_total(r):
                out.append((L["name"], r))
        return out

    def save_tiles(self, padded_cache, plan: TilePlan):
        """The tiles of the padded cache that :meth:`apply_sparse_inplace` with ``plan`` overwrites:
        ``{layer name: (bucket, b, b, C)}`` (a few percent of the cache for a small edit)."""
        return {n: gather_tiles(padded_cache[n], plan.tiles(n, r)[0] + PAD, plan.blocks[r])
                for n, r in self._scattered(plan)}

    def restore_tiles(self, padded_cache, plan: TilePlan, saved):
        """Write the tiles from :meth:`save_tiles` back (donate ``padded_cache``: in place): after
        :meth:`apply_sparse_inplace` with the same plan, the padded original cache, bit for bit."""
        maps = dict(padded_cache)
        for n, r in self._scattered(plan):
            maps[n] = scatter_tiles(maps[n], plan.tiles(n, r)[0] + PAD, saved[n])
        return maps

    def _check_plan(self, x, plan):
        if tuple(x.shape[:2]) != plan.shape:
            raise ValueError(f"the plan is for images of size {plan.shape}, x has spatial shape {x.shape[:2]}")
        if len(plan.blocks) != self.levels:
            raise ValueError(f"the plan has {len(plan.blocks)} levels, the network {self.levels}")
        if self.levels > 1 and plan.blocks[0] % 2:
            raise ValueError(f"tile size {plan.blocks[0]} at level 0 must be even (it receives upsampled maps)")

    def graph(self, shape) -> GraphTrace:
        """The layer graph for images of spatial ``shape`` (traced once, cached)."""
        shape = tuple(int(s) for s in shape[:2])
        if shape not in self._graphs:
            x = jnp.zeros((1, *shape, self.in_channels))
            params = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), x, jnp.zeros((1,)))
            eng = GraphTrace()
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
                org, _, _, _, buckets[r] = tiles_of(np.ones(np.asarray(plan.masks[r]).shape, bool), b)
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
        m0, m, blocks = check_tile_mask(mask, self.levels, blocks, dilate)
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
            org, tmask, n, total, bucket = tiles_of(changed & needed, blocks[r], per_octave)
            if bucket > layer_dense_above * total:  # computed densely (the engine's bucket == total path)
                org, _, _, _, bucket = tiles_of(np.ones_like(changed), blocks[r])
            layers.append((L["name"], r, bucket))
            l_origins.append(jnp.asarray(org))
            l_masks.append(jnp.asarray(tmask))
            l_counts.append(n)
            union[r] |= tmask
            work += bucket * blocks[r] ** 2 * L["cost"] + (L.get("kv_cost", 0) if bucket else 0)
            dense_work += changed.size * L["cost"] + L.get("kv_cost", 0)
        origins, counts, totals, buckets = [], [], [], []
        for r, b in enumerate(blocks):
            org, _, n, total, bucket = tiles_of(union[r], b)
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


def _check_padded(padded_cache, x):
    H = max(int(v.shape[0]) for k, v in padded_cache.items() if not k.startswith("stats/"))
    if H != x.shape[0] + 2 * PAD:
        raise ValueError(f"the cache's largest map has {H} rows; for x of {x.shape[0]} rows a padded cache has "
                         f"{x.shape[0] + 2 * PAD}: pad it with net.pad_cache(cache)")


def _check_stats(stats):
    if stats not in ("reuse", "recompute"):
        raise ValueError(f"stats must be 'reuse' or 'recompute', got {stats!r}")
