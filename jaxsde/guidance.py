"""Guidance as score combinators: conditional scores in, a guided ``score(x, t, cond)`` out.

Every function here returns a score with the calling convention of a conditional score,
``guided(x, t, cond)`` for ONE sample, so it works with every solver (fixed-grid, adaptive,
Gotta Go Fast) through ``cond=`` of :func:`jaxsde.solve`, :func:`jaxsde.sample`,
:func:`jaxsde.generate`, :func:`jaxsde.sdedit` and :func:`jaxsde.inpaint`::

    guided = jaxsde.guidance.classifier_free(ckpt.score, ckpt.null_cond, weight=2.0)
    sol = jaxsde.sample(key, ckpt.sde, guided, solver, ckpt.shape, n, cond=labels)   # labels: (n,)

**Conventions.**

* Classifier-free guidance (Ho & Salimans, 2022) with weight ``w``:
  ``(1 + w) s(x, t, c) - w s(x, t, null)``; ``w = 0`` is the plain conditional score, ``w = -1``
  the unconditional one. Both branches are evaluated in one call of ``score`` over a leading
  axis of 2 (``jax.vmap`` over the pair), which under the batch's ``vmap`` is one network call
  on a batch twice the size.
* Several conditions at once (composition, Liu et al. 2022):
  ``s(x, t, null) + sum_k (1 + w_k) (s(x, t, c_k) - s(x, t, null))``; with one condition it is
  classifier-free guidance. The ``K`` conditions and the null one are one call over ``K + 1``.
* Classifier guidance (Dhariwal & Nichol, 2021; score_sde's class-conditional sampling):
  ``s(x, t) + w grad_x log p_t(c | x)`` from a noise-conditional classifier's log-probability.
* A guidance interval (Kynkaanniemi et al., 2024) applies the weight only while the noise
  level ``sigma_t / alpha_t`` (k-diffusion's and EDM's sigma) lies in ``[lo, hi]``; elsewhere the
  weight is 0 (the conditional score). Under ``vmap`` both branches are still computed outside
  the interval (samples are at different times), so an interval changes the samples, not the
  cost.

**Prediction models.** A :class:`jaxsde.Prediction` (e.g. a flow-matching model's velocity,
``jaxsde.pretrained("digits-flow").score``) is guided in its own kind and the result is a
:class:`~jaxsde.Prediction` of that kind, so solvers keep the model's exact data estimate (a
flow starts at ``t = 1``). Classifier-free and composed guidance combine the outputs with the
same weights: every kind is affine in the score with coefficients that do not depend on the
condition, and the weights sum to 1, so this equals guiding the score. Classifier guidance adds
``w grad log p`` to the score, which is ``w B(t) grad log p`` in the model's kind (``B =
-sigma D / alpha`` for a velocity, ``sigma^2 / alpha`` for x0): infinite where ``alpha = 0``, so
it needs ``sde`` and, on a flow started at ``t = 1``, an ``interval`` with a finite ``hi`` (the
term is exactly 0 outside the interval).

**NFE.** The driver counts calls of the score it is given: one call of a guided score counts
as one NFE in ``sol.stats.nfe``, whatever it costs inside (a CFG evaluation runs the network
on two inputs; classifier guidance adds one classifier forward and backward pass). The final
denoising (Tweedie) step of every solver uses the guided score too, so the returned sample is
the guided model's posterior mean at ``t_end``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .prediction import Prediction, convert
from .sde import SDE

Array = jax.Array
CondScore = Callable[[Array, Array, Any], Array]

__all__ = ["classifier_free", "composed", "classifier", "noise_level_interval", "check_weight"]


def check_weight(weight: Any, name: str = "weight") -> None:
    """A guidance weight must be a finite real number (or an array of them, possibly traced)."""
    if isinstance(weight, jax.core.Tracer):
        return
    if isinstance(weight, bool | str) or weight is None:
        raise TypeError(f"{name} must be a real number, got {weight!r}")
    try:
        values = np.asarray(weight, np.float64)  # NumPy: concrete even while a caller's jit traces
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(weight).__name__}") from None
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite, got {weight!r}")


def _check_null(null_cond: Any) -> None:
    if null_cond is None:
        raise ValueError("classifier-free guidance needs the model's null condition (null_cond), and this "
                         "model has none: it was not trained with condition dropout. Use a CFG-capable model "
                         "(e.g. jaxsde.pretrained('digits-cond'), null_cond=ckpt.null_cond) or classifier "
                         "guidance (jaxsde.guidance.classifier)")


def noise_level_interval(sde: SDE, interval: tuple[float, float] | None) -> Callable[[Array], Array] | None:
    """``inside(t)``: whether ``sigma_t / alpha_t`` lies in ``interval = (lo, hi)`` (None: always).

    ``0 <= lo < hi`` (``hi`` may be ``inf``); a negative, reversed or empty interval is refused.

    Args:
        sde: the SDE, whose ``sigma_t / alpha_t`` is compared.
        interval: ``(lo, hi)``, or None.

    Returns:
        ``inside(t) -> bool array``, or None when ``interval`` is None.

    Raises:
        ValueError: a negative, reversed or empty interval.
    """
    if interval is None:
        return None
    if not isinstance(sde, SDE):
        raise TypeError(f"a guidance interval needs the SDE (sde=...) to map t to the noise level, got {sde!r}")
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise TypeError(f"interval must be a pair (lo, hi) of noise levels sigma/alpha, got {interval!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo < 0.0 or not lo < hi:
        raise ValueError(f"interval must be (lo, hi) with 0 <= lo < hi in noise level sigma_t/alpha_t, got "
                         f"({lo}, {hi}); e.g. (0.28, 5.42)")

    def inside(t: Array) -> Array:
        alpha, sigma = sde.marginal(t)
        level = sigma / alpha
        return (level >= lo) & (level <= hi)

    return inside


def _stack(conds: Sequence[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack([jnp.asarray(v) for v in leaves]), *conds)


def _gated(weight: Array, inside: Callable[[Array], Array] | None, t: Array) -> Array:
    return weight if inside is None else jnp.where(inside(t), weight, jnp.zeros_like(weight))


def classifier_free(score: CondScore, null_cond: Any, weight: float | Array, *, sde: SDE | None = None,
                    interval: tuple[float, float] | None = None) -> CondScore:
    """Classifier-free guidance: ``guided(x, t, c) = (1 + w) score(x, t, c) - w score(x, t, null_cond)``.

    Args:
      score: the conditional score ``score(x, t, cond)`` of ONE sample, trained with condition
        dropout so that ``null_cond`` gives the unconditional score; or a :class:`jaxsde.Prediction`
        (then the result is a Prediction of the same kind; see the module docstring).
      null_cond: the model's null condition (same pytree structure as a condition), e.g.
        ``ckpt.null_cond``.
      weight: ``w`` (``0``: no guidance); a Python float or a (possibly traced) scalar array.
      sde: the SDE, needed to read ``interval`` (noise level ``sigma_t / alpha_t`` at ``t``).
      interval: optional ``(lo, hi)``: guide only while the noise level lies in it (see the
        module docstring); ``None`` (default): everywhere.

    Both branches run in one call of ``score`` over a stacked pair of conditions.
    """
    _check_null(null_cond)
    check_weight(weight)
    inside = noise_level_interval(sde, interval)
    model = score.fn if isinstance(score, Prediction) else score

    def guided(x: Array, t: Array, cond: Any) -> Array:
        pair = _stack([cond, null_cond])
        both = jax.vmap(lambda c: model(x, t, c))(pair)
        w = _gated(jnp.asarray(weight, both.dtype), inside, t)
        return (1.0 + w) * both[0] - w * both[1]

    return _like(score, guided)


def composed(score: CondScore, null_cond: Any, weights: Sequence[float] | Array, *, sde: SDE | None = None,
             interval: tuple[float, float] | None = None) -> CondScore:
    """Several conditions at once: ``guided(x, t, conds) = s_null + sum_k (1 + w_k) (s_k - s_null)``
    with ``s_k = score(x, t, conds[k])`` and ``s_null = score(x, t, null_cond)``.

    ``conds`` (the condition the driver passes, per sample) carries a leading axis of ``K =
    len(weights)`` conditions on every leaf; ``weights`` are ``w_1 .. w_K``. With ``K = 1`` this
    is :func:`classifier_free`. The ``K`` conditions and the null one run in one call of
    ``score`` over ``K + 1``. ``sde`` / ``interval`` as for :func:`classifier_free` (outside the
    interval every ``w_k`` is 0).

    Args:
        score: the conditional score ``score(x, t, cond)`` of ONE sample, or a
            :class:`jaxsde.Prediction` (the result is then one of the same kind).
        null_cond: the condition meaning "no condition" (e.g. the null class).
        weights: ``w_1 .. w_K``, one per condition.
        sde: the SDE, needed with ``interval``.
        interval: ``(lo, hi)`` of ``sigma_t / alpha_t`` where guidance applies (None: everywhere).

    Returns:
        The guided score ``guided(x, t, conds)``.
    """
    _check_null(null_cond)
    if not isinstance(weights, jax.core.Tracer):
        check_weight(weights, "weights")
        weights = np.asarray(weights, np.float32)
    if weights.ndim != 1 or weights.shape[0] < 1:
        raise ValueError(f"weights must be a sequence of one weight per condition, got shape {weights.shape}")
    num = weights.shape[0]
    inside = noise_level_interval(sde, interval)
    model = score.fn if isinstance(score, Prediction) else score

    def guided(x: Array, t: Array, conds: Any) -> Array:
        for leaf in jax.tree_util.tree_leaves(conds):
            if leaf.ndim == 0 or leaf.shape[0] != num:
                raise ValueError(f"composed guidance with {num} weights needs {num} conditions per sample (a "
                                 f"leading axis of {num} on every leaf of cond), got a leaf of shape {leaf.shape}")
        null = jax.tree_util.tree_map(lambda v: jnp.asarray(v)[None], null_cond)
        every = jax.tree_util.tree_map(lambda c, u: jnp.concatenate([c, u.astype(c.dtype)]), conds, null)
        values = jax.vmap(lambda c: model(x, t, c))(every)
        s_null = values[num]
        w = _gated(jnp.asarray(weights, values.dtype), inside, t)
        w = w.reshape((num,) + (1,) * x.ndim)
        return s_null + jnp.sum((1.0 + w) * (values[:num] - s_null), axis=0)

    return _like(score, guided)


def classifier(score: Callable[[Array, Array], Array], log_prob: CondScore, weight: float | Array, *,
               sde: SDE | None = None, interval: tuple[float, float] | None = None) -> CondScore:
    """Classifier guidance: ``guided(x, t, c) = score(x, t) + w grad_x log_prob(x, t, c)``.

    Args:
      score: the unconditional score ``score(x, t)`` of ONE sample, or a :class:`jaxsde.Prediction`
        (then ``sde`` is required and the result is a Prediction of the same kind; see the module
        docstring).
      log_prob: ``log p_t(c | x)`` of a noise-conditional classifier, a scalar, for ONE sample
        ``x`` at time ``t`` (e.g. the embedded digits classifier's ``log_prob``).
      weight: ``w`` (``1``: the exact conditional score if the classifier were exact).
      sde: as for :func:`classifier_free`.
      interval: optional guidance interval, as for :func:`classifier_free`.
    """
    check_weight(weight)
    if not callable(log_prob):
        raise TypeError("log_prob must be a callable log_prob(x, t, cond) -> scalar")
    kind = score.kind if isinstance(score, Prediction) else "score"
    if kind != "score" and not isinstance(sde, SDE):
        raise TypeError(f"classifier guidance of a {kind!r} Prediction needs the SDE (sde=...) to express the "
                        f"gradient term in its kind")
    inside = noise_level_interval(sde, interval)
    grad = jax.grad(lambda x, t, c: jnp.asarray(log_prob(x, t, c), x.dtype).reshape(()), argnums=0)

    def guided(x: Array, t: Array, cond: Any) -> Array:
        base = score(x, t)
        w = _gated(jnp.asarray(weight, base.dtype), inside, t)
        g = grad(x, t, cond).astype(base.dtype)
        if kind == "score":
            return base + w * g
        # the score's shift w g in the model's kind (linear in (x, score): x = 0 gives B(t) w g); exactly 0
        # where w is (outside the interval), even where B is infinite (alpha = 0)
        shift = convert(sde, w * g, jnp.zeros_like(x), jnp.asarray(t, x.dtype), "score", kind)
        return base + jnp.where(w != 0, shift, jnp.zeros_like(shift))

    return _like(score, guided)


def _like(model: Any, guided: Callable) -> Any:
    """``guided`` tagged with ``model``'s kind when ``model`` is a :class:`~jaxsde.Prediction`."""
    return Prediction(guided, model.kind) if isinstance(model, Prediction) else guided
