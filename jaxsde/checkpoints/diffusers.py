"""diffusers ``UNet2DModel`` checkpoints (e.g. google/ddpm-cifar10-32) -> :class:`jaxsde.Checkpoint`.

    ckpt = jaxsde.checkpoints.load("ddpm-cifar10-32/", "diffusers")
    sol = jaxsde.sample(key, ckpt.sde, ckpt.score, jaxsde.DDIM(num_steps=50), ckpt.shape, 16)

``path`` is a folder holding ``config.json`` and ``diffusion_pytorch_model.safetensors`` (read with
``safetensors.numpy``, no torch) or ``diffusion_pytorch_model.bin`` (``torch.load(weights_only=True)``;
torch is imported only then), a pipeline folder with ``unet/`` (and ``scheduler/``) inside, or a weights
file itself with ``config=`` (a dict or a path; default: ``config.json`` beside the file).

* Network: :class:`jaxsde.models.ddpm_unet.UNet2D` built from ``config.json``. Torch keys map by name
  (``down_blocks.1.attentions.0.to_q.weight`` -> ``down_blocks_1/attentions_0/to_q/kernel``): conv
  weights OIHW -> HWIO, linear weights transposed, norm ``weight`` -> ``scale``. Attention keys with the
  old names ``query``/``key``/``value``/``proj_attn`` (diffusers <= 0.0.4 files, like the hub's DDPM
  weights) are read as ``to_q``/``to_k``/``to_v``/``to_out.0``, as diffusers'
  ``ModelMixin._convert_deprecated_attention_blocks`` does. Every Flax parameter must be filled exactly
  once and every key used; otherwise :class:`CheckpointError` names the file, the key and the shapes.
* SDE: :class:`jaxsde.DiscreteVPSDE` from ``scheduler_config.json`` (beside ``config.json``, or in a
  sibling ``scheduler/`` folder, or ``scheduler_config=``): ``trained_betas`` or ``beta_schedule``
  ``linear`` / ``scaled_linear`` / ``squaredcos_cap_v2`` with ``beta_start``, ``beta_end``,
  ``num_train_timesteps``, computed as diffusers' ``DDPMScheduler`` does; without one,
  ``DiscreteVPSDE.linear()`` (DDPM's 1e-4..0.02 over 1000 steps).
* Score: the network (``jax.jit(model.apply)``, one function shared by every call site of a sampling
  program, so a solver's steps and the final Tweedie step trace it once) gets ``sde.timestep(t) = N t - 1``
  (integer on the training grid, fractional
  between) and its output is read per the scheduler's ``prediction_type``: ``epsilon`` ->
  ``-eps / sigma``, ``sample`` (x0) and ``v_prediction`` via :func:`jaxsde.models.score.output_to_score`.
  ``ckpt.score(x, t)`` takes ONE sample, NHWC, no batch axis; data range (-1, 1).
* Class-conditional ``UNet2DModel`` (``num_class_embeds = K`` with ``class_embed_type`` null: an
  ``nn.Embedding`` ``class_embedding.weight`` (K, time_embed_dim), read as is; or
  ``class_embed_type="timestep"``: ``class_embedding.linear_1`` / ``linear_2``): ``ckpt.score(x, t, cond)``
  with ``cond`` an int32 scalar class label in ``0..num_classes - 1`` for that ONE sample, passed to the
  network as diffusers' ``class_labels``; ``ckpt.num_classes = K`` (for ``"timestep"``: the config's
  ``num_class_embeds``, which diffusers itself ignores there, or ``num_classes=``). diffusers has no
  null-class convention, so ``ckpt.null_cond`` is None (classifier-free guidance refuses it) unless
  ``null_class=`` names the label the model was trained with as "no condition" (it stays one of the K
  labels, ``num_classes`` counts it). A concrete label outside ``0..K - 1`` or a non-integer one raises
  ``ValueError`` / ``TypeError``; a traced one (inside ``jit`` / ``vmap``, e.g. ``jaxsde.sample(...,
  cond=labels)``) cannot raise and gives a NaN score instead. ``class_embed_type="identity"`` (the
  condition is a precomputed embedding vector, not a class label) is refused.

Format references: diffusers ``modeling_utils.py`` / ``scheduling_ddpm.py`` (Apache-2.0); the torch->Flax
renaming rules follow diffusers v0.39's ``modeling_flax_pytorch_utils.py`` (re-implemented, not copied).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..models.ddpm_unet import UNet2D, example_class_labels, sample_shape
from ..models.score import labelled_convention, output_to_score
from ..sde import DiscreteVPSDE
from .checkpoint import Checkpoint
from .embedded import check_label
from .errors import CheckpointError, check_tree, unflatten

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_RE = re.compile(r"^(.*\battentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


# --- files -------------------------------------------------------------------------------------
def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the {what} ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the {what} should be a JSON object, found {type(data).__name__}")
    return data


def _resolve(path: str, config, scheduler_config) -> tuple[str, dict, str, dict | None]:
    """(weights file, UNet config, config source, scheduler config or None)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder = path
        if not os.path.exists(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, "unet")):
            folder = os.path.join(folder, "unet")  # a pipeline folder
        candidates = [os.path.join(folder, n) for n in WEIGHT_NAMES]
        weights = next((c for c in candidates if os.path.exists(c)), None)
        if weights is None:
            raise CheckpointError(f"{path}: no weights file; expected one of {', '.join(WEIGHT_NAMES)}")
    elif os.path.isfile(path):
        weights, folder = path, os.path.dirname(os.path.abspath(path))
    else:
        raise CheckpointError(f"{path}: no such file or folder")

    if config is None:
        source = os.path.join(folder, "config.json")
        if not os.path.exists(source):
            raise CheckpointError(f"{weights}: no config.json beside it; pass config= (a dict or a path)")
        config = _read_json(source, "UNet2DModel config")
    elif isinstance(config, Mapping):
        source, config = "config", dict(config)
    else:
        source, config = os.fspath(config), _read_json(os.fspath(config), "UNet2DModel config")

    if scheduler_config is None:
        for cand in (os.path.join(folder, "scheduler_config.json"),
                     os.path.join(folder, os.pardir, "scheduler", "scheduler_config.json")):
            if os.path.exists(cand):
                scheduler_config = _read_json(cand, "scheduler config")
                break
    elif not isinstance(scheduler_config, Mapping):
        scheduler_config = _read_json(os.fspath(scheduler_config), "scheduler config")
    return weights, config, source, None if scheduler_config is None else dict(scheduler_config)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A flat ``{key: array}`` from a ``.safetensors`` file (NumPy only) or a torch ``.bin``/``.pt``
    state dict (``torch.load(weights_only=True)``); the format is told by the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return _read_torch(path)
    if len(head) >= 9 and head[8:9] == b"{":
        return _read_safetensors(path)
    raise CheckpointError(f"{path}: not a safetensors file or a PyTorch state dict (first bytes {head[:8]!r})")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # SafetensorError (truncated, bad header), TypeError (dtype NumPy lacks, e.g. bf16)
        raise CheckpointError(f"{path}: cannot read as safetensors ({type(e).__name__}: {e})") from e


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{path}: reading a PyTorch .bin needs torch (pip install torch), "
                              "or convert the file to .safetensors") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code objects refused by weights_only, ...
        raise CheckpointError(f"{path}: cannot read as a PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of tensors), found {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: parameter {k}: expected a tensor, found {type(v).__name__}")
        v = v.detach().cpu()
        out[str(k)] = (v.float() if v.is_floating_point() else v).numpy()
    return out


# --- state dict -> Flax params -------------------------------------------------------------------
def _module_path(key: str) -> tuple[str, ...]:
    """``down_blocks.0.attentions.1.to_out.0`` -> ``("down_blocks_0", "attentions_1", "to_out_0")``."""
    parts: list[str] = []
    for p in key.split("."):
        if p.isdigit() and parts:
            parts[-1] += f"_{p}"
        else:
            parts.append(p)
    return tuple(parts)


def _subtree(tree: Mapping, path: tuple[str, ...]):
    node = tree
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node if isinstance(node, Mapping) else None


def _torch_shape(flax_shape: tuple[int, ...], leaf: str = "kernel") -> tuple[int, ...]:
    if leaf == "embedding":  # nn.Embedding weight: (num, dim) in both
        return tuple(flax_shape)
    if len(flax_shape) == 4:  # HWIO -> OIHW
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if len(flax_shape) == 2:
        return (flax_shape[1], flax_shape[0])
    return tuple(flax_shape)


def convert_state_dict(state_dict: Mapping[str, Any], expected: Mapping, path: str = "<state dict>") -> dict:
    """diffusers ``UNet2DModel`` state dict -> Flax ``params`` shaped like ``expected`` (the ``params``
    tree of ``jax.eval_shape(model.init, ...)``). Raises :class:`CheckpointError` listing missing,
    unexpected, duplicated and wrongly shaped keys, in torch names with torch (OIHW / (out, in)) shapes."""
    flat: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []
    unexpected: list[str] = []
    for key, value in state_dict.items():
        new_key = key
        m = _OLD_ATTENTION_RE.match(key)
        if m:
            new_key = f"{m.group(1)}.{_OLD_ATTENTION[m.group(2)]}.{m.group(3)}"
        module_key, _, leaf = new_key.rpartition(".")
        mod = _module_path(module_key) if module_key else ()
        node = _subtree(expected, mod)
        if node is None:
            unexpected.append(key)
            continue
        if leaf == "bias" and "bias" in node:
            flax_leaf = "bias"
        elif leaf == "weight" and "kernel" in node:
            flax_leaf = "kernel"
        elif leaf == "weight" and "scale" in node:
            flax_leaf = "scale"
        elif leaf == "weight" and "embedding" in node:
            flax_leaf = "embedding"
        else:
            unexpected.append(key)
            continue
        flax_path = "/".join((*mod, flax_leaf))
        if flax_path in origin:
            problems.append(f"parameters {origin[flax_path]} and {key} both map to {flax_path}")
            continue
        origin[flax_path] = key
        arr = np.asarray(value)
        want = tuple(node[flax_leaf].shape)
        if tuple(arr.shape) != _torch_shape(want, flax_leaf):
            problems.append(f"parameter {key} ({flax_path}): expected shape {_torch_shape(want, flax_leaf)}, "
                            f"found {tuple(arr.shape)}")
            continue
        if flax_leaf == "embedding":
            pass
        elif arr.ndim == 4:
            arr = arr.transpose(2, 3, 1, 0)
        elif arr.ndim == 2:
            arr = arr.T
        flat[flax_path] = arr

    want_paths = _flat_paths(expected)
    missing = [p for p in want_paths if p not in origin]
    if missing:
        problems.append(f"missing parameters ({len(missing)}): "
                        + ", ".join(_torch_name(p) for p in missing[:8]) + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected parameters ({len(unexpected)}): " + ", ".join(unexpected[:8])
                        + (" ..." if len(unexpected) > 8 else ""))
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return check_tree(path, expected, unflatten(flat))


def _flat_paths(tree: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else str(k)
        out += _flat_paths(v, p) if isinstance(v, Mapping) else [p]
    return out


def _torch_name(flax_path: str) -> str:
    """``down_blocks_0/resnets_1/conv1/kernel`` -> ``down_blocks.0.resnets.1.conv1.weight``."""
    *mods, leaf = flax_path.split("/")
    name = ".".join(re.sub(r"_(\d+)$", r".\1", m) for m in mods)
    return f"{name}.{'bias' if leaf == 'bias' else 'weight'}"


# --- scheduler -> SDE ----------------------------------------------------------------------------
def sde_from_scheduler_config(config: Mapping[str, Any] | None) -> DiscreteVPSDE:
    """The :class:`DiscreteVPSDE` of a diffusers scheduler config (``DDPMScheduler`` defaults for absent
    fields; ``None`` -> DDPM's linear schedule). Betas are float32 as in diffusers."""
    if config is None:
        return DiscreteVPSDE.linear()
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True gives alphas_cumprod[-1] = 0 (infinite noise), "
                         "which a VP SDE with a Gaussian prior cannot represent")
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float32)
    else:
        schedule = config.get("beta_schedule", "linear")
        if schedule == "linear":
            betas = np.linspace(start, end, n, dtype=np.float32)
        elif schedule == "scaled_linear":
            betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float32) ** 2
        elif schedule == "squaredcos_cap_v2":
            # Nichol & Dhariwal's cosine schedule, betas capped at 0.999 (diffusers' betas_for_alpha_bar)
            def alpha_bar(s):
                return np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2

            s = np.arange(n + 1, dtype=np.float64) / n
            betas = np.minimum(1 - alpha_bar(s[1:]) / alpha_bar(s[:-1]), 0.999).astype(np.float32)
        else:
            raise ValueError(f"unsupported beta_schedule {schedule!r}; supported: linear, scaled_linear, "
                             "squaredcos_cap_v2 (or trained_betas)")
    # cumulative product in float32, as torch.cumprod in diffusers
    abar = np.cumprod((1.0 - betas).astype(np.float32), dtype=np.float32)
    return DiscreteVPSDE.from_alphas_cumprod(abar.astype(np.float64))


# --- the loader ------------------------------------------------------------------------------------
def load(path: str, *, config=None, scheduler_config=None, sde=None, shape=None, name: str | None = None,
         dtype=jnp.float32, null_class: int | None = None, num_classes: int | None = None) -> Checkpoint:
    """Load a diffusers ``UNet2DModel`` folder or weights file (see the module docstring).

    Options: ``config`` / ``scheduler_config`` (dict or path) override the files beside the weights;
    ``sde`` replaces the scheduler-derived SDE; ``shape`` = (H, W, C) when the config has no
    ``sample_size``; ``dtype`` of the parameters (float32). Class-conditional models only:
    ``null_class`` (int in ``0..num_classes - 1``): the label meaning "no condition", returned as
    ``ckpt.null_cond`` (default None: no null condition); ``num_classes``: the number of labels of a
    ``class_embed_type="timestep"`` model whose config has no ``num_class_embeds``.
    """
    weights, cfg, cfg_source, sched = _resolve(path, config, scheduler_config)
    try:
        model = UNet2D.from_config(cfg)
        shape = tuple(shape) if shape is not None else sample_shape(model)
        num_classes, null_cond = _classes(model, num_classes, null_class)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_source}: {e}") from e
    try:
        if sde is None:
            sde = sde_from_scheduler_config(sched)
        prediction = (sched or {}).get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction!r}; supported: {', '.join(PREDICTION_TYPES)}")
    except ValueError as e:
        raise CheckpointError(f"{weights}: scheduler config: {e}") from e
    parameterization = PREDICTION_TYPES[prediction]

    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.zeros((1,)),
                              *example_class_labels(model))
    state_dict = read_state_dict(weights)
    params = convert_state_dict(state_dict, expected["params"], weights)
    params = {"params": jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)}

    # One jitted network: every call site of a sampling program (the solver's steps, the final Tweedie
    # step, the driver's shape check) traces and lowers the same function once, instead of once each.
    apply = jax.jit(model.apply)

    if num_classes is None:
        def score_fn(p):
            def score(x, t):
                t = jnp.asarray(t, x.dtype)
                out = apply(p, x[None], sde.timestep(t)[None])[0]
                return output_to_score(sde, out, x, t, parameterization)

            return score
    else:
        def score_fn(p):
            def score(x, t, cond):
                label = check_label(cond, num_classes)  # raises only for a concrete label
                t = jnp.asarray(t, x.dtype)
                out = apply(p, x[None], sde.timestep(t)[None], label[None])[0]
                # a traced label outside 0..K-1 cannot raise: its score is NaN
                out = jnp.where((label >= 0) & (label < num_classes), out, jnp.nan)
                return output_to_score(sde, out, x, t, parameterization)

            return score

    info = {"unet": cfg, "scheduler": sched, "parameterization": parameterization, "weights": weights}
    if name is None:
        name = os.path.basename(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(weights)))
    return Checkpoint(model=model, params=params, sde=sde, score=score_fn(params), score_fn=score_fn,
                      shape=shape, data_range=(-1.0, 1.0), config=info, name=name,
                      convention=labelled_convention(sde, sde.timestep, parameterization),
                      num_classes=num_classes, null_cond=null_cond)


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _classes(model: UNet2D, num_classes: int | None, null_class: int | None) -> tuple[int | None, Any]:
    """``(num_classes, null_cond)`` of the checkpoint; ValueError for options that do not fit the config."""
    if not model.class_conditional:
        if num_classes is not None or null_class is not None:
            raise ValueError("null_class= and num_classes= are for class-conditional models; this UNet2DModel "
                             "config has no class_embed_type / num_class_embeds")
        return None, None
    if model.class_embed_type == "identity":
        raise ValueError("class_embed_type='identity' (the condition is a precomputed time_embed_dim vector, "
                         "not a class label) is not supported by the loader; UNet2D itself runs it")
    if num_classes is not None and not (_is_int(num_classes) and num_classes >= 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    k = model.num_class_embeds
    if k is not None and num_classes is not None and int(num_classes) != k:
        raise ValueError(f"num_classes={num_classes} disagrees with the config's num_class_embeds={k}")
    k = k if k is not None else num_classes
    if k is None:
        raise ValueError("class_embed_type='timestep' without num_class_embeds: pass num_classes= "
                         "(the number of class labels)")
    k = int(k)
    if null_class is None:
        return k, None
    if not (_is_int(null_class) and 0 <= null_class < k):
        raise ValueError(f"null_class must be an integer label in 0..{k - 1}, got {null_class!r}")
    return k, jnp.int32(null_class)


__all__ = ["load", "convert_state_dict", "read_state_dict", "sde_from_scheduler_config"]
