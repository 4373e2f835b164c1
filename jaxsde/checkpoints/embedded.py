"""The embedded score models, loaded offline from package data.

    ckpt = jaxsde.pretrained("digits")     # the largest VP model on 8x8 digits
    sol = jaxsde.sample(key, ckpt.sde, ckpt.score, jaxsde.GottaGoFast(), ckpt.shape, 64)

Names: ``"digits"`` (= ``"digits-large"``), ``"digits-medium"``, ``"digits-small"`` (VP SDE,
three sizes, the levels of the multilevel sampler), ``"digits-ve"`` (medium, VE SDE) and
``"digits-cond"`` (medium, VP SDE, class-conditional: ``score(x, t, cond)`` with ``cond`` an
int32 label 0..9, or the null class 10 (``ckpt.null_cond``) for the unconditional score, trained
with label dropout so classifier-free guidance can combine both), and ``"digits-flow"`` (medium,
:class:`~jaxsde.FlowSDE`, trained by flow matching). A flow-matching model's ``ckpt.score`` (and
``ckpt.score_fn(params)``) is its velocity network tagged ``jaxsde.Prediction(v, "velocity")``:
calling it returns the velocity ``v(x, t) = dx_t/dt`` (``noise - x_0`` in expectation), and every
place that takes a score (``jaxsde.solve``, ``sample``, ``generate``, the likelihood, guidance)
reads it as such, so solvers that start at ``t = 1`` exactly take its data estimate ``x - t v``::

    ckpt = jaxsde.pretrained("digits-flow")
    sol = jaxsde.sample(key, ckpt.sde, ckpt.score, jaxsde.DPMSolverPP(9, grid="uniform"), ckpt.shape, 64)

Weights are the EMA weights written by ``jaxsde train`` + ``training.export_weights``;
``jaxsde/checkpoints/weights/README.md`` has the exact training commands.

:func:`noisy_classifier` loads the classifier of noised digits for classifier guidance
(``logits(x, t)``, ``log_prob(x, t, label)`` on the VP SDE's noised samples).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..models.noisy_classifier import NoisyDigitsClassifier
from ..models.score import batched_output, conditional_score_fn, input_scale, preconditioned_convention
from ..models.score import score_fn as make_score_fn
from ..prediction import Prediction
from ..sde import SDE
from ..train_config import SDES, TrainConfig
from .checkpoint import Checkpoint
from .io import load_msgpack

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
ALIASES = {"digits": "digits-large"}
NAMES = ("digits", "digits-large", "digits-medium", "digits-small", "digits-ve", "digits-cond", "digits-flow")
NOISY_CLASSIFIER_PATH = os.path.join(WEIGHTS_DIR, "digits-noisy-classifier.msgpack")


def available() -> list[str]:
    """Names of the embedded models present in this installation."""
    return [n for n in NAMES if os.path.exists(_path(ALIASES.get(n, n)))]


def _path(name: str) -> str:
    return os.path.join(WEIGHTS_DIR, f"{name}.msgpack")


def load_weights_file(path: str, name: str | None = None) -> Checkpoint:
    """Load a file written by :func:`jaxsde.training.export_weights`; errors name the file,
    the parameter path and the expected vs found shape.

    Args:
        path: the ``.msgpack`` file.
        name: the checkpoint's name (default: the file's stem).

    Returns:
        The :class:`~jaxsde.Checkpoint`.
    """
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
    num_classes = config.num_classes
    label = () if num_classes is None else (jnp.zeros((1,), jnp.int32),)
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.zeros((1,)), *label)
    params = _restore(expected, payload["params_ema"], path)

    if config.parameterization == "flow":  # a velocity network: its raw output, tagged (see the module docstring)
        def score_fn(p, compute_dtype=None):
            output = batched_output(model.apply, sde, config.sigma_data, compute_dtype)
            if num_classes is None:
                def velocity(x, t):
                    t = jnp.asarray(t, x.dtype)
                    return output(p, x[None], t[None])[0]
            else:
                def velocity(x, t, cond):
                    t = jnp.asarray(t, x.dtype)
                    label = jnp.reshape(check_label(cond, num_classes, allow_null=True), (1,))
                    return output(p, x[None], t[None], label)[0]

            return Prediction(velocity, "velocity")
    elif num_classes is None:
        def score_fn(p, compute_dtype=None):
            return make_score_fn(model.apply, p, sde, config.parameterization, config.sigma_data, compute_dtype)
    else:
        def score_fn(p, compute_dtype=None):
            inner = conditional_score_fn(model.apply, p, sde, config.parameterization, config.sigma_data,
                                         compute_dtype)

            def score(x, t, cond):
                return inner(x, t, check_label(cond, num_classes, allow_null=True))

            return score

    return Checkpoint(model=model, params=params, sde=sde, score=score_fn(params), score_fn=score_fn, shape=shape,
                      data_range=sde.data_range, config=cfg, name=name or os.path.basename(path),
                      convention=preconditioned_convention(sde, config.parameterization, config.sigma_data),
                      num_classes=num_classes, null_cond=None if num_classes is None else jnp.int32(num_classes))


def check_label(label, num_classes: int, allow_null: bool = False):
    """``label`` as an int32 scalar array, after the checks possible at trace time: a scalar of an
    integer dtype; when concrete (not traced), in ``0..num_classes - 1`` (``0..num_classes`` with
    ``allow_null``: ``num_classes`` is the null class). A traced label is not range-checked.

    Args:
        label: the class label (int, or an integer array scalar; may be traced).
        num_classes: the number of classes.
        allow_null: accept ``num_classes`` (the null class) too.

    Returns:
        The label, an int32 scalar array.

    Raises:
        TypeError: not of an integer dtype.
        ValueError: not a scalar, or a concrete label out of range.
    """
    dtype = jnp.result_type(label)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"label must be an integer (int32 scalar), got dtype {dtype}")
    if jnp.ndim(label) != 0:
        raise ValueError(f"label must be a scalar (one label per sample), got shape {jnp.shape(label)}")
    top = num_classes if allow_null else num_classes - 1
    if not isinstance(label, jax.core.Tracer):
        value = int(np.asarray(label))
        if not 0 <= value <= top:
            null = f" ({num_classes} = the null class)" if allow_null else ""
            raise ValueError(f"label {value} is outside 0..{top}{null}")
    return jnp.asarray(label, jnp.int32)


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
    """Load an embedded model by name (offline).

    Args:
        name: an embedded model (:func:`available` lists them): ``"digits"``, ``"digits-ve"``,
            ``"digits-cond"``, ...

    Returns:
        The :class:`~jaxsde.Checkpoint`.

    Raises:
        ValueError: an unknown ``name``.
        FileNotFoundError: the weights file is missing from the installation.
    """
    if name not in NAMES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(NAMES)}")
    file_name = ALIASES.get(name, name)
    path = _path(file_name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from this installation; available: {available()}")
    return load_weights_file(path, name)


class NoisyClassifier(NamedTuple):
    """A classifier of noised samples ``x_t`` of ``sde``, for classifier guidance. For ONE sample
    ``x`` (``shape``), scalar ``t`` in ``[sde.eps, sde.T]`` and an int label in ``0..num_classes - 1``:
    ``logits(x, t) -> (num_classes,)``, ``log_prob(x, t, label) -> scalar`` (the log-softmax of the
    logits at ``label``: ``log p_t(label | x)``, whose gradient in ``x`` is the guidance term).
    ``logits_fn(params)`` / ``log_prob_fn(params)`` build them for traced params.

    Attributes:
        model: the Flax module, applied to ``(c_in(t) x, t)`` batches.
        params: its parameters.
        sde: the SDE whose noised samples it classifies.
        logits: ``logits(x, t) -> (num_classes,)``.
        log_prob: ``log_prob(x, t, label) -> scalar``.
        logits_fn: ``logits_fn(params)`` builds ``logits`` for traced params.
        log_prob_fn: ``log_prob_fn(params)`` builds ``log_prob`` for traced params.
        num_classes: the number of classes.
        shape: one sample's shape.
        config: the training configuration.
        name: the classifier's name.
    """

    model: Any  # the Flax module, applied to (c_in(t) x, t) batches
    params: Any
    sde: SDE
    logits: Callable
    log_prob: Callable
    logits_fn: Callable
    log_prob_fn: Callable
    num_classes: int
    shape: tuple[int, ...]
    config: dict
    name: str


def make_noisy_classifier(params, config: dict, name: str = "digits-noisy-classifier") -> NoisyClassifier:
    """A :class:`NoisyClassifier` from its weights and configuration (the ``"config"`` of its file:
    ``channels``, ``emb_dim``, ``hidden``, ``num_classes``, ``sde``, ``sigma_data``)."""
    model = NoisyDigitsClassifier(channels=tuple(config["channels"]), emb_dim=config["emb_dim"],
                                  hidden=config["hidden"], num_classes=config["num_classes"])
    if config["sde"] not in SDES:
        raise ValueError(f"{name}: unknown sde {config['sde']!r}; choose one of {sorted(SDES)}")
    sde = SDES[config["sde"]]()
    sigma_data = float(config["sigma_data"])
    num_classes = int(config["num_classes"])

    def logits_fn(p):
        def logits(x, t):
            t = jnp.asarray(t, x.dtype)
            return model.apply(p, (input_scale(sde, t, sigma_data) * x)[None], t[None])[0]

        return logits

    def log_prob_fn(p):
        logits = logits_fn(p)

        def log_prob(x, t, label):
            return jax.nn.log_softmax(logits(x, t))[check_label(label, num_classes)]

        return log_prob

    return NoisyClassifier(model=model, params=params, sde=sde, logits=logits_fn(params),
                           log_prob=log_prob_fn(params), logits_fn=logits_fn, log_prob_fn=log_prob_fn,
                           num_classes=num_classes, shape=tuple(config.get("shape", (8, 8, 1))), config=config,
                           name=name)


def load_noisy_classifier_file(path: str, name: str | None = None) -> NoisyClassifier:
    """Load a file written by :func:`jaxsde.training.train_noisy_classifier` (``{"params",
    "config"}``); errors name the file, the parameter path and the expected vs found shape.

    Args:
        path: the ``.msgpack`` file.
        name: the classifier's name (default: the file's stem).

    Returns:
        The :class:`NoisyClassifier`.
    """
    payload = load_msgpack(path)
    for key in ("params", "config"):
        if key not in payload:
            raise ValueError(f"{path}: missing key {key!r}; expected a jaxsde noisy-classifier file with "
                             "'params' and 'config'")
    config = json.loads(payload["config"])
    clf = make_noisy_classifier(None, config, name or os.path.basename(path))
    shape = clf.shape
    expected = jax.eval_shape(clf.model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.zeros((1,)))
    return make_noisy_classifier(_restore(expected, payload["params"], path), config, clf.name)


def noisy_classifier() -> NoisyClassifier:
    """The embedded classifier of noised 8x8 digits under the VP SDE (offline), for classifier
    guidance of ``"digits"`` / ``"digits-cond"``: labels 0..9, no null class."""
    if not os.path.exists(NOISY_CLASSIFIER_PATH):
        raise FileNotFoundError(f"{NOISY_CLASSIFIER_PATH} is missing from this installation")
    return load_noisy_classifier_file(NOISY_CLASSIFIER_PATH, "digits-noisy-classifier")
