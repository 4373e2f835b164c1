"""Image editing drivers: SDEdit and inpainting, in the calling convention of ``solve``/``sample``.

    sol = sdedit(key, sde, score, solver, x_guide, t0)             # one edited sample
    sol = sdedit(key, sde, score, solver, x_guide, t0, n=8)        # 8 samples, like ``sample``
    sol = inpaint(key, sde, score, solver, x_known, mask)          # mask: 1 = known pixel
    sol = inpaint(key, sde, score, solver, x_known, mask, n=8)

**SDEdit** (Meng et al., ICLR 2022): noise the guide to ``t0`` with the SDE's marginal,
``x_t0 = alpha(t0) x_guide + sigma(t0) z``, and solve the reverse process from ``t0`` down to
``t_end`` with any solver. Key use: ``noise_key, solve_key = jax.random.split(key)``; ``z`` is
``sde.prior_sample(noise_key, shape) / prior_std`` and the solve runs with ``solve_key``. At
``t0 == sde.T`` the start is the prior draw ``sde.prior_sample(noise_key, shape)`` itself (the
guide's weight ``alpha(T)`` is what the prior neglects), so ``sdedit(..., t0=sde.T, n=n)``
reproduces ``jaxsde.sample(key, ...)`` sample for sample, and the one-sample form equals
``solve(solve_key, ..., sde.prior_sample(noise_key, shape))``. With ``n``, sample ``i`` is
``sdedit(jax.random.fold_in(key, i), ...)`` (``sample``'s convention).

**Inpainting** (score_sde's "controllable generation", Song et al. 2021, App. I): after every
accepted step the known pixels are re-imposed from the forward process,
``x <- mask * (alpha_t x_known + sigma_t z) + (1 - mask) * x``, by the solver wrapper
:class:`Inpainting`; the final output holds the known pixels exactly. Key use as ``sample``:
``prior_key, solve_key = split(key)``, ``x_T`` from the prior with ``prior_key``.

Which solvers (the wrapper delegates ``init``/``step`` and projects after accepted steps):

* stochastic fixed-grid solvers (Euler-Maruyama, reverse diffusion / predictor-corrector,
  DDIM with ``eta > 0``, SA-Solver): ``z`` is fresh each step, drawn from the normals the
  driver provides (``noise_per_attempt`` is raised by one), the score_sde method;
* Gotta Go Fast (adaptive): the projection happens only after an accepted attempt; a
  rejected attempt leaves the (already projected) state unchanged; the error estimate of an
  attempt is computed before the projection, i.e. on the inner solver's own step;
* deterministic solvers (ProbabilityFlow, DDIM ``eta = 0``, DPM-Solver++, EDM Heun): the
  deterministic variant (``noise="fixed"``, their default) uses one fixed noise
  ``eps0 = (x_T - alpha_T x_known) / sigma_T`` for the whole solve, so the known pixels follow
  ``alpha_t x_known + sigma_t eps0`` (the probability-flow path of the known pixels) and the
  sample is a deterministic function of ``x_T``. After each projection the inner solver's
  ``reimpose`` refreshes what its state holds at the current ``x`` (ProbabilityFlow re-evaluates
  its FSAL derivative there: ``reimpose_nfe = 1`` more NFE per attempt).
* a new solver whose state caches values computed at the current ``x`` overrides
  ``Solver.reimpose`` (and ``reimpose_nfe``); otherwise the cached values would be stale.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .driver import Solution, solve, solve_batch
from .sde import SDE, ScoreFn
from .solvers.base import Solver, SolverInit, StepResult, WrappedSolver, solver_class

Array = jax.Array

__all__ = ["sdedit", "inpaint", "Inpainting", "sdedit_start", "check_mask"]


def check_t0(sde: SDE, t0, t_end: float | None) -> float:
    if isinstance(t0, bool) or not isinstance(t0, int | float | np.floating | np.integer):
        raise ValueError(f"t0 must be a Python float in (0, T] = (0, {sde.T}], got {t0!r}")
    t0 = float(t0)
    end = sde.eps if t_end is None else float(t_end)
    if not (math.isfinite(t0) and 0.0 < t0 <= sde.T):
        raise ValueError(f"t0 must lie in (0, T] = (0, {sde.T}], got {t0}")
    if not t0 > end:
        raise ValueError(f"t0 = {t0} must be later than t_end = {end} (the solve runs from t0 down to t_end)")
    return t0


def sdedit_start(key: Array, sde: SDE, x_guide: Array, t0: float) -> Array:
    """``x_t0 = alpha(t0) x_guide + sigma(t0) z`` (the prior draw itself at ``t0 == sde.T``),
    ``z`` from ``sde.prior_sample(key, ...) / prior_std``."""
    draw = sde.prior_sample(key, x_guide.shape, x_guide.dtype)
    if t0 >= sde.T:
        return draw
    alpha, sigma = sde.marginal(jnp.asarray(t0, x_guide.dtype))
    return alpha * x_guide + sigma * (draw / sde.prior_std)


def sdedit(
    key: Array,
    sde: SDE,
    score: ScoreFn,
    solver: Solver,
    x_guide: Array,
    t0: float,
    *,
    n: int | None = None,
    noise: Any = None,
    **solve_kwargs: Any,
) -> Solution:
    """SDEdit: noise ``x_guide`` (one sample, in the model's data space) to ``t0``, solve back.

    Args:
      key: PRNG key (split into the noising key and the solve key, see the module docstring).
      t0: start time, a Python float in ``(t_end, T]``; small ``t0`` stays close to the
        guide, ``t0 = T`` ignores it (plain sampling).
      n: ``None`` for one sample; an int for ``n`` samples of the same guide, sample ``i``
        with key ``fold_in(key, i)`` (``noise``, if given, then has a leading axis ``n``).
      noise: as for :func:`jaxsde.solve`.
      **solve_kwargs: as for :func:`jaxsde.solve` (``t_start`` is ``t0``). A solver with a
        custom grid must start at ``t0``. ``cond=`` (a conditional score ``score(x, t, cond)``):
        one condition, or with ``n`` one per sample (leading axis ``n``).
    """
    x_guide = jnp.asarray(x_guide)
    if "t_start" in solve_kwargs:
        raise ValueError("sdedit starts at t0; do not pass t_start")
    t0 = check_t0(sde, t0, solve_kwargs.get("t_end"))

    def start(k):
        noise_key, solve_key = jax.random.split(k)
        return solve_key, sdedit_start(noise_key, sde, x_guide, t0)

    if n is None:
        solve_key, x_t0 = start(key)
        return solve(solve_key, sde, score, solver, x_t0, t_start=t0, noise=noise, **solve_kwargs)
    _check_n(n)
    solve_keys, x_t0 = jax.vmap(start)(jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n)))
    return solve_batch(solve_keys, sde, score, solver, x_t0, t_start=t0, noise=noise, **solve_kwargs)


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer or None, got {n!r}")


def check_mask(mask, shape: tuple[int, ...], *, name: str = "mask") -> Array:
    """Validate a 0/1 mask for images of ``shape`` (H, W, C); returns it broadcast to ``shape``.

    Accepted shapes: ``shape``, ``shape[:-1]`` (one value per pixel) or ``(*shape[:-1], 1)``.
    Concrete masks must hold only 0 and 1 and must not be all 0 (empty) or all 1.
    """
    mask_arr = mask if isinstance(mask, jax.core.Tracer) else np.asarray(mask)
    mshape = tuple(mask_arr.shape)
    shape = tuple(shape)
    if mshape not in (shape, shape[:-1], (*shape[:-1], 1)):
        raise ValueError(f"{name} has shape {mshape}; for images shaped {shape} it must be shaped {shape}, "
                         f"{shape[:-1]} or {(*shape[:-1], 1)}")
    if not isinstance(mask_arr, jax.core.Tracer):
        values = np.asarray(mask_arr, dtype=np.float64)
        if not np.all((values == 0) | (values == 1)):
            raise ValueError(f"{name} must hold only 0 and 1 (1 = known pixel)")
        if not values.any():
            raise ValueError(f"{name} is empty (no known pixel): nothing to condition on; use jaxsde.sample")
        if values.all():
            raise ValueError(f"{name} marks every pixel as known: nothing to inpaint")
    m = jnp.asarray(mask_arr)
    if m.ndim == len(shape) - 1:
        m = m[..., None]
    return jnp.broadcast_to(m, shape)


@solver_class
class Inpainting(WrappedSolver):
    """Wrap ``solver`` so the known pixels are re-imposed from the forward process after each
    accepted step: ``x <- mask * (alpha_t x_known + sigma_t z) + (1 - mask) * x``.

    Args:
      solver: the inner solver. Everything but ``init``/``step`` and the noise and cost per attempt
        is the inner solver's (:class:`~jaxsde.solvers.base.WrappedSolver`): its final denoising
        step (e.g. ``LMS(last_step="lms")``'s), the score its state holds at the end (so
        ``ProbabilityFlow`` spends no evaluation on the final step), its grid and attempt count.
      x_known: one sample (data space) whose pixels where ``mask == 1`` are kept.
      mask: 1 = known, 0 = to generate; broadcast to ``x_known``'s shape.
      noise: ``"fresh"`` (one extra standard normal per attempt from the driver; the default
        for stochastic solvers) or ``"fixed"`` (deterministic variant, one ``eps0`` for the
        solve, computed at ``init``; default for solvers that consume no noise).

    A pytree (``x_known``, ``mask`` and the inner solver's traced settings are leaves), so it can
    be built inside ``jit``. State: ``(inner solver's state, eps0)``.
    """

    solver: Solver
    x_known: Any
    mask: Any
    noise: str | None = None

    traced_settings = {"solver": None, "x_known": None, "mask": None}

    def __post_init__(self):
        solver = self.solver
        if not isinstance(solver, Solver):
            raise TypeError(f"solver must be a jaxsde solver object, got {type(solver).__name__}")
        if isinstance(solver, Inpainting):
            raise TypeError("Inpainting cannot wrap another Inpainting")
        noise = self.noise
        if noise is None:
            noise = "fresh" if solver.noise_per_attempt else "fixed"
        if noise not in ("fresh", "fixed"):
            raise ValueError(f"noise must be 'fresh' or 'fixed', got {noise!r}")
        object.__setattr__(self, "noise", noise)

    # arrays as fields: compared and hashed by identity, like any pytree holding arrays
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def inner_state(self, state):
        return state[0]

    def with_inner_state(self, state, inner):
        return (inner, state[1])

    @property
    def noise_per_attempt(self) -> int:  # type: ignore[override]
        return self.solver.noise_per_attempt + (1 if self.noise == "fresh" else 0)

    @property
    def nfe_per_attempt(self) -> int:
        return self.solver.nfe_per_attempt + self.solver.reimpose_nfe

    def init(self, sde, score, x, t_start, t_end) -> SolverInit:
        first = self.solver.init(sde, score, x, t_start, t_end)
        known = jnp.asarray(self.x_known, x.dtype)
        if self.noise == "fixed":
            alpha, sigma = sde.marginal(t_start)
            eps0 = (x - alpha * known) / sigma
        else:
            eps0 = jnp.zeros((), x.dtype)
        return first._replace(state=(first.state, eps0))

    def step(self, sde, score, t0, t1, x, state, z) -> StepResult:
        inner_state, eps0 = state
        k = self.solver.noise_per_attempt
        out = self.solver.step(sde, score, t0, t1, x, inner_state, None if k == 0 else z[:k])
        known = jnp.asarray(self.x_known, x.dtype)
        mask = jnp.asarray(self.mask, x.dtype)
        eps = z[k] if self.noise == "fresh" else eps0
        alpha, sigma = sde.marginal(t1)
        x_new = mask * (alpha * known + sigma * eps) + (1 - mask) * out.x
        # the inner solver refreshes what its state holds at the current x (ProbabilityFlow's k1);
        # a step the controller rejects is discarded whole by the driver
        restated = self.solver.reimpose(sde, score, x_new, t1, out.state)
        return out._replace(x=x_new, state=(restated, eps0), nfe=out.nfe + self.solver.reimpose_nfe)

    def __repr__(self):
        return f"Inpainting({self.solver!r}, noise={self.noise!r})"




def inpaint(
    key: Array,
    sde: SDE,
    score: ScoreFn,
    solver: Solver,
    x_known: Array,
    mask: Array,
    *,
    n: int | None = None,
    projection_noise: str | None = None,
    noise: Any = None,
    **solve_kwargs: Any,
) -> Solution:
    """Inpaint the pixels where ``mask == 0``; the pixels where ``mask == 1`` are ``x_known``.

    Args:
      key: PRNG key: ``prior_key, solve_key = split(key)`` (``sample``'s per-sample use).
      x_known: one sample in the model's data space (its values under ``mask == 0`` are unused).
      mask: 1 = known, 0 = generate; shaped like ``x_known``, or ``x_known.shape[:-1]``.
      n: ``None`` for one sample, else ``n`` samples (sample ``i`` with ``fold_in(key, i)``).
      projection_noise: :class:`Inpainting`'s ``noise`` (``"fresh"``/``"fixed"``).
      noise: as for :func:`jaxsde.solve`; a ``GivenNoise`` must supply
        ``Inpainting(...).noise_per_attempt`` normals per attempt.
      **solve_kwargs: as for :func:`jaxsde.solve`; ``cond=`` as for :func:`sdedit`.

    ``sol.x[mask == 1] == x_known[mask == 1]`` exactly (re-imposed after the final denoising step).
    """
    x_known = jnp.asarray(x_known)
    if not jnp.issubdtype(x_known.dtype, jnp.floating):
        raise TypeError(f"x_known must be a floating-point array, got dtype {x_known.dtype}")
    m = check_mask(mask, x_known.shape).astype(x_known.dtype)
    wrapped = Inpainting(solver, x_known, m, noise=projection_noise)

    def start(k):
        prior_key, solve_key = jax.random.split(k)
        return solve_key, sde.prior_sample(prior_key, x_known.shape, x_known.dtype)

    if n is None:
        solve_key, x_T = start(key)
        sol = solve(solve_key, sde, score, wrapped, x_T, noise=noise, **solve_kwargs)
    else:
        _check_n(n)
        solve_keys, x_T = jax.vmap(start)(jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n)))
        sol = solve_batch(solve_keys, sde, score, wrapped, x_T, noise=noise, **solve_kwargs)
    return sol._replace(x=jnp.where(m == 1, x_known, sol.x))
