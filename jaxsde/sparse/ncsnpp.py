"""The functional forward pass of NCSN++ / DDPM++ (:class:`jaxsde.models.ncsnpp.NCSNpp`) over its params
tree, written against an engine (dense, sparse, masked or graph trace).

Supported: the DDPM++ family (``fir=False``, ``progressive="none"``, ``progressive_input="none"``,
``resamp_with_conv=True``), either ``resblock_type``, Fourier or positional time embedding, with or
without ``conditional``, ``skip_rescale`` and ``scale_by_sigma``; and NCSN++'s FIR resampling
(``fir=True``, any ``fir_kernel``) with BigGAN blocks, and its residual input pyramid
(``progressive_input="residual"``): score_sde's CIFAR-10 NCSN++ configurations. Not supported
(``NotImplementedError``): ``progressive="output_skip"`` / ``"residual"``,
``progressive_input="input_skip"``, ``fir=True`` with DDPM blocks. Layers, named by their params path:

* ``ResnetBlockDDPMpp_k``: ``/Conv_0`` (GroupNorm + act pre-op, 3x3, + time bias) and ``/Conv_1``
  (GroupNorm + act, 3x3, + the block input, through the 1x1 ``NIN_0`` when the channels change,
  ``/ sqrt 2`` with ``skip_rescale``); ``Downsample_k`` / ``Upsample_k``: the stride-2 3x3 conv and the
  nearest-upsample + 3x3 conv.
* ``ResnetBlockBigGANpp_k``: the same two layers with a 1x1 ``Conv_2`` shortcut; with ``down`` / ``up``
  ``/Conv_0`` resamples its normalised input before the 3x3 conv (fir=False: 2x2 average pooling or
  nearest upsampling; fir=True: FIR down / upsampling), and ``/Conv_1``'s residual resamples the
  block input the same way before ``Conv_2``.
* ``Downsample_k`` with ``progressive_input="residual"``: the input pyramid's stride-2 3x3 conv
  (fir=True: FIR-filtered then a VALID stride-2 conv, params ``Conv2d_0/{weight, bias}``) plus the
  BigGAN down block's output, ``/ sqrt 2``: the next level's ``h`` and pyramid.
* ``AttnBlockpp_k``: single-head attention (``NIN_0..2`` = q, k, v, ``NIN_3`` = output), the engine's
  attention layer.
* ``Conv_0`` (input) and ``Conv_1`` (output: GroupNorm_0 + act pre-op; divided by sigma with
  ``scale_by_sigma``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ..models.layerspp import timestep_embedding
from ..models.ncsnpp import _ACTIVATIONS, NCSNppConfig
from .engine import _dense, _Norm, _Resample
from .graph import _Trace


def check_config(cfg: NCSNppConfig) -> None:
    """Raise ``NotImplementedError`` naming the config field the sparse forward pass does not support."""
    def refuse(field, supported):
        raise NotImplementedError(f"SparseUNet does not support NCSNpp with NCSNppConfig.{field}="
                                  f"{getattr(cfg, field)!r} ({supported})")

    if cfg.progressive != "none":
        refuse("progressive", "supported: 'none'")
    if cfg.progressive_input not in ("none", "residual"):
        refuse("progressive_input", "supported: 'none', 'residual'")
    if cfg.resblock_type == "ddpm" and cfg.fir:
        refuse("fir", "supported with resblock_type='biggan' only: the DDPM blocks' fused FIR up/down convs are not")
    if cfg.resblock_type == "ddpm" and not cfg.resamp_with_conv:
        refuse("resamp_with_conv", "supported: True")


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
    act = _ACTIVATIONS[cfg.nonlinearity]
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
    return _dense(p["Dense_1"], act(_dense(p["Dense_0"], emb))), sigma


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
    act = _ACTIVATIONS[cfg.nonlinearity]
    nf, n_levels, H0 = cfg.nf, len(cfg.ch_mult), int(x.shape[0])
    skip = math.sqrt(2.0) if cfg.skip_rescale else 1.0
    names = _Names()
    biggan = cfg.resblock_type == "biggan"
    if not cfg.centered and not isinstance(eng, _Trace):
        x = 2 * x - 1.0

    emb = eng.compute(lambda: _time_embedding(cfg, p, t))
    temb, sigma = (None, None) if emb is None else emb

    def norm(q, channels, activation=act):
        return _Norm(q, _groups(channels), act=activation)

    def block(hs, out_ch=None, up=False, down=False):
        """A residual block (two layers) on the concatenation of ``hs``."""
        name = names("ResnetBlockBigGANpp" if biggan else "ResnetBlockDDPMpp")
        q = p[name]
        cin = sum(int(h.shape[-1]) for h in hs)
        out_ch = out_ch or cin
        bias = eng.compute(lambda: _dense(q["Dense_0"], act(temb))) if cfg.conditional else None
        fir = None
        if cfg.fir and (up or down):
            fir = _Resample.up2(cfg.fir_kernel) if up else _Resample.down2(cfg.fir_kernel)
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

    def pyramid_down(pyr, h):
        """The residual input pyramid: ``(Downsample_k(pyr) + h) / sqrt 2`` (one layer)."""
        name = names("Downsample")
        q = p[name]
        if cfg.fir:  # FIR filter, then a VALID stride-2 3x3 conv (StyleGAN2's fused Conv2d)
            conv = {"kernel": q["Conv2d_0"]["weight"], "bias": q["Conv2d_0"]["bias"]}
            return eng.layer(name, [pyr], conv, stride=2, fir=_Resample.blur(cfg.fir_kernel, 3),
                             padding=((0, 0), (0, 0)), res=([h], None), out_scale=skip)
        return eng.layer(name, [pyr], q["Conv_0"], stride=2, res=([h], None), out_scale=skip)

    xs = eng.source(x)
    pyramid = xs
    hs = [eng.layer("Conv_0", [xs], p["Conv_0"])]
    for level in range(n_levels):
        for _ in range(cfg.num_res_blocks):
            h = block([hs[-1]], nf * cfg.ch_mult[level])
            if (H0 >> level) in cfg.attn_resolutions:
                h = attention(h)
            hs.append(h)
        if level != n_levels - 1:
            if biggan:
                h = block([hs[-1]], down=True)
            else:
                name = names("Downsample")
                h = eng.layer(name, [hs[-1]], p[name]["Conv_0"], stride=2)
            if cfg.progressive_input == "residual":
                pyramid = h = pyramid_down(pyramid, h)
            hs.append(h)
    h = block([hs[-1]])
    h = attention(h)
    h = block([h])
    for level in reversed(range(n_levels)):
        for _ in range(cfg.num_res_blocks + 1):
            h = block([h, hs.pop()], nf * cfg.ch_mult[level])
        if (H0 >> level) in cfg.attn_resolutions:
            h = attention(h)
        if level != 0:
            if biggan:
                h = block([h], up=True)
            else:
                name = names("Upsample")
                h = eng.layer(name, [h], p[name]["Conv_0"], up=True)
    out_scale = sigma if cfg.scale_by_sigma and sigma is not None else 1.0
    out = eng.layer("Conv_1", [h], p["Conv_1"], norm=norm(p["GroupNorm_0"], int(h.shape[-1])), out_scale=out_scale)
    return out, "Conv_1"
