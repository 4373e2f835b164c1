"""Trajectories: SDEdit of an edited image reusing the original's per-step, per-call network
cache, on a fixed-grid solve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..models.ddpm_unet import UNet2D
from ..models.score import input_scale, output_to_score
from ..models.unet import DigitsUNet
from .net import SparseUNet
from .plan import TilePlan


def cache_bytes(cache) -> int:
    """Bytes held by one step's cache (layer outputs and statistics)."""
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(cache)))


def run_fixed_grid(key, sde, solver, x_start, t_start: float, t_end: float, score_call, xs=None):
    """Run a fixed-grid solver like :func:`jaxsde.solve` (fresh noise from ``key``, final
    Tweedie step), as a ``lax.scan`` whose step ``k`` sees ``xs[k]``.

    ``score_call(xs_k, j, x, t) -> (score, aux)`` is called for the ``j``-th score evaluation
    of step ``k`` (``xs_k = None`` when ``xs`` is None); the ``aux`` of every call is returned,
    stacked over steps: ``(x_final, auxs, aux_final)`` with ``auxs`` a tuple over ``j`` and
    ``aux_final`` the final denoising call's (with ``xs_final``, the last element of ``xs``'s
    tuple ``(per_step, final)``). Noise: step ``k`` draws ``normal(fold_in(key, k))``, as
    the driver's default ``FreshNoise``, so the result equals ``solve``'s.
    """
    from ..solvers.base import FixedGridSolver

    if not isinstance(solver, FixedGridSolver):
        raise TypeError(f"sparse editing needs a fixed-grid solver (DDIM, EulerMaruyama, ...), got "
                        f"{type(solver).__name__}: the per-step cache is indexed by grid step")
    dtype = x_start.dtype

    def no_score(x, t):
        raise TypeError("the solver's init evaluated the score; not supported by run_fixed_grid")

    first = solver.init(sde, no_score, x_start, jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype))
    t_end_arr = jnp.asarray(t_end, dtype)
    npa = solver.noise_per_attempt
    per_step, final = (None, None) if xs is None else xs

    def body(carry, xs_k):
        x, t, h, state, k = carry
        auxs = []

        def score(x_, t_):
            s, aux = score_call(xs_k, len(auxs), x_, t_)
            auxs.append(aux)
            return s

        z = jax.random.normal(jax.random.fold_in(key, k), (npa, *x.shape), dtype) if npa else None
        out = solver.step(sde, score, x, t, h, state, z, t_end_arr)
        return (out.x, out.t, out.h, out.state, k + 1), tuple(auxs)

    init = (x_start, jnp.asarray(t_start, dtype), jnp.asarray(first.h, dtype), first.state, jnp.zeros((), jnp.int32))
    (x, t, _, _, _), auxs = lax.scan(body, init, per_step, length=solver.num_steps)
    s, aux_final = score_call(final, 0, x, t)
    return sde.tweedie(x, t, s), auxs, aux_final


def sparse_sdedit(key, sde, solver, net: SparseUNet, params, x_orig, x_edit, t0: float, plan: TilePlan | None,
                  *, mode: str = "sparse", stats: str = "reuse", parameterization: str = "eps",
                  sigma_data: float = 0.5, timestep=None, cache=None):
    """SDEdit of ``x_edit`` reusing the original image's trajectory (one sample each).

    Runs the original SDEdit of ``x_orig`` (dense, recording every layer at every score call;
    skipped when ``cache`` from an earlier call is given), then the SDEdit of ``x_edit`` with
    the same key (same noise at ``t0``, same noise per step, same grid) with the network in
    ``mode``: ``"sparse"`` (the plan's tiles only), ``"masked"`` (the dense reference with the
    same semantics) or ``"dense"`` (the true network; equals :func:`jaxsde.editing.sdedit`
    with the score function below).

    The score function, by network:

    * :class:`~jaxsde.models.unet.DigitsUNet` (the embedded checkpoints' convention): the
      network gets ``c_in(t) x`` (:func:`~jaxsde.models.score.input_scale`, ``sigma_data``) and
      ``t``; its output is read per ``parameterization``.
    * :class:`~jaxsde.models.ddpm_unet.UNet2D` (diffusers' DDPM U-Net, the convention of
      :func:`jaxsde.checkpoints.diffusers.load`): the network gets ``x`` unscaled and the
      timestep label ``timestep(t)`` (default ``sde.timestep``, i.e. ``N t - 1`` for a
      :class:`~jaxsde.DiscreteVPSDE`; pass ``timestep`` for an SDE without one); its output is
      read per ``parameterization`` (the checkpoint's ``config["parameterization"]``; ``"eps"``
      for ddpm-cifar10); ``sigma_data`` is unused.

    Returns ``(x_edited, x_original, cache)``; ``cache`` is ``(per_step, final)`` as
    :func:`run_fixed_grid` takes it (memory: :func:`cache_bytes` x score calls).
    The keys follow :func:`jaxsde.editing.sdedit`: ``noise_key, solve_key = split(key)``.
    """
    from ..editing import _check_t0, sdedit_start

    if mode not in ("sparse", "masked", "dense"):
        raise ValueError(f"mode must be 'sparse', 'masked' or 'dense', got {mode!r}")
    if isinstance(net.model, UNet2D):
        if timestep is None:
            timestep = getattr(sde, "timestep", None)
        if not callable(timestep):
            raise TypeError(f"a UNet2D takes the network's timestep label, not t: use an SDE with a timestep(t) map "
                            f"(DiscreteVPSDE) or pass timestep=; {type(sde).__name__} has none (a DigitsUNet takes t)")

        def net_input(x, t):
            return x, timestep(t)
    elif isinstance(net.model, DigitsUNet):
        if timestep is not None:
            raise ValueError("timestep= is for a UNet2D; a DigitsUNet takes t itself")

        def net_input(x, t):
            return input_scale(sde, t, sigma_data) * x, t
    else:
        raise TypeError(f"sparse_sdedit drives a DigitsUNet or a UNet2D, got {type(net.model).__name__}")
    if mode != "dense" and plan is None:
        raise ValueError(f"mode {mode!r} needs a TilePlan")
    t0 = _check_t0(sde, t0, None)
    x_orig, x_edit = jnp.asarray(x_orig), jnp.asarray(x_edit)
    if x_orig.shape != x_edit.shape:
        raise ValueError(f"x_orig {x_orig.shape} and x_edit {x_edit.shape} must have the same shape")
    noise_key, solve_key = jax.random.split(key)
    t_end = sde.eps

    def to_score(out, x, t):
        return output_to_score(sde, out, x, t, parameterization)

    x_orig_out = None
    if cache is None:
        def rec_call(_, j, x, t):
            out, c = net.record(params, *net_input(x, t))
            return to_score(out, x, t), c

        x_orig_out, auxs, aux_final = run_fixed_grid(solve_key, sde, solver, sdedit_start(noise_key, sde, x_orig, t0),
                                                     t0, t_end, rec_call)
        cache = (auxs, (aux_final,))

    def edit_call(xs_k, j, x, t):
        c = xs_k[j]
        xin, tin = net_input(x, t)
        if mode == "sparse":
            out = net.apply_sparse(params, xin, tin, c, plan, stats)
        elif mode == "masked":
            out = net.apply_masked(params, xin, tin, c, plan, stats)
        else:
            out = net.apply(params, xin, tin)
        return to_score(out, x, t), None

    x_edit_out, _, _ = run_fixed_grid(solve_key, sde, solver, sdedit_start(noise_key, sde, x_edit, t0), t0, t_end,
                                      edit_call, cache)
    return x_edit_out, x_orig_out, cache
