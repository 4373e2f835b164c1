"""``jaxsde generate``: many samples from an embedded model into resumable shard files.

``DIR/manifest.json`` records the run's arguments; ``DIR/shard-NNNNNN.npz`` each hold
``index`` (int64, (m,)), ``x`` ((m, *shape), clipped to the model's data range) and the
per-sample ``nfe``, ``num_accepted``, ``num_rejected``, ``num_steps``, ``result``, ``t``. Every
file is written atomically (temporary name, fsync, rename), so a killed run leaves only whole
shards; rerunning with the same arguments generates exactly the missing indices (sample ``i``
is the same whichever run makes it). A lock file keeps two runs out of one DIR.
"""

from __future__ import annotations

import fcntl
import glob
import io
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..batching import Generator
from ..checkpoints.embedded import NAMES, pretrained
from ..checkpoints.io import atomic_write
from ..solvers.registry import make_solver
from .sampling_job import grid_for_model

FORMAT = "jaxsde-generate/1"
MANIFEST = "manifest.json"
_COMPARED = ("format", "model", "solver", "solver_repr", "n", "seed", "batch_size", "devices", "dtype")


def _prepare_dir(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create --out {out}: {err.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into --out {out}: permission denied")


def _lock(out: str):
    try:
        fd = os.open(os.path.join(out, ".lock"), os.O_CREAT | os.O_RDWR, 0o666)
    except OSError as err:
        raise ValueError(f"cannot write into --out {out}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another jaxsde generate is writing into {out}") from None
    return fd


def _check_manifest(out: str, manifest: dict) -> None:
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        if glob.glob(os.path.join(out, "shard-*.npz")):
            raise ValueError(f"{out} holds shard files but no {MANIFEST}; use a new --out")
        try:
            atomic_write(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        except OSError as err:
            raise OSError(err.errno, f"cannot write {path} ({err.strerror or err})") from None
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable ({err}); use a new --out") from None
    diff = [f"{k}={old.get(k)!r} (this run: {manifest[k]!r})" for k in _COMPARED if old.get(k) != manifest[k]]
    if diff:
        raise ValueError(f"{out} holds a run with different arguments: {'; '.join(diff)}. "
                         "Rerun with the same arguments to resume, or use a new --out")


def read_shards(out: str, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """All shards of ``out`` concatenated and sorted by ``index`` (``keys``: which arrays, default all)."""
    parts: dict[str, list] = {}
    for path in sorted(glob.glob(os.path.join(out, "shard-*.npz"))):
        try:
            with np.load(path) as z:
                for k in keys or z.files:
                    parts.setdefault(k, []).append(z[k])
                if "index" not in (keys or z.files):
                    parts.setdefault("index", []).append(z["index"])
        except Exception as err:  # noqa: BLE001 - a damaged file: say which one
            raise ValueError(f"{path} is not a readable shard ({type(err).__name__}: {err})") from None
    if not parts:
        return {"index": np.zeros((0,), np.int64)}
    data = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(data["index"], kind="stable")
    return {k: v[order] for k, v in data.items()}


def run_generate(model: str = "digits", solver: str = "ggf", n: int = 1000, seed: int = 0, out: str = "samples",
                 batch_size: int = 256, chunk_size: int = 1024, progress: bool = True, **solver_options) -> dict:
    """Generate samples ``0 .. n-1`` into shards in ``out`` (resuming what is there); return a report."""
    if model not in NAMES:
        raise ValueError(f"unknown model {model!r}; available: {', '.join(NAMES)}")
    for name, value in (("--n", n), ("--batch-size", batch_size), ("--chunk-size", chunk_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    the_solver = make_solver(solver, **solver_options)
    _prepare_dir(out)
    ckpt = pretrained(model)
    the_solver = grid_for_model(the_solver, ckpt.sde)
    manifest = dict(format=FORMAT, model=model, solver=solver, solver_repr=repr(the_solver),
                    solver_options={k: v for k, v in solver_options.items() if v is not None}, n=n, seed=seed,
                    batch_size=batch_size, chunk_size=chunk_size, devices=len(jax.local_devices()),
                    dtype="float32", shape=list(ckpt.shape), data_range=list(ckpt.data_range))
    return generate_to_dir(out, manifest, ckpt.sde, ckpt.score_fn, ckpt.params, the_solver, ckpt.to_data, progress)


def generate_to_dir(out: str, manifest: dict, sde, score_fn, params, solver, to_data=None, progress: bool = True,
                    devices=None) -> dict:
    """The resumable loop behind ``jaxsde generate``, for any score ``score_fn(params)``.

    ``manifest`` must hold ``n``, ``seed``, ``batch_size``, ``chunk_size``, ``shape``,
    ``data_range`` and the keys compared on resume (see ``_COMPARED``; missing ones compare as None).
    """
    _prepare_dir(out)
    lock = _lock(out)
    try:
        for tmp in glob.glob(os.path.join(out, ".tmp-*")):  # left by a run killed mid-write
            os.unlink(tmp)
        manifest = {"format": FORMAT, **{k: None for k in _COMPARED}, **manifest}
        _check_manifest(out, manifest)
        return _generate_into(out, manifest, sde, score_fn, params, solver, to_data, progress, devices)
    finally:
        os.close(lock)


def _generate_into(out: str, manifest: dict, sde, score_fn, params, solver, to_data, progress, devices) -> dict:
    n = manifest["n"]
    have = read_shards(out, keys=("index", "nfe"))
    done = have["index"]
    if done.size and (len(np.unique(done)) != done.size or done.min() < 0 or done.max() >= n):
        raise ValueError(f"{out}: shard indices are duplicated or outside 0..{n - 1}; use a new --out")
    pending = np.setdiff1d(np.arange(n), done)
    seq = 1 + max([int(os.path.basename(p)[6:12]) for p in glob.glob(os.path.join(out, "shard-*.npz"))], default=-1)
    nfe_sum, count = float(have["nfe"].sum()) if "nfe" in have else 0.0, int(done.size)
    resumed, wall, written = int(done.size), 0.0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=count, unit="sample", desc=f"{manifest.get('model')} {manifest.get('solver')}")
    lo, hi = manifest["data_range"]
    try:
        if pending.size:
            # The work list is padded to n, so a resumed run compiles (or loads from a cache) the same program.
            gen = Generator(jax.random.PRNGKey(manifest["seed"]), sde, score_fn, params, solver,
                            tuple(manifest["shape"]), pending, batch_size=manifest["batch_size"],
                            chunk_size=manifest["chunk_size"], dtype=jnp.float32, devices=devices, pad_to=n)
            t0 = time.perf_counter()
            for chunk in gen:
                x = chunk.x if to_data is None else np.asarray(to_data(chunk.x))
                order = np.argsort(chunk.index)
                buf = io.BytesIO()
                np.savez(buf, index=chunk.index[order], x=np.clip(x, lo, hi)[order].astype(np.float32),
                         nfe=chunk.stats.nfe[order], num_accepted=chunk.stats.num_accepted[order],
                         num_rejected=chunk.stats.num_rejected[order], num_steps=chunk.stats.num_steps[order],
                         result=chunk.result[order], t=chunk.t[order])
                _write_shard(out, seq, buf.getvalue(), count)
                seq, written = seq + 1, written + 1
                count += chunk.index.size
                nfe_sum += float(chunk.stats.nfe.sum())
                if bar is not None:
                    bar.update(chunk.index.size)
                    bar.set_postfix(mean_nfe=f"{nfe_sum / max(count, 1):.1f}")
            wall = time.perf_counter() - t0
    finally:
        if bar is not None:
            bar.close()
    return dict(out=out, n=n, resumed=resumed, generated=int(pending.size), shards_written=written, wall_s=wall,
                mean_nfe=nfe_sum / max(count, 1), samples_per_s=pending.size / wall if wall else 0.0)


def _write_shard(out: str, seq: int, data: bytes, count: int) -> None:
    """Write one shard atomically; on a full disk (or any OS error) stop with a message that says
    what is kept (``count`` samples). A failed write leaves no partial file: the shards before it are whole."""
    path = os.path.join(out, f"shard-{seq:06d}.npz")
    try:
        atomic_write(path, data)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path} ({err.strerror or err}); the {count} samples written "
                                 f"before it are kept in {out}: make room and rerun the same command to "
                                 "resume") from None


def print_report(r: dict) -> None:
    if r["generated"] == 0:
        print(f"{r['out']} already holds all {r['n']} samples; nothing to do")
        return
    print(f"generated {r['generated']} samples ({r['resumed']} were already there) into {r['out']}: "
          f"{r['shards_written']} shards, mean NFE {r['mean_nfe']:.1f}, {r['samples_per_s']:.1f} samples/s "
          f"(incl. compile)")
