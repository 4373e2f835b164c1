"""A small Flax U-Net score network with time conditioning (for the embedded digits models).

``DigitsUNet(channels, blocks_per_level, ...)`` maps a batch ``x: (B, H, W, C)`` in the
model's data space and times ``t: (B,)`` to an epsilon prediction shaped like ``x``.
Inputs are preconditioned by ``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)`` (computed
by the caller, see :mod:`jaxsde.models.score`), so the network sees unit-scale inputs for
every SDE. H and W must be divisible by ``2 ** (len(channels) - 1)``.

Class-conditional variant: ``DigitsUNet(..., num_classes=K)`` is called as ``(x, t, label)``
with ``label: (B,)`` integers in ``0..K``, where ``K`` itself is the null class (no condition,
for classifier-free guidance); a learned ``nn.Embed(K + 1, emb_dim)`` of the label is added to
the time embedding. With ``num_classes=None`` (the default) the network and its parameter tree
are exactly the unconditional ones. A traced label outside ``0..K`` cannot be checked: its
embedding is NaN (negative labels included), so the output is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def group_count(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 4:
            return g
    return 1


class FourierTime(nn.Module):
    """Gaussian Fourier features of ``t`` followed by a 2-layer MLP."""

    dim: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, t):
        w = self.param("freqs", nn.initializers.normal(self.scale), (self.dim // 2,))
        w = jax.lax.stop_gradient(w)  # fixed random frequencies
        proj = 2 * jnp.pi * t[:, None] * w[None, :]
        h = jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)
        h = nn.silu(nn.Dense(self.dim)(h))
        return nn.Dense(self.dim)(h)


class ResBlock(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x, emb):
        h = nn.silu(nn.GroupNorm(group_count(x.shape[-1]))(x))
        h = nn.Conv(self.channels, (3, 3))(h)
        h = h + nn.Dense(self.channels)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(group_count(self.channels))(h))
        h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.variance_scaling(0.1, "fan_avg", "uniform"))(h)
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1))(x)
        return x + h


class DigitsUNet(nn.Module):
    """U-Net: per level ``blocks_per_level`` residual blocks, stride-2 down, nearest-up.

    ``num_classes=None``: ``__call__(x, t)``. ``num_classes=K``: ``__call__(x, t, label)``,
    ``label: (B,)`` int in ``0..K`` (``K`` = the null class), embedded and added to the time
    embedding."""

    channels: Sequence[int] = (32, 64, 64)
    blocks_per_level: int = 1
    emb_dim: int = 64
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, t, label=None):
        emb = FourierTime(self.emb_dim)(t)
        if self.num_classes is None:
            if label is not None:
                raise ValueError("this DigitsUNet is unconditional (num_classes=None); it takes no label")
        else:
            if label is None:
                raise ValueError(f"this DigitsUNet is class-conditional (num_classes={self.num_classes}): "
                                 f"pass a label in 0..{self.num_classes} ({self.num_classes} = no condition)")
            label = jnp.asarray(label)
            if not jnp.issubdtype(label.dtype, jnp.integer):
                raise TypeError(f"label must be an integer array, got dtype {label.dtype}")
            # out of range (negative included) -> index K + 1, which the lookup fills with NaN
            label = jnp.where((label < 0) | (label > self.num_classes), self.num_classes + 1, label)
            emb = emb + nn.Embed(self.num_classes + 1, self.emb_dim, name="label_embed")(label)
        h = nn.Conv(self.channels[0], (3, 3))(x)
        skips = [h]
        for level, ch in enumerate(self.channels):
            for _ in range(self.blocks_per_level):
                h = ResBlock(ch)(h, emb)
                skips.append(h)
            if level < len(self.channels) - 1:
                h = nn.Conv(ch, (3, 3), strides=(2, 2))(h)
                skips.append(h)
        h = ResBlock(self.channels[-1])(h, emb)
        for level in reversed(range(len(self.channels))):
            ch = self.channels[level]
            for _ in range(self.blocks_per_level + 1):
                h = ResBlock(ch)(jnp.concatenate([h, skips.pop()], axis=-1), emb)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(ch, (3, 3))(h)
        h = nn.silu(nn.GroupNorm(group_count(h.shape[-1]))(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)


# The three embedded sizes (0.14M, 0.52M, 1.49M parameters); the levels of the multilevel sampler.
SIZES = {
    "small": dict(channels=(16, 32), blocks_per_level=1),
    "medium": dict(channels=(32, 64), blocks_per_level=1),
    "large": dict(channels=(32, 96), blocks_per_level=2),
}


def digits_small(**overrides) -> DigitsUNet:
    return DigitsUNet(**{**SIZES["small"], **overrides})


def digits_medium(**overrides) -> DigitsUNet:
    return DigitsUNet(**{**SIZES["medium"], **overrides})


def digits(**overrides) -> DigitsUNet:
    """The largest embedded size (``jaxsde.pretrained("digits")``)."""
    return DigitsUNet(**{**SIZES["large"], **overrides})
