"""galaxygrad 0.2.1 equinox ``.eqx`` score models -> :class:`jaxsde.Checkpoint` (NumPy only).

    import importlib.util, os
    path = os.path.join(os.path.dirname(importlib.util.find_spec("galaxygrad").origin), "eqx_hsc_ScoreNet32.eqx")
    ckpt = jaxsde.checkpoints.load(path, "galaxygrad")
    sol = jaxsde.sample(key, ckpt.sde, ckpt.score, jaxsde.GottaGoFast(), ckpt.shape, 16)
    flux = ckpt.to_data(sol.x)                        # exp(0.1 y) - 1

(``import galaxygrad`` itself fails on Linux in 0.2.1 -- a file-name case mismatch -- but
``find_spec`` does not import it.) galaxygrad ships trained weights without a license: use the installed
wheel (``pip install galaxygrad==0.2.1``), never copy them.

**File format.** equinox's ``tree_serialise_leaves`` writes the model's pytree leaves in flattening
order, each as one ``.npy`` record (``np.save``); the last leaf of ``ScoreNet`` is the Python float
``t1``. The records are read here with ``np.lib.format.read_array(allow_pickle=False)``; equinox is not
needed. The architecture (hidden size, patch size, MLP widths, number of blocks, image size -- square
unless ``image_size=`` says otherwise) is read off the record shapes, so every galaxygrad ``ScoreNet``
file of this layout loads (HSC/ZTF 32 and 64, LSST 60, ...), into
:class:`jaxsde.models.mixer.MixerScoreNet`. Every record must match the expected shape, in order;
otherwise :class:`CheckpointError` names the file, the parameter (equinox and Flax paths) and the
expected vs found shape.

**SDE and space.** galaxygrad trains (Kidger's recipe) a VP SDE with ``beta(t) = 1`` on ``t in [0, 10]``
(``int_beta(t) = t``: ``alpha = exp(-t/2)``, ``sigma^2 = 1 - exp(-t)``), i.e.
``jaxsde.VPSDE(beta_min=1, beta_max=1, T=10, eps=...)``; its sampler (``generate.py``) integrates the
probability-flow ODE from ``t1 = 10`` down to ``0``. A :class:`jaxsde.VPSDE` needs ``eps > 0``, so the
default is ``eps = 1e-5`` (sigma = 3.2e-3, about 3e-4 in ``log(1 + x)``: invisible). The network works
in galaxygrad's log space ``y = log(x + 1) / 0.1`` of the (normalised) flux ``x`` and returns the score
there directly: ``ckpt.score(y, t) = net(y, t)`` for ONE sample ``y`` of shape (H, W, 1), and samples
from ``jaxsde.sample`` are in that space; ``ckpt.to_data(y) = exp(0.1 y) - 1`` maps them to flux.
``ckpt.data_range`` (used for default tolerances) is approximate, as the training set is not
published: the HSC-32 model's samples are peak-normalised flux in about [0, 1], so ``y`` in about
``[0, 10 log 2] = [0, 6.93]`` (background noise makes samples dip slightly below 0).

``model=`` (a :class:`MixerScoreNet`, e.g. ``jaxsde.models.build("galaxygrad_hsc32")``) makes the file
match that architecture instead of inferring it (a missing block is then an error, not a smaller model).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from ..models.mixer import MixerScoreNet
from ..models.score import ScoreConvention
from ..sde import VPSDE
from .checkpoint import Checkpoint
from .errors import CheckpointError, check_tree, unflatten

LOG_SCALE = 0.1  # galaxygrad's y = log(x + 1) / 0.1
DATA_RANGE = (0.0, 10.0 * math.log(2.0))  # peak-normalised flux in [0, 1], in log space
EPS = 1e-5


def read_records(path: str) -> list[np.ndarray]:
    """Every ``.npy`` record of an equinox ``tree_serialise_leaves`` file, in order."""
    records = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    with f:
        size = os.fstat(f.fileno()).st_size
        while f.tell() < size:
            start = f.tell()
            try:
                records.append(np.lib.format.read_array(f, allow_pickle=False))
            except Exception as e:  # bad magic (not an .eqx file), short read (truncated), object arrays
                what = "not an equinox/NumPy record file" if not records else "truncated or corrupt"
                raise CheckpointError(f"{path}: record {len(records)} at byte {start} ({_eqx_name(len(records))}"
                                      f" in a 4-block ScoreNet): {what} ({e})") from e
    if not records:
        raise CheckpointError(f"{path}: empty file; expected equinox tree_serialise_leaves records")
    return records


def _eqx_name(index: int) -> str:
    """The equinox leaf of record ``index`` in a 4-block ScoreNet (galaxygrad's layout), for messages."""
    spec = _spec(4)
    return spec[index][0] if index < len(spec) else f"record {index}"


def _spec(num_blocks: int) -> list[tuple[str, str]]:
    """(equinox leaf, Flax path) in serialisation order."""
    spec = [("conv_in.weight", "conv_in/kernel"), ("conv_in.bias", "conv_in/bias"),
            ("conv_out.weight", "conv_out/kernel"), ("conv_out.bias", "conv_out/bias")]
    for i in range(num_blocks):
        for mixer in ("patch_mixer", "hidden_mixer"):
            for j in (0, 1):
                spec += [(f"blocks[{i}].{mixer}.layers[{j}].weight", f"blocks_{i}/{mixer}/layers_{j}/kernel"),
                         (f"blocks[{i}].{mixer}.layers[{j}].bias", f"blocks_{i}/{mixer}/layers_{j}/bias")]
        for norm in ("norm1", "norm2"):
            spec += [(f"blocks[{i}].{norm}.weight", f"blocks_{i}/{norm}/scale"),
                     (f"blocks[{i}].{norm}.bias", f"blocks_{i}/{norm}/bias")]
    spec += [("norm.weight", "norm/scale"), ("norm.bias", "norm/bias"), ("t1", "t1")]
    return spec


def _to_eqx_shape(flax_path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The equinox shape of a Flax leaf."""
    module, leaf = flax_path.rsplit("/", 1)
    if module == "conv_in" and leaf == "kernel":  # HWIO <- OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if module == "conv_out" and leaf == "kernel":  # (kh, kw, in, out) <- (out, in, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    if module.startswith("conv") and leaf == "bias":  # equinox conv biases are (C, 1, 1)
        return (shape[0], 1, 1)
    if leaf == "kernel":  # Dense (in, out) <- Linear (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(flax_path: str, arr: np.ndarray) -> np.ndarray:
    module, leaf = flax_path.rsplit("/", 1)
    if module == "conv_in" and leaf == "kernel":
        return arr.transpose(2, 3, 1, 0)
    if module == "conv_out" and leaf == "kernel":
        # non-overlapping patches: both put y[c, i, j] * W[o, c, a, b] at pixel (p i + a, p j + b)
        return arr.transpose(2, 3, 1, 0)
    if module.startswith("conv") and leaf == "bias":
        return arr.reshape(-1)
    if leaf == "kernel":
        return arr.T
    return arr


def _check_count(records: list[np.ndarray], model: MixerScoreNet, path: str) -> None:
    spec = _spec(model.num_blocks)
    if len(records) < len(spec):
        missing = [e for e, _ in spec[len(records):]]
        raise CheckpointError(f"{path}: {len(records)} records, expected {len(spec)} for {model.num_blocks} blocks: "
                              f"missing parameters ({len(missing)}): " + ", ".join(missing[:8])
                              + (" ..." if len(missing) > 8 else "") + " (truncated file?)")
    if len(records) > len(spec):
        raise CheckpointError(f"{path}: {len(records)} records, expected {len(spec)} for {model.num_blocks} blocks: "
                              f"unexpected extra records {len(spec)}..{len(records) - 1}")


def infer_config(records: list[np.ndarray], path: str, image_size=None) -> dict:
    """:class:`MixerScoreNet` fields (and ``image_size``) from the record shapes."""
    n = len(records)
    if n < 19 or (n - 7) % 12 or records[0].ndim != 4 or records[4].ndim != 2 or records[8].ndim != 2:
        raise CheckpointError(f"{path}: {n} records with shapes {[r.shape for r in records[:5]]}...; not a "
                              "galaxygrad ScoreNet (expected 7 + 12 * num_blocks records: conv_in (hidden, C + 1, "
                              "p, p), conv_out, then per block two MLPs and two LayerNorms, norm, t1; truncated file?)")
    hidden, c_in, p, _ = records[0].shape
    mix_patch, patches = records[4].shape
    mix_hidden = records[8].shape[0]
    t1 = records[-1]
    if t1.ndim != 0 or not np.issubdtype(t1.dtype, np.floating) or not float(t1) > 0:
        raise CheckpointError(f"{path}: last record (t1): expected a positive float scalar, found "
                              f"shape {t1.shape} dtype {t1.dtype}")
    if image_size is None:
        side = math.isqrt(patches)
        if side * side != patches:
            raise CheckpointError(f"{path}: {patches} patches is not a square number; pass image_size=(H, W)")
        image_size = (side * p, side * p)
    return dict(channels=c_in - 1, patch_size=p, hidden_size=hidden, mix_patch_size=mix_patch,
                mix_hidden_size=mix_hidden, num_blocks=(n - 7) // 12, t1=float(t1), image_size=tuple(image_size))


def load(path: str, *, eps: float = EPS, data_range: tuple[float, float] = DATA_RANGE, image_size=None,
         model: MixerScoreNet | None = None, name: str | None = None, dtype=jnp.float32) -> Checkpoint:
    """Load a galaxygrad ``ScoreNet`` ``.eqx`` file (see the module docstring). Options: ``eps`` of the
    SDE (1e-5), ``data_range``, ``image_size=(H, W)`` for non-square models, ``model`` to require an
    architecture, ``name``, parameter ``dtype``."""
    path = os.fspath(path)
    records = read_records(path)
    if model is not None:
        _check_count(records, model, path)
    cfg = infer_config(records, path, image_size)
    h, w = cfg["image_size"]
    inferred = MixerScoreNet(**{k: v for k, v in cfg.items() if k != "image_size"})
    if model is None:
        model = inferred
    elif float(model.t1) != cfg["t1"]:
        raise CheckpointError(f"{path}: parameter t1: expected {model.t1}, found {cfg['t1']}")
    shape = (h, w, cfg["channels"])
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.zeros((1,)))["params"]
    flat_expected = _flatten(expected)

    problems, found = [], {}
    for (eqx_name, flax_path), arr in zip(_spec(cfg["num_blocks"]), records, strict=True):
        if flax_path == "t1":
            continue
        want = _to_eqx_shape(flax_path, flat_expected[flax_path].shape)
        if tuple(arr.shape) != want:
            problems.append(f"parameter {eqx_name} ({flax_path}): expected shape {want}, found {tuple(arr.shape)}")
        else:
            found[flax_path] = _to_flax(flax_path, arr)
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    nested = unflatten({k: np.ascontiguousarray(v) for k, v in found.items()})
    params = {"params": jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), check_tree(path, expected, nested))}

    sde = VPSDE(beta_min=1.0, beta_max=1.0, T=cfg["t1"], eps=eps, data_range=tuple(data_range))

    def score_fn(p):
        def score(y, t):
            t = jnp.asarray(t, y.dtype)
            return model.apply(p, y[None], t[None])[0]

        return score

    def to_data(y):
        """galaxygrad's log space -> flux: ``exp(0.1 y) - 1``."""
        return jnp.expm1(LOG_SCALE * y)

    info = {**cfg, "space": "y = log(x + 1) / 0.1", "weights": path}
    return Checkpoint(model=model, params=params, sde=sde, score=score_fn(params), score_fn=score_fn, shape=shape,
                      data_range=tuple(data_range), config=info,
                      name=name or os.path.splitext(os.path.basename(path))[0], to_data=to_data,
                      convention=ScoreConvention(lambda y, t: (y, t), lambda out, y, t: out))


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else k
        out.update(_flatten(v, p) if isinstance(v, dict) else {p: v})
    return out


__all__ = ["load", "read_records", "infer_config", "LOG_SCALE"]
