"""Time grids of flow-matching models: the SD3/Flux time shift as a warp of the time grid.

On :class:`~jaxsde.sde.FlowSDE` (``x_t = (1 - t) x_0 + t noise``) the SD3/Flux "shift" moves
the solver's time points towards the noise end,

    t' = shift(t) = s t / (1 + (s - 1) t),        s > 0  (s = 1: no shift),

and leaves the SDE and the model alone: the network is always called at the actual time ``t'``
of the state (diffusers' ``sigma``). :func:`time_shift` is the map; :func:`flow_grid` builds the
whole grid the way diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps`` does (static
``shift``, resolution-dependent ``mu`` with ``s = e^mu``, ``shift_terminal``), as a tuple of
decreasing times that any fixed-step jaxsde solver takes as ``grid=``; :func:`dynamic_shift_mu`
is the diffusers pipelines' ``mu`` of an image sequence length; :func:`diffusers_flow_grid` gives
the grid of each of diffusers' flow schedulers (FlowMatch Euler / Heun, DPM-Solver++ and UniPC with
``use_flow_sigmas=True``), quirks included.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["DIFFUSERS_FLOW_SCHEDULERS", "TIME_SHIFT_TYPES", "diffusers_flow_grid", "dynamic_shift_mu", "flow_grid",
           "time_shift"]

TIME_SHIFT_TYPES = ("exponential", "linear")


def _check_shift(shift: float) -> float:
    if isinstance(shift, bool) or not isinstance(shift, int | float | np.floating) or not (
            math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0 (1 means no shift), got {shift!r}")
    return float(shift)


def time_shift(t: ArrayLike, shift: float) -> np.ndarray:
    """The SD3/Flux shift ``s t / (1 + (s - 1) t)`` of times ``t`` in ``[0, 1]`` (numpy, float64).

    Monotone, fixes 0 and 1 exactly (computed as ``s t / (s t + 1 - t)``); ``s > 1`` spends more
    of a grid near the noise (``t = 1``). Its inverse is ``time_shift(t, 1 / s)``. Raises
    ``ValueError`` for ``shift <= 0`` or non-finite.

    Args:
        t: times in ``[0, 1]``.
        shift: ``s > 0``.

    Returns:
        The shifted times (float64), shaped like ``t``.
    """
    s = _check_shift(shift)
    t = np.asarray(t, np.float64)
    return s * t / (s * t + (1.0 - t))


def dynamic_shift_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                     base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Resolution-dependent ``mu`` (shift ``e^mu``) as diffusers' Flux/SD3 pipelines compute it
    (``calculate_shift``): linear in the number of latent tokens, ``base_shift`` at
    ``base_seq_len`` and ``max_shift`` at ``max_seq_len`` (the defaults of Flux's scheduler
    config), extrapolated outside. Pass it to :func:`flow_grid` with
    ``use_dynamic_shifting=True``.

    Args:
        image_seq_len: the number of latent tokens of the image.
        base_seq_len: the token count at which ``mu = base_shift``.
        max_seq_len: the token count at which ``mu = max_shift``.
        base_shift: ``mu`` at ``base_seq_len``.
        max_shift: ``mu`` at ``max_seq_len``.

    Returns:
        ``mu``.
    """
    if not max_seq_len > base_seq_len:
        raise ValueError(f"max_seq_len ({max_seq_len}) must exceed base_seq_len ({base_seq_len})")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return float(image_seq_len * slope + base_shift - slope * base_seq_len)


def flow_grid(num_inference_steps: int, *, shift: float = 1.0, use_dynamic_shifting: bool = False,
              mu: float | None = None, time_shift_type: str = "exponential", shift_terminal: float | None = None,
              num_train_timesteps: int = 1000) -> tuple[float, ...]:
    """diffusers' ``FlowMatchEulerDiscreteScheduler(...).set_timesteps(num_inference_steps, mu=mu)``
    grid as jaxsde times: its ``sigmas`` without the final 0, a tuple of ``num_inference_steps``
    strictly decreasing floats from ``1.0`` (``FlowSDE.T``).

    Use it as a fixed-step solver's ``grid=`` on :class:`~jaxsde.sde.FlowSDE` (time = sigma):
    ``num_inference_steps - 1`` solver steps, then the final denoising step
    ``x0 = x - t v`` at the last time, which is diffusers' last Euler step to sigma = 0; so
    ``num_inference_steps`` network evaluations for a one-evaluation-per-step solver, as
    diffusers. The construction, step by step as diffusers (in float64 here; diffusers rounds
    the result to float32, a ~6e-8 relative difference):

    1. the training table ``sigma_n = n / N`` (``N = num_train_timesteps``, in float32), shifted
       by ``shift`` unless ``use_dynamic_shifting``; its smallest entry is ``sigma_min``;
    2. ``linspace(1, sigma_min, num_inference_steps)``;
    3. shifted: by ``time_shift(., shift)``, or under ``use_dynamic_shifting`` by
       ``e^mu / (e^mu + 1/t - 1)`` (``time_shift_type="exponential"``, i.e. shift ``e^mu``) or
       ``mu / (mu + 1/t - 1)`` (``"linear"``, shift ``mu``);
    4. with ``shift_terminal``: stretched, ``1 - (1 - t) (1 - shift_terminal) / (1 - t_last)``,
       so the last time equals ``shift_terminal``.

    Quirk of the peer, reproduced: with a static shift ``sigma_min`` is shifted twice (in the
    table and again in step 3), so the last time is ``shift(shift(1/N))``, e.g. 0.0089286 for
    ``shift=3`` (not 0.002994); with dynamic shifting the table is unshifted and the last time is
    ``shift(1/N)`` with ``s = e^mu``.

    Raises ``ValueError``: ``num_inference_steps < 2`` (a jaxsde grid needs two times), ``shift``
    <= 0 or non-finite, ``mu`` without ``use_dynamic_shifting=True`` (or the reverse), a
    ``shift`` other than 1 together with dynamic shifting (diffusers ignores it; here it is an
    error), an unknown ``time_shift_type``, ``shift_terminal`` outside ``(0, 1)``.

    Args:
        num_inference_steps: the grid's number of times (>= 2).
        shift: the static time shift (1: none).
        use_dynamic_shifting: shift by ``mu`` instead (Flux's resolution-dependent shift).
        mu: the dynamic shift's parameter (see :func:`dynamic_shift_mu`).
        time_shift_type: ``"exponential"`` or ``"linear"``.
        shift_terminal: the last time, if stretched to it.
        num_train_timesteps: the training table's length ``N``.

    Returns:
        The times, ``num_inference_steps`` decreasing floats from 1.0.
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int | np.integer) \
            or num_inference_steps < 2:
        raise ValueError(f"num_inference_steps must be an integer >= 2 (a grid needs two times), "
                         f"got {num_inference_steps!r}")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int | np.integer) \
            or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
    s = _check_shift(shift)
    if time_shift_type not in TIME_SHIFT_TYPES:
        raise ValueError(f"unknown time_shift_type {time_shift_type!r}; choose one of {TIME_SHIFT_TYPES}")
    if use_dynamic_shifting:
        if mu is None:
            raise ValueError("use_dynamic_shifting=True needs mu (e.g. jaxsde.flow.dynamic_shift_mu(image_seq_len))")
        if s != 1.0:
            raise ValueError(f"shift={shift} is ignored under dynamic shifting (the shift is e^mu): "
                             "pass either shift= or use_dynamic_shifting=True with mu=")
        mu = float(mu)
        dynamic_shift = math.exp(mu) if time_shift_type == "exponential" else mu
        if not (math.isfinite(dynamic_shift) and dynamic_shift > 0):
            raise ValueError(f"mu={mu} gives the shift {dynamic_shift} ({time_shift_type}); it must be finite and > 0")
    else:
        if mu is not None:
            raise ValueError(f"mu={mu} is only used by the dynamic-shift schedule: pass use_dynamic_shifting=True "
                             "(or a static shift= instead of mu)")
        if time_shift_type != "exponential":
            raise ValueError("time_shift_type applies to dynamic shifting only: pass use_dynamic_shifting=True and mu=")
    if shift_terminal is not None and not (isinstance(shift_terminal, int | float | np.floating)
                                           and 0.0 < shift_terminal < 1.0):
        raise ValueError(f"shift_terminal must lie in (0, 1), got {shift_terminal!r}")

    n_train = int(num_train_timesteps)
    with np.errstate(all="ignore"):  # extreme shifts overflow: caught by the check below
        # 1. the training table's smallest sigma (float32, as diffusers)
        sigma_min = np.float32(1.0) / np.float32(n_train)
        if not use_dynamic_shifting:
            sigma_min = np.float32(s) * sigma_min / (np.float32(1.0) + np.float32(s - 1.0) * sigma_min)
        # 2. inference times, 3. the shift
        t = np.linspace(float(n_train), float(sigma_min) * n_train, int(num_inference_steps)) / n_train
        t = time_shift(t, dynamic_shift if use_dynamic_shifting else s)
        # 4. the stretch to shift_terminal
        if shift_terminal is not None:
            t = 1.0 - (1.0 - t) * (1.0 - float(shift_terminal)) / (1.0 - t[-1])
    t[0] = 1.0
    if not (np.all(np.isfinite(t)) and np.all(np.diff(t) < 0) and t[-1] > 0):
        raise ValueError(f"these settings give no strictly decreasing grid inside (0, 1]: {t}")
    return tuple(float(v) for v in t)


DIFFUSERS_FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
                             "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")


def diffusers_flow_grid(scheduler: str, num_inference_steps: int, *, shift: float = 1.0, mu: float | None = None,
                        shift_terminal: float | None = None, num_train_timesteps: int = 1000) -> tuple[float, ...]:
    """The times diffusers' flow scheduler ``scheduler`` steps on after
    ``set_timesteps(num_inference_steps, mu=mu)``: its ``sigmas`` without the final 0, rounded to
    float32 as diffusers stores them (so ``alpha = 1 - t`` is the same number on both sides), as a
    tuple of ``num_inference_steps`` decreasing floats. Use it as a fixed-step solver's ``grid=`` on
    :class:`~jaxsde.sde.FlowSDE` with ``num_steps = num_inference_steps - 1`` and the final
    denoising step (``denoise=True``; the multistep solvers with ``denoise_is_last_step=True``):
    diffusers' last step, to ``sigma = 0``, returns ``x - sigma v``, which is that final step. The
    solve starts at the grid's first time (the solver's span), which is not 1 for the two
    multistep schedulers.

    ``scheduler`` (one of :data:`DIFFUSERS_FLOW_SCHEDULERS`) and its quirks, reproduced:

    * ``"FlowMatchEulerDiscreteScheduler"`` (``shift=``, or ``mu=`` for ``use_dynamic_shifting=True``
      with ``time_shift_type="exponential"``, ``shift_terminal=``): :func:`flow_grid`, rounded; with
      a static shift the smallest training sigma is shifted twice.
    * ``"FlowMatchHeunDiscreteScheduler"`` (``shift=`` only): the same times as FlowMatchEuler's
      static grid (the same double shift); it visits each interior time twice (Heun's two stages).
    * ``"DPMSolverMultistepScheduler"`` (``use_flow_sigmas=True``; ``flow_shift=shift``, or
      ``mu=``, which sets ``flow_shift = e^mu``; no ``shift_terminal``): ``shift((1 - 1/N)(1 -
      i/K))``, ``i = 0 .. K - 1``. It never starts at 1: its first time is ``shift(1 - 1/N)``
      (0.999 for ``shift = 1``), and its last is ``shift((1 - 1/N) / K)`` (0.0999 for ``K = 10``):
      the final step denoises from there. Its integer ``timesteps`` are ``int64(1000 t)``, truncated
      (749.25 -> 749); they only label the network call, the update uses ``sigmas``.
    * ``"UniPCMultistepScheduler"`` (``use_flow_sigmas=True``; ``flow_shift=shift``, or ``mu=`` with
      ``use_dynamic_shifting=True``, ``shift_terminal=``): ``shift(1 - i (1 - 1/N) / K)``, ``i = 0 ..
      K - 1``, stretched to ``shift_terminal`` if given, then a first time of 1 moved to ``1 - 1e-6``
      (diffusers' guard against ``log(alpha) = -inf``; 0.99999899 in float32).

    Only ``final_sigmas_type="zero"`` (the multistep schedulers' default) is a jaxsde grid;
    ``"sigma_min"`` is not reproduced (DPM-Solver's final sigma is then the VP table's 0.0100013,
    UniPC repeats its last sigma: a zero-length step).

    Raises ``ValueError``: an unknown ``scheduler``; a setting that scheduler does not take
    (``mu`` or ``shift_terminal`` for Heun, ``shift_terminal`` for DPM-Solver); ``mu`` with a
    ``shift`` other than 1; the errors of :func:`flow_grid`.

    Args:
        scheduler: the diffusers class name.
        num_inference_steps: diffusers' ``num_inference_steps`` (>= 2): the grid's number of times.
        shift: the static shift (``shift`` / ``flow_shift``; 1: none).
        mu: the dynamic shift ``e^mu`` (diffusers' ``set_timesteps(..., mu=mu)``).
        shift_terminal: the last time, if stretched to it (FlowMatchEuler, UniPC).
        num_train_timesteps: diffusers' ``num_train_timesteps`` ``N``.

    Returns:
        The times, ``num_inference_steps`` decreasing floats (float32 values).
    """
    if scheduler not in DIFFUSERS_FLOW_SCHEDULERS:
        raise ValueError(f"unknown diffusers flow scheduler {scheduler!r}; choose one of {DIFFUSERS_FLOW_SCHEDULERS}")
    name = scheduler.removesuffix("Scheduler")
    if scheduler == "FlowMatchHeunDiscreteScheduler" and (mu is not None or shift_terminal is not None):
        raise ValueError(f"{scheduler} takes a static shift only (no mu, no shift_terminal)")
    if scheduler == "DPMSolverMultistepScheduler" and shift_terminal is not None:
        raise ValueError(f"{scheduler} has no shift_terminal")
    dynamic = mu is not None
    if scheduler in DIFFUSERS_FLOW_SCHEDULERS[:2]:
        t = np.asarray(flow_grid(num_inference_steps, shift=shift, use_dynamic_shifting=dynamic, mu=mu,
                                 shift_terminal=shift_terminal, num_train_timesteps=num_train_timesteps))
    else:
        flow_grid(num_inference_steps, shift=shift, num_train_timesteps=num_train_timesteps)  # validates
        if dynamic:
            if _check_shift(shift) != 1.0:
                raise ValueError(f"{name}: shift={shift} is replaced by e^mu under mu=: pass one of them")
            s = math.exp(float(mu))
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"mu={mu} gives the shift {s}; it must be finite and > 0")
        else:
            s = _check_shift(shift)
        if shift_terminal is not None and not (isinstance(shift_terminal, int | float | np.floating)
                                               and 0.0 < shift_terminal < 1.0):
            raise ValueError(f"shift_terminal must lie in (0, 1), got {shift_terminal!r}")
        k, n = int(num_inference_steps), int(num_train_timesteps)
        if scheduler == "DPMSolverMultistepScheduler":
            u = 1.0 - np.linspace(1.0, 1.0 / n, k + 1)
            t = np.flip(s * u / (1.0 + (s - 1.0) * u))[:-1].copy()
        else:
            u = np.linspace(1.0, 1.0 / n, k + 1)[:-1]
            t = s / (s + (1.0 / u - 1.0)) if dynamic else s * u / (1.0 + (s - 1.0) * u)
            if shift_terminal is not None:
                t = 1.0 - (1.0 - t) / ((1.0 - t[-1]) / (1.0 - float(shift_terminal)))
            if abs(t[0] - 1.0) < 1e-6:
                t[0] -= 1e-6
    t = np.asarray(t, np.float32).astype(np.float64)
    if not (np.all(np.isfinite(t)) and np.all(np.diff(t) < 0) and t[-1] > 0 and t[0] <= 1.0):
        raise ValueError(f"{name}: these settings give no strictly decreasing grid inside (0, 1]: {t}")
    return tuple(float(v) for v in t)
