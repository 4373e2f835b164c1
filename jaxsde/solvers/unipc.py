"""UniPC (Zhao et al., NeurIPS 2023): unified predictor-corrector, data prediction, 1 NFE per step."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from .base import StepResult, solver_class
from .dpm_solver import LOWER_ORDER_FINAL_BELOW
from .exponential import (
    MultistepSolver,
    check_int,
    combine,
    data_prediction,
    exp_remainders,
    interpolation_weights,
    push,
    select_weights,
    warmup_order,
)

VARIANTS = ("bh1", "bh2")


def unipc_weights(q: int, h: jax.Array, rks: list, variant: str, corrector: bool,
                  drop_infinite: bool = False) -> list:
    """Weights ``w`` of a UniP-``q`` / UniC-``q`` step ``x_t = (sigma_t/sigma_s) x_s + alpha_t sum_j w_j m_j``.

    ``h = lam_t - lam_s > 0`` (half log-SNR), ``rks[k] = (lam_{s_{k+1}} - lam_s) / h < 0`` for the
    ``q - 1`` past nodes (newest first), ``m`` the data predictions. Predictor: ``m = (m_s, m_{s_1},
    .., m_{s_{q-1}})``; corrector: ``m = (m_t, m_s, m_{s_1}, .., m_{s_{q-1}})`` (``m_t`` the
    evaluation at the predicted point, which the corrector reuses).

    With ``hh = -h``, ``B(h) = hh`` (``"bh1"``) or ``e^{hh} - 1`` (``"bh2"``) and
    ``b_k = k! hh phi_{k+1}(hh) / B(h)`` (``phi_{k+1}(hh) hh^{k+1} = R_{k+1}(h)`` of
    :func:`~jaxsde.solvers.exponential.exp_remainders`: no cancellation), the update is
    ``(sigma_t/sigma_s) x_s - alpha_t (e^{hh} - 1) m_s - alpha_t B(h) sum_k rho_k D_k`` with
    ``D_k = (m_{s_k} - m_s) / r_k`` (and ``D = m_t - m_s`` with ``r = 1`` for the corrector's last
    term), where ``rho`` solves the Vandermonde system ``sum_k r_k^n rho_k = b_{n+1}``, ``n = 0 ..``
    (UniPC's Eqs. (8)/(9) in their B(h) forms; diffusers' ``UniPCMultistepScheduler``
    ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``). Solved in closed form:
    ``rho_k = sum_n c_{k,n} b_{n+1}`` with ``c_{k,n}`` the monomial coefficients of node ``k``'s
    Lagrange basis polynomial (:func:`~jaxsde.solvers.exponential.interpolation_weights` with the
    ``b`` as moments). As diffusers does, the order-2 predictor and the order-1 corrector take
    ``rho = 1/2`` instead of solving.

    ``drop_infinite`` (static; on a schedule with ``alpha = 0`` at its start): a past node at
    ``lam = -inf`` (``rks[k] = -inf``, the grid's first time) takes its exact limit, weight 0 and
    the system solved on the finite nodes (the lower-order interpolant), instead of NaN.
    """
    rem = exp_remainders(q + 1, h)
    h_phi_1 = rem[0]  # e^{-h} - 1
    b_h = -h if variant == "bh1" else h_phi_1
    b = [math.factorial(k) * rem[k] / (-h) ** k / b_h for k in range(1, q + 1)]
    nodes = list(rks) + ([jnp.ones_like(h)] if corrector else [])
    n = len(nodes)
    if n == 0:
        rho = []
    elif (corrector and q == 1) or (not corrector and q == 2):
        rho = [jnp.full_like(h, 0.5)]
    elif drop_infinite:  # finite nodes first (corrector node, then newest first); infinite ones masked out
        finite = [jnp.isfinite(r) for r in rks]
        order = sum(f.astype(jnp.int32) for f in finite) + (1 if corrector else 0)
        safe = [jnp.where(f, r, 2.0 + k) for k, (r, f) in enumerate(zip(rks, finite, strict=True))]
        w = interpolation_weights(b[:n], ([jnp.ones_like(h)] if corrector else []) + safe, order)
        rho = (w[1:] + w[:1]) if corrector else w
    else:  # the Vandermonde system is the interpolation-weight problem with "moments" b
        rho = interpolation_weights(b[:n], nodes)
    # -B(h) sum_k rho_k (m_k - m_s)/r_k  as weights on the m's
    past = [-b_h * rho[k] / rks[k] for k in range(len(rks))]
    w_s = -h_phi_1 - sum(past, jnp.zeros_like(h))
    if corrector:
        w_t = -b_h * rho[-1]
        return [w_t, w_s - w_t] + past
    return [w_s] + past


@solver_class
class UniPC(MultistepSolver):
    """UniPC: UniP-``order`` predictor + UniC corrector on the probability-flow ODE, 1 score evaluation per step.

    Data-prediction exponential integrator in the half log-SNR ``lam = log(alpha/sigma)``
    (``x0 = (x + sigma^2 score)/alpha``; ``h = lam_t - lam_s``); coefficients of
    :func:`unipc_weights` (the B(h) variants of Zhao et al. 2023, as in diffusers'
    ``UniPCMultistepScheduler``, ``predict_x0=True``).

    Step ``i`` (from grid time ``t_i``; ``x`` the predicted, uncorrected state there):
      1. ``x0_i = x0(x, t_i)`` (the only score evaluation);
      2. corrector (``i > 0``, ``corrector=True``): redo step ``i-1`` from the previous *corrected*
         state with UniC of the order the predictor of step ``i-1`` used, reusing ``x0_i``;
      3. predictor UniP-``q`` from the corrected state, ``q`` = :meth:`effective_order`.
    ``x0_i`` stays in the history as evaluated at the uncorrected point (no second evaluation),
    as in the paper and diffusers. The correction is added as an increment, ``x_i + (x_i^c -
    x_i^pred)``: the corrected state when nothing outside the solver changed ``x_i``, and a
    re-imposition of known pixels (:class:`jaxsde.editing.Inpainting`) is kept otherwise. The last
    step is not corrected (no evaluation follows it); the driver's final Tweedie step evaluates at
    the uncorrected last state, which is what diffusers' ``final_sigmas_type="zero"`` returns too
    (its last, first-order step to ``sigma = 0`` multiplies the corrected state by 0).

    Orders: predictor ``min(order, i + 1)`` (warm-up); with ``lower_order_final`` and fewer than 15
    steps (``"always"``: any number, diffusers' UniPC) also ``<= num_steps - i`` (+1 with
    ``denoise_is_last_step``). The global order is ``order + 1`` with the corrector, ``order``
    without (``tests/test_unipc.py`` measures both on exact Gaussian laws), up to the global
    ``O(h^2 x0'(lam_T))`` term of the first-order warm-up step, negligible when starting from high
    noise (``x0`` barely changes there).

    Following diffusers' ``UniPCMultistepScheduler`` (``predict_x0=True``, ``solver_p=None``,
    ``disable_corrector=[]``, thresholding and Karras sigmas off) on a
    :class:`~jaxsde.DiscreteVPSDE`: grid :func:`~jaxsde.solvers.exponential.diffusers_grid` of its
    timesteps, ``lower_order_final="always"``;

    * ``final_sigmas_type="sigma_min"``: ``UniPC(K, ...)``, grid ending at the first table entry,
      ``denoise=False``;
    * ``final_sigmas_type="zero"`` (its default): ``UniPC(K - 1, ..., denoise_is_last_step=True)`` on
      the timesteps alone (``end_at_first_entry=False``), ``denoise=True``.

    NFE = ``num_steps`` (+1 for the driver's final Tweedie step, ``denoise=True``).

    Args:
      num_steps: number of steps (>= ``order``).
      order: predictor order 1, 2 or 3 (the corrector adds one).
      variant: ``"bh2"`` (default; ``B(h) = e^{-h} - 1``) or ``"bh1"`` (``B(h) = -h``; the paper
        recommends it for unconditional sampling below 10 steps).
      corrector: ``False`` gives UniP alone (order ``order``).
      lower_order_final: ``True``, ``False`` or ``"always"``, see above.
      denoise_is_last_step: count the final Tweedie step as the schedule's last step in the
        ``lower_order_final`` rule (diffusers' ``final_sigmas_type="zero"``).
      grid: ``"logsnr"`` (default), ``"uniform"``, ``"edm"``, or an array of times.
    """

    num_steps: int = 20
    order: int = 2
    variant: str = "bh2"
    corrector: bool = True
    lower_order_final: bool | str = True
    denoise_is_last_step: bool = False
    grid: Any = "logsnr"

    noise_per_attempt = 0

    def __post_init__(self):
        self._check_grid()
        check_int("order", self.order, 1, 3, "UniPC")
        if self.num_steps < self.order:
            raise ValueError(f"UniPC: order {self.order} needs num_steps >= {self.order}, got {self.num_steps}")
        if self.variant not in VARIANTS:
            raise ValueError(f"UniPC: variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("corrector", "denoise_is_last_step"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"UniPC: {name} must be a bool, got {getattr(self, name)!r}")
        if not (isinstance(self.lower_order_final, bool) or self.lower_order_final == "always"):
            raise ValueError(f"UniPC: lower_order_final must be a bool or 'always', got {self.lower_order_final!r}")


    @property
    def history_size(self) -> int:
        return self.order + 1 if self.corrector else self.order

    def effective_order(self, i):
        """Predictor order of step ``i`` (traced ``i``)."""
        total = self.num_steps + (1 if self.denoise_is_last_step else 0)
        return warmup_order(self.order, i, total, self.lower_order_final, LOWER_ORDER_FINAL_BELOW)

    def init_history(self, sde, x, grid, lam):
        # extra: (the last corrected state, the prediction made from it)
        return jnp.zeros((self.history_size, *x.shape), x.dtype), (x, x)

    @property
    def starts_at_alpha_zero(self) -> bool:  # type: ignore[override]
        # bh2: every weight has a finite limit out of lambda = -inf (B(h) = e^{-h} - 1 -> -1; past
        # nodes there drop out exactly); bh1's B(h) = -h is infinite there
        return self.variant == "bh2"

    def _weights(self, state, start: int, order, corrector: bool, drop_infinite: bool = False) -> list:
        """Weights of the step from grid offset ``start`` to ``start + 1`` at the traced ``order``."""
        lam_s = self.node(state, start)
        h = self.node(state, start + 1) - lam_s
        rks = [(self.node(state, start - k) - lam_s) / h for k in range(1, self.order)]
        cands = [unipc_weights(q, h, rks[: q - 1], self.variant, corrector, drop_infinite)
                 for q in range(1, self.order + 1)]
        return select_weights(order, cands, self.order + (1 if corrector else 0))

    def step(self, sde, score, t0, t1, x, state, z) -> StepResult:
        i = state.index
        t, t_next = state.grid[i], state.grid[i + 1]
        hist = push(state.hist, data_prediction(sde, score, x, t))
        if self.corrector:  # UniC: redo step i-1 -> i from the last corrected state with x0_i
            last_corrected, last_predicted = state.extra
            t_prev = state.grid[jnp.maximum(i - 1, 0)]
            w = self._weights(state, -1, self.effective_order(i - 1), corrector=True,
                              drop_infinite=sde.alpha_vanishes_at_T)
            _, sigma_p = sde.marginal(t_prev)
            alpha, sigma = sde.marginal(t)
            corrected = sigma / sigma_p * last_corrected + alpha * combine(w, hist)
            x = jnp.where(i > 0, x + (corrected - last_predicted), x)
        w = self._weights(state, 0, self.effective_order(i), corrector=False, drop_infinite=sde.alpha_vanishes_at_T)
        _, sigma = sde.marginal(t)
        alpha_n, sigma_n = sde.marginal(t_next)
        x_next = sigma_n / sigma * x + alpha_n * combine(w, hist)
        return StepResult(x_next, self.advanced(state, hist, (x, x_next)), 1)
