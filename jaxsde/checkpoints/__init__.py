"""Loaders for published score-model checkpoint formats.

    ckpt = jaxsde.checkpoints.load(path, kind)

``kind``:

* ``"score_sde"``: a score_sde (JAX/Flax) ``checkpoint_N`` msgpack ``State``; the EMA weights
  (``params_ema``) are used;
* ``"score_sde_pytorch"``: a score_sde_pytorch ``checkpoint_N.pth`` (the EMA shadow list is used);
  read with ``torch.load(weights_only=True)``, torch being an optional dependency;
* ``"diffusers"``: a diffusers ``UNet2DModel`` folder (``config.json`` + ``diffusion_pytorch_model``
  ``.safetensors`` or ``.bin``), old and new attention key names;
* ``"galaxygrad"``: a galaxygrad 0.2.1 equinox ``.eqx`` file.

Each returns a :class:`jaxsde.Checkpoint` whose ``score`` samples correctly with ``jaxsde.solve``.
Every loader checks every parameter against the model's expected tree and raises
:class:`CheckpointError` naming the file, the parameter path and the expected vs found shape.
No pickled code is executed.
"""

from __future__ import annotations

import importlib

from .checkpoint import Checkpoint
from .errors import CheckpointError

# kind -> (module, loader function); each loader is ``load(path, **options) -> Checkpoint``.
_LOADERS: dict[str, tuple[str, str]] = {
    "score_sde": ("jaxsde.checkpoints.score_sde", "load_flax"),
    "score_sde_pytorch": ("jaxsde.checkpoints.score_sde", "load_pytorch"),
    "diffusers": ("jaxsde.checkpoints.diffusers", "load"),
    "galaxygrad": ("jaxsde.checkpoints.galaxygrad", "load"),
}

KINDS = tuple(_LOADERS)


def load(path: str, kind: str, **options) -> Checkpoint:
    """Load a published checkpoint file (or folder, for ``"diffusers"``) of the given ``kind``.

    Args:
        path: the checkpoint file (or folder).
        kind: one of ``KINDS`` (``"score_sde"``, ``"diffusers"``, ...).
        **options: passed to the kind's loader.

    Returns:
        The :class:`~jaxsde.Checkpoint`.

    Raises:
        ValueError: an unknown ``kind``.
        CheckpointError: the file does not hold what the kind expects.
    """
    if kind not in _LOADERS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    module, loader = _LOADERS[kind]
    return getattr(importlib.import_module(module), loader)(path, **options)


__all__ = ["load", "KINDS", "Checkpoint", "CheckpointError"]
