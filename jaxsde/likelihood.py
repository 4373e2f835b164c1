"""Log-likelihood of data under a score model, through the probability-flow ODE.

For the probability-flow ODE ``dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2`` the
instantaneous change of variables (Chen et al. 2018; Song et al. 2021, appendix D.2) gives

    log p_{t0}(x(t0)) = log p_T(x(T)) + integral_{t0}^{T} div_x F(x(t), t) dt,

so :func:`log_likelihood` integrates ``x`` from ``t0 = sde.eps`` up to ``T`` together with the
divergence integral, and adds the prior's log-density at the end point
(:meth:`jaxsde.SDE.prior_log_prob`). Units: nats, for a density over ``x`` in the model's data
units; :func:`bits_per_dim` converts to bits per dimension over pixel cells.

The divergence:

* ``"exact"``: ``tr(dF/dx)`` from one Jacobian-vector product per basis direction (forward
  mode, ``chunk_size`` directions at a time); ``d`` products per evaluation of ``F``.
* ``"hutchinson"``: ``v^T (dF/dx) v`` for ``num_probes`` probes ``v`` (Rademacher or Gaussian),
  drawn once per sample from its key and fixed along the path (as FFJORD and score_sde do), one
  product per probe. Each probe carries its own integral, so ``log_p`` is their mean and
  ``std_err`` their standard error (``NaN`` for one probe: one draw has no spread to measure).
* ``"auto"`` (default): exact while ``d <= exact_max_dim``; above it, an error asking for one of
  the two (a stochastic estimate is never switched on silently).

The ODE is solved per sample with the adaptive Runge-Kutta pairs of
:class:`jaxsde.ProbabilityFlow` and its step-size controllers, on the driver's loop
(:mod:`jaxsde.driver`), which integrates its time variable downwards: the state is
``(x, the divergence integrals)`` flattened, in the time variable ``s = -t``. The error norm is
the larger of the scaled RMS norms of the ``x`` part and of the integrals, so the tolerance
holds for the likelihood itself and not only on average with the ``d`` pixels.

Every ODE evaluation counts one in ``stats.nfe`` (one score evaluation with its divergence);
``num_jvps`` counts the Jacobian-vector products on top. A sample that does not reach ``T``
(``max_steps``) or meets a non-finite value gets its :mod:`jaxsde.results` code and
``log_p = NaN``: an unconverged solve is never passed off as a likelihood.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import driver, results
from .controllers import Controller, ErrorNorm, controller_class
from .noise import FreshNoise
from .prediction import Prediction, to_velocity
from .sde import SDE, ScoreFn
from .solution import Stats
from .solvers.base import solver_class
from .solvers.probability_flow import ProbabilityFlow

Array = jax.Array

__all__ = ["Likelihood", "BitsPerDim", "log_likelihood", "log_likelihood_batch", "bits_per_dim", "quantize",
           "dequantize", "evaluate_bits_per_dim", "DIVERGENCES", "PROBES"]

DIVERGENCES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


class Likelihood(NamedTuple):
    """What :func:`log_likelihood` returns (a leading batch axis on every field from
    :func:`log_likelihood_batch`).

    ``log_p``: ``log p_{t0}(x)`` in nats (``NaN`` unless ``result == SUCCESS``); ``std_err``: the
    Hutchinson estimate's standard error over its probes (0 for the exact divergence, ``NaN`` with
    one probe); ``prior_log_p``: ``log p_T(x_T)`` under the prior; ``delta_log_p``: the
    divergence integral (mean over probes), so ``log_p = prior_log_p + delta_log_p``; ``x_T``:
    the ODE's end point at ``T``; ``stats``: :class:`jaxsde.Stats` (``nfe`` = ODE evaluations);
    ``num_jvps``: Jacobian-vector products spent on the divergence; ``result``: the code.

    Attributes:
        log_p: ``log p_{t0}(x)`` in nats (``NaN`` unless ``result == SUCCESS``).
        std_err: the Hutchinson estimate's standard error over its probes (0 for the exact
            divergence, ``NaN`` with one probe).
        prior_log_p: ``log p_T(x_T)`` under the prior.
        delta_log_p: the divergence integral (mean over probes): ``log_p = prior_log_p + delta_log_p``.
        x_T: the ODE's end point at ``T``.
        stats: :class:`jaxsde.Stats` (``nfe`` = ODE evaluations).
        num_jvps: Jacobian-vector products spent on the divergence.
        result: the result code.
    """

    log_p: Array
    std_err: Array
    prior_log_p: Array
    delta_log_p: Array
    x_T: Array
    stats: Stats
    num_jvps: Array
    result: Array


@controller_class
class _GroupedNorm(ErrorNorm):
    """Hairer's norm (``atol + rtol max(|x|, |x_new|)``, RMS) taken over the state and over the
    integrals separately: the larger of the two scaled errors (``split``: where the integrals start)."""

    split: int = 0

    def __call__(self, sde, error, reference):
        ratio = jnp.square(error / self.scale(sde, reference))
        return jnp.sqrt(jnp.maximum(jnp.mean(ratio[:self.split]), jnp.mean(ratio[self.split:])))


@solver_class
class _DivergenceFlow(ProbabilityFlow):
    """:class:`ProbabilityFlow`'s Runge-Kutta pair and controller on the augmented state
    ``[x.ravel(), integrals]``; the augmented right-hand side is passed in as the "score"."""

    split: int = 0  # len(x.ravel()): where the integrals start

    def ode_rhs(self, sde, score):
        del sde
        return score

    @property
    def default_norm(self) -> ErrorNorm:
        """The solver's tolerance on each of the two groups (the state and the integrals)."""
        return _GroupedNorm(self.rtol, self.atol, combine="sum", reduce="l2", split=self.split)


def _static_float(name: str, value: Any) -> float:
    if isinstance(value, jax.core.Tracer) or isinstance(value, str | bytes | bool):
        raise TypeError(f"{name} must be a static Python float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _concrete(x: Any) -> np.ndarray | None:
    """``x`` as a NumPy array if its values are known on the host (not traced), else ``None``."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


class _Config(NamedTuple):
    shape: tuple[int, ...]
    dtype: Any
    exact: bool
    num_probes: int
    probe: str
    chunk_size: int
    t_start: float
    t_end: float


def _configure(sde, score, x, divergence, num_probes, probe, probes, t_start, t_end, max_steps, chunk_size,
               exact_max_dim) -> _Config:
    """Validate the arguments up front (every message says what to change)."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a jaxsde SDE (VPSDE, SubVPSDE, VESDE, ...), got {type(sde).__name__}")
    if not callable(getattr(sde, "prior_log_prob", None)):
        raise TypeError(f"{type(sde).__name__} has no prior log-density: define prior_log_prob(x) (the log-density "
                        f"of its prior at T) to compute likelihoods")
    if not callable(score):
        raise TypeError("score must be a callable score(x, t) -> array shaped like x")
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got {dtype if dtype is not None else type(x).__name__}")
    if jnp.dtype(dtype).itemsize < 4:
        raise TypeError(f"x has dtype {dtype}: integrate in float32 or float64 (a 16-bit divergence integral "
                        f"loses the likelihood); run the network in low precision with jaxsde.mixed_precision")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    if not isinstance(num_probes, int) or isinstance(num_probes, bool) or num_probes < 1:
        raise ValueError(f"num_probes must be an integer >= 1 (the Hutchinson probes per sample), got {num_probes!r}")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    t_start = _static_float("t_start", sde.eps if t_start is None else t_start)
    t_end = _static_float("t_end", sde.T if t_end is None else t_end)
    if not 0.0 < t_start < t_end <= sde.T:
        raise ValueError(f"need 0 < t_start < t_end <= T = {sde.T}, got t_start={t_start}, t_end={t_end} (the "
                         f"likelihood of x at t_start is carried up to the prior at t_end)")
    shape = tuple(x.shape)
    try:
        out = jax.eval_shape(score, jax.ShapeDtypeStruct(shape, dtype), jax.ShapeDtypeStruct((), dtype))
    except (TypeError, ValueError) as err:
        raise ValueError(f"score(x, t) fails on one sample shaped like x, {shape} (the score takes ONE sample, no "
                         f"batch axis; use log_likelihood_batch for many): {err}") from err
    if getattr(out, "shape", None) != shape:
        raise ValueError(f"score(x, t) must return an array shaped like x (ONE sample, no batch axis; use "
                         f"log_likelihood_batch for many): x has shape {shape}, the score returned "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    dim = math.prod(shape)
    if probes is not None:
        pshape = tuple(getattr(probes, "shape", ()))
        if len(pshape) != len(shape) + 1 or pshape[1:] != shape or pshape[0] < 1:
            raise ValueError(f"probes must have shape (num_probes, *x.shape) = (K, {', '.join(map(str, shape))}), "
                             f"got {pshape}")
        if divergence == "exact":
            raise ValueError("probes are Hutchinson probes: they have no meaning with divergence='exact'")
        divergence, num_probes = "hutchinson", pshape[0]
    if divergence == "auto":
        if dim > exact_max_dim:
            raise ValueError(
                f"x has {dim} dimensions, more than exact_max_dim={exact_max_dim}: the exact divergence costs {dim} "
                f"Jacobian-vector products per evaluation. Choose divergence='hutchinson' (num_probes=K, an unbiased "
                f"estimate with its standard error) or divergence='exact' explicitly, or raise exact_max_dim")
        divergence = "exact"
    chunk = dim if chunk_size is None else chunk_size
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk_size must be a positive integer (basis directions per vmapped product), "
                         f"got {chunk_size!r}")
    concrete = _concrete(x)
    if concrete is not None and not np.all(np.isfinite(concrete)):
        raise ValueError(f"x has {int(np.sum(~np.isfinite(concrete)))} non-finite entries: a likelihood needs a "
                         f"finite point")
    exact = divergence == "exact"
    return _Config(shape, dtype, exact, 0 if exact else num_probes, probe, min(chunk, dim), t_start, t_end)


def _draw_probes(key: Array, cfg: _Config) -> Array:
    shape = (cfg.num_probes, math.prod(cfg.shape))
    if cfg.probe == "rademacher":
        return jax.random.rademacher(key, shape, cfg.dtype)
    return jax.random.normal(key, shape, cfg.dtype)


def _exact_trace(linear, dim: int, chunk: int, dtype) -> Array:
    """``tr(J)`` from ``linear(v) = J v``: ``chunk`` basis directions per vmapped product."""
    num_chunks = -(-dim // chunk)

    def diagonal(start):
        idx = start + jnp.arange(chunk)
        basis = jax.nn.one_hot(idx, dim, dtype=dtype)  # rows past dim are zero
        columns = jax.vmap(linear)(basis)
        return jnp.sum(jnp.take_along_axis(columns, jnp.minimum(idx, dim - 1)[:, None], axis=1)[:, 0]
                       * (idx < dim))

    if num_chunks == 1:
        return diagonal(0)
    return jnp.sum(jax.lax.map(diagonal, jnp.arange(num_chunks) * chunk))


def _augmented_rhs(sde: SDE, score: ScoreFn, cfg: _Config, probes: Array | None):
    """``d[x, integrals]/ds`` in ``s = -t``: ``-[F(x, t), div F(x, t) per probe]``."""
    dim = math.prod(cfg.shape)
    # a Prediction: the probability-flow drift is its velocity, read from the model's own output
    # (exact where alpha = 0, t = T on a flow, where f - g^2 score / 2 is inf - inf)
    velocity = to_velocity(sde, score) if isinstance(score, Prediction) else None

    def rhs(z: Array, s: Array) -> Array:
        t = -s

        def flow(flat):
            x = flat.reshape(cfg.shape)
            if velocity is not None:
                return velocity(x, t).astype(cfg.dtype).reshape(-1)
            return sde.probability_flow_drift(x, t, score(x, t).astype(cfg.dtype)).reshape(-1)

        value, linear = jax.linearize(flow, z[:dim])
        if cfg.exact:
            div = _exact_trace(linear, dim, cfg.chunk_size, cfg.dtype)[None]
        else:
            div = jnp.sum(probes * jax.vmap(linear)(probes), axis=1)
        return -jnp.concatenate([value, div.astype(cfg.dtype)])

    return rhs


def log_likelihood(
    key: Array,
    sde: SDE,
    score: ScoreFn,
    x: Array,
    *,
    divergence: str = "auto",
    num_probes: int = 1,
    probe: str = "rademacher",
    probes: Array | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    controller: Controller | None = None,
    h_init: float | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    max_steps: int = 10_000,
    chunk_size: int | None = None,
    exact_max_dim: int = 1024,
) -> Likelihood:
    """``log p_{t_start}(x)`` (nats) of ONE sample under the score model, by the probability-flow ODE.

    Pure, jit-able and vmap-able like :func:`jaxsde.solve` (the SDE and options are static).

    Args:
      key: PRNG key of the Hutchinson probes (unused by the exact divergence).
      sde: the forward SDE; its :meth:`~jaxsde.SDE.prior_log_prob` is the density at ``t_end``.
      score: ``score(x, t)`` for one sample (no batch axis), or a :class:`jaxsde.Prediction` (e.g. a
        flow-matching model's velocity, whose probability-flow drift it is: finite at ``t = T``
        where ``alpha = 0``).
      x: the point, shaped like one sample, float32 or float64 (the ODE state's dtype).
      divergence: ``"auto"`` | ``"exact"`` | ``"hutchinson"`` (see the module docstring).
      num_probes: Hutchinson probes per sample (``K >= 1``).
      probe: ``"rademacher"`` (lowest variance for a fixed Jacobian) or ``"gaussian"``.
      probes: given Hutchinson probes ``(K, *x.shape)`` instead of drawing them from ``key``.
      rtol: relative tolerance of the adaptive solve (score_sde uses 1e-5, k-diffusion 1e-4).
      atol: absolute tolerance of the adaptive solve.
      method: ``"dopri5"`` or ``"bosh3"`` (:class:`jaxsde.ProbabilityFlow`'s pairs).
      controller: a step-size controller (default: Hairer's PI controller).
      h_init: first trial step in time units; ``None`` uses Hairer's heuristic (+1 evaluation).
      t_start: the time of ``x``, default ``sde.eps``.
      t_end: where the prior takes over, default ``sde.T``.
      max_steps: cap on attempts; reaching it gives ``results.MAX_STEPS_REACHED``.
      chunk_size: basis directions per vmapped product of the exact divergence (default: all
        at once; smaller saves memory at large ``d``).
      exact_max_dim: the largest dimension ``"auto"`` computes the exact divergence for.

    Returns:
      A :class:`Likelihood`. Failures never raise inside jit: they give a result code and
      ``log_p = NaN``.
    """
    x = jnp.asarray(x) if not hasattr(x, "dtype") else x
    cfg = _configure(sde, score, x, divergence, num_probes, probe, probes, t_start, t_end, max_steps, chunk_size,
                     exact_max_dim)
    dim = math.prod(cfg.shape)
    if cfg.exact:
        vectors, width, jvps = None, 1, dim
    else:
        vectors = (_draw_probes(key, cfg) if probes is None
                   else jnp.asarray(probes, cfg.dtype).reshape(cfg.num_probes, dim))
        width, jvps = cfg.num_probes, cfg.num_probes
    flow = _DivergenceFlow(rtol=rtol, atol=atol, method=method, h_init=h_init, controller=controller, split=dim)
    problem = driver.Problem(sde=sde, score=_augmented_rhs(sde, score, cfg, vectors), solver=flow,
                             shape=(dim + width,), dtype=cfg.dtype, t_start=-cfg.t_start, t_end=-cfg.t_end,
                             max_steps=max_steps, denoise=False, noise=FreshNoise(), check_finite=True)
    z0 = jnp.concatenate([jnp.asarray(x, cfg.dtype).reshape(-1), jnp.zeros((width,), cfg.dtype)])
    state = jax.lax.while_loop(lambda s: ~driver.done(problem, s), lambda s: driver.step(problem, key, s),
                               driver.init(problem, z0))
    sol = driver.finalize(problem, state)
    x_T = sol.x[:dim].reshape(cfg.shape)
    integrals = sol.x[dim:]
    prior = sde.prior_log_prob(x_T).astype(cfg.dtype)
    delta = jnp.mean(integrals)
    if cfg.exact:
        std_err = jnp.zeros((), cfg.dtype)
    elif width == 1:
        std_err = jnp.full((), jnp.nan, cfg.dtype)
    else:
        std_err = jnp.std(integrals, ddof=1) / math.sqrt(width)
    ok = sol.result == results.SUCCESS
    log_p = jnp.where(ok, prior + delta, jnp.nan)
    return Likelihood(log_p=log_p, std_err=jnp.where(ok, std_err, jnp.nan), prior_log_p=prior, delta_log_p=delta,
                      x_T=x_T, stats=sol.stats, num_jvps=sol.stats.nfe * jvps, result=sol.result)


def log_likelihood_batch(key: Array, sde: SDE, score: ScoreFn, xs: Array, *, offset: int | Array = 0,
                         **kwargs: Any) -> Likelihood:
    """:func:`log_likelihood` of each of ``xs`` ``(n, *shape)``; sample ``i`` uses the key
    ``fold_in(key, offset + i)``, so its result never depends on its batch (every sample takes its
    own step sequence). ``probes``, if given, has a leading axis ``n``. Other arguments as for
    :func:`log_likelihood`.

    Args:
        key: the run's PRNG key (for Hutchinson probes).
        sde: the forward SDE.
        score: ``score(x, t)`` of ONE sample.
        xs: the points, ``(n, *shape)``.
        offset: the index of the first point in the key sequence (may be traced).
        **kwargs: the other arguments of :func:`log_likelihood`.

    Returns:
        A :class:`Likelihood` whose fields carry a leading axis ``n``.
    """
    xs = jnp.asarray(xs) if not hasattr(xs, "dtype") else xs
    if getattr(xs, "ndim", 0) < 1 or xs.shape[0] < 1:
        raise ValueError(f"xs must have a leading batch axis (n, *shape) with n >= 1, got shape "
                         f"{getattr(xs, 'shape', None)}")
    probes = kwargs.pop("probes", None)
    # validate once, on one sample, before tracing the batch (the messages then name the sample's shape)
    _configure(sde, score, xs[0], kwargs.get("divergence", "auto"), kwargs.get("num_probes", 1),
               kwargs.get("probe", "rademacher"), None if probes is None else probes[0], kwargs.get("t_start"),
               kwargs.get("t_end"), kwargs.get("max_steps", 10_000), kwargs.get("chunk_size"),
               kwargs.get("exact_max_dim", 1024))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(xs.shape[0]) + offset)

    def one(k, x, p):
        return log_likelihood(k, sde, score, x, probes=p, **kwargs)

    return jax.vmap(one)(keys, xs, probes)


# --- bits per dimension ---------------------------------------------------------------------------


def _check_range(data_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi), got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be finite with hi > lo, got {data_range!r}")
    return lo, hi


def _check_levels(levels: Any) -> int:
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2 (the number of pixel values, 256 for 8-bit), got {levels!r}")
    return levels


def bits_per_dim(log_p: Array, dim: int, *, data_range: tuple[float, float], levels: int = 256) -> Array:
    """Bits per dimension of a log-density ``log_p`` (nats, over ``dim`` values in data units).

    The conventions, those of score_sde and of the likelihood literature: pixel values
    ``k in {0, ..., levels - 1}`` own the cells ``[k, k + 1)`` of pixel space ``[0, levels)``, and
    the data range maps onto it affinely, ``y = (x - lo) * levels / (hi - lo)``. A density over
    data units becomes one over pixel units by subtracting ``dim * log(levels / (hi - lo))``, so

        bits/dim = -log_p / (dim ln 2) + log2(levels / (hi - lo)).

    The second term is score_sde's "offset" ``7 - inverse_scaler(-1)``: 7 for data centred in
    [-1, 1] (width 2), 8 for [0, 1], at 256 levels. With ``log_p`` measured at uniformly
    dequantized points (:func:`dequantize`), its mean over the noise is an upper bound on the
    discrete model's bits/dim (Jensen): ``-log2 P(k) <= E_u[-log2 p_y(k + u)]``.

    Args:
        log_p: log-densities in nats, over data units (any shape).
        dim: the number of values per point (e.g. ``8 * 8 * 1``).
        data_range: the data's ``(lo, hi)``.
        levels: the number of pixel values (256 for 8-bit images, 17 for the digits).

    Returns:
        Bits per dimension, shaped like ``log_p``.
    """
    lo, hi = _check_range(data_range)
    _check_levels(levels)
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer (values per sample), got {dim!r}")
    return -jnp.asarray(log_p) / (dim * math.log(2.0)) + math.log2(levels / (hi - lo))


def quantize(x: Array, *, data_range: tuple[float, float], levels: int = 256) -> Array:
    """Pixel values ``k`` (int32) of data on the grid ``lo + (hi - lo) k / (levels - 1)`` (how 8-bit
    images ``k / 255`` and the digits ``k / 16`` are scaled to a data range), rounded to the nearest
    level. Raises ``ValueError`` for concrete ``x`` outside ``data_range``.

    Args:
        x: data in ``data_range``, any shape.
        data_range: the data's ``(lo, hi)``.
        levels: the number of pixel values.

    Returns:
        int32 pixel values in ``0 .. levels - 1``, shaped like ``x``.

    Raises:
        ValueError: a concrete ``x`` lies outside ``data_range``.
    """
    lo, hi = _check_range(data_range)
    _check_levels(levels)
    concrete = _concrete(x)
    if concrete is not None:
        tol = 1e-6 * (hi - lo)
        if not np.all(np.isfinite(concrete)):
            raise ValueError("x has non-finite entries; quantize takes data in the data range")
        if concrete.min() < lo - tol or concrete.max() > hi + tol:
            raise ValueError(f"x spans [{concrete.min():.4g}, {concrete.max():.4g}], outside the data range "
                             f"{(lo, hi)}: dequantization takes data scaled to the model's range (sde.data_range)")
    k = jnp.round((jnp.asarray(x) - lo) / (hi - lo) * (levels - 1))
    return jnp.clip(k, 0, levels - 1).astype(jnp.int32)


def dequantize(key: Array, pixels: Array, *, data_range: tuple[float, float], levels: int = 256,
               dtype: Any = jnp.float32) -> Array:
    """Uniform dequantization: ``lo + (hi - lo) (k + u) / levels``, ``u ~ U[0, 1)`` per value.

    ``pixels``: integer values in ``[0, levels)`` (:func:`quantize` makes them from data); the
    result lies in the cell ``[k, k + 1)`` of pixel space mapped to the data range (as score_sde's
    ``(k + u) / 256``). Raises ``ValueError`` for concrete pixels that are not such integers.

    Args:
        key: PRNG key of the uniform noise.
        pixels: integer pixel values in ``[0, levels)``, any shape.
        data_range: the data's ``(lo, hi)``.
        levels: the number of pixel values.
        dtype: the result's dtype.

    Returns:
        Continuous data in ``data_range``, shaped like ``pixels``.

    Raises:
        ValueError: concrete pixels that are not integers in ``[0, levels)``.
    """
    lo, hi = _check_range(data_range)
    _check_levels(levels)
    concrete = _concrete(pixels)
    if concrete is not None:
        if concrete.size and (not np.all(np.isfinite(concrete)) or np.any(concrete != np.round(concrete))
                              or concrete.min() < 0 or concrete.max() >= levels):
            raise ValueError(f"pixels must be integers in [0, {levels}) (use quantize(x, ...) for data in the data "
                             f"range), got values in [{concrete.min()}, {concrete.max()}]")
    k = jnp.asarray(pixels).astype(dtype)
    u = jax.random.uniform(key, k.shape, dtype)
    return lo + (hi - lo) * (k + u) / levels


class BitsPerDim(NamedTuple):
    """Host-side result of :func:`evaluate_bits_per_dim` (NumPy arrays, one entry per sample).

    Attributes:
        bits_per_dim: per sample (``NaN`` for a failed one).
        mean: the mean over the successful samples.
        std_err: its standard error.
        nfe: the ODE evaluations per sample.
        result: the result code per sample.
        num_failed: samples left out of the mean.
        levels: the number of pixel values used.
        data_range: the data range used.
    """

    bits_per_dim: np.ndarray  # per sample (NaN where the solve failed)
    mean: float  # over the successful samples
    std_err: float  # standard error of the mean over samples (dequantization and probe noise included)
    nfe: np.ndarray
    result: np.ndarray
    num_failed: int
    levels: int
    data_range: tuple[float, float]


def evaluate_bits_per_dim(key: Array, sde: SDE, score: ScoreFn, xs: Any, *, levels: int = 256,
                          dequantize_data: bool = True, data_range: tuple[float, float] | None = None,
                          batch_size: int = 256, **kwargs: Any) -> BitsPerDim:
    """Mean bits/dim of a data set ``xs`` ``(n, *shape)`` in the model's data range (host-side, chunked).

    With ``dequantize_data`` (default), ``xs`` must be quantized data in ``data_range`` (default
    ``sde.data_range``): each sample is snapped to its ``levels`` pixel values (:func:`quantize`) and
    dequantized with its own key ``fold_in(fold_in(key, i), 0)``; the likelihood's key is
    ``fold_in(key, i)``. Without it, ``xs`` is taken as continuous data as it is. Other keyword
    arguments go to :func:`log_likelihood`. Failed samples are counted and left out of the mean.

    Args:
        key: the run's PRNG key.
        sde: the forward SDE.
        score: ``score(x, t)`` of ONE sample.
        xs: the data set, ``(n, *shape)`` (NumPy or JAX).
        levels: the number of pixel values.
        dequantize_data: quantize then dequantize ``xs`` (uniform noise), as for image data.
        data_range: the data's ``(lo, hi)`` (default ``sde.data_range``).
        batch_size: samples per compiled call.
        **kwargs: the other arguments of :func:`log_likelihood`.

    Returns:
        A :class:`BitsPerDim`.
    """
    lo, hi = _check_range(sde.data_range if data_range is None else data_range)
    _check_levels(levels)
    xs = np.asarray(xs)
    if xs.ndim < 2 or xs.shape[0] < 1:
        raise ValueError(f"xs must be a batch (n, *shape), got shape {xs.shape}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dtype = kwargs.pop("dtype", jnp.float32)
    pixels = quantize(xs, data_range=(lo, hi), levels=levels) if dequantize_data else None
    dim = math.prod(xs.shape[1:])

    @jax.jit
    def chunk(start, batch):
        idx = start + jnp.arange(batch.shape[0])
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
        if dequantize_data:
            batch = jax.vmap(lambda k, p: dequantize(jax.random.fold_in(k, 0), p, data_range=(lo, hi),
                                                     levels=levels, dtype=dtype))(keys, batch)
        res = jax.vmap(lambda k, x: log_likelihood(k, sde, score, x, **kwargs))(keys, batch.astype(dtype))
        return res.log_p, res.stats.nfe, res.result

    source = pixels if dequantize_data else jnp.asarray(xs, dtype)
    logs, nfes, codes = [], [], []
    n = xs.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        part = source[start:stop]
        if stop - start < batch_size and n > batch_size:  # pad the last chunk: one compiled shape
            part = jnp.concatenate([part, jnp.repeat(part[-1:], batch_size - (stop - start), axis=0)])
        log_p, nfe, code = jax.device_get(chunk(jnp.int32(start), part))
        logs.append(log_p[:stop - start])
        nfes.append(nfe[:stop - start])
        codes.append(code[:stop - start])
    log_p, nfe, code = np.concatenate(logs), np.concatenate(nfes), np.concatenate(codes)
    bpd = np.asarray(bits_per_dim(log_p, dim, data_range=(lo, hi), levels=levels), np.float64)
    good = code == results.SUCCESS
    values = bpd[good]
    mean = float(values.mean()) if values.size else float("nan")
    err = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
    return BitsPerDim(bits_per_dim=np.where(good, bpd, np.nan), mean=mean, std_err=err, nfe=nfe, result=code,
                      num_failed=int((~good).sum()), levels=levels, data_range=(lo, hi))
