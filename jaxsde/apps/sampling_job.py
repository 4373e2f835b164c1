"""``jaxsde sample``: generate images from an embedded model, write a grid, report NFE and quality."""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import driver, guidance
from ..checkpoints.embedded import NAMES, pretrained
from ..data import to_unit_range
from ..multilevel_batch import sample_multilevel
from ..solvers.multilevel import MultilevelEM, MultilevelScore
from ..solvers.registry import make_solver

# The levels of the multilevel sampler on the embedded VP digits models, coarsest first.
DIGITS_LEVELS = ("digits-small", "digits-medium", "digits-large")


def grid_for_model(solver, sde):
    """``solver`` with a grid defined at the model's start: on a flow (``alpha(T) = 0``, where the
    log-SNR is ``-inf``) a fixed-grid solver's log-SNR or EDM grid becomes ``"uniform"`` in ``t``
    (diffusers' flow grid without shift: ``linspace(1, 1/1000)`` is ``uniform`` from ``T = 1`` to
    ``eps = 1e-3``); anything else unchanged.

    Args:
        solver: the solver the command line built.
        sde: the model's SDE.

    Returns:
        The solver to run.
    """
    import dataclasses

    from ..solvers.base import FixedGridSolver

    if (isinstance(solver, FixedGridSolver) and isinstance(solver.grid, str) and solver.grid != "uniform"
            and sde.alpha_vanishes_at_T):
        return dataclasses.replace(solver, grid="uniform")
    return solver


def check_output_path(path: str) -> None:
    """Fail early, with a clear message, if ``path`` cannot be written."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write {path}: folder {folder} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"cannot write {path}: it is a directory")


def save_grid(images: np.ndarray, path: str, data_range, scale: int = 4, columns: int | None = None) -> None:
    """Tile ``images`` ``(n, H, W, C)`` into one PNG (nearest-neighbour upscaled by ``scale``)."""
    from PIL import Image

    x = to_unit_range(images, data_range)
    n, h, w, c = x.shape
    cols = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    pad = 1
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    img = (grid * 255).round().astype(np.uint8)
    img = np.repeat(np.repeat(img, scale, 0), scale, 1)
    mode = "L" if c == 1 else "RGB"
    Image.fromarray(img[..., 0] if c == 1 else img, mode).save(path)


def grid_columns(n: int) -> int:
    """Columns of :func:`save_grid`'s default layout for ``n`` images."""
    return int(math.ceil(math.sqrt(n)))


def sample_labels(label: int | str, n: int, num_classes: int) -> np.ndarray:
    """The requested class of each of ``n`` samples: ``label`` for all, or ``"all"``: grid row ``r``
    (of :func:`grid_columns` columns) gets class ``r mod num_classes``."""
    if isinstance(label, str) and label == "all":
        return ((np.arange(n) // grid_columns(n)) % num_classes).astype(np.int32)
    try:
        value = int(label)
    except (TypeError, ValueError):
        raise ValueError(f"--label must be an integer in 0..{num_classes - 1} or 'all', got {label!r}") from None
    if str(value) != str(label).strip() or not 0 <= value < num_classes:
        raise ValueError(f"--label must be an integer in 0..{num_classes - 1} or 'all', got {label!r}")
    return np.full(n, value, np.int32)


def save_samples(path: str, x: np.ndarray, nfe: np.ndarray, result: np.ndarray, data_range, **extra) -> None:
    """Write ``x`` (n, *shape) in the model's data range, ``nfe``, ``result``, ``data_range`` (and
    ``extra`` arrays, e.g. ``label``) to one ``.npz`` file, atomically."""
    import io

    from ..checkpoints.io import atomic_write

    buf = io.BytesIO()
    np.savez(buf, x=x, nfe=nfe, result=result, data_range=np.asarray(data_range, np.float32), **extra)
    atomic_write(path, buf.getvalue())


def run_sample(model: str = "digits", solver: str = "ggf", n: int = 64, seed: int = 0, out: str | None = "grid.png",
               batch_size: int = 256, metrics: bool = True, progress: bool = True, label: int | str | None = None,
               guidance_weight: float | None = None, samples: str | None = None, **solver_options) -> dict:
    """Sample ``n`` images in batches of ``batch_size`` (sample ``i`` uses ``fold_in(key, i)``,
    whatever the batching), write a grid, return NFE/time/quality figures.

    A class-conditional model (``digits-cond``) samples the classes ``label`` asks for (see
    :func:`sample_labels`; default ``"all"``), with classifier-free guidance of weight
    ``guidance_weight`` (default 0: the conditional score). ``samples``: also write the samples to
    this ``.npz`` (:func:`save_samples`)."""
    if model not in NAMES:
        raise ValueError(f"unknown model {model!r}; available: {', '.join(NAMES)}")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"--n must be a positive integer, got {n}")
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    the_solver = make_solver(solver, **solver_options)
    for path in (out, samples):
        if path:
            check_output_path(path)
    if samples and not samples.endswith(".npz"):
        raise ValueError(f"--samples must name a .npz file, got {samples!r}")
    if guidance_weight is not None:
        guidance.check_weight(guidance_weight, "--guidance")
    multilevel = isinstance(the_solver, MultilevelEM)
    if multilevel and model not in ("digits", "digits-large"):
        raise ValueError(f"--solver {solver} samples the largest VP digits model through its smaller levels; "
                         f"use --model digits (got {model!r})")
    ckpt = pretrained(model)
    the_solver = grid_for_model(the_solver, ckpt.sde)
    conditional = getattr(ckpt, "num_classes", None) is not None
    if not conditional and label is not None:
        raise ValueError(f"--label needs a class-conditional model (e.g. --model digits-cond); {model!r} is "
                         f"unconditional")
    if not conditional and guidance_weight is not None:
        raise ValueError(f"--guidance (classifier-free) needs a model trained with a null class (e.g. --model "
                         f"digits-cond); {model!r} is unconditional")
    levels = [pretrained(name) for name in DIGITS_LEVELS] if multilevel else [ckpt]
    all_params = [c.params for c in levels]
    key = jax.random.PRNGKey(seed)
    batch = min(batch_size, n)
    labels = sample_labels("all" if label is None else label, n, ckpt.num_classes) if conditional else None
    padded = None if labels is None else np.concatenate([labels, np.zeros(batch, np.int32)])
    weight = 0.0 if guidance_weight is None else float(guidance_weight)

    @jax.jit
    def chunk(params, offset, cond):
        if multilevel:
            score = MultilevelScore([c.score_fn(p) for c, p in zip(levels, params, strict=True)])
            return sample_multilevel(key, ckpt.sde, score, the_solver, ckpt.shape, batch, offset=offset)
        score = ckpt.score_fn(params[-1])
        if cond is not None and weight != 0.0:
            score = guidance.classifier_free(score, ckpt.null_cond, weight)
        return driver.sample(key, ckpt.sde, score, the_solver, ckpt.shape, batch, offset=offset, cond=cond)

    def cond_at(start):
        return None if padded is None else jnp.asarray(padded[start:start + batch])

    t0 = time.perf_counter()
    compiled = chunk.lower(all_params, jnp.int32(0), cond_at(0)).compile()
    compile_s = time.perf_counter() - t0
    xs, nfes, results, iters = [], [], [], []
    starts = list(range(0, n, batch))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="sample", desc=f"{model} {solver}")
    t0 = time.perf_counter()
    for start in starts:
        sol = jax.block_until_ready(compiled(all_params, jnp.int32(start), cond_at(start)))
        take = min(batch, n - start)
        xs.append(np.asarray(sol.x[:take]))
        nfes.append(np.asarray(sol.stats.nfe[:take]))
        results.append(np.asarray(sol.result[:take]))
        iters.append(int(np.asarray(sol.stats.num_steps).max()))
        if bar is not None:
            bar.update(take)
            bar.set_postfix(mean_nfe=f"{np.concatenate(nfes).mean():.0f}")
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    x, nfe, result = np.concatenate(xs), np.concatenate(nfes), np.concatenate(results)
    report = dict(model=model, solver=solver, solver_repr=repr(the_solver), n=n, seed=seed,
                  mean_nfe=float(nfe.mean()), max_nfe=int(nfe.max()), min_nfe=int(nfe.min()),
                  loop_iterations=iters, wall_s=wall, compile_s=compile_s, failed=int(np.sum(result != 0)))
    if conditional:
        report.update(label="all" if label is None else label, guidance=weight)
    if metrics:
        from ..testing.metrics.digits import DigitsMetrics

        digits_metrics = DigitsMetrics()
        report.update(digits_metrics.report(x, ckpt.data_range))
        report["kid_floor_sd"] = kid_floor_spread(digits_metrics, report["n_floor"])
        if conditional:
            predicted = np.argmax(digits_metrics.probabilities(x, ckpt.data_range), axis=-1)
            report["label_accuracy"] = float(np.mean(predicted == labels))
    if out:
        save_grid(x, out, ckpt.data_range, columns=grid_columns(n))
    if samples:
        extra = {} if labels is None else {"label": labels}
        save_samples(samples, x, nfe, result, ckpt.data_range, **extra)
    report["x"] = x
    return report


def kid_floor_spread(digits_metrics, n: int, repeats: int = 20, seed: int = 0) -> float:
    """The spread (standard deviation) of KID between ``n`` held-out real digits and the training
    set, over ``repeats`` random draws of the ``n`` images: the metric's noise at this ``n``, which
    says how far from 0 a KID has to be to mean anything. NaN when no two draws differ (``n`` is
    all the held-out images).

    Args:
        digits_metrics: a ``jaxsde.testing.metrics.digits.DigitsMetrics``.
        n: images per draw (at most the 359 held-out images).
        repeats: draws.
        seed: the draws' NumPy seed.

    Returns:
        The standard deviation of the ``repeats`` KID values.
    """
    test = digits_metrics.test_images
    if n >= len(test) or n < 2:
        return float("nan")
    real = digits_metrics.features(test, (0.0, 1.0))
    train = digits_metrics.train_features
    d, m = train.shape[1], len(train)
    ktt = (train @ train.T / d + 1) ** 3
    train_term = (ktt.sum() - np.trace(ktt)) / (m * (m - 1))  # the same in every draw: computed once
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(repeats):
        a = real[rng.choice(len(real), n, replace=False)]
        kaa, kab = (a @ a.T / d + 1) ** 3, (a @ train.T / d + 1) ** 3
        values.append((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + train_term - 2 * kab.mean())
    return float(np.std(values, ddof=1))


def print_report(r: dict, out: str | None) -> None:
    print(f"{r['model']} / {r['solver_repr']}: n={r['n']} seed={r['seed']}")
    print(f"NFE per sample: mean {r['mean_nfe']:.1f}, min {r['min_nfe']}, max {r['max_nfe']}; "
          f"wall {r['wall_s']:.2f} s (+{r['compile_s']:.1f} s compile); failed {r['failed']}")
    if "label" in r:
        print(f"classes: {r['label']}, classifier-free guidance weight {r['guidance']}"
              + (f"; {100 * r['label_accuracy']:.1f}% classified as the requested class" if "label_accuracy" in r
                 else ""))
    if "fd" in r:
        # Each figure next to what held-out real digits score at the same n ("real"): the metrics are
        # noisy at small n, and a sample set that scores like real digits is as good as they can tell.
        print(f"quality against the 1438 training digits, lower is better; 'real' = what {r['n_floor']} held-out "
              f"real digits score:")
        print(f"  FD-digits {r['fd']:.2f} (real {r['fd_floor']:.2f}): Frechet distance of a digits classifier's "
              f"features, as FID")
        spread = r.get("kid_floor_sd", float("nan"))
        if np.isfinite(spread):
            verdict = ("within the noise of real digits" if abs(r["kid"] - r["kid_floor"]) <= 2 * spread
                       else "further from the training digits than real digits are")
            print(f"  KID {r['kid']:.2f} (real {r['kid_floor']:.2f} +- {spread:.2f}, {verdict}): kernel distance "
                  f"of the same features,")
        else:
            print(f"  KID {r['kid']:.2f} (real {r['kid_floor']:.2f}): kernel distance of the same features,")
        print(f"      0 for identical distributions; unbiased, so at n={r['n']} its noise can take it below 0")
        print(f"  classes: {100 * r['confident']:.0f}% of samples classified with probability >= 0.9; class "
              f"histogram {r['class_tv']:.3f} from uniform (total variation)")
    if out:
        print(f"wrote {out}")
