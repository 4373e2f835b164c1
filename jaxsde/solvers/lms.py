"""Linear multistep (k-diffusion's ``sample_lms``): Adams-Bashforth on the probability-flow ODE in sigma."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .base import StepResult, solver_class
from .exponential import (
    MultistepSolver,
    check_int,
    combine,
    interpolation_weights,
    push,
)


@solver_class
class LMS(MultistepSolver):
    """Linear multistep (Adams-Bashforth) sampler of the probability-flow ODE in Karras' variables.

    In ``x~ = x / alpha`` and ``s = sigma / alpha = e^{-lam}`` the PF-ODE is ``dx~/ds = eps(x, t)``
    with ``eps = -sigma score`` (k-diffusion's ``d = (x~ - D)/s``). Step ``i`` from ``s_i`` to
    ``s_{i+1}``: ``x~' = x~ + sum_j c_j eps_{i-j}``, ``c_j = int_{s_i}^{s_{i+1}} l_j(s) ds`` with
    ``l_j`` the Lagrange basis on ``s_i, s_{i-1}, ..., s_{i-q+1}``, ``q = min(order, i + 1)``
    (warm-up as k-diffusion); in the driver's variable ``x' = (alpha'/alpha) x + alpha' sum_j c_j eps_j``.

    k-diffusion 0.1.1's ``sample_lms`` integrates each ``c_j`` with ``scipy.integrate.quad``
    (``linear_multistep_coeff``) on the host; here they are exact, in closed form inside the
    compiled solve (any grid, traced times included):
    ``c_j = Delta int_0^1 l_j(v) dv`` in ``v = (s - s_i)/Delta``, ``Delta = s_{i+1} - s_i``, through
    :func:`~jaxsde.solvers.exponential.interpolation_weights` with the moments ``1/(k + 1)``; the
    node offsets ``s_{i-j} - s_i = s_i expm1(lam_i - lam_{i-j})`` are formed without cancellation.

    k-diffusion's schedules end in ``sigma = 0``, where ``sample_lms`` takes one more LMS step
    (extrapolating ``eps``). Here the last step ends at ``t_end``; the driver's final denoising
    step (``denoise=True``, one more evaluation at ``t_end``) then returns the Tweedie estimate
    (``last_step="tweedie"``, the default) or takes k-diffusion's LMS step from ``s(t_end)`` to
    ``s = 0`` with that evaluation as the newest node (``last_step="lms"``). On sigmas
    ``sigma(t_i)/alpha(t_i)`` of this solver's grid, k-diffusion's output equals this solver's:
    without the trailing 0 and ``denoise=False`` (times ``alpha(t_end)``), and with it,
    ``last_step="lms"`` and ``denoise=True`` (``tests/test_lms.py``).

    From ``alpha = 0`` (``t = 1`` on :class:`~jaxsde.FlowSDE`, given a velocity or x0
    :class:`~jaxsde.Prediction`), where ``x / alpha`` is undefined: the first step is
    :func:`~jaxsde.solvers.exponential.alpha_zero_step` (DDIM's) from that evaluation, whose ``eps``
    starts the history; the orders then count the evaluations at finite ``s``.

    Deterministic (no noise). Order ``order`` on the ODE (``tests/test_lms.py``). NFE =
    ``num_steps`` (+1 for the driver's final Tweedie step, ``denoise=True``).

    Args:
      num_steps: number of steps (``>= order``).
      order: 1 to 4 (default 4, k-diffusion's).
      grid: ``"edm"`` (Karras, default), ``"uniform"``, ``"logsnr"``, or an array of times.
      last_step: the final denoising step: ``"tweedie"`` (default) or ``"lms"`` (k-diffusion's
        LMS step to ``sigma = 0``; same NFE).
    """

    num_steps: int = 20
    order: int = 4
    grid: Any = "edm"
    last_step: str = "tweedie"

    noise_per_attempt = 0

    def __post_init__(self):
        self._check_grid()
        check_int("order", self.order, 1, 4, "LMS")
        if self.last_step not in ("tweedie", "lms"):
            raise ValueError(f"LMS: last_step must be 'tweedie' or 'lms', got {self.last_step!r}")
        if self.num_steps < self.order:
            raise ValueError(f"LMS: order {self.order} needs num_steps >= {self.order} (the first "
                             f"{self.order - 1} steps warm up at lower orders), got num_steps={self.num_steps}")

    def weights(self, state, step):
        """The coefficients ``c_j`` of the step from grid node ``state.index`` to ``s_i (1 + step)``
        (``step = (s_{i+1} - s_i) / s_i``; ``-1``: to ``s = 0``)."""
        lam_s = self.node(state, 0)
        delta = jnp.exp(-lam_s) * step
        nodes = [jnp.expm1(lam_s - self.node(state, -j)) / step for j in range(self.order)]  # (s_{i-j} - s_i) / delta
        return interpolation_weights([delta / (k + 1) for k in range(self.order)], nodes,
                                     self.capped(state, jnp.minimum(self.order, state.index + 1)))

    exact_first_step = True  # x / alpha at alpha = 0: the first step is alpha_zero_step
    starts_at_alpha_zero = True

    def step(self, sde, score, t0, t1, x, state, z) -> StepResult:
        t, t_next, hist, x0 = self.evaluate_eps(sde, score, x, state)
        w = self.weights(state, jnp.expm1(self.node(state, 0) - self.node(state, 1)))
        alpha, _ = sde.marginal(t)
        alpha_n, _ = sde.marginal(t_next)
        x_next = self.from_alpha_zero(sde, state, x, t, t_next, x0, alpha_n / alpha * x + alpha_n * combine(w, hist))
        return StepResult(x_next, self.advanced(state, hist, None), 1)

    def denoise(self, sde, score, x, t, state):
        if self.last_step == "tweedie":
            return super().denoise(sde, score, x, t, state)
        # k-diffusion's last LMS step, from s(t_end) to s = 0 (step = -1); the data is x~ = x / alpha there
        alpha, sigma = sde.marginal(t)
        return x / alpha + combine(self.weights(state, -1.0), push(state.hist, -sigma * score(x, t))), 1
