"""The functional forward pass of diffusers' DDPM :class:`jaxsde.models.ddpm_unet.UNet2D` over its
params tree (ddpm-cifar10's layout: GroupNorm two-pass variance, explicit paddings, scale_shift
time conditioning, any activation, self-attention), written against an engine."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..models.ddpm_unet import ACTIVATIONS, timestep_embedding
from .engine import NormOp, dense_apply
from .graph import GraphTrace


def unet2d_forward(eng, model, p, x, t):
    """UNet2D ``model``'s forward pass on one sample with engine ``eng``: ``(output, name of the last layer)``."""
    m = model
    act = ACTIVATIONS[m.act_fn]
    chans = tuple(m.block_out_channels)
    last = len(chans) - 1
    same = ((1, 1), (1, 1))
    if m.center_input_sample and not isinstance(eng, GraphTrace):
        x = 2 * x - 1.0

    def embed():
        ts = jnp.reshape(jnp.asarray(t, jnp.float32), (1,))
        e = timestep_embedding(ts, chans[0], m.flip_sin_to_cos, m.freq_shift)[0].astype(x.dtype)
        q = p["time_embedding"]
        return dense_apply(q["linear_2"], jax.nn.silu(dense_apply(q["linear_1"], e)))

    temb = eng.compute(embed)

    def norm(q, groups=m.norm_num_groups, activation=act, scale_shift=None):
        return NormOp(q, groups, m.norm_eps, True, activation, scale_shift)

    def resnet(q, name, hs, ch, scale=1.0):
        cin = sum(int(h.shape[-1]) for h in hs)
        proj = eng.compute(lambda: dense_apply(q["time_emb_proj"], act(temb)))
        bias, ss = proj, None
        if m.resnet_time_scale_shift == "scale_shift":
            bias, ss = None, eng.compute(lambda: tuple(jnp.split(proj, 2)))
        h1 = eng.layer(name + "/conv1", hs, q["conv1"], norm=norm(q["norm1"]), bias=bias, padding=same)
        short = q["conv_shortcut"] if cin != ch else None
        return eng.layer(name + "/conv2", [h1], q["conv2"], norm=norm(q["norm2"], scale_shift=ss),
                         res=(hs, short), padding=same, out_scale=scale)

    def attention(q, name, h, groups, scale=1.0):
        head_dim = m.attention_head_dim or int(h.shape[-1])
        nrm = None if groups is None else norm(q["group_norm"], groups, None)
        return eng.attention(name, h, q, norm=nrm, heads=int(h.shape[-1]) // head_dim, out_scale=scale)

    xs = eng.source(x)
    h = eng.layer("conv_in", [xs], p["conv_in"], padding=same)
    skips = [h]
    for i, (kind, ch) in enumerate(zip(m.down_block_types, chans, strict=True)):
        d, prefix = p[f"down_blocks_{i}"], f"down_blocks_{i}/"
        for j in range(m.layers_per_block):
            h = resnet(d[f"resnets_{j}"], prefix + f"resnets_{j}", [h], ch)
            if kind == "AttnDownBlock2D":
                h = attention(d[f"attentions_{j}"], prefix + f"attentions_{j}", h, m.norm_num_groups)
            skips.append(h)
        if i < last:
            dp = m.downsample_padding
            pad = ((0, 1), (0, 1)) if dp == 0 else ((dp, dp), (dp, dp))
            h = eng.layer(prefix + "downsamplers_0", [h], d["downsamplers_0"]["conv"], stride=2, padding=pad)
            skips.append(h)
    if m.mid_block:
        q, s = p["mid_block"], m.mid_block_scale_factor
        attn_groups = m.attn_norm_num_groups
        if attn_groups is None and m.resnet_time_scale_shift == "default":
            attn_groups = m.norm_num_groups
        h = resnet(q["resnets_0"], "mid_block/resnets_0", [h], chans[-1], s)
        if m.add_attention:
            h = attention(q["attentions_0"], "mid_block/attentions_0", h, attn_groups, s)
        h = resnet(q["resnets_1"], "mid_block/resnets_1", [h], chans[-1], s)
    for i, (kind, ch) in enumerate(zip(m.up_block_types, reversed(chans), strict=True)):
        n = m.layers_per_block + 1
        block_skips, skips = skips[-n:], skips[:-n]
        u, prefix = p[f"up_blocks_{i}"], f"up_blocks_{i}/"
        for j in range(n):
            h = resnet(u[f"resnets_{j}"], prefix + f"resnets_{j}", [h, block_skips[-1 - j]], ch)
            if kind == "AttnUpBlock2D":
                h = attention(u[f"attentions_{j}"], prefix + f"attentions_{j}", h, m.norm_num_groups)
        if i < last:
            h = eng.layer(prefix + "upsamplers_0", [h], u["upsamplers_0"]["conv"], up=True, padding=same)
    out = eng.layer("conv_out", [h], p["conv_out"], norm=norm(p["conv_norm_out"]), padding=same)
    return out, "conv_out"
