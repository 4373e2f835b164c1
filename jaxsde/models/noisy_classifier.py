"""A small time-conditional classifier of noised 8x8 digits, for classifier guidance.

``NoisyDigitsClassifier()`` maps a batch ``x: (B, 8, 8, 1)`` (a noised digit ``x_t = alpha(t) x0
+ sigma(t) z`` of the SDE, preconditioned by the caller with ``c_in(t) = 1 / sqrt(alpha^2
sigma_data^2 + sigma^2)`` as the score networks of :mod:`jaxsde.models.score`) and times
``t: (B,)`` to class logits ``(B, num_classes)``. Architecture: the ``DigitsUNet``'s Fourier time
embedding and residual blocks (one per level, stride-2 down between levels), then a flattened
2-layer head. H and W must be divisible by ``2 ** (len(channels) - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from .unet import FourierTime, ResBlock, group_count


class NoisyDigitsClassifier(nn.Module):
    """``logits = net(x, t)``: ``x (B, H, W, C)`` preconditioned, ``t (B,)`` -> ``(B, num_classes)``."""

    channels: Sequence[int] = (32, 64)
    emb_dim: int = 64
    hidden: int = 128
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, t):
        emb = FourierTime(self.emb_dim)(t)
        h = nn.Conv(self.channels[0], (3, 3))(x)
        for level, ch in enumerate(self.channels):
            h = ResBlock(ch)(h, emb)
            if level < len(self.channels) - 1:
                h = nn.Conv(self.channels[level + 1], (3, 3), strides=(2, 2))(h)
        h = nn.silu(nn.GroupNorm(group_count(h.shape[-1]))(h))
        h = jnp.reshape(h, (h.shape[0], -1))
        h = nn.silu(nn.Dense(self.hidden)(h) + nn.Dense(self.hidden)(nn.silu(emb)))
        return nn.Dense(self.num_classes)(h)
