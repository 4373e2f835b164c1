"""The functional forward pass of :class:`jaxsde.models.unet.DigitsUNet` over its params tree,
written against an engine (dense, sparse, masked or graph trace)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .engine import NormOp, dense_apply


def _fourier(p, t):
    proj = 2 * jnp.pi * t * p["freqs"]
    h = jnp.concatenate([jnp.sin(proj), jnp.cos(proj)])
    return dense_apply(p["Dense_1"], jax.nn.silu(dense_apply(p["Dense_0"], h)))


def digits_forward(eng, model, p, x, t):
    """DigitsUNet ``model``'s forward pass on one sample with engine ``eng``: ``(output, name of the last layer)``."""
    chans, nb = tuple(model.channels), model.blocks_per_level
    emb = eng.compute(lambda: _fourier(p["FourierTime_0"], jnp.asarray(t, x.dtype)))
    conv_i = iter(range(100))
    block_i = iter(range(1000))

    def conv_name():
        return f"Conv_{next(conv_i)}"

    def resblock(hs, ch):
        name = f"ResBlock_{next(block_i)}"
        q = p[name]
        cin = sum(int(h.shape[-1]) for h in hs)
        bias = eng.compute(lambda: dense_apply(q["Dense_0"], jax.nn.silu(emb)))
        h1 = eng.layer(name + "/a", hs, q["Conv_0"], norm=NormOp(q["GroupNorm_0"]), bias=bias)
        skip = q["Conv_2"] if cin != ch else None
        return eng.layer(name + "/b", [h1], q["Conv_1"], norm=NormOp(q["GroupNorm_1"]), res=(hs, skip))

    xs = eng.source(x)
    name = conv_name()
    h = eng.layer(name, [xs], p[name])
    skips = [h]
    for level, ch in enumerate(chans):
        for _ in range(nb):
            h = resblock([h], ch)
            skips.append(h)
        if level < len(chans) - 1:
            name = conv_name()
            h = eng.layer(name, [h], p[name], stride=2)
            skips.append(h)
    h = resblock([h], chans[-1])
    for level in reversed(range(len(chans))):
        ch = chans[level]
        for _ in range(nb + 1):
            h = resblock([h, skips.pop()], ch)
        if level > 0:
            name = conv_name()
            h = eng.layer(name, [h], p[name], up=True)
    name = conv_name()
    out = eng.layer(name, [h], p[name], norm=NormOp(p["GroupNorm_0"]))
    return out, name
