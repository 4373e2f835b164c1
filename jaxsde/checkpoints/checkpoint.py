"""The loaded score model every loader returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..sde import SDE

if TYPE_CHECKING:  # the annotation only: importing jaxsde.models would load flax
    from ..models.score import ScoreConvention

__all__ = ["Checkpoint"]


class Checkpoint(NamedTuple):
    """A loaded score model: ``score`` closes over ``params``;
    ``score_fn(params)`` builds one for traced params (the embedded models'
    ``score_fn(params, compute_dtype=jnp.bfloat16)`` runs the network in bfloat16, see
    :mod:`jaxsde.precision`).

    Conditional models (``num_classes`` set, e.g. ``jaxsde.pretrained("digits-cond")``): ``score(x, t,
    cond)`` and ``score_fn(params)(x, t, cond)`` take ONE sample ``x``, a scalar ``t`` and a scalar
    condition ``cond`` (an int32 class label in ``0..num_classes - 1``, or ``null_cond`` for no
    condition: the unconditional score, for classifier-free guidance). Unconditional models keep
    ``score(x, t)`` and have ``num_classes = null_cond = None``.

    Attributes:
        model: the Flax module.
        params: its parameters.
        sde: the SDE it was trained on.
        score: ``score(x, t)`` (or ``score(x, t, cond)``) of ONE sample, closing over ``params``.
        score_fn: ``score_fn(params)`` builds ``score`` for traced params.
        shape: one sample's shape.
        data_range: the data's ``(lo, hi)``.
        config: the model's configuration.
        name: the checkpoint's name.
        to_data: maps a sample to data space (None: the same space), e.g. galaxygrad's
            log-transformed pixels back to flux.
        convention: how the network's input and output relate to ``(x, t)`` and the score (None:
            not a network the library calls itself); sparse editing reads it.
        num_classes: the number of classes of a conditional model (None: unconditional).
        null_cond: the condition meaning "no condition" (``digits-cond``: ``jnp.int32(10)``).
    """

    model: Any  # the Flax module
    params: Any
    sde: SDE
    score: Callable
    score_fn: Callable
    shape: tuple[int, ...]
    data_range: tuple[float, float]
    config: dict
    name: str
    # Maps a sample from the space the model is sampled in to data space (None: the same space),
    # e.g. galaxygrad's log-transformed pixels back to flux.
    to_data: Callable | None = None
    # How the network's input and output relate to (x, t) and the score (None: not a network the
    # library calls itself); code that runs the network directly (sparse editing) asks this.
    convention: ScoreConvention | None = None
    # Class-conditional models: the number of classes (None: unconditional) and the condition
    # meaning "no condition" (digits-cond: jnp.int32(10), the null class).
    num_classes: int | None = None
    null_cond: Any = None
