"""FIR up/down-sampling (``upfirdn``) of NHWC images, as used by NCSN++ (StyleGAN2's resampling).

All functions take and return ``x`` of shape ``(N, H, W, C)``. The FIR filter ``k`` is given as a
1-D separable kernel (e.g. ``(1, 3, 3, 1)``, the NCSN++ default) or a 2-D array; it is normalised to
sum 1 (times ``factor**2`` when upsampling, so a constant image keeps its value).

Semantics follow StyleGAN2's ``upfirdn_2d`` (NVlabs/stylegan2 ``dnnlib/tflib/ops/upfirdn_2d.py``),
ported to JAX in yang-song/score_sde ``models/up_or_down_sampling.py`` and to PyTorch in
score_sde_pytorch and diffusers (``upfirdn2d_native``): zero-insertion upsampling, zero padding
(negative = cropping), a true 2-D convolution with ``k`` (``k`` flipped, then cross-correlated),
and decimation keeping pixels ``0, down, 2*down, ...``. This implementation is written from that
description with ``lax.pad`` (interior padding = zero insertion) and one depthwise
``lax.conv_general_dilated`` whose stride does the decimation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax


def setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
    """The 2-D FIR filter of a 1-D separable kernel (outer product) or a 2-D one, normalised to sum 1."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
    return k / np.sum(k)


def upfirdn2d(x, k: np.ndarray, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)):
    """Upsample (zero insertion), pad, FIR-filter and downsample a batch of NHWC images.

    Args:
      x: ``(N, H, W, C)``.
      k: 2-D filter ``(kh, kw)`` (used as given: no normalisation here).
      up, down: integer factors, the same for both spatial axes.
      pad: ``(before, after)`` zero padding of the upsampled image on both spatial axes (negative crops).

    Returns:
      ``(N, (H*up + pad0 + pad1 - kh) // down + 1, ..., C)``.
    """
    k = np.asarray(k, dtype=np.float32)
    kh, kw = k.shape
    channels = x.shape[-1]
    p0, p1 = pad
    # Interior padding inserts up-1 zeros between pixels; the extra up-1 after the last pixel make
    # the upsampled size H*up, as in upfirdn.
    cfg = [(0, 0, 0), (p0, p1 + up - 1, up - 1), (p0, p1 + up - 1, up - 1), (0, 0, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    # A true convolution with k = cross-correlation with the flipped k; depthwise over channels.
    w = jnp.asarray(k[::-1, ::-1], dtype=x.dtype)[:, :, None, None]
    w = jnp.tile(w, (1, 1, 1, channels))
    return lax.conv_general_dilated(x, w, window_strides=(down, down), padding="VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)


def upsample_2d(x, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0):
    """FIR upsampling ``(N, H, W, C) -> (N, H*factor, W*factor, C)``."""
    kk = setup_kernel(k) * (gain * factor**2)
    p = kk.shape[0] - factor
    return upfirdn2d(x, kk, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0):
    """FIR downsampling ``(N, H, W, C) -> (N, H//factor, W//factor, C)``."""
    kk = setup_kernel(k) * gain
    p = kk.shape[0] - factor
    return upfirdn2d(x, kk, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x, w, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0):
    """Fused FIR upsampling and convolution with ``w`` (HWIO, odd square): ``(N,H,W,I) -> (N,2H,2W,O)``.

    A stride-``factor`` transposed convolution (zero-inserted input, cross-correlated with ``w``,
    full padding) followed by the FIR filter with the padding of StyleGAN2's ``upsample_conv_2d``.
    """
    kw = w.shape[0]
    kk = setup_kernel(k) * (gain * factor**2)
    p = (kk.shape[0] - factor) - (kw - 1)
    # Transposed convolution with 'VALID' padding: output size (H-1)*factor + kw.
    x = lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=[(kw - 1, kw - 1)] * 2,
                                 lhs_dilation=(factor, factor), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return upfirdn2d(x, kk, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x, w, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0):
    """Fused FIR filtering and strided convolution with ``w`` (HWIO): ``(N,H,W,I) -> (N,H/2,W/2,O)``."""
    kw = w.shape[0]
    kk = setup_kernel(k) * gain
    p = (kk.shape[0] - factor) + (kw - 1)
    x = upfirdn2d(x, kk, pad=((p + 1) // 2, p // 2))
    return lax.conv_general_dilated(x, w, window_strides=(factor, factor), padding="VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def naive_upsample_2d(x, factor: int = 2):
    """Nearest-neighbour upsampling (each pixel repeated ``factor`` x ``factor`` times)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x, factor: int = 2):
    """Average pooling over non-overlapping ``factor`` x ``factor`` windows."""
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
