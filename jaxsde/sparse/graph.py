"""Receptive-field-exact planning: the network's layer graph, traced once (shapes only), and the
changed / needed masks propagated through it layer by layer (numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np


class _Node:
    """A feature map in the traced graph (shape only)."""

    def __init__(self, index, shape):
        self.index, self.shape = index, tuple(shape)


class GraphTrace:
    """Engine that records the layer graph: which maps each layer reads (through its
    convolution and through its residual branch, itself possibly pooled or upsampled), its
    stride / upsampling / average pooling / padding and kernel size; attention layers are global
    (every output reads every input)."""

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

    def layer(self, name, srcs, conv, *, stride=1, up=False, pool=False, fir=None, norm=None, bias=None, res=None,
              padding=None, out_scale=1.0):
        c_in = sum(int(s.shape[-1]) for s in srcs)
        kshape = (1, 1, c_in, c_in) if conv is None else tuple(conv["kernel"].shape)  # (None: resampling only)
        H, W = srcs[0].shape[:2]  # -> the convolution's input size, then its output size
        H, W = (fir.out_size(H), fir.out_size(W)) if fir is not None else (H * 2, W * 2) if up else \
            (H // 2, W // 2) if pool else (H, W)
        if padding is not None:
            H, W = ((n + sum(pd) - kshape[0]) // stride + 1 for n, pd in zip((H, W), padding, strict=True))
        else:
            H, W = -(-H // stride), -(-W // stride)
        out = self._node((H, W, kshape[-1]))
        self.layers.append(dict(name=name, srcs=[s.index for s in srcs], res=[s.index for s in res[0]] if res else [],
                                out=out.index, k=kshape[0], stride=stride, up=up, pool=pool, fir=fir, attention=False,
                                res_resample=res[2] if res and len(res) > 2 else None,
                                pad_lo=None if padding is None else padding[0][0],
                                cost=0 if conv is None else kshape[0] * kshape[1] * kshape[2] * kshape[3]))
        return out

    def attention(self, name, x, p, *, norm=None, heads=1, out_scale=1.0):
        H, W, C = x.shape
        out = self._node(x.shape)
        # per query pixel: q and output projections, and attention over H W keys; K/V: 2 C^2 per pixel
        self.layers.append(dict(name=name, srcs=[x.index], res=[], out=out.index, attention=True,
                                cost=2 * C * C + 2 * H * W * C, kv_cost=2 * C * C * H * W))
        return out


def _reads(n_in, n_out, k, stride, up, pad_lo=None, pool=False, fir=None):
    """``R[i, j]``: output row ``i`` of the layer reads input row ``j`` (SAME padding, or
    ``pad_lo`` rows before the first; with ``up``, a nearest 2x upsampling before the
    stride-1 convolution; with ``pool``, a 2x2 average pooling before it; with ``fir``, a FIR
    resampling (:class:`jaxsde.sparse.engine.Resample`) before it)."""
    if fir is not None:
        F = fir.reads(n_in)
        return _reads(F.shape[0], n_out, k, stride, False, pad_lo) @ F
    R = np.zeros((n_out, n_in), np.int64)
    for i in range(n_out):
        if up:
            lo, hi = i - (k - 1) // 2, i - (k - 1) // 2 + k - 1  # rows of the upsampled map
            lo, hi = max(lo, 0) // 2, min(hi, 2 * n_in - 1) // 2
        elif pool:
            lo, hi = max(i - (k - 1) // 2, 0), min(i + k // 2, n_out - 1)  # rows of the pooled map
            lo, hi = 2 * lo, 2 * hi + 1
        else:
            if pad_lo is None:
                pad_lo = max((n_out - 1) * stride + k - n_in, 0) // 2
            lo, hi = max(i * stride - pad_lo, 0), min(i * stride - pad_lo + k - 1, n_in - 1)
        R[i, lo:hi + 1] = 1
    return R


def _res_reads(n_in, n_out, how):
    """``R[i, j]``: output row ``i`` of a residual branch reads input row ``j`` (identity, or a
    2x2 average pooling ``"down"``, or a nearest 2x upsampling ``"up"``, or a FIR resampling;
    a 1x1 convolution after)."""
    if how is not None and not isinstance(how, str):
        return how.reads(n_in)
    i = np.arange(n_out)
    R = np.zeros((n_out, n_in), np.int64)
    if how == "down":
        R[i, 2 * i] = R[i, 2 * i + 1] = 1
    elif how == "up":
        R[i, i // 2] = 1
    else:
        R[i, i] = 1
    return R


def _through_res(changed, out_shape, how):
    """A residual source's ``changed`` mask at the layer's output resolution (through its resampling)."""
    R = _res_reads(changed.shape[0], out_shape[0], how)
    C = _res_reads(changed.shape[1], out_shape[1], how)
    return (R @ changed @ C.T) > 0


def propagate(graph: GraphTrace, changed, roi=None):
    """Per layer: ``(changed, needed)`` boolean maps at the layer's output resolution.

    ``changed``: the output pixels whose receptive field contains a changed input pixel
    (forward: the input ``changed`` mask pushed through every convolution's footprint, stride,
    padding, upsampling or average pooling, concatenation and residual add (itself possibly
    pooled or upsampled); an attention layer changes every
    pixel once any input changed). ``needed``: the pixels that the final output's ``roi``
    (level-0 bool mask; None = every pixel) depends on (backward, the transposed footprints;
    an attention layer needs every input once any output is needed). GroupNorm statistics are
    treated as fixed (a per-channel affine map); see :mod:`jaxsde.sparse`.
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
            geometry = (L["k"], L["stride"], L["up"], L["pad_lo"], L.get("pool", False), L.get("fir"))
            R = _reads(src_shape[0], out_shape[0], *geometry)
            C = _reads(src_shape[1], out_shape[1], *geometry)
            mats.append((R, C))
            out = (R @ cin @ C.T) > 0
        for s in L["res"]:
            out |= _through_res(maps[s], out_shape, L.get("res_resample"))
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
            R = _res_reads(graph.shapes[s][0], n.shape[0], L.get("res_resample"))
            C = _res_reads(graph.shapes[s][1], n.shape[1], L.get("res_resample"))
            needed[s] |= (R.T @ n @ C) > 0
    return {L["name"]: (maps[L["out"]], needed[L["out"]]) for L in graph.layers}
