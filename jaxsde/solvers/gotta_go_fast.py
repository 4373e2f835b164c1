"""Gotta Go Fast: the adaptive reverse-SDE solver of Jolicoeur-Martineau et al. (2021).

Reference: A. Jolicoeur-Martineau, K. Li, R. Piché-Taillefer, T. Kachman, I. Mitliagkas,
"Gotta Go Fast When Generating Data with Score-Based Models", arXiv:2105.14080.

One attempt from ``(x, t)`` with trial step ``h`` and ONE standard normal draw ``z``:

1. ``K1 = -h F(x, t) + g(t) sqrt(h) z``, EM proposal ``x' = x + K1``   (score eval 1)
2. ``K2 = -h F(x', t-h) + g(t-h) sqrt(h) z`` (same ``z``)              (score eval 2)
3. stochastic improved Euler ``x'' = x + (K1 + K2) / 2``; error ``E = x'' - x'``
4. ``delta = max(atol, rtol * max(|x'|, |x'_prev|))`` element-wise, ``x'_prev`` the EM
   proposal of the previous accepted step; ``E2 = sqrt(mean((E / delta)^2))`` (the
   :class:`jaxsde.controllers.ErrorNorm` with ``combine="max"``)
5. accept iff ``E2 <= 1``: ``x <- x''`` (extrapolation), ``t <- t - h``, ``x'_prev <- x'``
6. ``h <- min(t - t_end, safety * h * E2^(-exponent))`` after every attempt, so the last
   step lands exactly on ``t_end``.

Steps 1-3 are this module's step (the maths); 4-6 are its controller's
(:class:`jaxsde.controllers.StepSizeController` in time, with the
:class:`jaxsde.controllers.ErrorNorm` of step 4 and the rule
:class:`jaxsde.controllers.GottaGoFastController` by default; any other rule can take its place).

``F = f - g^2 score`` is the reverse drift. Every attempt costs exactly 2 score
evaluations; the driver adds 1 for the final denoising (Tweedie) step.

Departures from the released code, all deliberate:
continuous-time conditioning only; ``x'_prev`` really is the previous accepted EM proposal
(the JAX release overwrote it with the current state); each rejected attempt's noise is
discarded and the retry draws fresh noise from a key derived from the attempt number;
per-sample step sizes under ``vmap`` with per-sample NFE counted honestly (final denoising
included); exact Tweedie ``(x + sigma^2 s) / alpha``.

Robustness (not in the paper): a non-finite score at the accepted state stops the sample
with the ``NONFINITE`` code; a non-finite second stage (an overly long step into a region
where the network blows up) is rejected and the step shrunk by ``nonfinite_shrink``; if
that pushes the step below ``min_step`` the sample stops with ``NONFINITE`` too.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..controllers import REDUCTIONS, Controller, ErrorNorm, GottaGoFastController, check_controller
from ..settings import NONNEGATIVE, POSITIVE, UNIT, Bound
from .base import AdaptiveSolver, SolverInit, StepResult, check_component, solver_class
from .euler_maruyama import at_alpha_zero, posterior_step, score_and_data

NORMS = REDUCTIONS  # the ErrorNorm reductions, by GGF's own option name


class GGFState(NamedTuple):
    x_prev: jax.Array  # the check value (EM proposal) of the last accepted step


@solver_class
class GottaGoFast(AdaptiveSolver):
    """The adaptive SDE solver of "Gotta Go Fast" (see the module docstring for the algorithm).

    Args:
      rtol: relative tolerance ``eps_rel`` (> 0); the paper sweeps 0.01, 0.02, 0.05, 0.1.
      atol: absolute tolerance ``eps_abs``; ``None`` takes one 8-bit level of the SDE's
        data range, 0.0078 for [-1, 1] (VP, sub-VP), 0.0039 for [0, 1] (VE), the paper's value,
        and ``rtol`` times half the data range where that is smaller (``rtol`` below 0.0078 on
        [-1, 1]), so that lowering ``rtol`` keeps lowering the error
        (:class:`~jaxsde.controllers.ErrorNorm`).
      h_init: first trial step in time units (the paper: 0.01; the authors' VE CIFAR-10
        configs used 0.5).
      safety: ``theta`` in ``h <- theta h E2^(-r)``, in (0, 1].
      exponent: ``r`` in the same formula (> 0).
      norm: ``"l2"`` (scaled RMS, default), ``"l2_unscaled"`` or ``"linf"``.
      extrapolate: keep the higher-order value on acceptance (default); if False accept
        the EM proposal and use the improved-Euler value as the tolerance reference.
      improved_euler: stochastic improved Euler (default). If False, the "Lamba" variant:
        the second drift is taken at the noise-free EM mean ``m = x - h F(x,t)``, the error
        is deterministic ``(h/2)(F(m, t-h) - F(x, t))`` and noise ``g(t) sqrt(h) z`` is added
        to the accepted mean.
      error_use_prev: include the previous accepted check value in the tolerance reference.
      nonfinite_shrink: step factor applied after a rejected non-finite second stage.
      min_step: smallest step allowed after such a rejection (time units).
      tolerance: an :class:`~jaxsde.controllers.ErrorNorm` replacing ``rtol``/``atol``/``norm``
        (e.g. one norm shared by every solver of a comparison); ``None`` builds the paper's from them.
      controller: the step-size controller; ``None`` is the paper's rule,
        ``GottaGoFastController(safety, exponent, nonfinite_shrink)``. Any controller of
        :mod:`jaxsde.controllers` works (e.g. ``PIDController(pcoeff=0.4, icoeff=0.3)``, which
        sees ``k =`` :attr:`error_order`); ``safety``/``exponent``/``nonfinite_shrink`` then stay at their defaults.

    Units: time in the SDE's ``t``; ``x`` in the model's data space.

    Noise: the paper draws a fresh normal on every attempt (the driver's default
    :class:`~jaxsde.FreshNoise`), so the accepted increments are those whose draw passed the error
    test; where rejections are frequent this biases the samples by an amount the tolerance does not
    control. ``noise=jaxsde.BrownianMemoryNoise()`` integrates one Brownian path per sample instead
    at about the cost of fresh noise (a rejected attempt's end is remembered and the retry samples
    the Brownian bridge up to it); ``noise=jaxsde.BrownianTreeNoise()`` does the same from a
    Brownian tree, at the cost of a tree descent per draw.

    Out of ``alpha = 0`` (``t = 1`` on a flow, given a :class:`jaxsde.Prediction`), where the
    reverse drift is infinite, the attempt's pair is the exact reverse-SDE step with the data
    prediction held fixed (:func:`~jaxsde.solvers.euler_maruyama.posterior_step`) at ``x0(x, t)``
    (the low value, first order) and at the mean of ``x0(x, t)`` and ``x0(x_low, t')`` (the high
    value, the trapezoid in ``x0``), with the same normal draw: two evaluations, an error estimate
    of the same kind, the same controller. Every later attempt is the paper's, except that on such
    an SDE an attempt longer than its first stage's explicit stability bound, ``h (f + g^2 /
    sigma^2) <= 2`` at the step's start (``h <~ 2 (1 - t)`` near ``t = 1``), gets an infinite
    error (rejected, the step shrunk by ``nonfinite_shrink``): the stiffness sits at the start of
    those steps, where the two stages' difference cannot see it, and accepting them ruins the sample.
    """

    rtol: float = 0.05
    atol: float | None = None
    h_init: float = 0.01
    safety: float = 0.9
    exponent: float = 0.9
    norm: str = "l2"
    extrapolate: bool = True
    improved_euler: bool = True
    error_use_prev: bool = True
    nonfinite_shrink: float = 0.25
    min_step: float = 1e-7

    controller: Controller | None = None
    tolerance: ErrorNorm | None = None

    noise_per_attempt = 1
    starts_at_alpha_zero = True  # out of alpha = 0: the exact pair (class docstring)

    traced_settings = {"rtol": POSITIVE, "atol": POSITIVE, "h_init": POSITIVE, "safety": UNIT,
                       "exponent": POSITIVE, "nonfinite_shrink": Bound(0.0, 1.0, True, True), "min_step": NONNEGATIVE,
                       "controller": None, "tolerance": None}

    def __post_init__(self):
        check_component("GottaGoFast", self, "tolerance", ErrorNorm, ("rtol", "atol", "norm"))
        if self.norm not in NORMS:
            raise ValueError(f"GottaGoFast: norm must be one of {NORMS}, got {self.norm!r}")
        if self.controller is not None:
            check_controller("GottaGoFast", self.controller)
            check_component("GottaGoFast", self, "controller", Controller, ("safety", "exponent", "nonfinite_shrink"))

    @property
    def default_rule(self) -> Controller:
        return GottaGoFastController(self.safety, self.exponent, self.nonfinite_shrink)

    @property
    def error_order(self) -> float:
        """``k`` for order-aware controllers: the improved-Euler-minus-EM error is O(h^1.5) with its
        noise terms (1.5), the Lamba variant's deterministic one O(h^2) (2)."""
        return 1.5 if self.improved_euler else 2.0

    nfe_per_attempt = 2

    @property
    def default_norm(self) -> ErrorNorm:
        return ErrorNorm(self.rtol, self.atol, combine="max", reduce=self.norm)

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        return SolverInit(state=GGFState(x_prev=x), nfe=0)

    def step(self, sde, score, t, t_next, x, state: GGFState, z) -> StepResult:
        z = z[0]
        h = t - t_next
        sqrt_h = jnp.sqrt(h)
        s1, x0_1 = score_and_data(sde, score, x, t)
        drift1 = sde.reverse_drift(x, t, s1)
        noise1 = sde.diffusion(t) * sqrt_h * z
        ok = jnp.all(jnp.isfinite(drift1))
        entry = None
        if x0_1 is not None:  # a flow: the step out of alpha = 0 is the exact pair (class docstring)
            entry = at_alpha_zero(sde, t)
            mean1, std = posterior_step(sde, x, x0_1, t, t_next)
            ok = jnp.where(entry, jnp.all(jnp.isfinite(x0_1)), ok)

        def second_stage(y):  # (drift at (y, t_next), the exact pair's mean from the two data predictions)
            s2, x0_2 = score_and_data(sde, score, y, t_next)
            mean2 = None if entry is None else posterior_step(sde, x, 0.5 * (x0_1 + x0_2), t, t_next)[0]
            return sde.reverse_drift(y, t_next, s2), mean2

        if self.improved_euler:
            k1 = -h * drift1 + noise1
            x_em = x + k1 if entry is None else jnp.where(entry, mean1 + std * z, x + k1)
            drift2, mean2 = second_stage(x_em)
            k2 = -h * drift2 + sde.diffusion(t_next) * sqrt_h * z
            x_heun = x + 0.5 * (k1 + k2) if entry is None else jnp.where(entry, mean2 + std * z, x + 0.5 * (k1 + k2))
            err = x_heun - x_em
            low, high = x_em, x_heun
        else:
            mean_em = x - h * drift1 if entry is None else jnp.where(entry, mean1, x - h * drift1)
            drift2, mean2 = second_stage(mean_em)
            mean_heun = x - 0.5 * h * (drift1 + drift2)
            err = 0.5 * h * (drift2 - drift1)
            if entry is not None:
                mean_heun = jnp.where(entry, mean2, mean_heun)
                err = jnp.where(entry, mean2 - mean1, err)
                noise1 = jnp.where(entry, std * z, noise1)
            low, high = mean_em + noise1, mean_heun + noise1
            mean_low, mean_high = mean_em, mean_heun
        if entry is not None:
            # the error estimate cannot see an explicit first stage that is unstable where the step
            # starts (a flow's stiffness ~ 1 / (1 - t) sits there; the second stage is benign): an
            # attempt beyond h L(t) <= 2, L = f + g^2 / sigma^2 the linear part's rate, gets an
            # infinite error (rejected and shrunk by nonfinite_shrink, as an overlong step)
            _, sigma = sde.marginal(t)
            rate = sde.drift(jnp.ones((), x.dtype), t) + sde.diffusion(t) ** 2 / sigma**2
            err = jnp.where(entry | (h * rate <= 2.0), err, jnp.inf)
        if self.extrapolate:
            x_new = high
            check = low if self.improved_euler else mean_low
        else:
            x_new = low
            check = high if self.improved_euler else mean_high

        ref = jnp.abs(check)
        if self.error_use_prev:
            ref = jnp.maximum(ref, jnp.abs(state.x_prev))
        return StepResult(x=x_new, state=GGFState(x_prev=check), nfe=2, error=err, reference=ref, ok=ok)
