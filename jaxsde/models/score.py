"""From a network's output to a score function, through the SDE's alpha/sigma.

Parameterisations (what the network predicts, given the preconditioned input
``c_in * x_t`` and ``t``):

* ``"eps"``: the noise ``eps``; ``score = -eps / sigma``;
* ``"x0"``: the clean data; ``score = (alpha x0 - x) / sigma^2``;
* ``"v"``: ``v = alpha eps - sigma x0``; for VP (``alpha^2 + sigma^2 = 1``)
  ``eps = alpha v + sigma x``, so ``score = -(alpha v + sigma x) / sigma``;
* ``"score"``: ``sigma * score`` (score_sde's ``scale_by_sigma``); ``score = out / sigma``;
* ``"flow"``: the velocity ``v = alpha' x0 + sigma' eps`` (flow matching; ``eps - x0`` on
  :class:`~jaxsde.sde.FlowSDE`), for any SDE: with ``D = alpha sigma' - sigma alpha'``,
  ``score = (alpha' x - alpha v) / (sigma D)`` and ``x0 = (sigma' x - sigma v) / D``
  (:func:`output_to_x0`: no division by ``alpha``, exact at ``alpha = 0``).
  ``"v"`` is not the velocity: it is refused on a :class:`~jaxsde.sde.GaussianPathSDE` whose
  ``alpha^2 + sigma^2`` is not 1.

``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)`` makes the network input unit scale for
VP and VE alike. These wrappers work for any Flax module ``apply(params, x, t)`` taking a
batch; ``score_fn`` returns a score function for ONE sample, as ``jaxsde.solve`` expects.

Conditional networks ``apply(params, x, t, cond)`` (e.g. a class-conditional ``DigitsUNet``,
``cond: (B,)`` int labels): :func:`conditional_score_fn` returns ``score(x, t, cond)`` for ONE
sample and a scalar ``cond``; ``batched_score``'s function takes the batch ``cond`` as a fourth
argument. ``cond`` is passed to the network as is (never cast to ``compute_dtype``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..precision import cast_params
from ..sde import SDE, GaussianPathSDE

PARAMETERIZATIONS = ("eps", "x0", "v", "score", "flow")


class ScoreConvention(NamedTuple):
    """How a score network's input and output relate to ``(x, t)`` and the score, for ONE
    sample (no batch axis): the network receives ``net_input(x, t) = (x_in, label)`` (``x_in``
    shaped like ``x``, ``label`` a scalar; batched as ``apply(params, x_in[None], label[None])``)
    and ``to_score(out, x, t)`` reads its output ``out`` (shaped like ``x``) as the score.

    A :class:`~jaxsde.checkpoints.checkpoint.Checkpoint` carries its network's convention, so code
    that calls the network itself (the sparse editing drivers) asks the checkpoint rather than
    the network's class."""

    net_input: Callable
    to_score: Callable

    def score(self, apply: Callable, params) -> Callable:
        """The one-sample ``score(x, t)`` of the network ``apply(params, x_in, label)``."""

        def score(x, t):
            t = jnp.asarray(t, x.dtype)
            x_in, label = self.net_input(x, t)
            return self.to_score(apply(params, x_in[None], jnp.reshape(label, (1,)))[0], x, t)

        return score

    def cond_score(self, apply: Callable, params) -> Callable:
        """The one-sample ``score(x, t, cond)`` of a conditional network
        ``apply(params, x_in, label, cond)`` (``cond`` a scalar, batched as ``cond[None]``)."""

        def score(x, t, cond):
            t = jnp.asarray(t, x.dtype)
            x_in, label = self.net_input(x, t)
            cond = jnp.reshape(jnp.asarray(cond), (1,))
            return self.to_score(apply(params, x_in[None], jnp.reshape(label, (1,)), cond)[0], x, t)

        return score


def preconditioned_convention(sde: SDE, parameterization: str = "eps", sigma_data: float = 0.5) -> ScoreConvention:
    """The convention of :func:`score_fn` (the embedded models): input ``c_in(t) x`` and ``t``,
    output read per ``parameterization``."""
    _check_parameterization(parameterization, sde)
    return ScoreConvention(lambda x, t: (input_scale(sde, t, sigma_data) * x, t),
                           lambda out, x, t: output_to_score(sde, out, x, t, parameterization))


def labelled_convention(sde: SDE, label: Callable, parameterization: str = "eps") -> ScoreConvention:
    """Input ``x`` unscaled and the time label ``label(t)`` (e.g. diffusers' timestep ``N t - 1``),
    output read per ``parameterization``."""
    _check_parameterization(parameterization, sde)
    return ScoreConvention(lambda x, t: (x, label(t)),
                           lambda out, x, t: output_to_score(sde, out, x, t, parameterization))


def _check_parameterization(parameterization: str, sde: SDE | None = None) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
    if parameterization == "v" and isinstance(sde, GaussianPathSDE):
        with jax.ensure_compile_time_eval():
            alpha, sigma = sde.marginal(jnp.linspace(sde.eps, sde.T, 5))
            variance_preserving = bool(jnp.all(jnp.abs(alpha**2 + sigma**2 - 1.0) < 1e-4))
        if not variance_preserving:
            raise ValueError(f"the 'v' parameterization (alpha eps - sigma x0) assumes alpha^2 + sigma^2 = 1, which "
                             f"{type(sde).__name__} does not satisfy; a flow-matching (velocity) model is 'flow'")


def input_scale(sde: SDE, t, sigma_data: float):
    alpha, sigma = sde.marginal(t)
    return 1.0 / jnp.sqrt(alpha**2 * sigma_data**2 + sigma**2)


def output_to_score(sde: SDE, out, x, t, parameterization: str):
    """Turn a network output into the score ``grad log p_t(x)``."""
    alpha, sigma = sde.marginal(t)
    if parameterization == "eps":
        return -out / sigma
    if parameterization == "x0":
        return (alpha * out - x) / sigma**2
    if parameterization == "v":
        return -(alpha * out + sigma * x) / sigma
    if parameterization == "score":
        return out / sigma
    if parameterization == "flow":
        return sde.score_from_velocity(x, t, out)
    raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")


def output_to_x0(sde: SDE, out: jax.Array, x: jax.Array, t, parameterization: str) -> jax.Array:
    """Turn a network output into the data estimate ``E[x_0 | x_t = x]`` by the direct formula
    of each parameterization: exact (no division by ``alpha``) for ``"x0"`` and ``"flow"``
    (``(sigma' x - sigma v) / D``, ``x - t v`` on :class:`~jaxsde.sde.FlowSDE`), so finite at
    ``alpha = 0``; ``(x - sigma eps) / alpha`` for ``"eps"``, ``alpha x - sigma v`` for ``"v"``
    (VP), Tweedie for ``"score"``. ``t`` broadcasts against ``x`` (scalar or ``(B, 1, ...)``)."""
    alpha, sigma = sde.marginal(t)
    if parameterization == "x0":
        return out
    if parameterization == "flow":
        return sde.x0_from_velocity(x, t, out)
    if parameterization == "eps":
        return (x - sigma * out) / alpha
    if parameterization == "v":
        return alpha * x - sigma * out
    if parameterization == "score":
        return (x + sigma * out) / alpha
    raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")


def batched_output(apply: Callable, sde: SDE, sigma_data: float = 0.5, compute_dtype=None) -> Callable:
    """``out(params, x, t, *cond)``: the raw network output (no conversion) on the preconditioned
    input ``c_in(t) x``, for a batch ``x: (B, ...)``, ``t: (B,)`` (``cond`` as for
    :func:`batched_score`); what a loss on the output itself (flow matching) trains.
    ``compute_dtype`` as for :func:`batched_score` (the output is cast back to ``x``'s dtype)."""

    def output(params, x, t, *cond):
        shape = (-1,) + (1,) * (x.ndim - 1)
        c_in = input_scale(sde, t, sigma_data).reshape(shape)
        if compute_dtype is None:
            return apply(params, c_in * x, t, *cond)
        return apply(cast_params(params, compute_dtype), (c_in * x).astype(compute_dtype),
                     t.astype(compute_dtype), *cond).astype(x.dtype)

    return output


def batched_score(apply: Callable, sde: SDE, parameterization: str = "eps", sigma_data: float = 0.5,
                  compute_dtype=None):
    """``score(params, x, t, *cond)`` for a batch ``x: (B, ...)``, ``t: (B,)`` (and, for a
    conditional network, ``cond: (B,)``, passed to ``apply`` after ``t`` without casts).

    ``compute_dtype`` (e.g. ``jnp.bfloat16``): the network runs on parameters, input and time
    cast to it, and its output is cast back to ``x``'s dtype before the conversion to a score;
    the preconditioning and the conversion stay in ``x``'s precision. ``None``: no casts.
    """
    _check_parameterization(parameterization, sde)
    output = batched_output(apply, sde, sigma_data, compute_dtype)

    def score(params, x, t, *cond):
        out = output(params, x, t, *cond)
        tb = t.reshape((-1,) + (1,) * (x.ndim - 1))
        return output_to_score(sde, out, x, tb, parameterization)

    return score


def score_fn(apply: Callable, params, sde: SDE, parameterization: str = "eps", sigma_data: float = 0.5,
             compute_dtype=None):
    """A one-sample score function ``score(x, t)`` closing over ``params`` (may be traced);
    ``compute_dtype`` as for :func:`batched_score`."""
    batched = batched_score(apply, sde, parameterization, sigma_data, compute_dtype)

    def score(x, t):
        t = jnp.asarray(t, x.dtype)
        return batched(params, x[None], t[None])[0]

    return score


def conditional_score_fn(apply: Callable, params, sde: SDE, parameterization: str = "eps", sigma_data: float = 0.5,
                         compute_dtype=None):
    """A one-sample score function ``score(x, t, cond)`` of a conditional network
    ``apply(params, x, t, cond)`` closing over ``params`` (may be traced): ``x`` ONE sample,
    ``t`` and ``cond`` scalars (``cond`` e.g. an int32 class label); ``compute_dtype`` as for
    :func:`batched_score`."""
    batched = batched_score(apply, sde, parameterization, sigma_data, compute_dtype)

    def score(x, t, cond):
        t = jnp.asarray(t, x.dtype)
        return batched(params, x[None], t[None], jnp.reshape(jnp.asarray(cond), (1,)))[0]

    return score
