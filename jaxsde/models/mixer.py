"""galaxygrad's MLP-Mixer score network as a Flax linen module, NHWC.

    model = jaxsde.models.build("galaxygrad_hsc32")     # galaxygrad 0.2.1's HSC 32x32 ScoreNet
    score = model.apply({"params": params}, y, t)       # y: (B, 32, 32, 1), t: (B,) or () in [0, 10]

Architecture of galaxygrad's ``models_eqx.ScoreNet`` (SampsonML/galaxygrad, itself after Patrick
Kidger's equinox score-based diffusion example; re-implemented here, not copied): the time ``t / t1``
as an extra constant input channel (after the image channels); a ``patch_size`` x ``patch_size``
stride-``patch_size`` conv to ``hidden_size`` channels; ``num_blocks`` mixer blocks on the
(channels, patches) array, each ``y += MLP_patches(LayerNorm(y))`` per channel then
``y += MLP_channels(LayerNorm(y))`` per patch (one-hidden-layer ReLU MLPs; each LayerNorm normalises
the whole (channels, patches) array jointly, with an elementwise affine of that shape, eps 1e-5); a
final joint LayerNorm; a transposed conv back to the image (non-overlapping patches).
Patches are numbered row-major. The output is the score itself (no division by sigma).

Parameter names follow the equinox fields: ``conv_in``, ``blocks_{i}/{patch_mixer,hidden_mixer}/
{layers_0,layers_1}``, ``blocks_{i}/{norm1,norm2}``, ``norm``, ``conv_out``. ``t1`` is a static field
(equinox serialises it as a float leaf; :mod:`jaxsde.checkpoints.galaxygrad` checks it), so the
Flax parameter count of ``galaxygrad_hsc32`` is 605,761 -- 605,762 values in the ``.eqx`` file
with ``t1``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def _layer_norm(name: str) -> nn.LayerNorm:
    # Joint normalisation over the last two axes with a full-shape affine (equinox LayerNorm(shape)).
    return nn.LayerNorm(epsilon=1e-5, reduction_axes=(-2, -1), feature_axes=(-2, -1), use_fast_variance=False,
                        name=name)


class MLP(nn.Module):
    """``Linear(width) -> relu -> Linear(out)`` (equinox ``MLP(depth=1)``), applied on the last axis."""

    width: int
    out: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.out, name="layers_1")(nn.relu(nn.Dense(self.width, name="layers_0")(x)))


class MixerBlock(nn.Module):
    """``y: (B, hidden, patches)``: mix across patches (per channel), then across channels (per patch)."""

    mix_patch_size: int
    mix_hidden_size: int

    @nn.compact
    def __call__(self, y):
        _, hidden, patches = y.shape
        y = y + MLP(self.mix_patch_size, patches, name="patch_mixer")(_layer_norm("norm1")(y))
        y = jnp.swapaxes(y, 1, 2)  # (B, patches, hidden)
        y = y + MLP(self.mix_hidden_size, hidden, name="hidden_mixer")(_layer_norm("norm2")(y))
        return jnp.swapaxes(y, 1, 2)


class MixerScoreNet(nn.Module):
    """galaxygrad ``ScoreNet(img_size, patch_size, hidden_size, mix_patch_size, mix_hidden_size,
    num_blocks, t1)``; ``__call__(y, t)``: ``y`` (B, H, W, C), ``t`` (B,) or a scalar in [0, t1];
    returns the score, shaped like ``y``."""

    channels: int = 1
    patch_size: int = 4
    hidden_size: int = 64
    mix_patch_size: int = 512
    mix_hidden_size: int = 512
    num_blocks: int = 4
    t1: float = 10.0

    @nn.compact
    def __call__(self, y, t):
        b, h, w, c = y.shape
        p = self.patch_size
        if c != self.channels or h % p or w % p:
            raise ValueError(f"expected y of shape (B, H, W, {self.channels}) with H, W multiples of {p}, "
                             f"got {y.shape}")
        t = jnp.broadcast_to(jnp.asarray(t, y.dtype) / self.t1, (b,))
        y = jnp.concatenate([y, jnp.broadcast_to(t[:, None, None, None], (b, h, w, 1))], axis=-1)
        y = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID", name="conv_in")(y)
        hp, wp = h // p, w // p
        y = jnp.transpose(y.reshape(b, hp * wp, self.hidden_size), (0, 2, 1))  # (B, hidden, patches)
        for i in range(self.num_blocks):
            y = MixerBlock(self.mix_patch_size, self.mix_hidden_size, name=f"blocks_{i}")(y)
        y = _layer_norm("norm")(y)
        y = jnp.transpose(y, (0, 2, 1)).reshape(b, hp, wp, self.hidden_size)
        return nn.ConvTranspose(self.channels, (p, p), strides=(p, p), padding="VALID", name="conv_out")(y)


GALAXYGRAD_HSC32 = dict(channels=1, patch_size=4, hidden_size=64, mix_patch_size=512, mix_hidden_size=512,
                        num_blocks=4, t1=10.0)


def galaxygrad_hsc32(**overrides) -> MixerScoreNet:
    """galaxygrad 0.2.1's HSC 32x32 prior (``eqx_hsc_ScoreNet32.eqx``): 605,761 parameters (+ ``t1``);
    input (B, 32, 32, 1) in galaxygrad's log space ``log(x + 1) / 0.1``, output the score there for the
    VP SDE with beta(t) = 1 on [0, 10]. ``overrides`` replace fields of :class:`MixerScoreNet`."""
    return MixerScoreNet(**{**GALAXYGRAD_HSC32, **overrides})
