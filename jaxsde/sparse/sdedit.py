"""Trajectories: SDEdit of an edited image reusing the original's per-step, per-call network
cache, on a fixed-grid solve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..models.ddpm_unet import UNet2D
from ..models.ncsnpp import NCSNpp
from ..models.score import input_scale, output_to_score
from ..models.unet import DigitsUNet
from .net import SparseUNet
from .plan import TilePlan


def cache_bytes(cache) -> int:
    """Bytes held by one step's cache (layer outputs and statistics)."""
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(cache)))


def _setup(solver, sde, x_start, t_start, t_end):
    from ..solvers.base import FixedGridSolver

    if not isinstance(solver, FixedGridSolver):
        raise TypeError(f"sparse editing needs a fixed-grid solver (DDIM, EulerMaruyama, ...), got "
                        f"{type(solver).__name__}: the per-step cache is indexed by grid step")
    dtype = x_start.dtype

    def no_score(x, t):
        raise TypeError("the solver's init evaluated the score; not supported by run_fixed_grid")

    first = solver.init(sde, no_score, x_start, jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype))
    return (x_start, jnp.asarray(t_start, dtype), jnp.asarray(first.h, dtype), first.state, jnp.zeros((), jnp.int32))


def _step_fn(sde, solver, t_end, score_call):
    """One grid step ``(carry, xs_k, key, args) -> (carry, auxs)``; ``score_call(args, xs_k, j, x, t)``;
    ``auxs``: the score calls' aux, a tuple."""
    npa = solver.noise_per_attempt

    def body(carry, xs_k, key, args):
        x, t, h, state, k = carry
        auxs = []

        def score(x_, t_):
            s, aux = score_call(args, xs_k, len(auxs), x_, t_)
            auxs.append(aux)
            return s

        z = jax.random.normal(jax.random.fold_in(key, k), (npa, *x.shape), x.dtype) if npa else None
        out = solver.step(sde, score, x, t, h, state, z, jnp.asarray(t_end, x.dtype))
        return (out.x, out.t, out.h, out.state, k + 1), tuple(auxs)

    return body


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
    init = _setup(solver, sde, x_start, t_start, t_end)
    per_step, final = (None, None) if xs is None else xs
    body = _step_fn(sde, solver, t_end, lambda _, *a: score_call(*a))
    (x, t, _, _, _), auxs = lax.scan(lambda c, xs_k: body(c, xs_k, key, None), init, per_step,
                                     length=solver.num_steps)
    s, aux_final = score_call(final, 0, x, t)
    return sde.tweedie(x, t, s), auxs, aux_final


_PROGRAMS: dict = {}  # run_fixed_grid_loop's jitted programs by ``programs`` key (with the objects it names)


def run_fixed_grid_loop(key, sde, solver, x_start, t_start: float, t_end: float, score_call, xs=None, *,
                        args=None, before=None, after=None, programs=None):
    """:func:`run_fixed_grid` as a Python loop over the grid: one jitted program per step, whose
    per-step input ``xs[0][k]`` (``xs = (per_step, final)``, ``per_step`` a list over steps of
    tuples over score calls) is *donated*; returns ``(x_final, auxs, aux_final)`` with ``auxs`` a
    list over steps of tuples over calls. ``score_call(args, xs_k, j, x, t) -> (score, aux)``
    (``args``: a pytree of arrays, the same for every step: parameters, plan). ``before(args, xs_k)
    -> saved`` (jitted, not donating) runs before each step and ``after(args, auxs_k, saved) ->
    auxs_k`` (jitted, ``auxs_k`` donated) after it. ``programs``: a hashable key under which the
    jitted programs are kept for the next call (it must determine ``sde``, ``solver``, ``t_end``,
    ``score_call``, ``before`` and ``after``; the key's objects are kept alive with them). Eager
    only (``x_start`` concrete); the same values as :func:`run_fixed_grid` up to XLA's fusion
    choices (float rounding)."""
    carry = _setup(solver, sde, x_start, t_start, t_end)
    per_step, final = (None, None) if xs is None else xs
    fns = _PROGRAMS.get(programs) if programs is not None else None
    if fns is None:
        def last(final, x, t, args):
            s, aux = score_call(args, final, 0, x, t)
            return sde.tweedie(x, t, s), (aux,)

        fns = (jax.jit(_step_fn(sde, solver, t_end, score_call), donate_argnums=1),
               jax.jit(last, donate_argnums=0),
               None if before is None else jax.jit(before),
               None if after is None else jax.jit(after, donate_argnums=1))
        if programs is not None:
            if len(_PROGRAMS) >= 16:
                _PROGRAMS.pop(next(iter(_PROGRAMS)))
            _PROGRAMS[programs] = fns
    step, last, before, after = fns
    auxs = []
    for k in range(solver.num_steps):
        xs_k = None if per_step is None else per_step[k]
        saved = None if before is None else before(args, xs_k)
        carry, aux = step(carry, xs_k, key, args)
        auxs.append(aux if after is None else after(args, aux, saved))
    x, t = carry[0], carry[1]
    saved = None if before is None else before(args, final)
    x, aux_final = last(final, x, t, args)
    return x, auxs, (aux_final if after is None else after(args, aux_final, saved))[0]


class _Key:
    """A hashable key naming objects by identity (keeping them alive), plus hashable values."""

    def __init__(self, objects, values):
        self.objects, self.values = tuple(objects), tuple(values)

    def __hash__(self):
        return hash((tuple(map(id, self.objects)), self.values))

    def __eq__(self, other):
        if not isinstance(other, _Key) or len(self.objects) != len(other.objects) or self.values != other.values:
            return False
        return all(a is b for a, b in zip(self.objects, other.objects, strict=True))


def _stack(per_step):
    """A list over steps of per-step caches -> the stacked ``lax.scan`` layout (unpadded)."""
    unpadded = [tuple(SparseUNet.unpad_cache(c) for c in step) for step in per_step]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *unpadded)


def _unstack(per_step, steps):
    """The stacked (unpadded) layout -> a list over steps of tuples over calls of padded caches."""
    pad = jax.jit(lambda c, k: tuple(SparseUNet.pad_cache(jax.tree_util.tree_map(lambda a: a[k], d)) for d in c))
    return [pad(per_step, jnp.int32(k)) for k in range(steps)]


LOOP_ABOVE_BYTES = 16 * 2**20  # sparse_sdedit's default: the Python loop from this per-step cache size up


def _map_bytes(net, shape) -> int:
    """Bytes of one step's cached layer maps (float32) for images of ``shape``."""
    graph = net.graph(shape[:2])
    return 4 * sum(int(np.prod(graph.shapes[L["out"]])) for L in graph.layers)


def _under_trace(*xs) -> bool:
    """Whether this runs under a trace (jit, vmap, grad: an argument is a tracer, or, omnistaging, a new array is)."""
    leaves = [*jax.tree_util.tree_leaves(xs), jnp.zeros(())]
    return any(isinstance(a, jax.core.Tracer) for a in leaves)


def sparse_sdedit(key, sde, solver, net: SparseUNet, params, x_orig, x_edit, t0: float, plan: TilePlan | None,
                  *, mode: str = "sparse", stats: str = "reuse", parameterization: str = "eps",
                  sigma_data: float = 0.5, timestep=None, cache=None, loop: str | None = None):
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
    * :class:`~jaxsde.models.ncsnpp.NCSNpp` (score_sde's NCSN++ / DDPM++, the convention of
      :func:`jaxsde.checkpoints.score_sde.make_score_fn`, by ``config.sde``): VE — the network
      gets ``x`` and ``sigma = std(t)`` (``sde.marginal``), its output is the score; VP / subVP —
      it gets ``x`` and ``999 t``, the score is ``-out / std(t)``. ``x`` is in the config's data
      range (``centered``). ``parameterization``, ``sigma_data`` and ``timestep`` are unused.

    ``loop``: ``"scan"`` runs each trajectory as one ``lax.scan`` over the grid (traceable: use it
    under ``jax.jit``; the per-step caches are stacked, and each step slices its cache out of the
    stack and pads it: two passes over that step's cache). ``"python"`` (eager only) runs a Python
    loop with one jitted program per grid step whose cache, stored pre-padded
    (:meth:`SparseUNet.pad_cache`), is donated: the sparse mode writes the active tiles in place
    (:meth:`SparseUNet.apply_sparse_inplace`), saving the overwritten tiles before the step and
    writing them back after it (:meth:`~SparseUNet.save_tiles` / :meth:`~SparseUNet.restore_tiles`),
    so it touches only the active tiles and the cache is the original's again afterwards; its jitted
    programs are kept for the next call with the same ``net``, ``sde``, ``solver`` and options.
    Default (None): ``"scan"`` under a trace; with a ``cache`` given, the loop whose layout it has;
    else ``"scan"`` when one step's cached maps are under
    ``LOOP_ABOVE_BYTES`` (16 MiB: below, the loop's three dispatches per step cost about what they
    save; DigitsUNet "large", DDIM(4), 1% edited, exact plan, vs the dense scan: 256x256 (186 MiB per
    step) 12.4x vs the scan's 6.6x, 128x128 5.3x vs 4.2x, 64x64 2.1x vs 2.2x), else ``"python"``.
    The two agree to float rounding (XLA fuses the two programs differently).

    Returns ``(x_edited, x_original, cache)``; ``cache`` is ``(per_step, final)``: with ``"scan"``,
    ``per_step`` a tuple over the score calls of a step of caches stacked over steps and ``final``
    a 1-tuple, as :func:`run_fixed_grid` takes it; with ``"python"``, ``per_step`` a list over
    steps of tuples over calls of *padded* caches and ``final`` a 1-list (memory: :func:`cache_bytes` x score calls).
    Either layout is accepted by either loop (converted: a pass over the whole cache). With
    ``"python"`` the arrays of a given cache are donated to the steps and replaced by the restored
    ones, in its ``per_step`` list and in the returned cache: keep using the cache object, not
    arrays taken out of it. ``x_original`` is None when ``cache`` was given.
    The keys follow :func:`jaxsde.editing.sdedit`: ``noise_key, solve_key = split(key)``.
    """
    from ..editing import _check_t0, sdedit_start

    if mode not in ("sparse", "masked", "dense"):
        raise ValueError(f"mode must be 'sparse', 'masked' or 'dense', got {mode!r}")
    if loop not in (None, "scan", "python"):
        raise ValueError(f"loop must be 'scan', 'python' or None, got {loop!r}")
    to_score = None
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
    elif isinstance(net.model, NCSNpp):
        if timestep is not None:
            raise ValueError("timestep= is for a UNet2D; an NCSNpp takes sigma(t) (VE) or 999 t (VP)")
        from ..checkpoints.score_sde import score_conventions

        label, out_to_score = score_conventions(net.model, sde)

        def net_input(x, t):
            return x, label(t)

        def to_score(out, x, t):
            return out_to_score(out, t)
    else:
        raise TypeError(f"sparse_sdedit drives a DigitsUNet, a UNet2D or an NCSNpp, got {type(net.model).__name__}")
    if mode != "dense" and plan is None:
        raise ValueError(f"mode {mode!r} needs a TilePlan")
    t0 = _check_t0(sde, t0, None)
    x_orig, x_edit = jnp.asarray(x_orig), jnp.asarray(x_edit)
    if x_orig.shape != x_edit.shape:
        raise ValueError(f"x_orig {x_orig.shape} and x_edit {x_edit.shape} must have the same shape")
    noise_key, solve_key = jax.random.split(key)
    t_end = sde.eps
    traced = _under_trace(key, params, x_orig, x_edit, plan, cache)
    if loop is None:
        if traced:
            loop = "scan"
        elif cache is not None:  # the loop whose layout it has
            loop = "python" if isinstance(cache[0], list) else "scan"
        else:
            loop = "scan" if _map_bytes(net, x_orig.shape) < LOOP_ABOVE_BYTES else "python"
    elif loop == "python" and traced:
        raise ValueError("loop='python' runs eagerly (a Python loop of jitted steps): under jit use loop='scan'")
    python = loop == "python"

    if to_score is None:
        def to_score(out, x, t):
            return output_to_score(sde, out, x, t, parameterization)

    # the programs are determined by these (the python loop keeps its jitted programs under them)
    spec = _Key((net, sde, solver, timestep), (mode, stats, parameterization, float(sigma_data))) if python else None

    x_orig_out = None
    if cache is None:
        def rec_call(args, _, j, x, t):
            out, c = net.record(args[0], *net_input(x, t), padded=python)
            return to_score(out, x, t), c

        start = sdedit_start(noise_key, sde, x_orig, t0)
        if python:
            x_orig_out, auxs, aux_final = run_fixed_grid_loop(solve_key, sde, solver, start, t0, t_end, rec_call,
                                                              args=(params, None), programs=("record", spec))
            cache = (auxs, [aux_final])
        else:
            x_orig_out, auxs, aux_final = run_fixed_grid(solve_key, sde, solver, start, t0, t_end,
                                                         lambda *a: rec_call((params, None), *a))
            cache = (auxs, (aux_final,))
    elif python and not isinstance(cache[0], list):  # the scan layout: unstack and pad
        cache = (_unstack(cache[0], solver.num_steps), [SparseUNet.pad_cache(c) for c in cache[1]])
    elif not python and isinstance(cache[0], list):  # the loop layout: unpad and stack
        cache = (_stack(cache[0]), tuple(SparseUNet.unpad_cache(c) for c in cache[1]))

    def edit_call(args, xs_k, j, x, t):
        params, plan = args
        c = xs_k[j]
        xin, tin = net_input(x, t)
        if mode == "dense":
            return to_score(net.apply(params, xin, tin), x, t), (c if python else None)
        if python and mode == "sparse":
            out, c = net.apply_sparse_inplace(params, xin, tin, c, plan, stats)
        elif mode == "sparse":
            out = net.apply_sparse(params, xin, tin, c, plan, stats)
        else:
            out = net.apply_masked(params, xin, tin, net.unpad_cache(c) if python else c, plan, stats)
        return to_score(out, x, t), (c if python else None)

    x_start = sdedit_start(noise_key, sde, x_edit, t0)
    if not python:
        x_edit_out, _, _ = run_fixed_grid(solve_key, sde, solver, x_start, t0, t_end,
                                          lambda *a: edit_call((params, plan), *a), cache)
        return x_edit_out, x_orig_out, cache
    before = after = None
    if mode == "sparse":
        def before(args, xs_k):
            return tuple(net.save_tiles(c, args[1]) for c in xs_k)

        def after(args, auxs_k, saved):
            return tuple(net.restore_tiles(c, args[1], s) for c, s in zip(auxs_k, saved, strict=True))

    x_edit_out, auxs, aux_final = run_fixed_grid_loop(solve_key, sde, solver, x_start, t0, t_end, edit_call, cache,
                                                      args=(params, plan), before=before, after=after,
                                                      programs=("edit", spec))
    cache[0][:] = auxs  # the donated arrays, replaced by the restored (or passed-through) ones
    cache[1][:] = [aux_final]
    return x_edit_out, x_orig_out, cache
