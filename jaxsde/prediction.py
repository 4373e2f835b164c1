"""The model's own prediction as a first-class channel: score, noise, data or velocity.

A model evaluated at ``(x, t)`` (ONE sample, no batch axis; ``t`` a scalar) predicts one of

* ``"score"``: ``grad_x log p_t(x)``;
* ``"eps"``: the noise ``E[noise | x_t = x]``;
* ``"x0"``: the data ``E[x_0 | x_t = x]``;
* ``"velocity"``: ``dx_t/dt = alpha' x_0 + sigma' noise`` in expectation, the probability-flow
  drift (``noise - x_0`` on :class:`~jaxsde.sde.FlowSDE`, what flow-matching models predict).

:class:`Prediction` tags a function with its kind; a plain callable is a score
(:func:`as_prediction`). :func:`convert` maps one kind to another through the SDE's
``alpha, sigma``, their derivatives ``alpha', sigma'`` and ``D = alpha sigma' - sigma alpha'``
(:meth:`~jaxsde.sde.SDE.velocity_determinant`), each pair by its direct formula:

* from the velocity: ``x0 = (sigma' x - sigma v) / D``, ``eps = (alpha v - alpha' x) / D``,
  ``score = (alpha' x - alpha v) / (sigma D)``;
* from x0: ``eps = (x - alpha x0) / sigma``, ``score = (alpha x0 - x) / sigma^2``;
* from eps: ``x0 = (x - sigma eps) / alpha``, ``score = -eps / sigma``;
* from the score: ``x0 = (x + sigma^2 s) / alpha`` (Tweedie), ``eps = -sigma s``;

and to the velocity: from x0 ``(sigma' x - D x0) / sigma``, from eps ``(alpha' x + D eps) /
alpha``, from the score ``(alpha' x - sigma D s) / alpha``. Where ``alpha = 0`` (``t = 1`` on a
flow) the conversions out of the velocity and out of x0 are exact (``x0 = x - t v`` on the
linear path, no division by ``alpha``); those out of the score or eps into x0 or the velocity
are ``0/0`` there (the score at ``alpha = 0`` is ``-x / sigma^2`` whatever the data: it has
lost ``E[x_0]``). Where ``sigma = 0`` (``t = 0``) conversions into the score or eps are
infinite. The conversions are pure and jit/vmap/grad friendly; they compute in ``x``'s dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .sde import SDE

Array = jax.Array

__all__ = ["PREDICTION_KINDS", "Model", "Prediction", "as_prediction", "convert", "prepare_model", "to_eps",
           "to_kind", "to_score", "to_velocity", "to_x0"]

PREDICTION_KINDS = ("score", "eps", "x0", "velocity")


def _check_kind(kind: str) -> str:
    if kind not in PREDICTION_KINDS:
        raise ValueError(f"unknown prediction kind {kind!r}; choose one of {PREDICTION_KINDS}")
    return kind


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A model ``fn(x, t)`` or ``fn(x, t, cond)`` of ONE sample (``x`` without a batch axis,
    ``t`` a scalar, ``cond`` e.g. a scalar label) whose output, shaped like ``x``, is a ``kind``
    prediction (one of :data:`PREDICTION_KINDS`: ``"score"``, ``"eps"``, ``"x0"``,
    ``"velocity"``; see the module docstring).

    Calling it calls ``fn`` unchanged (its own kind); :func:`to_score`, :func:`to_x0`,
    :func:`to_eps`, :func:`to_velocity` give functions of another kind. Frozen and hashable
    (by ``fn``'s identity) and a static pytree, like a plain function.

    Example: a flow-matching network ``v(x, t)`` on :class:`~jaxsde.sde.FlowSDE` is
    ``Prediction(v, "velocity")``; ``to_x0(FlowSDE(), Prediction(v, "velocity"))`` is
    ``lambda x, t: x - t * v(x, t)``, exact at ``t = 1``.

    Args:
        fn: the model, ``fn(x, t)`` or ``fn(x, t, cond)``.
        kind: what ``fn`` predicts: ``"score"``, ``"eps"``, ``"x0"`` or ``"velocity"``.

    Raises:
        ValueError: an unknown ``kind``.
        TypeError: ``fn`` is not callable, or is already a :class:`Prediction`.
    """

    fn: Callable
    kind: str

    def __post_init__(self):
        if isinstance(self.fn, Prediction):
            raise TypeError("Prediction(fn, kind): fn is already a Prediction; convert it with "
                            "jaxsde.prediction.to_kind(sde, prediction, kind) instead")
        if not callable(self.fn):
            raise TypeError(f"Prediction(fn, kind): fn must be callable, got {type(self.fn).__name__}")
        _check_kind(self.kind)

    def __call__(self, x: Array, t: ArrayLike, *cond) -> Array:
        return self.fn(x, t, *cond)


jax.tree_util.register_static(Prediction)


def as_prediction(model: Callable | Prediction) -> Prediction:
    """``model`` itself if it is a :class:`Prediction`, else ``Prediction(model, "score")``: a
    plain callable is a score function.

    Args:
        model: a :class:`Prediction` or a plain callable.

    Returns:
        The :class:`Prediction`.
    """
    return model if isinstance(model, Prediction) else Prediction(model, "score")


def convert(sde: SDE, value: Array, x: Array, t: ArrayLike, source: str, target: str) -> Array:
    """A ``source`` prediction ``value`` at ``(x, t)`` as a ``target`` prediction (kinds from
    :data:`PREDICTION_KINDS`), by the direct formula of the pair (see the module docstring; exact
    at ``alpha = 0`` out of ``"velocity"`` and ``"x0"``). ``value`` and ``x`` share a shape (any,
    e.g. one sample or a batch); ``t`` is a scalar or broadcasts against them
    (e.g. ``(B, 1, 1, 1)``). ``source == target`` returns ``value`` unchanged.

    Args:
        sde: the SDE whose ``alpha_t``, ``sigma_t`` relate the predictions.
        value: the ``source`` prediction.
        x: the noisy sample(s) ``x_t``, shaped like ``value``.
        t: the time(s).
        source: ``value``'s kind.
        target: the kind wanted.

    Returns:
        The ``target`` prediction, shaped like ``value``.
    """
    _check_kind(source)
    _check_kind(target)
    if source == target:
        return value
    if source == "velocity":
        if target == "x0":
            return sde.x0_from_velocity(x, t, value)
        if target == "eps":
            return sde.eps_from_velocity(x, t, value)
        return sde.score_from_velocity(x, t, value)
    if target == "velocity":
        if source == "x0":
            return sde.velocity_from_x0(x, t, value)
        if source == "score":
            return sde.velocity_from_score(x, t, value)
        alpha, _ = sde.marginal(t)  # eps
        dalpha, _ = sde.marginal_derivatives(t)
        return (dalpha * x + sde.velocity_determinant(t) * value) / alpha
    alpha, sigma = sde.marginal(t)
    if source == "x0":
        return (x - alpha * value) / sigma if target == "eps" else (alpha * value - x) / sigma**2
    if source == "eps":
        return (x - sigma * value) / alpha if target == "x0" else -value / sigma
    # source == "score"
    return (x + sigma**2 * value) / alpha if target == "x0" else -sigma * value


def to_kind(sde: SDE, model: Callable | Prediction, kind: str) -> Callable:
    """``model`` (a :class:`Prediction`, or a plain callable: a score) as a function
    ``f(x, t, *cond)`` of ONE sample returning the ``kind`` prediction; ``model`` itself when it
    already has that kind. ``t`` is cast to ``x``'s dtype.

    Args:
        sde: the SDE the model was trained on.
        model: a :class:`Prediction`, or a plain callable (a score function).
        kind: the kind wanted.

    Returns:
        ``f(x, t, *cond)``.
    """
    pred = as_prediction(model)
    _check_kind(kind)
    if pred.kind == kind:
        return pred.fn

    def fn(x: Array, t: ArrayLike, *cond) -> Array:
        t = jnp.asarray(t, x.dtype)
        return convert(sde, pred.fn(x, t, *cond), x, t, pred.kind, kind)

    return fn


def to_score(sde: SDE, model: Callable | Prediction) -> Callable:
    """The score function ``score(x, t, *cond)`` of ``model`` (see :func:`to_kind`); infinite at
    ``sigma = 0``, finite at ``alpha = 0`` from a velocity or x0 model.

    Args:
        sde: the SDE the model was trained on.
        model: a :class:`Prediction`, or a plain callable (a score function).

    Returns:
        The function of ONE sample.
    """
    return to_kind(sde, model, "score")


def to_x0(sde: SDE, model: Callable | Prediction) -> Callable:
    """The data estimate ``x0(x, t, *cond)`` of ``model`` (see :func:`to_kind`): exact at
    ``alpha = 0`` for velocity and x0 models (``x - t v`` on the linear path); ``0/0`` there for
    score and eps models.

    Args:
        sde: the SDE the model was trained on.
        model: a :class:`Prediction`, or a plain callable (a score function).

    Returns:
        The function of ONE sample.
    """
    return to_kind(sde, model, "x0")


def to_eps(sde: SDE, model: Callable | Prediction) -> Callable:
    """The noise estimate ``eps(x, t, *cond)`` of ``model`` (see :func:`to_kind`).

    Args:
        sde: the SDE the model was trained on.
        model: a :class:`Prediction`, or a plain callable (a score function).

    Returns:
        The function of ONE sample.
    """
    return to_kind(sde, model, "eps")


def to_velocity(sde: SDE, model: Callable | Prediction) -> Callable:
    """The velocity (probability-flow drift) ``v(x, t, *cond)`` of ``model`` (see
    :func:`to_kind`): exact at ``alpha = 0`` from x0 and velocity models only.

    Args:
        sde: the SDE the model was trained on.
        model: a :class:`Prediction`, or a plain callable (a score function).

    Returns:
        The function of ONE sample.
    """
    return to_kind(sde, model, "velocity")


class Model:
    """A :class:`Prediction` prepared for the solvers on one SDE (what :func:`jaxsde.solve`'s
    ``prepare`` makes of a ``Prediction`` given as the score).

    Called as ``model(x, t)`` it is the score (for the solvers that read the score); its
    :meth:`x0`, :meth:`eps` and :meth:`velocity` give the other predictions from the model's own
    output by the direct formula (see the module docstring): exact at ``alpha = 0`` out of a
    velocity or x0 model (``x0 = x - t v`` on :class:`~jaxsde.sde.FlowSDE`), where the Tweedie
    estimate of the score is ``0/0``. Each call evaluates the model once. The solvers'
    data / noise predictions (:func:`jaxsde.solvers.exponential.data_prediction`) and the final
    denoising step read :meth:`x0` / :meth:`eps` when the score has them.

    Args:
        sde: the SDE the model was trained on.
        prediction: the :class:`Prediction`.
        dtype: cast the model's output to this dtype (the solver state's), or ``None``.
        cond: the sample's condition (bound by :meth:`bind_condition`), or ``()`` for none yet.
    """

    def __init__(self, sde: SDE, prediction: Prediction, dtype=None, cond: tuple = ()):
        self.sde = sde
        self.prediction = prediction
        self.dtype = dtype
        self.cond = cond

    @property
    def kind(self) -> str:
        """The kind of the model's own output."""
        return self.prediction.kind

    def with_dtype(self, dtype) -> Model:
        """The model with its output cast to ``dtype``."""
        return Model(self.sde, self.prediction, dtype, self.cond)

    def bind_condition(self, cond) -> Model:
        """The model of ONE sample whose condition is ``cond`` (see :func:`jaxsde.driver.bind`)."""
        return Model(self.sde, self.prediction, self.dtype, (cond,))

    def output(self, x: Array, t: ArrayLike, *cond) -> Array:
        """The model's own output at ``(x, t)`` (one evaluation), in the state's dtype."""
        out = self.prediction.fn(x, jnp.asarray(t, x.dtype), *self.cond, *cond)
        return out if self.dtype is None else out.astype(self.dtype)

    def predict(self, x: Array, t: ArrayLike, kind: str, *cond) -> Array:
        """The ``kind`` prediction at ``(x, t)`` (one evaluation)."""
        t = jnp.asarray(t, x.dtype)
        return convert(self.sde, self.output(x, t, *cond), x, t, self.kind, kind)

    def predict_many(self, x: Array, t: ArrayLike, kinds: tuple[str, ...], *cond) -> tuple[Array, ...]:
        """The predictions of each of ``kinds`` at ``(x, t)`` from ONE evaluation of the model (e.g.
        ``("eps", "x0")``: a noise-prediction solver's history entry and the data prediction of its
        exact step out of ``alpha = 0``)."""
        t = jnp.asarray(t, x.dtype)
        out = self.output(x, t, *cond)
        return tuple(convert(self.sde, out, x, t, self.kind, kind) for kind in kinds)

    def __call__(self, x: Array, t: ArrayLike, *cond) -> Array:
        return self.predict(x, t, "score", *cond)

    def x0(self, x: Array, t: ArrayLike) -> Array:
        """The data prediction ``E[x_0 | x_t = x]``."""
        return self.predict(x, t, "x0")

    def eps(self, x: Array, t: ArrayLike) -> Array:
        """The noise prediction ``E[noise | x_t = x]``."""
        return self.predict(x, t, "eps")

    def velocity(self, x: Array, t: ArrayLike) -> Array:
        """The velocity (probability-flow drift) ``dx_t/dt``."""
        return self.predict(x, t, "velocity")


def prepare_model(sde: SDE, model: Callable | Prediction) -> Callable:
    """What the driver makes of the ``score`` argument: a plain callable stays as it is (a score);
    a :class:`Prediction` becomes a :class:`Model` (a score with the exact data-prediction
    channel). A :class:`Prediction` whose kind the SDE cannot convert (the velocity conversions
    need ``D = alpha sigma' - sigma alpha' > 0``, finite) raises ``ValueError``.

    Args:
        sde: the SDE.
        model: a plain score function or a :class:`Prediction`.

    Returns:
        ``model`` itself or its :class:`Model`.
    """
    if not isinstance(model, Prediction):
        return model
    if model.kind == "velocity":
        import math

        try:
            with jax.ensure_compile_time_eval():
                d = [float(sde.velocity_determinant(jnp.asarray(t, jnp.float32))) for t in (sde.eps, 0.5 * sde.T)]
        except Exception as err:  # noqa: BLE001 - any failure means the SDE cannot convert a velocity
            raise ValueError(f"a velocity Prediction needs the SDE's alpha'(t), sigma'(t) (marginal_derivatives); "
                             f"{type(sde).__name__} cannot give them ({err}). Give the model as a score, eps or x0 "
                             f"Prediction, or use a Gaussian-path SDE (jaxsde.FlowSDE)") from err
        if not all(math.isfinite(v) and v > 0 for v in d):
            raise ValueError(f"a velocity Prediction on {type(sde).__name__}: D = alpha sigma' - sigma alpha' is {d} "
                             f"(must be finite and > 0) so the velocity does not determine the score; a velocity "
                             f"model belongs on the path it was trained on (e.g. jaxsde.FlowSDE())")
    return Model(sde, model)
