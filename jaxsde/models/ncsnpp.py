"""NCSN++ and DDPM++ (Song et al. 2021), the score networks of yang-song/score_sde, in Flax linen.

    model = jaxsde.models.build("ncsnpp_cifar10_ve")          # or ncsnpp.ncsnpp_cifar10_ve(nf=16, ...)
    out = model.apply({"params": params}, x, time_cond)        # x (B, H, W, C), time_cond (B,)

A re-implementation of score_sde's ``models/ncsnpp.py`` (Apache-2.0; read, not copied), keeping its
class names and call order so parameter paths equal those of published score_sde Flax checkpoints:
``GaussianFourierProjection_0/W`` (VE), ``Dense_0``, ``Dense_1``, ``Conv_0``, ``ResnetBlockBigGANpp_k``,
``AttnBlockpp_k``, ``Downsample_k/Conv2d_0`` (the VE input pyramid), ``GroupNorm_0``, ``Conv_1``.

Conventions (as score_sde's ``models/utils.py::get_score_fn``):

* ``time_cond`` is the noise level sigma (``embedding_type='fourier'``, the VE configs; the network
  embeds ``log sigma``), or the label ``t * 999`` (``'positional'``, VP/subVP configs).
* ``centered=False``: inputs are images in [0, 1], mapped to ``2x - 1`` inside the network (VE);
  ``centered=True``: inputs already in [-1, 1] (VP/subVP).
* ``scale_by_sigma=True``: the output is divided by sigma, so the network returns the score (VE);
  otherwise it predicts the noise eps and ``score = -out / std`` (VP/subVP).
* ``train=False`` (default) turns dropout off; ``train=True`` needs a ``'dropout'`` rng.

The four published CIFAR-10 configurations and their parameter counts:
``ncsnpp_cifar10_ve`` 62,758,915; ``ncsnpp_deep_cifar10_ve`` 107,587,075; ``ddpmpp_cifar10_vp``
61,804,419; ``ddpmpp_deep_cifar10_vp`` 106,632,579 (subVP configs have the VP architecture).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from . import layerspp

ACTIVATIONS = {
    "swish": nn.swish,
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": functools.partial(nn.leaky_relu, negative_slope=0.2),
}


@dataclasses.dataclass(frozen=True)
class NCSNppConfig:
    """Architecture, data and SDE settings of an NCSN++/DDPM++ model (score_sde config field names).

    Architecture: ``nf`` base channels; ``ch_mult`` channel multiplier per resolution level;
    ``num_res_blocks`` per level; ``attn_resolutions`` spatial sizes (H) with attention;
    ``resblock_type`` ``'biggan'`` | ``'ddpm'``; ``fir`` FIR resampling with ``fir_kernel``;
    ``progressive`` ``'none'`` | ``'output_skip'`` | ``'residual'``; ``progressive_input``
    ``'none'`` | ``'input_skip'`` | ``'residual'``; ``embedding_type`` ``'fourier'`` | ``'positional'``.
    Data: ``image_size`` (H = W), ``num_channels``, ``centered`` (inputs in [-1, 1] rather than [0, 1]).
    SDE (used by the checkpoint loaders and by ``scale_by_sigma`` with positional embeddings):
    ``sde`` ``'vesde'`` | ``'vpsde'`` | ``'subvpsde'``, ``sigma_min``, ``sigma_max``, ``num_scales``,
    ``beta_min``, ``beta_max``.
    """

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    scale_by_sigma: bool = True
    nonlinearity: str = "swish"
    image_size: int = 32
    num_channels: int = 3
    centered: bool = False
    sde: str = "vesde"
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        # Lists (e.g. from JSON) become tuples so the config stays hashable.
        for name in ("ch_mult", "attn_resolutions", "fir_kernel"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        checks = {
            "resblock_type": ("biggan", "ddpm"), "progressive": ("none", "output_skip", "residual"),
            "progressive_input": ("none", "input_skip", "residual"), "progressive_combine": ("sum", "cat"),
            "embedding_type": ("fourier", "positional"), "nonlinearity": tuple(ACTIVATIONS),
            "sde": ("vesde", "vpsde", "subvpsde"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"NCSNppConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")

    def replace(self, **overrides) -> NCSNppConfig:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """One sample's shape ``(H, W, C)``."""
        return (self.image_size, self.image_size, self.num_channels)


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network: ``(x (B,H,W,C), time_cond (B,), train=False) -> (B,H,W,C)``."""

    config: NCSNppConfig

    @nn.compact
    def __call__(self, x, time_cond, train: bool = False):
        cfg = self.config
        act = ACTIVATIONS[cfg.nonlinearity]
        nf, num_levels = cfg.nf, len(cfg.ch_mult)
        time_cond = jnp.asarray(time_cond, jnp.float32)

        if cfg.embedding_type == "fourier":
            used_sigmas = time_cond
            temb = layerspp.GaussianFourierProjection(embedding_size=nf, scale=cfg.fourier_scale)(jnp.log(time_cond))
        else:
            sigmas = np.exp(np.linspace(np.log(cfg.sigma_max), np.log(cfg.sigma_min), cfg.num_scales))
            used_sigmas = jnp.asarray(sigmas, jnp.float32)[time_cond.astype(jnp.int32)]
            temb = layerspp.timestep_embedding(time_cond, nf)
        if jnp.finfo(x.dtype).bits < 32:  # a 16-bit network (parameters and x cast): keep the blocks in 16 bits
            temb = temb.astype(x.dtype)
        if cfg.conditional:
            temb = nn.Dense(nf * 4, kernel_init=layerspp.default_init())(temb)
            temb = nn.Dense(nf * 4, kernel_init=layerspp.default_init())(act(temb))
        else:
            temb = None

        attn = functools.partial(layerspp.AttnBlockpp, init_scale=cfg.init_scale, skip_rescale=cfg.skip_rescale)
        resample = dict(fir=cfg.fir, fir_kernel=cfg.fir_kernel)
        if cfg.resblock_type == "ddpm":
            block = functools.partial(layerspp.ResnetBlockDDPMpp, act=act, dropout=cfg.dropout,
                                      init_scale=cfg.init_scale, skip_rescale=cfg.skip_rescale)
        else:
            block = functools.partial(layerspp.ResnetBlockBigGANpp, act=act, dropout=cfg.dropout,
                                      init_scale=cfg.init_scale, skip_rescale=cfg.skip_rescale, **resample)
        pyramid_down = functools.partial(layerspp.Downsample, with_conv=cfg.progressive_input == "residual",
                                         **resample)
        pyramid_up = functools.partial(layerspp.Upsample, with_conv=cfg.progressive == "residual", **resample)
        combine = functools.partial(layerspp.Combine, method=cfg.progressive_combine)

        if not cfg.centered:
            x = 2 * x - 1.0

        # Downsampling path.
        input_pyramid = x if cfg.progressive_input != "none" else None
        hs = [layerspp.conv3x3(x, nf)]
        for level in range(num_levels):
            for _ in range(cfg.num_res_blocks):
                h = block(out_ch=nf * cfg.ch_mult[level])(hs[-1], temb, train)
                if h.shape[1] in cfg.attn_resolutions:
                    h = attn()(h)
                hs.append(h)
            if level != num_levels - 1:
                if cfg.resblock_type == "ddpm":
                    h = layerspp.Downsample(with_conv=cfg.resamp_with_conv, **resample)(hs[-1])
                else:
                    h = block(down=True)(hs[-1], temb, train)
                if cfg.progressive_input == "input_skip":
                    input_pyramid = pyramid_down()(input_pyramid)
                    h = combine()(input_pyramid, h)
                elif cfg.progressive_input == "residual":
                    input_pyramid = pyramid_down(out_ch=h.shape[-1])(input_pyramid)
                    input_pyramid = _add(input_pyramid, h, cfg.skip_rescale)
                    h = input_pyramid
                hs.append(h)

        h = hs[-1]
        h = block()(h, temb, train)
        h = attn()(h)
        h = block()(h, temb, train)

        # Upsampling path.
        pyramid = None
        for level in reversed(range(num_levels)):
            for _ in range(cfg.num_res_blocks + 1):
                h = block(out_ch=nf * cfg.ch_mult[level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in cfg.attn_resolutions:
                h = attn()(h)
            # Call order (pyramid upsample before GroupNorm/conv) matters for the PyTorch key mapping.
            if cfg.progressive == "output_skip":
                if level != num_levels - 1:
                    pyramid = pyramid_up()(pyramid)
                skip = layerspp.conv3x3(act(layerspp.group_norm(h)), x.shape[-1], init_scale=cfg.init_scale)
                pyramid = skip if level == num_levels - 1 else pyramid + skip
            elif cfg.progressive == "residual":
                if level == num_levels - 1:
                    pyramid = layerspp.conv3x3(act(layerspp.group_norm(h)), h.shape[-1])
                else:
                    pyramid = _add(pyramid_up(out_ch=h.shape[-1])(pyramid), h, cfg.skip_rescale)
                    h = pyramid
            if level != 0:
                if cfg.resblock_type == "ddpm":
                    h = layerspp.Upsample(with_conv=cfg.resamp_with_conv, **resample)(h)
                else:
                    h = block(up=True)(h, temb, train)

        if cfg.progressive == "output_skip":
            h = pyramid
        else:
            h = act(layerspp.group_norm(h))
            h = layerspp.conv3x3(h, x.shape[-1], init_scale=cfg.init_scale)
        if cfg.scale_by_sigma:
            h = h / used_sigmas.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return h


def _add(a, b, skip_rescale: bool):
    return layerspp.skip_rescale(a + b) if skip_rescale else a + b


# The published score_sde CIFAR-10 configurations (configs/{ve,vp,subvp}/cifar10_*_continuous.py).
NCSNPP_CIFAR10_VE = NCSNppConfig()
NCSNPP_DEEP_CIFAR10_VE = NCSNPP_CIFAR10_VE.replace(num_res_blocks=8)
DDPMPP_CIFAR10_VP = NCSNppConfig(
    fir=False, progressive_input="none", embedding_type="positional", scale_by_sigma=False, centered=True,
    sde="vpsde",
)
DDPMPP_DEEP_CIFAR10_VP = DDPMPP_CIFAR10_VP.replace(num_res_blocks=8)
# NCSN++ trained with the VP/subVP SDE (configs/{vp,subvp}/cifar10_ncsnpp_continuous.py): FIR and the
# residual input pyramid, but positional embeddings, centered data and no scale_by_sigma.
NCSNPP_CIFAR10_VP = NCSNPP_CIFAR10_VE.replace(embedding_type="positional", scale_by_sigma=False, centered=True,
                                              sde="vpsde")

CONFIGS: dict[str, NCSNppConfig] = {
    "ncsnpp_cifar10_ve": NCSNPP_CIFAR10_VE,
    "ncsnpp_deep_cifar10_ve": NCSNPP_DEEP_CIFAR10_VE,
    "ddpmpp_cifar10_vp": DDPMPP_CIFAR10_VP,
    "ddpmpp_deep_cifar10_vp": DDPMPP_DEEP_CIFAR10_VP,
    "ddpmpp_cifar10_subvp": DDPMPP_CIFAR10_VP.replace(sde="subvpsde"),
    "ddpmpp_deep_cifar10_subvp": DDPMPP_DEEP_CIFAR10_VP.replace(sde="subvpsde"),
    "ncsnpp_cifar10_vp": NCSNPP_CIFAR10_VP,
    "ncsnpp_deep_cifar10_vp": NCSNPP_CIFAR10_VP.replace(num_res_blocks=8),
    "ncsnpp_cifar10_subvp": NCSNPP_CIFAR10_VP.replace(sde="subvpsde"),
    "ncsnpp_deep_cifar10_subvp": NCSNPP_CIFAR10_VP.replace(num_res_blocks=8, sde="subvpsde"),
}


def get_config(name: str, **overrides) -> NCSNppConfig:
    """A named configuration (a key of :data:`CONFIGS`) with fields replaced by ``overrides``."""
    if name not in CONFIGS:
        raise ValueError(f"unknown NCSN++ config {name!r}; valid names: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[name].replace(**overrides)


def ncsnpp_cifar10_ve(**overrides) -> NCSNpp:
    """NCSN++ (VE, continuous), score_sde ``configs/ve/cifar10_ncsnpp_continuous.py``: 62,758,915 params."""
    return NCSNpp(get_config("ncsnpp_cifar10_ve", **overrides))


def ncsnpp_deep_cifar10_ve(**overrides) -> NCSNpp:
    """NCSN++ deep (8 res blocks), ``configs/ve/cifar10_ncsnpp_deep_continuous.py``: 107,587,075 params."""
    return NCSNpp(get_config("ncsnpp_deep_cifar10_ve", **overrides))


def ddpmpp_cifar10_vp(**overrides) -> NCSNpp:
    """DDPM++ (VP, continuous), ``configs/vp/cifar10_ddpmpp_continuous.py``: 61,804,419 params.
    ``sde='subvpsde'`` gives the subVP config (same architecture)."""
    return NCSNpp(get_config("ddpmpp_cifar10_vp", **overrides))


def ddpmpp_deep_cifar10_vp(**overrides) -> NCSNpp:
    """DDPM++ deep (8 res blocks), ``configs/vp/cifar10_ddpmpp_deep_continuous.py``: 106,632,579 params."""
    return NCSNpp(get_config("ddpmpp_deep_cifar10_vp", **overrides))


def build_named(name: str, **overrides) -> NCSNpp:
    """Any named configuration of :data:`CONFIGS` (subVP and NCSN++-with-VP variants included)."""
    return NCSNpp(get_config(name, **overrides))


__all__ = ["NCSNpp", "NCSNppConfig", "CONFIGS", "get_config", "build_named", "ncsnpp_cifar10_ve",
           "ncsnpp_deep_cifar10_ve", "ddpmpp_cifar10_vp", "ddpmpp_deep_cifar10_vp"]
