"""Flax score networks and their named configurations.

    model = jaxsde.models.build("ddpmpp_cifar10_vp")   # a flax.linen Module, NHWC input

Names (with the published parameter counts of the reference implementations):
``"ncsnpp_cifar10_ve"``, ``"ncsnpp_deep_cifar10_ve"``, ``"ddpmpp_cifar10_vp"``, ``"ddpmpp_deep_cifar10_vp"``
(score_sde's NCSN++/DDPM++), ``"ddpm_cifar10"`` (diffusers' ``UNet2DModel`` layout of google/ddpm-cifar10-32),
``"galaxygrad_hsc32"`` (galaxygrad's MLP-Mixer) and ``"digits"`` (the embedded 8x8 UNet, largest size).
Each module is imported only when its name is built.
"""

from __future__ import annotations

import importlib

import flax.linen as nn

# name -> (module, factory function[, leading positional arguments]); factories take keyword
# overrides of the named config.
_REGISTRY: dict[str, tuple] = {
    "ncsnpp_cifar10_ve": ("jaxsde.models.ncsnpp", "ncsnpp_cifar10_ve"),
    "ncsnpp_deep_cifar10_ve": ("jaxsde.models.ncsnpp", "ncsnpp_deep_cifar10_ve"),
    "ddpmpp_cifar10_vp": ("jaxsde.models.ncsnpp", "ddpmpp_cifar10_vp"),
    "ddpmpp_deep_cifar10_vp": ("jaxsde.models.ncsnpp", "ddpmpp_deep_cifar10_vp"),
    "ddpm_cifar10": ("jaxsde.models.ddpm_unet", "ddpm_cifar10"),
    "galaxygrad_hsc32": ("jaxsde.models.mixer", "galaxygrad_hsc32"),
    "digits": ("jaxsde.models.unet", "digits"),
    "digits-small": ("jaxsde.models.unet", "digits_small"),
    "digits-medium": ("jaxsde.models.unet", "digits_medium"),
    "digits-large": ("jaxsde.models.unet", "digits"),
    # score_sde's other NCSN++/DDPM++ CIFAR-10 variants (subVP; NCSN++ trained with the VP SDE)
    **{name: ("jaxsde.models.ncsnpp", "build_named", (name,)) for name in (
        "ddpmpp_cifar10_subvp", "ddpmpp_deep_cifar10_subvp", "ncsnpp_cifar10_vp", "ncsnpp_deep_cifar10_vp",
        "ncsnpp_cifar10_subvp", "ncsnpp_deep_cifar10_subvp")},
}


def names() -> list[str]:
    """Every name :func:`build` accepts."""
    return sorted(_REGISTRY)


def build(name: str, **overrides) -> nn.Module:
    """The Flax module of a named configuration; ``overrides`` replace config fields.

    Args:
        name: a configuration name (:func:`names` lists them).
        **overrides: config fields to replace.

    Returns:
        The (uninitialised) Flax module.

    Raises:
        ValueError: an unknown ``name``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    module, factory, *args = _REGISTRY[name]
    return getattr(importlib.import_module(module), factory)(*(args[0] if args else ()), **overrides)


__all__ = ["build", "names"]
