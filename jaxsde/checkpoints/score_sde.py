"""Loaders for yang-song/score_sde (Flax msgpack) and score_sde_pytorch (``.pth``) checkpoints.

    ckpt = load_flax("exp/checkpoints/checkpoint_26")                   # config inferred
    ckpt = load_pytorch("checkpoint_8.pth", "ddpmpp_cifar10_vp", sde="subvpsde")
    sol = jaxsde.solve(key, ckpt.sde, ckpt.score, jaxsde.EulerMaruyama(1000), x_T)

Formats:

* score_sde saves a ``State`` with ``flax.training.checkpoints.save_checkpoint``: a msgpack state
  dict ``{'step', 'optimizer': {'target', 'state'}, 'lr', 'model_state', 'ema_rate', 'params_ema',
  'rng'}``. We read it with ``flax.serialization.msgpack_restore`` (no pickle, no
  ``flax.training``) and use ``params_ema`` (``use_ema=False``: ``optimizer.target``).
* score_sde_pytorch saves ``{'optimizer', 'model', 'ema', 'step'}`` with ``torch.save``; ``'model'``
  is the state dict of the ``DataParallel``-wrapped ``NCSNpp`` (keys ``module.all_modules.<i>...``
  and the buffer ``module.sigmas``), ``'ema'`` is ``{'decay', 'num_updates', 'shadow_params'}``
  with ``shadow_params`` a *list* in ``model.parameters()`` order restricted to trainable
  parameters (without ``sigmas`` and the fixed Fourier ``W``, which is taken from ``'model'``).
  Read with ``torch.load(weights_only=True)``: no pickled code runs. torch is optional.

PyTorch -> Flax (§2.3): ``all_modules.<i>`` is the i-th module with parameters in the network's
call order; convolution ``weight`` (O, I, kh, kw) -> ``kernel`` (kh, kw, I, O); Linear ``weight``
-> ``kernel`` transposed; GroupNorm ``weight`` -> ``scale``; NIN ``W``, ``b`` unchanged; the FIR
``Conv2d_0.weight`` keeps its name ``weight`` but becomes HWIO.

Model conventions (score_sde ``models/utils.py::get_score_fn``, continuous training): VE — network
label sigma(t), output already the score (``scale_by_sigma``), data in [0, 1], ``VESDE(0.01, 50)``;
VP/subVP — label ``999 t``, ``score = -out / std(t)``, data in [-1, 1], ``VPSDE(0.1, 20)`` or
``SubVPSDE``. Only continuous-time checkpoints (the ``*_continuous`` configs) are supported.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from ..models import ncsnpp
from ..models.ncsnpp import NCSNpp, NCSNppConfig
from ..models.score import ScoreConvention
from ..sde import SDE, VESDE, VPSDE, SubVPSDE
from .checkpoint import Checkpoint
from .errors import CheckpointError, check_tree, flatten_tree, unflatten

ConfigLike = str | NCSNppConfig | Mapping[str, Any] | None

# --------------------------------------------------------------------------------------------- config


def resolve_config(config: ConfigLike, **overrides) -> NCSNppConfig:
    """An :class:`NCSNppConfig` from a registered name, a config, a dict of its fields, with overrides."""
    if isinstance(config, str):
        return ncsnpp.get_config(config, **overrides)
    if isinstance(config, NCSNppConfig):
        return config.replace(**overrides)
    if isinstance(config, Mapping):
        return NCSNppConfig(**{**dict(config), **overrides})
    raise TypeError(f"config must be a registered name, an NCSNppConfig or a dict, got {type(config).__name__}")


def infer_config(path: str, has_fourier: bool, in_channels: int, nf: int, block_widths: list[int],
                 fir_pyramid: bool = False, **overrides) -> NCSNppConfig:
    """Guess the config from the parameters: Fourier ``W`` present -> VE NCSN++; else a FIR input
    pyramid (``Downsample_k/Conv2d_0``) -> VP NCSN++; else VP DDPM++;
    ``nf`` and the image channels from the first conv; levels, res blocks per level and ``ch_mult``
    from the output widths of the ``ResnetBlockBigGANpp`` blocks in order (``L (2 n + 3)`` blocks).
    ``image_size`` and ``attn_resolutions`` cannot be inferred: the CIFAR-10 values (32, (16,)) are
    assumed unless given in ``overrides``; a VP file is read as VP, pass ``sde='subvpsde'`` for subVP.
    """
    base = ncsnpp.CONFIGS["ncsnpp_cifar10_ve" if has_fourier else "ncsnpp_cifar10_vp" if fir_pyramid
                          else "ddpmpp_cifar10_vp"]
    n = len(block_widths)
    base_levels = len(overrides.get("ch_mult", base.ch_mult))
    for levels in [base_levels] + [k for k in range(1, 9) if k != base_levels]:
        if n % levels or (n // levels - 3) % 2 or n // levels < 5:
            continue
        blocks = (n // levels - 3) // 2
        # Down path: level l has `blocks` blocks (+1 downsampling block below the last level), one width.
        groups = [block_widths[level * (blocks + 1):level * (blocks + 1) + blocks + (level < levels - 1)]
                  for level in range(levels)]
        widths = [g[0] for g in groups]
        if any(w % nf for w in widths) or any(len(set(g)) != 1 for g in groups):
            continue
        fields = dict(nf=nf, num_channels=in_channels, num_res_blocks=blocks, ch_mult=tuple(w // nf for w in widths))
        return base.replace(**{**fields, **overrides})
    raise CheckpointError(
        f"{path}: could not infer the architecture from {n} ResnetBlockBigGANpp blocks (nf={nf}; the published "
        "configs have 44 or 76): pass config= (a name such as 'ncsnpp_cifar10_ve' or an NCSNppConfig)")


def expected_params(model: NCSNpp) -> dict:
    """The parameter tree of ``model`` as ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape``, no compute)."""
    return jax.tree_util.tree_map(lambda s: s, _trace(model.config)[1])  # fresh containers: the trace is cached


def call_order(model: NCSNpp) -> list[tuple[str, ...]]:
    """Paths of all submodules of ``model`` in the order they are first called (traced abstractly):
    a pre-order walk, parents before their children. score_sde_pytorch registers its modules (the
    top-level ``all_modules`` list and each block's children) in this same order."""
    return list(_trace(model.config)[0])


@functools.lru_cache(maxsize=16)
def _trace(cfg: NCSNppConfig) -> tuple[tuple[tuple[str, ...], ...], dict]:
    """One abstract ``init`` of ``NCSNpp(cfg)``: (submodule paths in first-call order, param shapes).
    Memoised per config (a pure function of it): a full-size trace costs about a second."""
    order: list[tuple[str, ...]] = []

    def record(fn, args, kwargs, context):
        path = tuple(context.module.path)
        if context.method_name == "__call__" and path and path not in order:
            order.append(path)
        return fn(*args, **kwargs)

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(NCSNpp(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, *cfg.sample_shape)),
                                jnp.ones((1,)))
    return tuple(order), shapes["params"]


_LEAF_RANK = {"W": 0, "weight": 0, "kernel": 0, "scale": 0, "b": 1, "bias": 1}


def torch_layout(model: NCSNpp) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """The score_sde_pytorch state-dict layout of ``model``, in PyTorch's key order (without the
    ``module.`` prefix and the ``sigmas`` buffer): ``(torch key, flax path, transform, torch shape)``.

    The i-th top-level Flax submodule with parameters (call order) is ``all_modules.<i>``; inside it the
    child names are the same. Transforms: ``'identity'``, ``'transpose(1,0)'`` (Linear),
    ``'transpose(2,3,1,0)'`` (convolutions: OIHW -> HWIO), applied torch -> Flax.
    """
    flat = {k: tuple(v.shape) for k, v in flatten_tree(expected_params(model)).items()}
    modules = [p for p in call_order(model) if any(k.startswith("/".join(p) + "/") for k in flat)]
    tops = [p[0] for p in modules if len(p) == 1]
    rows = []
    for p in modules:
        prefix = "/".join(p) + "/"
        leaves = sorted((k[len(prefix):] for k in flat if k.startswith(prefix) and "/" not in k[len(prefix):]),
                        key=lambda leaf: _LEAF_RANK.get(leaf, 2))
        owner = p[-1].rsplit("_", 1)[0]
        for leaf in leaves:
            torch_leaf, transform, shape = leaf, "identity", flat[prefix + leaf]
            if leaf == "scale":
                torch_leaf = "weight"
            elif leaf == "kernel" and owner == "Dense":
                torch_leaf, transform, shape = "weight", "transpose(1,0)", shape[::-1]
            elif leaf == "kernel" or (leaf == "weight" and owner == "Conv2d"):
                torch_leaf, transform = "weight", "transpose(2,3,1,0)"
                shape = (shape[3], shape[2], shape[0], shape[1])
            key = ".".join([f"all_modules.{tops.index(p[0])}", *p[1:], torch_leaf])
            rows.append((key, prefix + leaf, transform, shape))
    return rows


# ------------------------------------------------------------------------------------------ Checkpoint


def make_sde(cfg: NCSNppConfig) -> SDE:
    """The SDE a config was trained with."""
    if cfg.sde == "vesde":
        return VESDE(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)
    if cfg.sde == "subvpsde":
        return SubVPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max)
    return VPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max)


def score_conventions(model: NCSNpp, sde: SDE) -> tuple[Callable, Callable]:
    """``(label, to_score)``: the network's time label ``label(t)`` and ``to_score(out, t)``.

    As score_sde's ``get_score_fn`` for continuous training: VE — label sigma(t), the output is the
    score; VP/subVP — label ``999 t``, ``score = -out / std(t)``.
    """
    cfg = model.config
    ve = cfg.sde == "vesde"
    if ve and cfg.embedding_type == "positional":
        raise ValueError("VE checkpoints with positional embeddings (discrete NCSN++) are not supported")

    def label(t):
        t = jnp.asarray(t, jnp.float32)
        return sde.marginal(t)[1] if ve else 999.0 * t

    def to_score(out, t):
        return out if ve else -out / sde.marginal(jnp.asarray(t, jnp.float32))[1]

    return label, to_score


def score_convention(model: NCSNpp, sde: SDE) -> ScoreConvention:
    """:func:`score_conventions` as a :class:`~jaxsde.models.score.ScoreConvention`."""
    label, to_score = score_conventions(model, sde)
    return ScoreConvention(lambda x, t: (x, label(t)), lambda out, x, t: to_score(out, t))


def make_score_fn(model: NCSNpp, sde: SDE) -> Callable:
    """``score_fn(params) -> score(x, t)`` for ONE sample ``x (H, W, C)`` and a scalar ``t``
    (conventions: :func:`score_conventions`)."""
    label, to_score = score_conventions(model, sde)

    def score_fn(params):
        def score(x, t):
            out = model.apply({"params": params}, x[None], jnp.reshape(label(t), (1,)))[0]
            return to_score(out, t)

        return score

    return score_fn


def make_checkpoint(cfg: NCSNppConfig, params, name: str) -> Checkpoint:
    """A :class:`jaxsde.Checkpoint` for an NCSN++ config and (already checked) params."""
    model = NCSNpp(cfg)
    sde = make_sde(cfg)
    score_fn = make_score_fn(model, sde)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return Checkpoint(model=model, params=params, sde=sde, score=score_fn(params), score_fn=score_fn,
                      shape=cfg.sample_shape, data_range=tuple(sde.data_range), config=cfg.to_dict(), name=name,
                      convention=score_convention(model, sde))


def _check(path: str, cfg: NCSNppConfig, found: Mapping, inferred: bool) -> dict:
    try:
        return check_tree(path, expected_params(NCSNpp(cfg)), found)
    except CheckpointError as err:
        if inferred:
            raise CheckpointError(f"{err} (architecture inferred from the file as nf={cfg.nf}, ch_mult={cfg.ch_mult}, "
                                  f"num_res_blocks={cfg.num_res_blocks}, assuming image_size={cfg.image_size}, "
                                  f"attn_resolutions={cfg.attn_resolutions}; pass config= if that is wrong)") from err
        raise


# ------------------------------------------------------------------------------------------ Flax msgpack


def read_msgpack(path: str) -> dict:
    """Restore a msgpack state dict (flax's encoding: arrays as ext types) without executing code."""
    try:
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
    except FileNotFoundError:
        raise
    except Exception as err:  # msgpack raises assorted errors on truncated or corrupt input
        raise CheckpointError(f"{path}: not a readable msgpack checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: not a score_sde checkpoint (msgpack holds a {type(tree).__name__}, "
                              "expected a State dict)")
    return tree


def load_flax(path: str, config: ConfigLike = None, *, use_ema: bool = True, name: str | None = None,
              **overrides) -> Checkpoint:
    """Load a score_sde ``checkpoint_N`` (msgpack ``State``): ``params_ema``, or ``optimizer.target``
    with ``use_ema=False``.

    ``config``: a registered name (``'ncsnpp_cifar10_ve'``, ...), an :class:`NCSNppConfig`, a dict of
    its fields, or None to infer it from the parameters (:func:`infer_config`); ``overrides`` replace
    config fields (e.g. ``sde='subvpsde'``, ``image_size=64``).
    """
    state = read_msgpack(path)
    if use_ema:
        if "params_ema" not in state:
            raise CheckpointError(f"{path}: not a score_sde State: no 'params_ema' (top-level keys: "
                                  f"{sorted(state)[:10]})")
        params = state["params_ema"]
    else:
        params = state.get("optimizer", {}).get("target") if isinstance(state.get("optimizer"), dict) else None
        if params is None:
            raise CheckpointError(f"{path}: not a score_sde State: no 'optimizer/target'")
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: parameters are a {type(params).__name__}, expected a dict")
    if set(params) == {"params"}:
        params = params["params"]
    inferred = config is None
    if inferred:
        cfg = _infer_from_flax(path, params, **overrides)
    else:
        cfg = resolve_config(config, **overrides)
    checked = _check(path, cfg, params, inferred)
    return make_checkpoint(cfg, checked, name or os.path.basename(path))


def _infer_from_flax(path: str, params: Mapping, **overrides) -> NCSNppConfig:
    def index(key: str) -> int:
        return int(key.rsplit("_", 1)[1])

    blocks = sorted((k for k in params if re.fullmatch(r"ResnetBlockBigGANpp_\d+", k)), key=index)
    try:
        conv = np.shape(params["Conv_0"]["kernel"])
        widths = [int(np.shape(params[k]["Conv_0"]["kernel"])[-1]) for k in blocks]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot infer the config: no {err} in the parameters (found top-level "
                              f"{sorted(params)[:10]}); pass config=") from err
    fir_pyramid = "Conv2d_0" in params.get("Downsample_0", {})
    return infer_config(path, "GaussianFourierProjection_0" in params, int(conv[2]), int(conv[3]), widths,
                        fir_pyramid, **overrides)


# ------------------------------------------------------------------------------------------ PyTorch .pth

_TOP = re.compile(r"all_modules\.(\d+)\.(.+)")


def _transform(arr: np.ndarray, transform: str) -> np.ndarray:
    if transform == "transpose(1,0)" and arr.ndim == 2:
        return arr.T
    if transform == "transpose(2,3,1,0)" and arr.ndim == 4:
        return arr.transpose(2, 3, 1, 0)
    return arr  # identity, or a wrong rank that check_tree reports with the path


def read_pth(path: str) -> dict:
    """``torch.load(path, map_location='cpu', weights_only=True)``; errors name the file."""
    try:
        import torch
    except ImportError as err:
        raise ImportError("reading score_sde_pytorch .pth checkpoints needs PyTorch (an optional dependency): "
                          "pip install torch --index-url https://download.pytorch.org/whl/cpu") from err
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle errors, or a weights_only refusal
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a score_sde_pytorch checkpoint (holds a {type(obj).__name__})")
    return obj


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t)


def ema_state_dict(path: str, model_sd: Mapping[str, Any], ema: Mapping[str, Any]) -> dict[str, Any]:
    """Name score_sde_pytorch's EMA ``shadow_params`` list: the ``model`` keys in order, without buffers
    (``sigmas``) and the fixed Fourier ``all_modules.<i>.W`` (both not ``requires_grad``), zipped with
    the list; the Fourier ``W`` comes from the model state dict."""
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, (list, tuple)):
        raise CheckpointError(f"{path}: 'ema' has no 'shadow_params' list (found {type(shadow).__name__}); "
                              "pass use_ema=False to load the raw weights")
    trainable = [k for k in model_sd if k != "sigmas" and not re.fullmatch(r"all_modules\.\d+\.W", k)]
    if len(shadow) != len(trainable):
        raise CheckpointError(f"{path}: 'ema' has {len(shadow)} shadow parameters but 'model' has {len(trainable)} "
                              "trainable parameters")
    out = dict(model_sd)
    for key, value in zip(trainable, shadow, strict=True):
        if tuple(value.shape) != tuple(model_sd[key].shape):
            raise CheckpointError(f"{path}: EMA shadow parameter for {key}: expected shape "
                                  f"{tuple(model_sd[key].shape)}, found {tuple(value.shape)}")
        out[key] = value
    return out


def load_pytorch(path: str, config: ConfigLike = None, *, use_ema: bool = True, name: str | None = None,
                 **overrides) -> Checkpoint:
    """Load a score_sde_pytorch ``checkpoint_N.pth`` (EMA shadow weights, or ``'model'`` with
    ``use_ema=False``). A bare model state dict is accepted too (``use_ema`` ignored).

    ``config`` and ``overrides`` as in :func:`load_flax`. Needs torch (imported here only).
    """
    obj = read_pth(path)
    if "model" in obj:
        if not isinstance(obj["model"], Mapping):
            raise CheckpointError(f"{path}: 'model' is a {type(obj['model']).__name__}, expected a state dict")
        model_sd = {_strip(k): v for k, v in obj["model"].items()}
        if use_ema:
            if "ema" not in obj:
                raise CheckpointError(f"{path}: no 'ema' entry; pass use_ema=False to load the raw weights")
            model_sd = ema_state_dict(path, model_sd, obj["ema"])
    elif any(_TOP.fullmatch(_strip(str(k))) for k in obj):
        model_sd = {_strip(k): v for k, v in obj.items()}
    else:
        raise CheckpointError(f"{path}: not a score_sde_pytorch checkpoint: no 'model' state dict (top-level keys: "
                              f"{sorted(map(str, obj))[:10]})")
    model_sd.pop("sigmas", None)
    arrays = {k: _numpy(v) for k, v in model_sd.items()}

    inferred = config is None
    cfg = _infer_from_torch(path, arrays, **overrides) if inferred else resolve_config(config, **overrides)
    # Keys outside the layout keep their torch name and are reported as unexpected.
    mapping = {key: (flax_path, transform) for key, flax_path, transform, _ in torch_layout(NCSNpp(cfg))}
    found: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        flax_path, transform = mapping.get(key, (key.replace("/", "|"), "identity"))
        found[flax_path] = _transform(arr, transform)
    return make_checkpoint(cfg, _check(path, cfg, unflatten(found), inferred), name or os.path.basename(path))


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _infer_from_torch(path: str, arrays: Mapping[str, np.ndarray], **overrides) -> NCSNppConfig:
    modules: dict[int, dict[str, tuple[int, ...]]] = {}
    for key, arr in arrays.items():
        if m := _TOP.fullmatch(key):
            modules.setdefault(int(m.group(1)), {})[m.group(2)] = arr.shape
    convs = [m["weight"] for _, m in sorted(modules.items()) if len(m.get("weight", ())) == 4]
    widths = [m["Conv_0.weight"][0] for _, m in sorted(modules.items())
              if "GroupNorm_1.weight" in m and "Conv_0.weight" in m]
    if not convs:
        raise CheckpointError(f"{path}: cannot infer the config: no top-level convolution among "
                              f"{len(modules)} modules; pass config=")
    has_fourier = any(set(m) == {"W"} for m in modules.values())
    fir_pyramid = any(set(m) == {"Conv2d_0.weight", "Conv2d_0.bias"} for m in modules.values())
    return infer_config(path, has_fourier, int(convs[0][1]), int(convs[0][0]), widths, fir_pyramid, **overrides)


def flax_to_torch_state_dict(params: Mapping, model: NCSNpp) -> dict[str, np.ndarray]:
    """The score_sde_pytorch ``'model'`` state dict (without ``module.`` and ``sigmas``) of Flax
    ``params``, in PyTorch's key order: the inverse of the loader's mapping (writes test fixtures)."""
    flat = flatten_tree(params)
    out = {}
    for key, flax_path, transform, _ in torch_layout(model):
        arr = np.asarray(flat[flax_path])
        arr = arr.T if transform == "transpose(1,0)" else arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr
        out[key] = np.ascontiguousarray(arr)
    return out


__all__ = ["load_flax", "load_pytorch", "infer_config", "resolve_config", "torch_layout", "call_order",
           "expected_params", "ema_state_dict", "flax_to_torch_state_dict", "make_checkpoint"]
