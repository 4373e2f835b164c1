"""Shared machinery of the exponential-integrator samplers (DDIM, DPM-Solver++, SA-Solver, ForwardValue).

Notation:

* half log-SNR ``lam(t) = log(alpha_t / sigma_t) = sde.log_snr(t) / 2``, increasing toward the data;
  a step from ``s`` (noisier) to ``t`` (cleaner) has ``h = lam_t - lam_s > 0``;
* data prediction ``x0(x, t) = (x + sigma^2 score) / alpha`` (Tweedie), noise prediction
  ``eps(x, t) = -sigma * score``;
* exact solution of the probability-flow ODE in data form,
  ``x_t = (sigma_t / sigma_s) x_s + alpha_t int_0^h e^{-(h - u)} x0(u) du`` with ``u = lam - lam_s``.

The integrals of ``e^{-c (h - u)}`` against polynomials are computed in the shifted, scaled
variable ``v = (lam - lam_s) / h`` (so the interpolation nodes are O(1) and the divided
differences well conditioned; no monomials of absolute ``lam``) through the exponential remainders
``R_n(z) = sum_{j >= n} (-z)^j / j!``, evaluated by their series for small ``|z|`` (no
cancellation) and in closed form otherwise.

:class:`MultistepSolver` adds a history buffer of past model outputs (multistep methods) to
:class:`~jaxsde.solvers.base.FixedGridSolver`; its solvers keep the one ``step`` contract.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..prediction import Model
from ..settings import check_static
from .base import FixedGridSolver, SolverInit

Array = jax.Array

__all__ = [
    "half_log_snr",
    "data_prediction",
    "noise_prediction",
    "predictions",
    "alpha_zero_step",
    "warmup_order",
    "exp_remainder",
    "exp_remainders",
    "exp_moments",
    "exp_weights",
    "interpolation_weights",
    "HistoryState",
    "MultistepSolver",
    "diffusers_grid",
]

_SERIES_RADIUS = 1.0  # |z| below which R_n uses its Taylor series
_SERIES_TERMS = 18  # 1/(nmax+18)! < 1e-17: exact in float64


def half_log_snr(sde, t) -> Array:
    """``lam(t) = log(alpha_t / sigma_t)`` (half of ``sde.log_snr``)."""
    return 0.5 * sde.log_snr(t)


def data_prediction(sde, score, x: Array, t: Array) -> Array:
    """``x0(x, t) = (x + sigma^2 score(x, t)) / alpha``: the data prediction (1 score evaluation).

    A score with a data-prediction channel (a :class:`jaxsde.prediction.Model`, what the driver
    makes of a :class:`jaxsde.Prediction`) gives it from the model's own output instead: exact at
    ``alpha = 0`` for velocity and x0 models."""
    if isinstance(score, Model):
        return score.x0(x, t)
    return sde.tweedie(x, t, score(x, t))


def noise_prediction(sde, score, x: Array, t: Array) -> Array:
    """``eps(x, t) = -sigma * score(x, t)``: the noise prediction (1 score evaluation; from the
    model's own output for a score with that channel, see :func:`data_prediction`)."""
    if isinstance(score, Model):
        return score.eps(x, t)
    _, sigma = sde.marginal(t)
    return -sigma * score(x, t)


def predictions(sde, score, x: Array, t: Array, kinds: tuple[str, ...]) -> tuple[Array, ...]:
    """The ``kinds`` (``"x0"``, ``"eps"``, ``"score"``) predictions at ``(x, t)`` from ONE score
    evaluation: from the model's own output for a :class:`jaxsde.prediction.Model` (exact at
    ``alpha = 0`` for velocity and x0 models), else from ``score(x, t)`` (Tweedie for ``"x0"``)."""
    if isinstance(score, Model):
        return score.predict_many(x, t, kinds)
    s = score(x, t)
    alpha, sigma = sde.marginal(t)
    table = {"score": lambda: s, "eps": lambda: -sigma * s, "x0": lambda: (x + sigma**2 * s) / alpha}
    return tuple(table[kind]() for kind in kinds)


def alpha_zero_step(sde, x: Array, t: Array, t_next: Array, x0: Array, x0_next: Array | None = None,
                    tau2: Array | float = 0.0, z: Array | None = None) -> Array:
    """The exact step of the variance-controlled reverse SDE from a ``t`` where ``alpha = 0``
    (``t = 1`` on :class:`~jaxsde.FlowSDE`: ``lambda = -inf``) to ``t_next``, with the data
    prediction linear in ``rho = alpha/sigma`` along it.

    In ``rho`` the step has finite length ``rho' = alpha'/sigma'`` (infinite in ``lambda``, where
    the exponential integrators' weights, the ``x/alpha`` of the noise-prediction and EDM forms,
    and the Lagrange nodes are undefined). With ``c = 1 + tau^2`` (``tau = 0``: the PF-ODE):
    ``x' = sigma' (k x / sigma + m) + alpha' xbar``, ``k = 1`` and ``m = 0`` for ``tau = 0``,
    ``k = 0`` and ``m = z`` (fresh noise) for ``tau > 0`` (the state is forgotten over an infinite
    log-SNR step); ``xbar = x0`` given only the start's data prediction ``x0`` (exact there from a
    velocity or x0 model): the DDIM step (exponential Euler; its first-order limit), or ``xbar =
    (x0 + c x0_next) / (1 + c)`` given also ``x0_next``, the data prediction at ``t_next``
    (the exact integral of ``x0`` linear in ``rho``: the trapezoid for ``tau = 0``, a second-order
    Heun step). Every fixed-grid solver whose own first step is undefined at ``alpha = 0`` takes
    this one there (:class:`MultistepSolver`'s ``exact_first_step``, :class:`~jaxsde.EDMHeun`),
    then continues with its own method.

    Args:
        sde: the SDE (``alpha(t) = 0``).
        x: the state at ``t``.
        t: the start (``alpha(t) = 0``).
        t_next: the end, ``t_next < t``.
        x0: the data prediction at ``(x, t)``.
        x0_next: the data prediction at ``t_next`` (of a predicted state), or ``None``.
        tau2: ``tau^2 >= 0`` (a number or a traced scalar; only its sign matters here).
        z: the standard normal, shaped like ``x`` (used when ``tau2 > 0``; ``None``: deterministic).

    Returns:
        The state at ``t_next``.
    """
    _, sigma = sde.marginal(t)
    alpha_n, sigma_n = sde.marginal(t_next)
    c = 1.0 + tau2
    xbar = x0 if x0_next is None else (x0 + c * x0_next) / (1.0 + c)
    if z is None or (isinstance(tau2, int | float) and tau2 == 0):
        return sigma_n / sigma * x + alpha_n * xbar
    noisy = jnp.asarray(tau2) > 0
    return jnp.where(noisy, sigma_n * z, sigma_n / sigma * x) + alpha_n * xbar


def exp_remainders(nmax: int, z: Array) -> list[Array]:
    """``[R_1(z), ..., R_nmax(z)]`` with ``R_n(z) = e^{-z} - sum_{j<n} (-z)^j / j! = sum_{j>=n} (-z)^j / j!``.

    ``R_1(z) = expm1(-z)``; ``R_n(z) ~ (-z)^n / n!`` for small ``z``. For ``|z| < 1``: the series of
    ``R_nmax`` (Horner), then ``R_n = (-z)^n / n! + R_{n+1}`` downwards (each term dominates the
    remainder, so nothing cancels). Otherwise the closed form upwards from ``expm1`` (relative error a
    few ulps there).
    """
    z = jnp.asarray(z)
    acc = jnp.ones_like(z)
    for k in range(_SERIES_TERMS, 0, -1):
        acc = 1.0 + (-z) / (nmax + k) * acc
    series = [(-z) ** nmax / math.factorial(nmax) * acc]
    for n in range(nmax - 1, 0, -1):
        series.insert(0, (-z) ** n / math.factorial(n) + series[0])
    direct = [jnp.expm1(-z)]
    for n in range(2, nmax + 1):
        direct.append(direct[-1] - (-z) ** (n - 1) / math.factorial(n - 1))
    small = jnp.abs(z) < _SERIES_RADIUS
    return [jnp.where(small, a, b) for a, b in zip(series, direct, strict=True)]


def exp_remainder(n: int, z: Array) -> Array:
    """``R_n(z)`` alone (see :func:`exp_remainders`), ``n >= 1``."""
    return exp_remainders(n, z)[-1]


def exp_moments(c, h: Array, num: int) -> list[Array]:
    """``mu_k = int_0^h e^{-c (h - u)} (u / h)^k du`` for ``k = 0 .. num-1`` (``c != 0``, ``h > 0``).

    Closed form ``mu_k = (-1)^{k+1} k! R_{k+1}(c h) / (c^{k+1} h^k)``; ``mu_k -> h / (k + 1)``
    as ``c h -> 0``. ``c = 1 + tau^2`` gives the data-prediction (SA-Solver) weights, ``c = -1``
    the noise-prediction ones.
    """
    rem = exp_remainders(num, c * h)
    return [(-1.0) ** (k + 1) * math.factorial(k) * rem[k] / (c ** (k + 1) * h**k) for k in range(num)]


def exp_weights(c, h: Array, nodes: list[Array], order: Array | int | None = None) -> list[Array]:
    """``W_j = int_0^h e^{-c (h - u)} l_j(u / h) du``: exact exponential-integrator weights of the
    polynomial interpolating at ``nodes`` (in units of ``h`` from the step's start, newest first).

    Built in Newton form, ``P(v) = sum_k f[v_0..v_k] prod_{m<k} (v - v_m)``, whose first ``q`` terms
    interpolate at the first ``q`` nodes; so ``order`` (static or traced, ``1 <= order <=
    len(nodes)``) selects the interpolation order by masking terms, with one set of moments.
    Returned as weights on the node values: ``int e^{-c(h-u)} P = sum_j W_j m_j``;
    ``sum_j W_j = (1 - e^{-c h}) / c``. With ``c = 1`` these are the PF-ODE data-form weights
    (``x_t = (sigma_t/sigma_s) x_s + alpha_t sum_j W_j x0_j``); ``c = -1`` the noise-form ones.
    """
    return interpolation_weights(exp_moments(c, h, len(nodes)), nodes, order)


def interpolation_weights(moments: list[Array], nodes: list[Array], order: Array | int | None = None) -> list[Array]:
    """Weights ``W_j`` with ``int w(v) P(v) dv = sum_j W_j m_j`` for ``P`` the polynomial taking the values
    ``m_j`` at ``nodes`` (newest first), given the moments ``moments[k] = int w(v) v^k dv``,
    ``k < len(nodes)``, of any weight ``w``.

    Newton form, ``P(v) = sum_k f[v_0..v_k] prod_{m<k} (v - v_m)``, whose first ``q`` terms
    interpolate at the first ``q`` nodes; ``order`` (static or traced, ``1 <= order <= len(nodes)``)
    selects the interpolation order by masking terms, with one set of moments.
    :func:`exp_weights` (``w = e^{-c (h - u)}``) and LMS (``w = 1`` on ``[0, 1]``) use it.
    """
    p = len(nodes)
    mu = moments
    # integrals of the Newton basis polynomials prod_{m<k} (v - v_m) (monomial coefficients in v)
    poly = [jnp.ones_like(mu[0])]
    integrals = []
    for k in range(p):
        integrals.append(sum(a * m for a, m in zip(poly, mu, strict=False)))
        if k + 1 < p:
            poly = [(poly[i - 1] if i > 0 else 0.0) - (nodes[k] * poly[i] if i < len(poly) else 0.0)
                    for i in range(len(poly) + 1)]
    # divided differences f[v_0..v_k] as coefficient vectors on the node values
    table = [[1.0 if j == i else 0.0 for j in range(p)] for i in range(p)]
    leading = [table[0]]
    for k in range(1, p):
        table = [[(b - a) / (nodes[i + k] - nodes[i]) for a, b in zip(table[i], table[i + 1], strict=True)]
                 for i in range(p - k)]
        leading.append(table[0])
    if order is not None:
        integrals = [jnp.where(k < order, val, 0.0) for k, val in enumerate(integrals)]
    return [sum(integrals[k] * leading[k][j] for k in range(j, p)) for j in range(p)]


def diffusers_grid(timesteps, num_train_timesteps: int, end_at_first_entry: bool = True) -> tuple[float, ...]:
    """jaxsde times of a diffusers scheduler's integer ``timesteps`` on a discrete schedule.

    :class:`~jaxsde.DiscreteVPSDE` puts table entry ``n`` at ``t = (n + 1) / N``. With
    ``end_at_first_entry`` the grid ends at ``t = 1 / N`` (``sde.eps``, the first table entry),
    where DDIM (``set_alpha_to_one=False``), DPM-Solver++ (``final_sigmas_type="sigma_min"``) and
    SA-Solver end; otherwise it ends at the last timestep (for a final Tweedie step,
    ``denoise=True``: DDIM with ``set_alpha_to_one=True``, DPM-Solver++ with
    ``final_sigmas_type="zero"``). Pass the result as a solver's ``grid``.
    """
    n = [int(v) for v in list(timesteps)]
    times = [(v + 1) / num_train_timesteps for v in n]
    if end_at_first_entry and n[-1] != 0:
        times.append(1.0 / num_train_timesteps)
    return tuple(times)


def select_weights(order: Array, candidates: list[list[Array]], size: int) -> list[Array]:
    """Pick ``candidates[order - 1]`` (each a list of weights, zero-padded to ``size``) by a traced order."""
    out = []
    for j in range(size):
        w = jnp.zeros_like(candidates[0][0])
        for q, cand in enumerate(candidates, start=1):
            if j < len(cand):
                w = jnp.where(order == q, cand[j], w)
        out.append(w)
    return out


def warmup_order(order: int, i: Array, total: int, lower_order_final: bool | str, below: int) -> Array:
    """Order of multistep step ``i`` (traced) of ``total``: ``min(order, i + 1)`` (warm-up: step ``i``
    has ``i + 1`` evaluations), and, when ``lower_order_final`` is ``"always"`` or ``True`` with
    ``total < below``, also ``<= total - i`` (order 1 on the last step, at most 2 on the one before,
    ...: diffusers' ``lower_order_final``)."""
    q = jnp.minimum(order, i + 1)
    lower = lower_order_final == "always" or (lower_order_final is True and total < below)
    return jnp.minimum(q, total - i) if lower else q


def combine(weights: list[Array], hist: Array) -> Array:
    """``sum_j weights[j] * hist[j]`` (``hist`` stacked along axis 0)."""
    return sum(w * hist[j] for j, w in enumerate(weights))


class HistoryState(NamedTuple):
    """State of a :class:`MultistepSolver`.

    ``index``/``grid`` as in :class:`~jaxsde.controllers.GridState`; ``lam``: half log-SNR
    of the grid with ``pad`` virtual nodes prepended (``lam[pad + i]`` is grid time ``i``;
    the virtual ones extend the grid's first spacing backwards, so warm-up coefficients of
    unused orders stay finite); ``hist``: past model outputs, newest first; ``extra``: what
    else the solver carries; ``origin``: whether the grid starts where ``alpha = 0`` (a traced
    bool, set only for a solver with ``exact_first_step`` given a model with a data channel on an
    SDE whose ``alpha(T) = 0``; ``None`` otherwise: the state is then what it always was).
    """

    index: Array
    grid: Array
    lam: Array
    hist: Array
    extra: Any
    origin: Any = None  # traced bool: the grid starts where alpha = 0 (exact_first_step solvers); else None


class MultistepSolver(FixedGridSolver):
    """Shared machinery of the fixed-grid solvers carrying a history of model outputs between steps
    (not another contract: subclasses implement ``step``, reading grid node ``state.index`` and
    returning ``self.advanced(state, hist, extra)`` as their new state).

    Defaults, for a multistep method with an ``order`` field: one score evaluation per step
    (``nfe_per_attempt = 1``), the last ``order`` model outputs kept (``history_size = order``),
    an initial history of zeros (``init_history``).
    """

    nfe_per_attempt = 1

    # True for a method whose own step is undefined out of alpha = 0 (lambda = -inf: x / alpha,
    # infinite Lagrange nodes): its state then carries origin (exact_start) and its first step there
    # is alpha_zero_step (from_alpha_zero; ForwardValue: its own lookahead's finite limit)
    exact_first_step: bool = False

    @property
    def history_size(self) -> int:
        return self.order

    def exact_start(self, sde, score) -> bool:
        """Static: whether this solve may start where ``alpha = 0`` through :func:`alpha_zero_step`
        (``exact_first_step``, an SDE with ``alpha(T) = 0`` and a model with its own data channel).
        Then the state carries ``origin`` (whether the grid does start there, traced); the first
        step is the exact one (:meth:`from_alpha_zero`), the evaluation there stays in the
        history as the method's own entry, and the interpolating methods count only the evaluations
        at finite log-SNR (:meth:`capped`): the Lagrange weight of a node at ``lambda = -inf``
        has the limit 0, and its ``lam`` is a finite placeholder (the grid's first spacing
        extended backwards, as for the virtual nodes) so the masked weights stay finite."""
        return self.exact_first_step and sde.alpha_vanishes_at_T and isinstance(score, Model)

    def init_history(self, sde, x: Array, grid: Array, lam: Array) -> tuple[Array, Any]:
        """Initial ``(hist, extra)``; default: zeros and ``None``."""
        return jnp.zeros((self.history_size, *x.shape), x.dtype), None

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        grid = self.schedule.times(sde, t_start, t_end, x.dtype)
        lam = half_log_snr(sde, grid).astype(x.dtype)
        origin = None
        if self.exact_start(sde, score):  # a placeholder for lam = -inf at the start (exact_start)
            origin = jnp.isneginf(lam[0])
            first = lam[2] - lam[1] if self.num_steps > 1 else jnp.ones((), x.dtype)
            lam = jnp.where(origin, lam.at[0].set(lam[1] - first), lam)
        pad = self.history_size
        d = lam[1] - lam[0]
        virtual = lam[0] - d * jnp.arange(pad, 0, -1, dtype=x.dtype)
        lam = jnp.concatenate([virtual, lam])
        hist, extra = self.init_history(sde, x, grid, lam)
        return SolverInit(state=HistoryState(jnp.zeros((), jnp.int32), grid, lam, hist, extra, origin), nfe=0)

    def capped(self, state: HistoryState, order: Array | int) -> Array | int:
        """``order`` at most the number of evaluations at finite log-SNR the step has (``index + 1``,
        less the one at ``alpha = 0`` when the grid starts there; at least 1); ``order`` itself
        when the state has no ``origin`` (see :meth:`exact_start`)."""
        if state.origin is None:
            return order
        finite = state.index + 1 - state.origin.astype(state.index.dtype)
        return jnp.minimum(order, jnp.maximum(finite, 1))

    def from_alpha_zero(self, sde, state: HistoryState, x: Array, t: Array, t_next: Array, x0: Array | None,
                        x_next: Array, **kwargs) -> Array:
        """``x_next`` (the method's own step), or on the first step of a grid starting where ``alpha =
        0`` :func:`alpha_zero_step` ``(sde, x, t, t_next, x0, **kwargs)``. ``x_next`` itself when the
        state has no ``origin``."""
        if state.origin is None:
            return x_next
        return jnp.where(state.origin & (state.index == 0), alpha_zero_step(sde, x, t, t_next, x0, **kwargs), x_next)

    def check_order(self, name: str, max_order: int) -> None:
        """Refuse an ``order`` outside ``[1, max_order]`` or above ``num_steps``."""
        check_int("order", self.order, 1, max_order, name)
        if self.num_steps < self.order:
            raise ValueError(f"{name}: order {self.order} needs num_steps >= {self.order}, got {self.num_steps}")

    def evaluate_eps(self, sde, score, x: Array, state: HistoryState) -> tuple[Array, Array, Array, Array | None]:
        """The start of an ``eps``-history step from grid node ``state.index``: ``(t, t_next, hist,
        x0)``, the node's time and the next, the history with the noise prediction at ``(x, t)``
        pushed in front, and, where the state has an ``origin`` (see :meth:`exact_start`), the data
        prediction of the same model call for the exact first step (else ``None``)."""
        t, t_next = state.grid[state.index], state.grid[state.index + 1]
        if state.origin is None:
            eps, x0 = noise_prediction(sde, score, x, t), None
        else:
            eps, x0 = predictions(sde, score, x, t, ("eps", "x0"))
        return t, t_next, push(state.hist, eps), x0

    def node(self, state: HistoryState, offset: int) -> Array:
        """Half log-SNR of grid time ``state.index + offset`` (``offset >= -history_size``)."""
        return state.lam[state.index + self.history_size + offset]

    def advanced(self, state: HistoryState, hist: Array, extra: Any) -> HistoryState:
        """The state after the step from grid time ``state.index``, with the new history."""
        return HistoryState(jnp.minimum(state.index + 1, self.num_steps), state.grid, state.lam, hist, extra,
                            state.origin)


def push(hist: Array, new: Array) -> Array:
    """Prepend ``new`` to the history (newest first), dropping the oldest entry."""
    return jnp.concatenate([new[None], hist[:-1]], axis=0)


def check_int(name: str, value, lo: int, hi: int, owner: str) -> None:
    check_static(owner, name, value)
    if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
        raise ValueError(f"{owner}: {name} must be an integer in [{lo}, {hi}], got {value!r}")
