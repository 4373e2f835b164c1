"""The functional forward pass of NCSN++ / DDPM++ (:class:`jaxsde.models.ncsnpp.NCSNpp`) over its params
tree, written against an engine (dense, sparse, masked or graph trace).

Supported: every :class:`~jaxsde.models.ncsnpp.NCSNppConfig` but FIR kernels over 4 taps
(``NotImplementedError``): either ``resblock_type``, ``fir`` or naive resampling, with or without
resampling convs, the ``progressive`` output pyramids (``"output_skip"``, ``"residual"``) and the
``progressive_input`` ones (``"input_skip"``, either ``progressive_combine``; ``"residual"``),
Fourier or positional time embedding, with or without ``conditional``, ``skip_rescale`` and
``scale_by_sigma`` (score_sde's DDPM++ and NCSN++ configurations). Layers, named by their params path:

* ``ResnetBlockDDPMpp_k``: ``/Conv_0`` (GroupNorm + act pre-op, 3x3, + time bias) and ``/Conv_1``
  (GroupNorm + act, 3x3, + the block input, through the 1x1 ``NIN_0`` when the channels change,
  ``/ sqrt 2`` with ``skip_rescale``).
* ``ResnetBlockBigGANpp_k``: the same two layers with a 1x1 ``Conv_2`` shortcut; with ``down`` / ``up``
  ``/Conv_0`` resamples its normalised input before the 3x3 conv (fir=False: 2x2 average pooling or
  nearest upsampling; fir=True: FIR down / upsampling), and ``/Conv_1``'s residual resamples the
  block input the same way before ``Conv_2``.
* ``Downsample_k`` / ``Upsample_k`` (``layerspp.Downsample`` / ``Upsample``: DDPM blocks' resampling,
  the pyramids): with a conv, the stride-2 3x3 conv (fir: FIR-filtered, then a VALID stride-2 conv,
  params ``Conv2d_0/{weight, bias}``) or the nearest-upsample + 3x3 conv (fir: FIR upsampling, then
  a VALID 3x3 conv: StyleGAN2's fused transposed conv + FIR reordered, equal to rounding); without,
  a parameter-free resampling layer (``conv=None``). The residual input pyramid's layer adds the
  down block's output (``/ sqrt 2``): the next level's ``h`` and pyramid; the residual output
  pyramid's adds ``h``.
* ``Combine_k`` (``input_skip``): the 1x1 ``Conv_0`` of the downsampled image plus ``h`` (``"sum"``), or
  concatenated with ``h`` (``"cat"``: the skip is the list of both maps, concatenated by its readers).
* ``AttnBlockpp_k``: single-head attention (``NIN_0..2`` = q, k, v, ``NIN_3`` = output), the engine's
  attention layer.
* ``Conv_k`` / ``GroupNorm_k`` at the top level: the input conv (``Conv_0``), the output conv
  (GroupNorm + act pre-op; divided by sigma with ``scale_by_sigma``), and the output pyramids' convs
  (``output_skip``: each level's ``Conv_k(act(GroupNorm_k(h)))`` plus the upsampled pyramid).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ..models.layerspp import timestep_embedding
from ..models.ncsnpp import ACTIVATIONS, NCSNppConfig
from .engine import NormOp, Resample, dense_apply
from .graph import GraphTrace

_VALID = ((0, 0), (0, 0))  # explicit no-padding (the fused FIR convolutions)


def check_config(cfg: NCSNppConfig) -> None:
    """Raise ``NotImplementedError`` naming the config field the sparse forward pass does not support:
    a ``fir_kernel`` longer than 4 taps (its windows would overhang the maps' zero border ``PAD``)."""
    if cfg.fir and len(cfg.fir_kernel) > 4:
        raise NotImplementedError(f"SparseUNet does not support NCSNpp with NCSNppConfig.fir_kernel="
                                  f"{cfg.fir_kernel!r} (at most 4 taps)")


def _groups(channels: int) -> int:
    """score_sde's GroupNorm group count ``min(C // 4, 32)``."""
    return min(channels // 4, 32)


def _nin(q):
    """A NIN's params ``{W (C, D), b (D,)}`` as a dense layer's ``{kernel, bias}``."""
    return {"kernel": q["W"], "bias": q["b"]}


def _nin_conv(q):
    """A NIN's params as a 1x1 convolution's ``{kernel (1, 1, C, D), bias}``."""
    return {"kernel": q["W"][None, None], "bias": q["b"]}


def _time_embedding(cfg: NCSNppConfig, p, t):
    """``(temb (4 nf,) or None, sigma)`` for one scalar ``time_cond`` ``t`` (sigma for Fourier
    embeddings; the label ``t * 999`` for positional ones, sigma then read off the VE grid)."""
    act = ACTIVATIONS[cfg.nonlinearity]
    tc = jnp.reshape(jnp.asarray(t, jnp.float32), (1,))
    if cfg.embedding_type == "fourier":
        sigma = tc[0]
        proj = jnp.log(tc)[:, None] * p["GaussianFourierProjection_0"]["W"][None, :] * (2 * np.pi)
        emb = jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)[0]
    else:
        sigmas = np.exp(np.linspace(np.log(cfg.sigma_max), np.log(cfg.sigma_min), cfg.num_scales))
        sigma = jnp.asarray(sigmas, jnp.float32)[tc.astype(jnp.int32)][0]
        emb = timestep_embedding(tc, cfg.nf)[0]
    if not cfg.conditional:
        return None, sigma
    return dense_apply(p["Dense_1"], act(dense_apply(p["Dense_0"], emb))), sigma


class _Names:
    """Flax's automatic submodule names: ``ClassName_k``, counted per class in call order."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, cls: str) -> str:
        k = self.counts.get(cls, 0)
        self.counts[cls] = k + 1
        return f"{cls}_{k}"


def ncsnpp_forward(eng, model, p, x, t):
    """NCSNpp ``model``'s forward pass on one sample ``x`` (H, W, C) at scalar ``time_cond`` ``t``
    with engine ``eng``: ``(output, name of the last layer)``."""
    cfg = model.config
    check_config(cfg)
    act = ACTIVATIONS[cfg.nonlinearity]
    nf, n_levels, H0 = cfg.nf, len(cfg.ch_mult), int(x.shape[0])
    skip = math.sqrt(2.0) if cfg.skip_rescale else 1.0
    names = _Names()
    biggan = cfg.resblock_type == "biggan"
    if not cfg.centered and not isinstance(eng, GraphTrace):
        x = 2 * x - 1.0

    emb = eng.compute(lambda: _time_embedding(cfg, p, t))
    temb, sigma = (None, None) if emb is None else emb

    def norm(q, channels, activation=act):
        return NormOp(q, _groups(channels), act=activation)

    def block(hs, out_ch=None, up=False, down=False):
        """A residual block (two layers) on the concatenation of ``hs``."""
        name = names("ResnetBlockBigGANpp" if biggan else "ResnetBlockDDPMpp")
        q = p[name]
        cin = sum(int(h.shape[-1]) for h in hs)
        out_ch = out_ch or cin
        bias = eng.compute(lambda: dense_apply(q["Dense_0"], act(temb))) if cfg.conditional else None
        fir = None
        if cfg.fir and (up or down):
            fir = Resample.up2(cfg.fir_kernel) if up else Resample.down2(cfg.fir_kernel)
        nearest = not cfg.fir
        h = eng.layer(name + "/Conv_0", hs, q["Conv_0"], up=up and nearest, pool=down and nearest, fir=fir,
                      norm=norm(q["GroupNorm_0"], cin), bias=bias)
        if biggan:
            short = q["Conv_2"] if cin != out_ch or up or down else None
        else:
            short = eng.compute(lambda: _nin_conv(q["NIN_0"])) if cin != out_ch else None
        resample = fir if fir is not None else "up" if up else "down" if down else None
        return eng.layer(name + "/Conv_1", [h], q["Conv_1"], norm=norm(q["GroupNorm_1"], out_ch),
                         res=(hs, short, resample), out_scale=skip)

    def attention(h):
        name = names("AttnBlockpp")
        q = p[name]
        proj = {"to_q": _nin(q["NIN_0"]), "to_k": _nin(q["NIN_1"]), "to_v": _nin(q["NIN_2"]),
                "to_out_0": _nin(q["NIN_3"])}
        return eng.attention(name, h, proj, norm=norm(q["GroupNorm_0"], int(h.shape[-1]), None), heads=1,
                             out_scale=skip)

    def downsample(srcs, with_conv, res=None, out_scale=1.0):
        """``layerspp.Downsample`` (``Downsample_k``) of the concatenation of ``srcs`` as one layer,
        with an optional residual."""
        name = names("Downsample")
        if not with_conv:  # parameter-free: FIR downsampling or 2x2 average pooling
            fir = Resample.down2(cfg.fir_kernel) if cfg.fir else Resample.pool2()
            return eng.layer(name, srcs, None, fir=fir, res=res, out_scale=out_scale)
        q = p[name]
        if cfg.fir:  # FIR filter, then a VALID stride-2 3x3 conv (StyleGAN2's fused Conv2d)
            conv = {"kernel": q["Conv2d_0"]["weight"], "bias": q["Conv2d_0"]["bias"]}
            return eng.layer(name, srcs, conv, stride=2, fir=Resample.blur(cfg.fir_kernel, 3), padding=_VALID,
                             res=res, out_scale=out_scale)
        return eng.layer(name, srcs, q["Conv_0"], stride=2, res=res, out_scale=out_scale)

    def upsample(src, with_conv, res=None, out_scale=1.0):
        """``layerspp.Upsample`` (``Upsample_k``) as one layer, with an optional residual."""
        name = names("Upsample")
        if not with_conv:  # parameter-free: FIR or nearest upsampling
            fir = Resample.up2(cfg.fir_kernel) if cfg.fir else Resample.nearest2()
            return eng.layer(name, [src], None, fir=fir, res=res, out_scale=out_scale)
        q = p[name]
        if cfg.fir:  # FIR upsampling then a VALID 3x3 conv (the fused transposed conv + FIR, reordered)
            conv = {"kernel": q["Conv2d_0"]["weight"], "bias": q["Conv2d_0"]["bias"]}
            return eng.layer(name, [src], conv, fir=Resample.up_conv(cfg.fir_kernel, 3), padding=_VALID, res=res,
                             out_scale=out_scale)
        return eng.layer(name, [src], q["Conv_0"], up=True, res=res, out_scale=out_scale)

    def output_conv(h, res=None, out_scale=1.0):
        """``conv3x3(act(GroupNorm(h)))`` at the top level (``GroupNorm_k``, ``Conv_k``): ``(map, name)``."""
        gn, name = names("GroupNorm"), names("Conv")
        return eng.layer(name, [h], p[name], norm=norm(p[gn], int(h.shape[-1])), res=res, out_scale=out_scale), name

    out_scale = 1.0
    if cfg.scale_by_sigma and sigma is not None:
        out_scale = sigma
    xs = eng.source(x)
    input_pyramid = xs
    hs = [[eng.layer(names("Conv"), [xs], p["Conv_0"])]]  # skips; each a list of maps (concatenated)
    for level in range(n_levels):
        for _ in range(cfg.num_res_blocks):
            h = block(hs[-1], nf * cfg.ch_mult[level])
            if (H0 >> level) in cfg.attn_resolutions:
                h = attention(h)
            hs.append([h])
        if level != n_levels - 1:
            h = block(hs[-1], down=True) if biggan else downsample(hs[-1], cfg.resamp_with_conv)
            hs.append([h])
            if cfg.progressive_input == "input_skip":  # Combine_k's 1x1 conv of the downsampled image, + or cat h
                input_pyramid = downsample([input_pyramid], False)
                name = names("Combine")
                if cfg.progressive_combine == "sum":
                    hs[-1] = [eng.layer(name, [input_pyramid], p[name]["Conv_0"], res=([h], None))]
                else:
                    hs[-1] = [eng.layer(name, [input_pyramid], p[name]["Conv_0"]), h]
            elif cfg.progressive_input == "residual":  # (Downsample_k(pyramid) + h) / sqrt 2
                input_pyramid = h = downsample([input_pyramid], True, res=([h], None), out_scale=skip)
                hs[-1] = [h]
    h = block(hs[-1])
    h = attention(h)
    h = block([h])
    pyramid = None
    last = None
    for level in reversed(range(n_levels)):
        for _ in range(cfg.num_res_blocks + 1):
            h = block([h, *hs.pop()], nf * cfg.ch_mult[level])
        if (H0 >> level) in cfg.attn_resolutions:
            h = attention(h)
        if cfg.progressive == "output_skip":  # pyramid = up(pyramid) + conv3x3(act(GroupNorm(h)))
            if level != n_levels - 1:
                pyramid = upsample(pyramid, False)
            res = None if pyramid is None else ([pyramid], None)
            pyramid, last = output_conv(h, res, out_scale if level == 0 else 1.0)
        elif cfg.progressive == "residual":  # pyramid = h = (up_conv(pyramid) + h) / sqrt 2
            if level == n_levels - 1:
                pyramid, _ = output_conv(h)
            else:
                pyramid = h = upsample(pyramid, True, res=([h], None), out_scale=skip)
        if level != 0:
            h = block([h], up=True) if biggan else upsample(h, cfg.resamp_with_conv)
    if cfg.progressive == "output_skip":
        return pyramid, last
    out, last = output_conv(h, out_scale=out_scale)
    return out, last
