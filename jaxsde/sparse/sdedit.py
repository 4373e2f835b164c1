"""SDEdit of an edited image reusing the original's per-step, per-call network cache, on a
fixed-grid solve (the trajectory drivers are in :mod:`~jaxsde.sparse.trajectory`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..models.ddpm_unet import UNet2D
from ..models.ncsnpp import NCSNpp
from ..models.score import ScoreConvention, labelled_convention, preconditioned_convention
from ..models.unet import DigitsUNet
from .net import SparseUNet
from .plan import TilePlan
from .trajectory import StepPrograms, run_fixed_grid, run_fixed_grid_loop, stack_step_caches, unstack_step_caches


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


LOOP_ABOVE_BYTES = 16 * 2**20  # sparse_sdedit's default: the Python loop from this per-step cache size up


def _map_bytes(net, shape) -> int:
    """Bytes of one step's cached layer maps (float32) for images of ``shape``."""
    graph = net.graph(shape[:2])
    return 4 * sum(int(np.prod(graph.shapes[L["out"]])) for L in graph.layers)


def _under_trace(*xs) -> bool:
    """Whether this runs under a trace (jit, vmap, grad: an argument is a tracer, or, omnistaging, a new array is)."""
    leaves = [*jax.tree_util.tree_leaves(xs), jnp.zeros(())]
    return any(isinstance(a, jax.core.Tracer) for a in leaves)


def _convention_of(model, sde, parameterization: str, sigma_data: float, timestep) -> ScoreConvention:
    """The convention of a network built without a checkpoint, by its class (see :func:`sparse_sdedit`)."""
    if isinstance(model, UNet2D):
        if timestep is None:
            timestep = getattr(sde, "timestep", None)
        if not callable(timestep):
            raise TypeError(f"a UNet2D takes the network's timestep label, not t: use an SDE with a timestep(t) map "
                            f"(DiscreteVPSDE) or pass timestep=; {type(sde).__name__} has none (a DigitsUNet takes t)")
        return labelled_convention(sde, timestep, parameterization)
    if isinstance(model, DigitsUNet):
        if timestep is not None:
            raise ValueError("timestep= is for a UNet2D; a DigitsUNet takes t itself")
        return preconditioned_convention(sde, parameterization, sigma_data)
    if isinstance(model, NCSNpp):
        if timestep is not None:
            raise ValueError("timestep= is for a UNet2D; an NCSNpp takes sigma(t) (VE) or 999 t (VP)")
        from ..checkpoints.score_sde import score_convention

        return score_convention(model, sde)
    raise TypeError(f"sparse_sdedit drives a DigitsUNet, a UNet2D or an NCSNpp, got {type(model).__name__}")


def sparse_sdedit(key, sde, solver, net: SparseUNet, params, x_orig, x_edit, t0: float, plan: TilePlan | None,
                  *, mode: str = "sparse", stats: str = "reuse", convention: ScoreConvention | None = None,
                  parameterization: str | None = None, sigma_data: float | None = None, timestep=None, cache=None,
                  loop: str | None = None, programs: StepPrograms | None = None):
    """SDEdit of ``x_edit`` reusing the original image's trajectory (one sample each).

    Runs the original SDEdit of ``x_orig`` (dense, recording every layer at every score call;
    skipped when ``cache`` from an earlier call is given), then the SDEdit of ``x_edit`` with
    the same key (same noise at ``t0``, same noise per step, same grid) with the network in
    ``mode``: ``"sparse"`` (the plan's tiles only), ``"masked"`` (the dense reference with the
    same semantics) or ``"dense"`` (the true network; equals :func:`jaxsde.editing.sdedit`
    with the score function below).

    The score function: ``convention`` (a :class:`~jaxsde.models.score.ScoreConvention`, e.g. the
    loaded checkpoint's ``ckpt.convention``) says what the network receives and how its output
    reads as the score; ``parameterization``, ``sigma_data`` and ``timestep`` must then be left
    unset. Without one (a network built by hand), by network (``parameterization`` default
    ``"eps"``, ``sigma_data`` default 0.5):

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
    so it touches only the active tiles and the cache is the original's again afterwards. Its jitted
    programs are compiled per call unless ``programs`` (a :class:`StepPrograms`, created once and
    passed to every call of an editing session) keeps them for the next call with the same ``net``,
    ``sde``, ``solver`` and options.
    Default (None): ``"scan"`` under a trace; with a ``cache`` given, the loop whose layout it has;
    else ``"scan"`` when one step's cached maps are under
    ``LOOP_ABOVE_BYTES`` (16 MiB: below, the loop's three dispatches per step cost about what they
    save; loop vs scan at 256x256: ``benchmarks/results/editing_256_sdedit.md``), else ``"python"``.
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

    Args:
        key: the PRNG key (as :func:`jaxsde.editing.sdedit`'s).
        sde: the forward SDE.
        solver: a fixed-grid solver.
        net: the :class:`SparseUNet`.
        params: the network's parameters.
        x_orig: the original image, ONE sample.
        x_edit: the edited image, same shape.
        t0: the time SDEdit starts from.
        plan: the active tiles (:func:`plan_tiles` or :meth:`SparseUNet.plan`); None for ``"dense"``.
        mode: ``"sparse"``, ``"masked"`` or ``"dense"``.
        stats: the sparse pass's GroupNorm statistics: ``"reuse"`` (the original image's, from the
            cache) or ``"recompute"`` (those of the current mixed map).
        convention: how the network's input and output relate to the score (see above).
        parameterization: the network's output without a ``convention`` (see above).
        sigma_data: the input scaling's ``sigma_data`` without a ``convention``.
        timestep: UNet2D's timestep label function without a ``convention``.
        cache: the original trajectory's cache from an earlier call (skips its SDEdit).
        loop: ``"scan"``, ``"python"`` or None (see above).
        programs: a :class:`StepPrograms` keeping ``"python"``'s compiled steps between calls.

    Returns:
        ``(x_edited, x_original, cache)`` (see above).
    """
    from ..editing import check_t0, sdedit_start

    if mode not in ("sparse", "masked", "dense"):
        raise ValueError(f"mode must be 'sparse', 'masked' or 'dense', got {mode!r}")
    if loop not in (None, "scan", "python"):
        raise ValueError(f"loop must be 'scan', 'python' or None, got {loop!r}")
    if convention is not None:
        if not isinstance(convention, ScoreConvention):
            raise TypeError(f"convention must be a ScoreConvention (e.g. ckpt.convention), "
                            f"got {type(convention).__name__}")
        if parameterization is not None or sigma_data is not None or timestep is not None:
            raise ValueError("convention= fixes the network's input and output: leave parameterization=, "
                             "sigma_data= and timestep= unset")
        net_input, to_score = convention
    else:
        net_input, to_score = _convention_of(net.model, sde, "eps" if parameterization is None else parameterization,
                                             0.5 if sigma_data is None else float(sigma_data), timestep)
    if mode != "dense" and plan is None:
        raise ValueError(f"mode {mode!r} needs a TilePlan")
    t0 = check_t0(sde, t0, None)
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

    # what determines the python loop's programs (their key in ``programs``)
    spec = _Key((net, sde, solver, timestep, convention), (mode, stats, parameterization, sigma_data))

    x_orig_out = None
    if cache is None:
        def rec_call(args, _, j, x, t):
            out, c = net.record(args[0], *net_input(x, t), padded=python)
            return to_score(out, x, t), c

        start = sdedit_start(noise_key, sde, x_orig, t0)
        if python:
            x_orig_out, auxs, aux_final = run_fixed_grid_loop(solve_key, sde, solver, start, t0, t_end, rec_call,
                                                              args=(params, None), programs=programs,
                                                              programs_key=("record", spec))
            cache = (auxs, [aux_final])
        else:
            x_orig_out, auxs, aux_final = run_fixed_grid(solve_key, sde, solver, start, t0, t_end,
                                                         lambda *a: rec_call((params, None), *a))
            cache = (auxs, (aux_final,))
    elif python and not isinstance(cache[0], list):  # the scan layout: unstack and pad
        cache = (unstack_step_caches(cache[0], solver.num_steps), [SparseUNet.pad_cache(c) for c in cache[1]])
    elif not python and isinstance(cache[0], list):  # the loop layout: unpad and stack
        cache = (stack_step_caches(cache[0]), tuple(SparseUNet.unpad_cache(c) for c in cache[1]))

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
                                                      programs=programs, programs_key=("edit", spec))
    cache[0][:] = auxs  # the donated arrays, replaced by the restored (or passed-through) ones
    cache[1][:] = [aux_final]
    return x_edit_out, x_orig_out, cache
