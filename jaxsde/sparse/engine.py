"""The engines that run a forward pass: :class:`DenseEngine` (true network, recording, masked
reference, frozen statistics) and :class:`SparseEngine` (active tiles only, gathered with their halo,
convolved VALID, scattered into the cached maps), and their primitives (convolution, GroupNorm
statistics and the fused norm pre-op, gather / scatter on maps with a zero border of ``PAD``,
attention). The semantics are in :mod:`jaxsde.sparse`'s docstring.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..models import fir
from ..models.unet import group_count
from .plan import TilePlan

PAD = 3  # zero border kept around every stored map (>= the largest overhang of a gathered window: 3 for
# a FIR (1, 3, 3, 1) downsampling + 3x3 conv, 2 for a stride-2 or a nearest-upsample 3x3 conv)
GN_EPS = 1e-6  # flax.linen.GroupNorm's default epsilon


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


class NormOp:
    """A fused pre-op: GroupNorm with params ``p`` (``groups=None``: DigitsUNet's rule), an
    optional ``x (1 + scale) + shift`` (UNet2D's scale_shift time conditioning), then ``act``."""

    def __init__(self, p, groups=None, eps=GN_EPS, two_pass=False, act=jax.nn.silu, scale_shift=None):
        self.p, self.groups, self.eps, self.two_pass, self.act, self.scale_shift = (p, groups, eps, two_pass, act,
                                                                                   scale_shift)

    def n_groups(self, channels):
        return group_count(channels) if self.groups is None else self.groups

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


def pad_map(x):
    return jnp.pad(x, ((PAD, PAD), (PAD, PAD), (0, 0)))


def gather_tiles(xp, origins, size):
    """Windows ``(n, size, size, C)`` of a padded map at padded-coordinate ``origins`` (n, 2)."""
    C = xp.shape[-1]
    return jax.vmap(lambda o: lax.dynamic_slice(xp, (o[0], o[1], 0), (size, size, C)))(origins)


def scatter_tiles(xp, origins, tiles):
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


def dense_apply(p, x):
    return x @ p["kernel"] + p["bias"]


def _attend(p, hq, hkv, heads):
    """Multi-head attention of queries ``hq`` (N, C) over keys/values ``hkv`` (M, C) (normalised
    maps), with UNet2D's ``to_q``/``to_k``/``to_v``/``to_out_0`` projections: (N, C)."""
    C = hq.shape[-1]
    d = C // heads
    q = dense_apply(p["to_q"], hq).reshape(-1, heads, d)
    k = dense_apply(p["to_k"], hkv).reshape(-1, heads, d)
    v = dense_apply(p["to_v"], hkv).reshape(-1, heads, d)
    w = jnp.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
    return dense_apply(p["to_out_0"], jnp.einsum("hqk,khd->qhd", w, v).reshape(-1, C))


# --------------------------------------------------------------------------------------------
# engines: one layer = [norm pre-op(concat(srcs))] -> [nearest up / 2x2 avg pool / FIR] -> [conv] -> [+ bias]
# -> [+ residual (resampled, 1x1 conv)] -> [/ out_scale]; one attention = (attend(norm(x)) + x) / out_scale
# --------------------------------------------------------------------------------------------


class _Arrays:
    """Shared part of the engines that compute with arrays."""

    def compute(self, fn):
        """Side computations that are not per-pixel layers (time embeddings)."""
        return fn()


def _pool2(x):
    """2x2 average pooling of the last three axes ``(..., H, W, C) -> (..., H/2, W/2, C)`` (NCSN++'s naive
    downsampling)."""
    H, W, C = x.shape[-3:]
    return x.reshape(*x.shape[:-3], H // 2, 2, W // 2, 2, C).mean(axis=(-4, -2))


def _up2(x):
    """Nearest 2x upsampling of the last three axes ``(..., H, W, C) -> (..., 2H, 2W, C)``."""
    return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


def _unscaled(s) -> bool:
    """Whether an ``out_scale`` is the Python constant 1 (no division); a traced scale never is."""
    return isinstance(s, int | float) and s == 1.0


class Resample:
    """A linear resampling of a map, ``upfirdn``-style (:func:`jaxsde.models.fir.upfirdn2d`): zero
    insertion by ``up``, zero padding ``pad = (before, after)`` (negative crops), the 2-D FIR
    filter ``k`` (a true convolution), decimation by ``down``. NCSN++'s FIR up / downsampling
    (:meth:`up2`, :meth:`down2`), the FIR parts of its fused resampling convolutions (:meth:`blur`,
    :meth:`up_conv`), nearest upsampling and average pooling as parameter-free layers
    (:meth:`nearest2`, :meth:`pool2`).

    The sparse engine computes rows ``[y0, y0 + n)`` of the resampled map from a window of the
    input (:meth:`window`): with ``y0 * down`` a multiple of ``up`` up to a static offset (tile
    origins are multiples of an even tile size), the window's origin and the filter's phase
    are the same for every tile.
    """

    def __init__(self, k, up=1, down=1, pad=(0, 0)):
        self.k, self.up, self.down, self.pad = np.asarray(k, np.float32), up, down, tuple(pad)

    @classmethod
    def up2(cls, kernel) -> Resample:
        """FIR 2x upsampling (:func:`jaxsde.models.fir.upsample_2d`): ``n -> 2n``."""
        k = fir.setup_kernel(kernel) * 4
        p = k.shape[0] - 2
        return cls(k, up=2, pad=((p + 1) // 2 + 1, p // 2))

    @classmethod
    def down2(cls, kernel) -> Resample:
        """FIR 2x downsampling (:func:`jaxsde.models.fir.downsample_2d`): ``n -> n / 2``."""
        k = fir.setup_kernel(kernel)
        p = k.shape[0] - 2
        return cls(k, down=2, pad=((p + 1) // 2, p // 2))

    @classmethod
    def nearest2(cls) -> Resample:
        """Nearest 2x upsampling (:func:`jaxsde.models.fir.naive_upsample_2d`, bitwise: sums with zeros)."""
        return cls(np.ones((2, 2), np.float32), up=2, pad=(1, 0))

    @classmethod
    def pool2(cls) -> Resample:
        """2x2 average pooling (:func:`jaxsde.models.fir.naive_downsample_2d`, to rounding)."""
        return cls(np.full((2, 2), 0.25, np.float32), down=2)

    @classmethod
    def up_conv(cls, kernel, conv_k=3) -> Resample:
        """FIR 2x upsampling to run before a VALID ``conv_k`` convolution: together StyleGAN2's fused
        :func:`jaxsde.models.fir.upsample_conv_2d` (a transposed convolution, then the FIR filter;
        both linear and shift-invariant on the upsampled grid, so they commute: equal to rounding)."""
        k = fir.setup_kernel(kernel) * 4
        kh = k.shape[0]
        p = kh - 2 - (conv_k - 1)
        p0 = (p + 1) // 2 + 1 + conv_k - 1
        return cls(k, up=2, pad=(p0, conv_k + kh - 2 - p0))

    @classmethod
    def blur(cls, kernel, conv_k=3) -> Resample:
        """The FIR filter before a stride-2 VALID ``conv_k`` convolution
        (:func:`jaxsde.models.fir.conv_downsample_2d`): ``n -> n + 1`` for ``(1, 3, 3, 1)``."""
        k = fir.setup_kernel(kernel)
        p = k.shape[0] - 2 + conv_k - 1
        return cls(k, pad=((p + 1) // 2, p // 2))

    @property
    def level_shift(self) -> int:
        """+1 (downsampling), -1 (upsampling) or 0: the change of resolution level."""
        return 1 if self.down == 2 else -1 if self.up == 2 else 0

    def out_size(self, n: int) -> int:
        return (n * self.up + self.pad[0] + self.pad[1] - self.k.shape[0]) // self.down + 1

    def __call__(self, x, pad=None):
        """Resample ``x`` (H, W, C) or (N, H, W, C); ``pad`` overrides the padding (windows)."""
        y = fir.upfirdn2d(x if x.ndim == 4 else x[None], self.k, self.up, self.down, self.pad if pad is None else pad)
        return y if x.ndim == 4 else y[0]

    def window(self, y0, n, shift=0):
        """``(origin, size, pad)``: the input rows ``[origin, origin + size)`` from which
        ``self(window, pad)`` gives the resampled rows ``[y0, y0 + n)``, ``y0`` (traced) minus
        the static ``shift`` a multiple of ``up`` (so the filter's phase is static)."""
        u, d, kh, p0 = self.up, self.down, self.k.shape[0], self.pad[0]
        off = (shift * d - p0) % u
        origin = (y0 * d - p0 - off) // u
        size = -(-(off + (n - 1) * d + kh) // u)
        return origin, size, (-off, (n - 1) * d + kh - size * u + off)

    def reads(self, n_in: int) -> np.ndarray:
        """``R[i, j]``: resampled row ``i`` reads input row ``j`` (host side, the tracer)."""
        u, d, kh, p0 = self.up, self.down, self.k.shape[0], self.pad[0]
        R = np.zeros((self.out_size(n_in), n_in), np.int64)
        for i in range(R.shape[0]):
            lo, hi = -(-(i * d - p0) // u), (i * d - p0 + kh - 1) // u
            R[i, max(lo, 0):min(hi, n_in - 1) + 1] = 1
        return R


def _resampled(x, how):
    """``x`` (..., H, W, C) resampled: ``"down"`` 2x2 average pooling, ``"up"`` nearest 2x, a :class:`Resample`."""
    if how == "down":
        return _pool2(x)
    if how == "up":
        return _up2(x)
    return x if how is None else how(x)


def _residual(res, gather=None):
    """The residual branch ``res = (srcs, conv[, resample])``: concatenated sources, resampled
    (``"down"``: 2x2 average pooling, ``"up"``: nearest 2x, or a :class:`Resample`), then the
    optional 1x1 ``conv``. ``gather(src)`` takes each source's window, already resampled
    (sparse engine); None = the whole maps."""
    r_srcs, r_conv = res[0], res[1]
    how = res[2] if len(res) > 2 else None
    parts = [s if gather is None else gather(s) for s in r_srcs]
    r = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    if gather is None:
        r = _resampled(r, how)
    if r_conv is not None:
        batched = r if r.ndim == 4 else r[None]
        pad = "SAME" if gather is None else "VALID"  # a 1x1 convolution either way
        r = _conv(batched, r_conv["kernel"], r_conv["bias"], 1, pad).reshape(*r.shape[:-1], -1)
    return r


def _dense_layer(srcs, conv, stats, *, stride=1, up=False, pool=False, fir=None, norm=None, bias=None, res=None,
                 padding=None, out_scale=1.0):
    """One layer computed densely on unpadded maps; ``stats`` None = the maps' own statistics.
    ``up``: nearest 2x upsampling, ``pool``: 2x2 average pooling, ``fir``: a :class:`Resample`,
    between the pre-op and the convolution. Returns ``(output, statistics used or None)``."""
    x = jnp.concatenate(srcs, axis=-1) if len(srcs) > 1 else srcs[0]
    if norm is not None:
        if stats is None:
            stats = norm.stats(x)
        x = norm(x, stats)
    if up:
        x = _up2(x)
    if pool:
        x = _pool2(x)
    if fir is not None:
        x = fir(x)
    if conv is None:  # a parameter-free resampling layer
        y = x
    else:
        y = _conv(x[None], conv["kernel"], conv["bias"], stride, "SAME" if padding is None else padding)[0]
    if bias is not None:
        y = y + bias
    if res is not None:
        y = y + _residual(res)
    if not _unscaled(out_scale):
        y = y / out_scale
    return y, stats


def _dense_attention(x, p, norm, stats, heads, out_scale):
    """Self-attention over the whole map ``x`` (H, W, C), with its residual and scale."""
    H, W, C = x.shape
    if norm is not None and stats is None:
        stats = norm.stats(x)
    h = x if norm is None else norm(x, stats)
    flat = h.reshape(H * W, C)
    y = _attend(p, flat, flat, heads).reshape(H, W, C) + x
    y = y if _unscaled(out_scale) else y / out_scale
    return y, stats


class DenseEngine(_Arrays):
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


class SparseEngine(_Arrays):
    """Sparse engine: maps are padded full-resolution arrays; convolutions touch active tiles only."""

    def __init__(self, cache, plan: TilePlan, stats="reuse"):
        self.cache, self.plan, self.stats = cache, plan, stats
        self.written: dict[str, Any] = {}  # the maps of the layers whose tiles were scattered into the cached map

    def _write(self, name, org, tiles):
        """Scatter ``tiles`` into the cached map at unpadded ``org`` (in place when the cache is donated)."""
        self.written[name] = y = scatter_tiles(self.cache[name], org + PAD, tiles)
        return y

    def source(self, x):
        return pad_map(x)

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

    def layer(self, name, srcs, conv, *, stride=1, up=False, pool=False, fir=None, norm=None, bias=None, res=None,
              padding=None, out_scale=1.0):
        lin = self._level_of(srcs[0])
        lout = lin + (stride == 2 or pool) - up + (0 if fir is None else fir.level_shift)
        b = self.plan.blocks[lout]
        org, mask, bucket = self.plan.tiles(name, lout)  # (n, 2) unpadded output-tile origins
        if bucket == 0:  # nothing to recompute at this layer
            return self.cache[name]
        stats = self._stats(name, norm, srcs)
        if bucket == self.plan.tile_total(lout):  # every tile: the dense layer on the mixed maps is cheaper
            inner = [s[PAD:-PAD, PAD:-PAD] for s in srcs]
            unpad = ([s[PAD:-PAD, PAD:-PAD] for s in res[0]], *res[1:]) if res is not None else None
            if norm is not None and stats is None:
                stats = norm.stats(jnp.concatenate(inner, axis=-1) if len(inner) > 1 else inner[0])
            y, _ = _dense_layer(inner, conv, stats, stride=stride, up=up, pool=pool, fir=fir, norm=norm, bias=bias,
                                res=unpad, padding=padding, out_scale=out_scale)
            return pad_map(jnp.where(mask[..., None], y, self.cache[name][PAD:-PAD, PAD:-PAD]))
        k = 1 if conv is None else conv["kernel"].shape[0]
        H_in = srcs[0].shape[0] - 2 * PAD
        W_in = srcs[0].shape[1] - 2 * PAD
        n_c = H_in if fir is None else fir.out_size(H_in)  # the convolution's input size
        if padding is None:
            out_H = -(-n_c // stride)
            pad_lo = max((out_H - 1) * stride + k - n_c, 0) // 2
        else:
            pad_lo = padding[0][0]
        if up:  # nearest-upsample then 3x3 (padding 1): low-res window with a 1-pixel halo, upsampled, cropped
            lo = org // 2 - 1
            in_org, in_size = lo, b // 2 + 2
        elif pool:  # 2x2 average pooling then 3x3 (padding 1): the pooled window with its halo, 2 input px each
            in_org, in_size = 2 * org - 2, 2 * b + 4
        elif fir is not None:  # the resampled window the convolution reads, from a window of the input
            c_org, c_size = org * stride - pad_lo, (b - 1) * stride + k
            in_org, in_size, fir_pad = fir.window(c_org, c_size, -pad_lo)
        else:
            in_org = org * stride - pad_lo
            in_size = (b - 1) * stride + k
        g = [gather_tiles(s, in_org + PAD, in_size) for s in srcs]
        x = jnp.concatenate(g, axis=-1) if len(g) > 1 else g[0]
        if norm is not None:
            x = norm(x, stats) * _inside(in_org, in_size, (H_in, W_in)).astype(x.dtype)
        if up:
            x = _up2(x)[:, 1:-1, 1:-1]
        if pool:
            x = _pool2(x)
        if fir is not None:  # zero outside the resampled map: the convolution's own zero padding
            n_cw = fir.out_size(W_in)
            x = fir(x, fir_pad) * _inside(c_org, c_size, (n_c, n_cw)).astype(x.dtype)
        y = x if conv is None else _conv(x, conv["kernel"], conv["bias"], stride, "VALID")
        if bias is not None:
            y = y + bias
        if res is not None:
            y = y + _residual(res, self._res_window(res, org, b))
        if not _unscaled(out_scale):
            y = y / out_scale
        return self._write(name, org, y)

    @staticmethod
    def _res_window(res, org, b):
        """``gather(src)``: a residual source's window under output tiles ``org`` (n, 2) of size
        ``b``, resampled to the tiles' resolution."""
        how = res[2] if len(res) > 2 else None
        if how == "down":  # the residual's sources are at the input resolution: 2b x 2b windows
            return lambda s: _pool2(gather_tiles(s, 2 * org + PAD, 2 * b))
        if how == "up":  # at half the output resolution (b even)
            return lambda s: _up2(gather_tiles(s, org // 2 + PAD, b // 2))
        if how is None:
            return lambda s: gather_tiles(s, org + PAD, b)
        w_org, w_size, pad = how.window(org, b)  # (the maps' zero border is the FIR's zero padding)
        return lambda s: how(gather_tiles(s, w_org + PAD, w_size), pad)

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
            return pad_map(jnp.where(mask[..., None], y, self.cache[name][PAD:-PAD, PAD:-PAD]))
        h = full if norm is None else norm(full, stats)
        q = gather_tiles(pad_map(h), org + PAD, b).reshape(-1, C)
        y = _attend(p, q, h.reshape(H * W, C), heads).reshape(-1, b, b, C)
        y = y + gather_tiles(x, org + PAD, b)
        y = y if _unscaled(out_scale) else y / out_scale
        return self._write(name, org, y)
