"""diffusers' ``UNet2DModel`` (the DDPM U-Net) as a Flax linen module, NHWC.

    model = jaxsde.models.build("ddpm_cifar10")                 # google/ddpm-cifar10-32
    model = UNet2D.from_config(json.load(open("config.json")))  # any supported diffusers config
    eps = model.apply({"params": params}, x, timesteps)         # x: (B, H, W, C), timesteps: (B,) or ()

The layout follows diffusers' ``UNet2DModel`` (``diffusers/models/unets/unet_2d.py``,
``unet_2d_blocks.py``, ``resnet.py``, ``attention_processor.py``, ``embeddings.py``; Apache-2.0),
itself a port of Ho et al.'s DDPM U-Net (arXiv:2006.11239). It is re-implemented here, not copied,
so that a diffusers state dict maps onto it name by name: submodule names are diffusers' with
``.N`` written ``_N`` (``down_blocks.1.attentions.0.to_q`` -> ``down_blocks_1/attentions_0/to_q``),
see :mod:`jaxsde.checkpoints.diffusers`.

Supported config (``UNet2DModel`` fields; anything else raises ``ValueError``):
``down_block_types`` in {DownBlock2D, AttnDownBlock2D}, ``up_block_types`` in {UpBlock2D, AttnUpBlock2D},
``mid_block_type`` UNetMidBlock2D or null, ``time_embedding_type`` "positional" (with ``flip_sin_to_cos``,
``freq_shift``, ``time_embedding_dim``), ``downsample_type``/``upsample_type`` "conv" (any
``downsample_padding``; 0 pads (0, 1, 0, 1) as diffusers), ``act_fn`` silu/swish/mish/gelu/relu,
``resnet_time_scale_shift`` default/scale_shift, ``attention_head_dim`` (null = one head),
``norm_num_groups``, ``attn_norm_num_groups``, ``norm_eps``, ``mid_block_scale_factor``, ``add_attention``,
``center_input_sample``; ``dropout`` is accepted and unused (inference only). Not supported: Fourier or
learned time embeddings, skip blocks (NCSN++), resnet up/down samplers.

Class conditioning (diffusers ``UNet2DModel.__init__`` "class embedding" and ``forward`` step 1,
``diffusers/models/unets/unet_2d.py`` v0.42): the class embedding is added to the time embedding
(after its MLP), then the network proceeds as unconditional; ``__call__(x, timesteps, class_labels)``:

* ``class_embed_type`` null with ``num_class_embeds = K``: an ``nn.Embedding(K, time_embed_dim)``
  (``class_embedding.weight``, (K, time_embed_dim)); ``class_labels`` integers in ``0..K - 1``. A label
  outside that range (unchecked: it may be traced) selects a NaN row, so the output is NaN.
* ``"timestep"``: the labels are embedded like timesteps (the same sinusoid, ``flip_sin_to_cos`` and
  ``freq_shift`` as the time, width ``block_out_channels[0]``) then through a ``TimestepEmbedding`` MLP
  (``class_embedding.linear_1`` / ``linear_2``); any real label.
* ``"identity"``: ``class_labels`` is the embedding itself, (B, time_embed_dim) floats, added as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": nn.relu,
}

# google/ddpm-cifar10-32's config.json; 35,746,307 parameters.
DDPM_CIFAR10_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [128, 256, 256, 256],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 0,
    "act_fn": "silu",
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
}


def timestep_embedding(timesteps, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0):
    """Sinusoidal embedding of (possibly fractional) timesteps, as diffusers' ``get_timestep_embedding``:
    frequencies ``exp(-log(max_period) k / (half - freq_shift))``, ``[sin, cos]`` (``[cos, sin]`` when
    flipped), zero-padded to odd ``dim``. Frequencies are computed in float32 like torch's."""
    half = dim // 2
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
    freqs = np.exp(exponent / np.float32(half - freq_shift)).astype(np.float32)
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.asarray(freqs)[None, :]
    parts = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
    emb = jnp.concatenate(parts, axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _group_norm(groups: int, eps: float, name: str, x) -> jax.Array:
    # Two-pass variance, as torch (Flax's fast variance E[x^2] - E[x]^2 loses digits). A 16-bit x gives
    # a 16-bit output even with float32 parameters; float32 is unchanged.
    low = x.dtype if jnp.finfo(x.dtype).bits < 32 else None
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=low, name=name)(x)


class TimestepEmbedding(nn.Module):
    """``linear_1 -> silu -> linear_2`` (diffusers ``TimestepEmbedding``)."""

    dim: int

    @nn.compact
    def __call__(self, emb):
        emb = nn.Dense(self.dim, name="linear_1")(emb)
        return nn.Dense(self.dim, name="linear_2")(nn.silu(emb))


class ResnetBlock2D(nn.Module):
    """GroupNorm, act, 3x3 conv, + projected time embedding (or scale/shift after norm2), GroupNorm,
    act, 3x3 conv; 1x1 ``conv_shortcut`` when channels change; ``(x + h) / output_scale_factor``."""

    out_channels: int
    groups: int
    eps: float
    act_fn: str = "silu"
    time_scale_shift: str = "default"
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x, temb):
        act = ACTIVATIONS[self.act_fn]
        h = act(_group_norm(self.groups, self.eps, "norm1", x))
        h = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(h)
        proj_dim = 2 * self.out_channels if self.time_scale_shift == "scale_shift" else self.out_channels
        temb = nn.Dense(proj_dim, name="time_emb_proj")(act(temb))[:, None, None, :]
        if self.time_scale_shift == "scale_shift":
            scale, shift = jnp.split(temb, 2, axis=-1)
            h = _group_norm(self.groups, self.eps, "norm2", h) * (1 + scale) + shift
        else:
            h = _group_norm(self.groups, self.eps, "norm2", h + temb)
        h = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(act(h))
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), name="conv_shortcut")(x)
        return (x + h) / self.output_scale_factor


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual (diffusers ``Attention(_from_deprecated_attn_block=True)``):
    optional ``group_norm``, ``to_q``/``to_k``/``to_v`` dense, softmax(q k^T / sqrt(head_dim)) v per head,
    ``to_out_0`` dense, ``(out + x) / rescale_output_factor``."""

    head_dim: int | None  # None: one head over all channels
    groups: int | None
    eps: float
    rescale_output_factor: float = 1.0

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        head_dim = self.head_dim or c
        heads = c // head_dim
        h = x if self.groups is None else _group_norm(self.groups, self.eps, "group_norm", x)
        h = h.reshape(b, hgt * wid, c)

        def split(y):
            return y.reshape(b, hgt * wid, heads, head_dim)

        q = split(nn.Dense(c, name="to_q")(h))
        k = split(nn.Dense(c, name="to_k")(h))
        v = split(nn.Dense(c, name="to_v")(h))
        w = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, hgt * wid, c)
        out = nn.Dense(c, name="to_out_0")(out).reshape(b, hgt, wid, c)
        return (out + x) / self.rescale_output_factor


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv; ``padding=0`` pads (0, 1, 0, 1) (bottom/right) first, as diffusers."""

    channels: int
    padding: int

    @nn.compact
    def __call__(self, x):
        pad = ((0, 1), (0, 1)) if self.padding == 0 else ((self.padding,) * 2,) * 2
        return nn.Conv(self.channels, (3, 3), strides=(2, 2), padding=pad, name="conv")(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 conv."""

    channels: int

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)


class _Common(nn.Module):
    """Fields every block shares."""

    groups: int
    eps: float
    act_fn: str
    time_scale_shift: str
    head_dim: int | None

    def resnet(self, ch, name, scale=1.0):
        return ResnetBlock2D(ch, self.groups, self.eps, self.act_fn, self.time_scale_shift, scale, name=name)

    def attention(self, name, groups, scale=1.0):
        return AttentionBlock(self.head_dim, groups, self.eps, scale, name=name)


class DownBlock2D(_Common):
    """``DownBlock2D`` / ``AttnDownBlock2D``: ``num_layers`` resnets (each followed by attention when
    ``attention_layers``), then an optional downsampler; returns the output and every intermediate (the skips)."""

    out_channels: int = 0
    num_layers: int = 1
    attention_layers: bool = False
    add_downsample: bool = True
    downsample_padding: int = 1

    @nn.compact
    def __call__(self, h, temb):
        skips = []
        for j in range(self.num_layers):
            h = self.resnet(self.out_channels, f"resnets_{j}")(h, temb)
            if self.attention_layers:
                h = self.attention(f"attentions_{j}", self.groups)(h)
            skips.append(h)
        if self.add_downsample:
            h = Downsample2D(self.out_channels, self.downsample_padding, name="downsamplers_0")(h)
            skips.append(h)
        return h, skips


class UpBlock2D(_Common):
    """``UpBlock2D`` / ``AttnUpBlock2D``: ``num_layers`` resnets on ``concat(h, skip)`` (each followed by
    attention when ``attention_layers``), then an optional nearest upsampler."""

    out_channels: int = 0
    num_layers: int = 1
    attention_layers: bool = False
    add_upsample: bool = True

    @nn.compact
    def __call__(self, h, skips, temb):
        # skips: this block's num_layers skip tensors, oldest first; used newest first
        for j in range(self.num_layers):
            h = jnp.concatenate([h, skips[-1 - j]], axis=-1)
            h = self.resnet(self.out_channels, f"resnets_{j}")(h, temb)
            if self.attention_layers:
                h = self.attention(f"attentions_{j}", self.groups)(h)
        if self.add_upsample:
            h = Upsample2D(self.out_channels, name="upsamplers_0")(h)
        return h


class UNetMidBlock2D(_Common):
    """resnet, attention (optional; its GroupNorm has ``attn_groups`` groups, None = no norm), resnet;
    all scaled by ``output_scale_factor``."""

    channels: int = 0
    add_attention: bool = True
    attn_groups: int | None = None
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, h, temb):
        s = self.output_scale_factor
        h = self.resnet(self.channels, "resnets_0", s)(h, temb)
        if self.add_attention:
            h = self.attention("attentions_0", self.attn_groups, s)(h)
        return self.resnet(self.channels, "resnets_1", s)(h, temb)


class ClassEmbedding(nn.Module):
    """diffusers' ``nn.Embedding(num_embeddings, dim)`` (parameter ``embedding``, (num_embeddings, dim), the
    torch ``weight`` as is): row ``label`` for each integer label. A label outside ``0..num_embeddings - 1``
    gives a row of NaN (labels may be traced, so they cannot be checked here)."""

    num_embeddings: int
    dim: int

    @nn.compact
    def __call__(self, labels):
        labels = jnp.asarray(labels)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"class labels of an embedding table must be integers, got dtype {labels.dtype}")
        table = self.param("embedding", nn.initializers.normal(1.0), (self.num_embeddings, self.dim))
        bad = (labels < 0) | (labels >= self.num_embeddings)
        index = jnp.where(bad, self.num_embeddings, labels)  # one past the end: filled with NaN
        return jnp.take(table, index, axis=0, mode="fill", fill_value=jnp.nan)


CLASS_EMBED_TYPES = (None, "timestep", "identity")


class UNet2D(nn.Module):
    """diffusers ``UNet2DModel`` (see the module docstring); fields and defaults are diffusers'.

    ``__call__(x, timesteps, class_labels=None)``: ``x`` (B, H, W, in_channels), ``timesteps`` (B,) or a
    scalar, any float (the model was trained on integers 0..N-1; :class:`jaxsde.DiscreteVPSDE` gives
    fractional ones between). Returns (B, H, W, out_channels) -- epsilon for DDPM checkpoints.
    ``class_labels`` is required exactly when the model is class-conditional (:attr:`class_conditional`):
    (B,) or a scalar, int labels ``0..num_class_embeds - 1`` for the embedding table, any real numbers for
    ``class_embed_type="timestep"``; (B, time_embed_dim) or (time_embed_dim,) floats for ``"identity"``.
    """

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    time_embedding_dim: int | None = None
    down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    up_block_types: Sequence[str] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    mid_block: bool = True
    block_out_channels: Sequence[int] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None

    @property
    def class_conditional(self) -> bool:
        """Whether the network takes ``class_labels`` (diffusers builds a ``class_embedding``)."""
        return self.class_embed_type is not None or self.num_class_embeds is not None

    @property
    def time_embed_dim(self) -> int:
        """Width of the time (and class) embedding: ``time_embedding_dim`` or ``4 block_out_channels[0]``."""
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"down_block_types ({len(self.down_block_types)}), up_block_types "
                             f"({len(self.up_block_types)}) and block_out_channels ({n}) must have the same length")
        for kind, allowed in ((self.down_block_types, DOWN_BLOCKS), (self.up_block_types, UP_BLOCKS)):
            bad = [b for b in kind if b not in allowed]
            if bad:
                raise ValueError(f"unsupported UNet2DModel block type(s) {bad}; supported: {', '.join(allowed)}")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"unsupported act_fn {self.act_fn!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"unsupported resnet_time_scale_shift {self.resnet_time_scale_shift!r}; "
                             "supported: 'default', 'scale_shift'")
        if self.class_embed_type not in CLASS_EMBED_TYPES:
            raise ValueError(f"unsupported class_embed_type {self.class_embed_type!r}; supported: "
                             f"{', '.join(map(repr, CLASS_EMBED_TYPES))}")
        k = self.num_class_embeds
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"num_class_embeds must be a positive integer or null, got {k!r}")
        if self.norm_num_groups is None or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups ({self.norm_num_groups}) must divide every block_out_channels "
                             f"{tuple(self.block_out_channels)}")
        chans = tuple(self.block_out_channels)
        attn = [c for c, k in zip(chans, self.down_block_types, strict=True) if k.startswith("Attn")]
        attn += [c for c, k in zip(chans[::-1], self.up_block_types, strict=True) if k.startswith("Attn")]
        attn += [self.block_out_channels[-1]] if self.mid_block and self.add_attention else []
        if self.attention_head_dim is not None and any(c % self.attention_head_dim for c in attn):
            raise ValueError(f"attention_head_dim ({self.attention_head_dim}) must divide the channels of every "
                             f"attention block {attn}")
        super().__post_init__()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UNet2D:
        """Build from a diffusers ``UNet2DModel`` ``config.json`` dict; unsupported values raise ``ValueError``."""
        return cls(**module_kwargs(config))

    def _class_embedding(self, class_labels, batch: int, dtype) -> jax.Array:
        dim = self.time_embed_dim
        if self.class_embed_type == "identity":
            emb = jnp.asarray(class_labels)
            if emb.shape not in ((dim,), (batch, dim)):
                raise ValueError(f"class_embed_type='identity' takes class_labels of shape ({batch}, {dim}) or "
                                 f"({dim},) (the embedding itself), got {emb.shape}")
            return jnp.broadcast_to(emb, (batch, dim)).astype(dtype)
        labels = jnp.asarray(class_labels)
        if labels.ndim > 1 or labels.size not in (1, batch):
            raise ValueError(f"class_labels must be a scalar or of shape ({batch},), got {labels.shape}")
        labels = jnp.broadcast_to(labels.reshape(-1), (batch,))
        if self.class_embed_type == "timestep":
            emb = timestep_embedding(labels, self.block_out_channels[0], self.flip_sin_to_cos, self.freq_shift)
            return TimestepEmbedding(dim, name="class_embedding")(emb.astype(dtype))
        return ClassEmbedding(self.num_class_embeds, dim, name="class_embedding")(labels).astype(dtype)

    @nn.compact
    def __call__(self, x, timesteps, class_labels=None):
        if self.class_conditional and class_labels is None:
            raise ValueError("this UNet2D is class-conditional (class_embed_type="
                             f"{self.class_embed_type!r}, num_class_embeds={self.num_class_embeds}): pass class_labels")
        if not self.class_conditional and class_labels is not None:
            raise ValueError("this UNet2D is unconditional (no class_embed_type / num_class_embeds); "
                             "it takes no class_labels")
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, H, W, {self.in_channels}), got {x.shape}")
        factor = 2 ** (len(self.block_out_channels) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"H and W must be multiples of {factor}, got {x.shape[1:3]}")
        if self.center_input_sample:
            x = 2 * x - 1.0
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (x.shape[0],))
        ch0 = self.block_out_channels[0]
        temb = timestep_embedding(timesteps, ch0, self.flip_sin_to_cos, self.freq_shift)
        temb = TimestepEmbedding(self.time_embed_dim, name="time_embedding")(temb.astype(x.dtype))
        if self.class_conditional:
            temb = temb + self._class_embedding(class_labels, x.shape[0], temb.dtype)

        common = dict(groups=self.norm_num_groups, eps=self.norm_eps, act_fn=self.act_fn,
                      time_scale_shift=self.resnet_time_scale_shift, head_dim=self.attention_head_dim)
        h = nn.Conv(ch0, (3, 3), padding=((1, 1), (1, 1)), name="conv_in")(x)
        skips = [h]
        last = len(self.block_out_channels) - 1
        for i, (kind, ch) in enumerate(zip(self.down_block_types, self.block_out_channels, strict=True)):
            h, block_skips = DownBlock2D(
                **common, out_channels=ch, num_layers=self.layers_per_block,
                attention_layers=kind == "AttnDownBlock2D", add_downsample=i < last,
                downsample_padding=self.downsample_padding, name=f"down_blocks_{i}")(h, temb)
            skips += block_skips

        if self.mid_block:
            attn_groups = self.attn_norm_num_groups
            if attn_groups is None and self.resnet_time_scale_shift == "default":
                attn_groups = self.norm_num_groups
            h = UNetMidBlock2D(**common, channels=self.block_out_channels[-1], add_attention=self.add_attention,
                               attn_groups=attn_groups, output_scale_factor=self.mid_block_scale_factor,
                               name="mid_block")(h, temb)

        for i, (kind, ch) in enumerate(zip(self.up_block_types, reversed(self.block_out_channels), strict=True)):
            n = self.layers_per_block + 1
            block_skips, skips = tuple(skips[-n:]), skips[:-n]
            h = UpBlock2D(**common, out_channels=ch, num_layers=self.layers_per_block + 1,
                          attention_layers=kind == "AttnUpBlock2D", add_upsample=i < last,
                          name=f"up_blocks_{i}")(h, block_skips, temb)

        h = ACTIVATIONS[self.act_fn](_group_norm(self.norm_num_groups, self.norm_eps, "conv_norm_out", h))
        return nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv_out")(h)


# UNet2DModel config fields -> UNet2D fields; values checked by module_kwargs.
_FIELDS = {
    "sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift",
    "time_embedding_dim", "down_block_types", "up_block_types", "block_out_channels", "layers_per_block",
    "mid_block_scale_factor", "downsample_padding", "act_fn", "attention_head_dim", "norm_num_groups",
    "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift", "add_attention", "class_embed_type",
    "num_class_embeds",
}
# Fields accepted only with these values (diffusers' defaults or the equivalent).
_FIXED = {
    "time_embedding_type": ("positional",),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "mid_block_type": ("UNetMidBlock2D", None),
}
_IGNORED = {"dropout", "num_train_timesteps"}  # inference-only / learned-embedding-only


def module_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """``UNet2D`` keyword arguments from a diffusers ``UNet2DModel`` config dict (keys starting with ``_``
    are metadata and skipped). Unsupported fields or values raise ``ValueError`` naming them."""
    kwargs: dict[str, Any] = {}
    problems = []
    for key, value in config.items():
        if key.startswith("_") or key in _IGNORED:
            continue
        if key in _FIXED:
            if value not in _FIXED[key]:
                problems.append(f"{key}={value!r} (supported: {', '.join(map(repr, _FIXED[key]))})")
            elif key == "mid_block_type":
                kwargs["mid_block"] = value is not None
        elif key in _FIELDS:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        else:
            problems.append(f"unknown field {key}={value!r}")
    if problems:
        raise ValueError("unsupported UNet2DModel config: " + "; ".join(problems))
    return kwargs


def example_class_labels(model: nn.Module, batch: int = 1) -> tuple:
    """``()`` for an unconditional model, else ``(labels,)``: zero class labels for a batch of ``batch``
    (int32 (batch,); (batch, time_embed_dim) float32 for ``class_embed_type="identity"``), e.g. for
    ``model.init(key, x, t, *example_class_labels(model))``."""
    if not getattr(model, "class_conditional", False):
        return ()
    if model.class_embed_type == "identity":
        return (jnp.zeros((batch, model.time_embed_dim), jnp.float32),)
    return (jnp.zeros((batch,), jnp.int32),)


def param_count(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Number of parameters, from shapes only (``jax.eval_shape``; nothing is initialised)."""
    tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.zeros((1,)),
                          *example_class_labels(model))
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def sample_shape(model: UNet2D) -> tuple[int, int, int]:
    """One sample's NHWC shape ``(H, W, in_channels)`` from ``sample_size``."""
    size = model.sample_size
    if size is None:
        raise ValueError("the config has no sample_size")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(h), int(w), model.in_channels)


def ddpm_cifar10(**overrides) -> UNet2D:
    """google/ddpm-cifar10-32 (Ho et al. 2020 CIFAR-10 U-Net as in diffusers): 35,746,307 parameters,
    32x32x3, predicts epsilon at integer timesteps 0..999 of the linear schedule; ``overrides`` replace
    config fields (diffusers names)."""
    return UNet2D.from_config({**DDPM_CIFAR10_CONFIG, **overrides})
