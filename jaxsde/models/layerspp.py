"""Layers of NCSN++ / DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Flax linen re-implementation of the layers in yang-song/score_sde ``models/layerspp.py``,
``models/layers.py`` and ``models/up_or_down_sampling.py`` (Apache-2.0), written from their
description. Class names, attribute names and the order in which submodules are called are kept, so
that Flax's automatic names (``ClassName_k`` counted per parent in call order) give the parameter
paths of published score_sde checkpoints: e.g. ``ResnetBlockBigGANpp_3/{GroupNorm_0, Conv_0, Dense_0,
GroupNorm_1, Conv_1, Conv_2}``, ``AttnBlockpp_0/{GroupNorm_0, NIN_0..3}`` (params ``W``, ``b``),
``Downsample_0/Conv2d_0/{weight (HWIO), bias}``.

Every tensor is NHWC. GroupNorm uses ``min(C // 4, 32)`` groups and eps 1e-6 (Flax's default).
Initialisers follow DDPM (``variance_scaling(scale, 'fan_avg', 'uniform')``, scale 0 -> 1e-10);
they matter for training only, not for loading checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import fir


def default_init(scale: float = 1.0):
    """DDPM's initialiser: ``variance_scaling(scale, 'fan_avg', 'uniform')``, scale 0 read as 1e-10."""
    return jax.nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def conv3x3(x, out_ch: int, stride: int = 1, init_scale: float = 1.0):
    """A 3x3 ``nn.Conv`` (SAME padding, bias), named ``Conv_k`` in the calling module."""
    return nn.Conv(out_ch, (3, 3), strides=(stride, stride), padding="SAME",
                   kernel_init=default_init(init_scale))(x)


def conv1x1(x, out_ch: int, init_scale: float = 1.0):
    """A 1x1 ``nn.Conv`` with bias, named ``Conv_k`` in the calling module."""
    return nn.Conv(out_ch, (1, 1), padding="SAME", kernel_init=default_init(init_scale))(x)


def skip_rescale(a):
    """``a / sqrt(2)``, in ``a``'s dtype when it is 16-bit (the NumPy float64 scalar would promote a
    bfloat16 ``a`` to float32); otherwise exactly as before."""
    root2 = np.sqrt(2.0)
    return a / (root2.astype(a.dtype) if jnp.finfo(a.dtype).bits < 32 else root2)


def group_norm(x):
    """``nn.GroupNorm`` with score_sde's ``min(C // 4, 32)`` groups."""
    return nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32))(x)


def timestep_embedding(timesteps, dim: int, max_positions: int = 10000):
    """DDPM sinusoidal embedding ``(B,) -> (B, dim)``: ``[sin(t w_i), cos(t w_i)]`` with
    ``w_i = exp(-i log(max_positions) / (dim/2 - 1))``, sin first, zero-padded when ``dim`` is odd."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(np.log(max_positions) / (half - 1)))
    emb = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, [[0, 0], [0, 1]])
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features ``(B,) -> (B, 2 * embedding_size)``: ``[sin(2 pi x W), cos(2 pi x W)]``.

    ``W ~ N(0, scale^2)`` of shape ``(embedding_size,)`` is fixed (gradient stopped, not trained).
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        w = self.param("W", jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        w = jax.lax.stop_gradient(w)
        proj = x[:, None] * w[None, :] * (2 * np.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class NIN(nn.Module):
    """A per-pixel linear map ``(..., C) -> (..., num_units)`` with params ``W (C, num_units)`` and ``b``."""

    num_units: int
    init_scale: float = 0.1

    @nn.compact
    def __call__(self, x):
        w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units))
        b = self.param("b", jax.nn.initializers.zeros, (self.num_units,))
        return jnp.tensordot(x, w, axes=1) + b


class Combine(nn.Module):
    """Merge a skip input ``x`` into ``y`` through a 1x1 conv to ``y``'s channels: concatenate or sum."""

    method: str = "cat"

    @nn.compact
    def __call__(self, x, y):
        h = conv1x1(x, y.shape[-1])
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"Combine method {self.method!r} not recognised; use 'cat' or 'sum'")


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all H*W positions, residual (divided by sqrt 2 with skip_rescale)."""

    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x):
        b, h_, w_, c = x.shape
        h = group_norm(x)
        q, k, v = NIN(c)(h), NIN(c)(h), NIN(c)(h)
        logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k) * (int(c) ** -0.5)
        weights = jax.nn.softmax(logits.reshape(b, h_, w_, h_ * w_), axis=-1).reshape(b, h_, w_, h_, w_)
        h = jnp.einsum("bhwHW,bHWc->bhwc", weights, v)
        h = NIN(c, init_scale=self.init_scale)(h)
        return skip_rescale(x + h) if self.skip_rescale else x + h


class Conv2d(nn.Module):
    """3x3 (odd ``kernel``) convolution with optional fused FIR up/downsampling (StyleGAN2's ``Conv2d``).

    Params ``weight`` (kh, kw, in, fmaps) HWIO and ``bias`` (fmaps,): the names score_sde uses.
    """

    fmaps: int
    kernel: int = 3
    up: bool = False
    down: bool = False
    resample_kernel: Sequence[int] = (1, 3, 3, 1)
    use_bias: bool = True
    kernel_init: Callable | None = None

    @nn.compact
    def __call__(self, x):
        if self.up and self.down:
            raise ValueError("Conv2d: up and down are exclusive")
        init = self.kernel_init or default_init()
        w = self.param("weight", init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
        if self.up:
            x = fir.upsample_conv_2d(x, w, self.resample_kernel)
        elif self.down:
            x = fir.conv_downsample_2d(x, w, self.resample_kernel)
        else:
            x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            x = x + self.param("bias", jax.nn.initializers.zeros, (x.shape[-1],))
        return x


class Upsample(nn.Module):
    """2x upsampling ``(B,H,W,C) -> (B,2H,2W,out_ch)``: FIR or nearest, with or without a 3x3 conv."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x):
        b, h_, w_, c = x.shape
        out_ch = self.out_ch or c
        if not self.fir:
            h = fir.naive_upsample_2d(x)
            if self.with_conv:
                h = conv3x3(h, out_ch)
        elif not self.with_conv:
            h = fir.upsample_2d(x, self.fir_kernel)
        else:
            h = Conv2d(out_ch, 3, up=True, resample_kernel=self.fir_kernel)(x)
        return h


class Downsample(nn.Module):
    """2x downsampling ``(B,H,W,C) -> (B,H/2,W/2,out_ch)``: FIR or average pooling / strided 3x3 conv."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x):
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            if self.with_conv:
                # 'SAME' with stride 2 on an even size pads (0, 1): PyTorch's F.pad(0, 1, 0, 1) + conv.
                return conv3x3(x, out_ch, stride=2)
            return fir.naive_downsample_2d(x)
        if not self.with_conv:
            return fir.downsample_2d(x, self.fir_kernel)
        return Conv2d(out_ch, 3, down=True, resample_kernel=self.fir_kernel)(x)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block: GroupNorm, act, conv, + Dense(temb), GroupNorm, act, dropout, conv; NIN or
    3x3-conv shortcut when the channel count changes."""

    act: Callable
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x, temb=None, train: bool = False):
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = self.act(group_norm(x))
        h = conv3x3(h, out_ch)
        if temb is not None:
            h += nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
        h = self.act(group_norm(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale)
        if c != out_ch:
            x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
        return skip_rescale(x + h) if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN residual block with optional 2x up/downsampling (FIR or naive) of both branches; a 1x1
    conv shortcut (``Conv_2``) when channels change or when resampling."""

    act: Callable
    up: bool = False
    down: bool = False
    out_ch: int | None = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x, temb=None, train: bool = False):
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = self.act(group_norm(x))
        if self.up:
            resample = (lambda z: fir.upsample_2d(z, self.fir_kernel)) if self.fir else fir.naive_upsample_2d
            h, x = resample(h), resample(x)
        elif self.down:
            resample = (lambda z: fir.downsample_2d(z, self.fir_kernel)) if self.fir else fir.naive_downsample_2d
            h, x = resample(h), resample(x)
        h = conv3x3(h, out_ch)
        if temb is not None:
            h += nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
        h = self.act(group_norm(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale)
        if c != out_ch or self.up or self.down:
            x = conv1x1(x, out_ch)
        return skip_rescale(x + h) if self.skip_rescale else x + h
