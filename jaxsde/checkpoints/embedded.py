"""The embedded score models, loaded offline from package data.

    ckpt = jaxsde.pretrained("digits")     # the largest VP model on 8x8 digits
    sol = jaxsde.sample(key, ckpt.sde, ckpt.score, jaxsde.GottaGoFast(), ckpt.shape, 64)

Names: ``"digits"`` (= ``"digits-large"``), ``"digits-medium"``, ``"digits-small"`` (VP SDE,
three sizes, the levels of the multilevel sampler) and ``"digits-ve"`` (medium, VE SDE).
Weights are the EMA weights written by ``jaxsde train`` + ``training.export_weights``;
``jaxsde/checkpoints/weights/README.md`` has the exact training commands.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp

from ..models.score import preconditioned_convention
from ..models.score import score_fn as make_score_fn
from ..train_config import TrainConfig
from .checkpoint import Checkpoint
from .io import load_msgpack

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
ALIASES = {"digits": "digits-large"}
NAMES = ("digits", "digits-large", "digits-medium", "digits-small", "digits-ve")


def available() -> list[str]:
    """Names of the embedded models present in this installation."""
    return [n for n in NAMES if os.path.exists(_path(ALIASES.get(n, n)))]


def _path(name: str) -> str:
    return os.path.join(WEIGHTS_DIR, f"{name}.msgpack")


def load_weights_file(path: str, name: str | None = None) -> Checkpoint:
    """Load a file written by :func:`jaxsde.training.export_weights`; errors name the file,
    the parameter path and the expected vs found shape."""
    payload = load_msgpack(path)
    for key in ("params_ema", "config"):
        if key not in payload:
            raise ValueError(f"{path}: missing key {key!r}; expected a jaxsde weights file with "
                             "'params_ema' and 'config'")
    cfg = json.loads(payload["config"])
    config = TrainConfig.from_dict(cfg)
    config.validate()
    model = config.make_model()
    sde = config.make_sde()
    shape = (8, 8, 1)
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.zeros((1,)))
    params = _restore(expected, payload["params_ema"], path)

    def score_fn(p, compute_dtype=None):
        return make_score_fn(model.apply, p, sde, config.parameterization, config.sigma_data, compute_dtype)

    return Checkpoint(model=model, params=params, sde=sde, score=score_fn(params), score_fn=score_fn, shape=shape,
                      data_range=sde.data_range, config=cfg, name=name or os.path.basename(path),
                      convention=preconditioned_convention(sde, config.parameterization, config.sigma_data))


def _restore(expected, found, path: str, prefix: str = ""):
    """Match ``found`` (nested dicts of arrays) against ``expected`` (ShapeDtypeStructs)."""
    if isinstance(expected, dict):
        if not isinstance(found, dict):
            raise ValueError(f"{path}: {prefix or '/'} should be a dict of parameters, found {type(found).__name__}")
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        if missing:
            raise ValueError(f"{path}: missing parameter {prefix}/{missing[0]}" + (f" (+{len(missing) - 1} more)"
                                                                                  if len(missing) > 1 else ""))
        if unexpected:
            raise ValueError(f"{path}: unexpected parameter {prefix}/{unexpected[0]}")
        return {k: _restore(expected[k], found[k], path, f"{prefix}/{k}") for k in expected}
    arr = jnp.asarray(found)
    if arr.shape != expected.shape:
        raise ValueError(f"{path}: parameter {prefix} has shape {arr.shape}, expected {expected.shape}")
    return arr.astype(expected.dtype)


def pretrained(name: str = "digits") -> Checkpoint:
    """Load an embedded model by name (offline)."""
    if name not in NAMES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(NAMES)}")
    file_name = ALIASES.get(name, name)
    path = _path(file_name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from this installation; available: {available()}")
    return load_weights_file(path, name)
