"""Denoising score matching in continuous time, with optax, EMA and resumable checkpoints.

Loss for data ``x0``, ``t ~ U(eps, T)``, ``x_t = alpha x0 + sigma eps``:
``w(t) * mean((sigma * s_theta(x_t, t) + eps)^2)``, i.e. score matching with weight
``sigma^2`` (``weighting="simple"``, the DDPM epsilon loss) or ``g(t)^2`` (``"likelihood"``,
Song et al. 2021's likelihood weighting, ``w = g^2 / sigma^2``), for any network
parameterisation (``eps``, ``x0``, ``v``, ``score``; see :mod:`jaxsde.models.score`).

Optimiser: gradient clipping, AdamW with linear warm-up and cosine decay; a debiased EMA of
the weights (:func:`ema_update`: the initialisation has no share in it). The jit-compiled step
runs one update per call (see ``make_train_steps``). Checkpoints are written atomically and a
rerun with the same configuration resumes.

Flow matching (``parameterization="flow"``, e.g. on ``sde="flow"``): :func:`flow_matching_loss`
on the raw network output, ``mean((out - (alpha' x0 + sigma' eps))^2)`` (target ``eps - x0`` on
:class:`~jaxsde.sde.FlowSDE`), with ``t`` uniform or logit-normal (SD3's, ``time_sampling``);
finite at ``t = 1``, where the score loss's weight ``1/alpha^2`` would be infinite.

Class-conditional runs (``TrainConfig.num_classes``): the network also receives the digits'
labels, each replaced by the null class ``num_classes`` with probability ``label_dropout``
(per example, from the step's key), so one network learns the conditional and the
unconditional score (classifier-free guidance).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from .checkpoints.io import atomic_write, load_msgpack, save_msgpack
from .data import load_digits
from .models.score import batched_output, batched_score, input_scale
from .sde import SDE
from .train_config import TrainConfig


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    params_ema: Any
    opt_state: Any
    key: jax.Array


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    decay_steps = max(config.steps, config.warmup_steps + 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, decay_steps,
                                                  config.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


def dsm_loss(score_batched, sde, weighting: str):
    """Denoising score-matching loss ``loss(params, x0, key, *cond)`` for a batch ``x0`` (and,
    for a conditional network, its conditions ``cond: (B,)``, passed on to ``score_batched``)."""

    def loss(params, x0, key, *cond):
        k_t, k_eps = jax.random.split(key)
        t = jax.random.uniform(k_t, (x0.shape[0],), x0.dtype, sde.eps, sde.T)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        alpha, sigma = sde.marginal(t)
        x_t = alpha.reshape(shape) * x0 + sigma.reshape(shape) * eps
        s = score_batched(params, x_t, t, *cond)
        per_sample = jnp.mean(jnp.square(sigma.reshape(shape) * s + eps), axis=tuple(range(1, x0.ndim)))
        if weighting == "likelihood":
            per_sample = per_sample * sde.diffusion(t) ** 2 / sigma**2
        return jnp.mean(per_sample)

    return loss


TIME_SAMPLINGS = ("uniform", "logit_normal")


def sample_times(key: jax.Array, n: int, sde: SDE, time_sampling: str = "uniform", dtype=jnp.float32,
                 logit_mean: float = 0.0, logit_std: float = 1.0) -> jax.Array:
    """``n`` training times ``(n,)`` in ``[sde.eps, sde.T]``: ``"uniform"`` on that interval (as
    :func:`dsm_loss`), or ``"logit_normal"`` (SD3, Esser et al. 2024):
    ``T * sigmoid(logit_mean + logit_std * z)``, ``z ~ N(0, 1)``, clipped to ``[eps, T]``."""
    if time_sampling == "uniform":
        return jax.random.uniform(key, (n,), dtype, sde.eps, sde.T)
    if time_sampling == "logit_normal":
        if not logit_std > 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        z = jax.random.normal(key, (n,), dtype)
        return jnp.clip(sde.T * jax.nn.sigmoid(logit_mean + logit_std * z), sde.eps, sde.T)
    raise ValueError(f"unknown time_sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}")


def flow_matching_loss(output_batched: Callable, sde: SDE, time_sampling: str = "uniform", logit_mean: float = 0.0,
                       logit_std: float = 1.0) -> Callable:
    """Flow-matching loss ``loss(params, x0, key, *cond)`` for a batch ``x0: (B, ...)`` on the
    network's raw output ``output_batched(params, x_t, t, *cond)`` (a velocity, shaped like
    ``x_t``; e.g. :func:`jaxsde.models.score.batched_output`):
    ``mean_b mean_i (out - (alpha' x0 + sigma' eps))^2`` with ``x_t = alpha x0 + sigma eps``,
    ``t`` from :func:`sample_times` (``time_sampling``, ``logit_mean``, ``logit_std``). On
    :class:`~jaxsde.sde.FlowSDE` the target is ``eps - x0`` (rectified flow); for any SDE it is
    the path's velocity, minimised by the exact ``E[alpha' x0 + sigma' eps | x_t]``. Finite for
    every ``t`` in ``[0, T]``, ``t = 1`` included."""
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time_sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}")

    def loss(params, x0, key, *cond):
        k_t, k_eps = jax.random.split(key)
        t = sample_times(k_t, x0.shape[0], sde, time_sampling, x0.dtype, logit_mean, logit_std)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        alpha, sigma = sde.marginal(t)
        dalpha, dsigma = sde.marginal_derivatives(t)
        x_t = alpha.reshape(shape) * x0 + sigma.reshape(shape) * eps
        target = dalpha.reshape(shape) * x0 + dsigma.reshape(shape) * eps
        out = output_batched(params, x_t, t, *cond)
        return jnp.mean(jnp.square(out - target))

    return loss


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float, debias: bool = True) -> Any:
    """The EMA after update number ``step`` (1, 2, ...) with the new ``params``.

    ``debias=True``: ``ema_k = sum_j (1 - d) d^(k - j) p_j / (1 - d^k)``, the normalised
    exponential average of the weights after updates ``1..k`` (step size ``(1 - d) / (1 - d^k)``:
    1 at the first update, so the initial value drops out), as optax's ``ema(debias=True)``.
    ``debias=False``: the plain recursion ``ema_k = d ema_(k-1) + (1 - d) p_k`` from
    ``ema_0 = init``, which keeps ``d^k`` of the random initialisation in the weights.
    """
    step_size = 1.0 - decay
    if debias:
        step_size = step_size / (1.0 - jnp.asarray(decay, jnp.float32) ** jnp.asarray(step, jnp.float32))
    return optax.incremental_update(params, ema, step_size)


def debias_ema(ema: Any, init: Any, steps: int, decay: float) -> Any:
    """The debiased EMA (``ema_update(..., debias=True)``) of a run that kept the plain one:
    ``(ema - d^k init) / (1 - d^k)`` after ``k = steps`` updates from the initial weights ``init``.
    Equal to the debiased run's EMA up to float rounding (the same weights, the same updates)."""
    share = float(decay) ** int(steps)
    return jax.tree_util.tree_map(lambda e, i: (e - share * i) / (1.0 - share), ema, init)


def init_params(config: TrainConfig, sample_shape: tuple[int, ...]) -> Any:
    """The network's initial weights of a run with ``config`` (``config.seed``)."""
    k_init, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    label = () if config.num_classes is None else (jnp.zeros((1,), jnp.int32),)
    return config.make_model().init(k_init, jnp.zeros((1, *sample_shape)), jnp.zeros((1,)), *label)


def debias_weights_file(path: str, out: str | None = None, sample_shape: tuple[int, ...] = (8, 8, 1)) -> None:
    """Rewrite an exported weights file whose config has ``ema_debias`` false (the plain EMA)
    with its debiased EMA (:func:`debias_ema`, the initial weights rebuilt from the config's
    seed) and ``ema_debias: true`` in its config; ``out`` defaults to ``path`` (atomic)."""
    payload = load_msgpack(path)
    cfg = json.loads(payload["config"])
    config = TrainConfig.from_dict(cfg)
    if config.ema_debias:
        raise ValueError(f"{path}: its EMA is already debiased (config ema_debias = true)")
    params = debias_ema(payload["params_ema"], init_params(config, sample_shape), int(payload["step"]),
                        config.ema_decay)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    cfg = {**cfg, "ema_debias": True}
    save_msgpack(out or path, {"params_ema": params, "config": json.dumps(cfg), "step": int(payload["step"])})


def init_state(config: TrainConfig, sample_shape: tuple[int, ...]) -> TrainState:
    _, key = jax.random.split(jax.random.PRNGKey(config.seed))
    params = init_params(config, sample_shape)
    opt_state = make_optimizer(config).init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, params, opt_state, key)


def drop_labels(key: jax.Array, labels: jax.Array, num_classes: int, rate: float) -> jax.Array:
    """``labels`` with each entry replaced by the null class ``num_classes`` with probability
    ``rate`` (independently, from ``key``)."""
    return jnp.where(jax.random.bernoulli(key, rate, labels.shape), jnp.int32(num_classes), labels)


def make_train_steps(config: TrainConfig, data: jax.Array, steps_per_call: int = 1, labels: jax.Array | None = None):
    """A jitted function running ``steps_per_call`` updates; returns (state, mean loss).

    ``labels: (n,)`` int, the classes of ``data``'s rows: required when ``config.num_classes`` is
    set (then dropped to the null class at rate ``config.label_dropout``), refused otherwise.

    Keep ``steps_per_call=1`` on CPU: XLA's CPU backend runs convolutions inside a
    ``lax.scan`` body much slower than at top level (seen with jax 0.10).
    """
    conditional = config.num_classes is not None
    if conditional != (labels is not None):
        raise ValueError("labels are required for a class-conditional config (num_classes set) and only then")
    if conditional:
        labels = jnp.asarray(labels, jnp.int32)
        if labels.shape != data.shape[:1]:
            raise ValueError(f"labels have shape {labels.shape}, expected ({data.shape[0]},)")
    sde = config.make_sde()
    model = config.make_model()
    if config.parameterization == "flow":
        loss_fn = flow_matching_loss(batched_output(model.apply, sde, config.sigma_data), sde, config.time_sampling)
    else:
        score_batched = batched_score(model.apply, sde, config.parameterization, config.sigma_data)
        loss_fn = dsm_loss(score_batched, sde, config.weighting)
    tx = make_optimizer(config)

    def one(state: TrainState, _):
        key, k_batch, k_loss = jax.random.split(state.key, 3)
        idx = jax.random.randint(k_batch, (config.batch_size,), 0, data.shape[0])
        cond = ()
        if conditional:
            k_loss, k_drop = jax.random.split(k_loss)
            cond = (drop_labels(k_drop, labels[idx], config.num_classes, config.label_dropout),)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, data[idx], k_loss, *cond)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.params_ema, params, state.step + 1, config.ema_decay, config.ema_debias)
        return TrainState(state.step + 1, params, ema, opt_state, key), loss

    @jax.jit
    def run(state: TrainState):
        if steps_per_call == 1:
            return one(state, None)
        state, losses = jax.lax.scan(one, state, None, length=steps_per_call)
        return state, jnp.mean(losses)

    return run


def _config_path(out_dir: str) -> str:
    return os.path.join(out_dir, "config.json")


def _ckpt_path(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoint.msgpack")


def train(config: TrainConfig, out_dir: str, log_every: int = 500, checkpoint_every: int = 2000,
          verbose: bool = True) -> TrainState:
    """Train (or resume) into ``out_dir``: ``config.json``, ``checkpoint.msgpack`` (full state)."""
    config.validate()
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(_config_path(out_dir)):
        with open(_config_path(out_dir)) as f:
            previous = TrainConfig.from_dict(json.load(f))
        if previous != config:
            old, new = dataclasses.asdict(previous), dataclasses.asdict(config)
            diff = {k: (old[k], v) for k, v in new.items() if old[k] != v}
            raise ValueError(f"{out_dir} holds a run with another configuration (old, new): {diff}; "
                             "use a new --out or the same arguments")
    else:
        atomic_write(_config_path(out_dir), json.dumps(dataclasses.asdict(config), indent=1).encode())

    sde = config.make_sde()
    digits = load_digits("train", sde.data_range)
    data = jnp.asarray(digits.images)
    labels = None
    if config.num_classes is not None:
        labels = np.asarray(digits.labels, np.int32)
        if labels.min() < 0 or labels.max() >= config.num_classes:
            raise ValueError(f"the {config.data} labels span {labels.min()}..{labels.max()}, "
                             f"outside 0..{config.num_classes - 1}")
    state = init_state(config, data.shape[1:])
    if os.path.exists(_ckpt_path(out_dir)):
        state = serialization.from_state_dict(state, load_msgpack(_ckpt_path(out_dir)))
        if verbose:
            print(f"resuming from step {int(state.step)}", flush=True)
    run = make_train_steps(config, data, labels=labels)
    t0, start_step = time.time(), int(state.step)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    if verbose:
        cond = "" if config.num_classes is None else (f", {config.num_classes} classes, "
                                                      f"label dropout {config.label_dropout}")
        print(f"training {config.size} ({n_params:,} parameters) on {data.shape[0]} digits, sde={config.sde}{cond}",
              flush=True)
    losses = []
    while int(state.step) < config.steps:
        state, loss = run(state)
        step = int(state.step)
        log = verbose and (step % log_every == 0 or step >= config.steps)
        if step % 50 == 0 or log:  # reading the loss syncs with the device: not every step
            losses.append(float(loss))
        if log:
            rate = (step - start_step) / max(time.time() - t0, 1e-9)
            print(f"step {step:6d}  loss {np.mean(losses[-5:]):.4f}  {rate:.1f} steps/s", flush=True)
        if step % checkpoint_every == 0 or step >= config.steps:
            save_msgpack(_ckpt_path(out_dir), state)
    return state


def export_weights(out_dir: str, path: str, dtype=jnp.float32) -> None:
    """Write the EMA weights and the configuration of a finished run to one msgpack file
    (``{"params_ema": ..., "config": json, "step": int}``), the format ``pretrained`` loads."""
    with open(_config_path(out_dir)) as f:
        cfg = json.load(f)
    state = load_msgpack(_ckpt_path(out_dir))
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), state["params_ema"])
    save_msgpack(path, {"params_ema": params, "config": json.dumps(cfg), "step": int(state["step"])})


NOISY_CLASSIFIER_EVAL_TIMES = (0.01, 0.3, 0.6, 0.9)


def noisy_classifier_accuracy(clf, t: float, split: str = "test", draws: int = 4, seed: int = 0) -> float:
    """Accuracy of a :class:`~jaxsde.checkpoints.embedded.NoisyClassifier` on the digits of
    ``split`` noised to time ``t`` under its SDE (``draws`` noise draws per image, from ``seed``)."""
    digits = load_digits(split, clf.sde.data_range)
    x0 = jnp.tile(jnp.asarray(digits.images), (draws, 1, 1, 1))
    labels = np.tile(digits.labels, draws)
    alpha, sigma = clf.sde.marginal(jnp.float32(t))
    x_t = alpha * x0 + sigma * jax.random.normal(jax.random.PRNGKey(seed), x0.shape, x0.dtype)
    logits = jax.jit(jax.vmap(lambda p, x: clf.logits_fn(p)(x, t), (None, 0)))(clf.params, x_t)
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def train_noisy_classifier(path: str | None = None, steps: int = 4000, batch_size: int = 128,
                           learning_rate: float = 2e-3, weight_decay: float = 1e-4, sde: str = "vp",
                           channels: tuple[int, ...] = (32, 64), emb_dim: int = 64, hidden: int = 128,
                           sigma_data: float = 0.5, seed: int = 0, eval_times=NOISY_CLASSIFIER_EVAL_TIMES,
                           verbose: bool = True):
    """Train the classifier of noised digits (:class:`jaxsde.models.noisy_classifier.NoisyDigitsClassifier`)
    by cross-entropy on training digits noised under ``sde`` at ``t ~ U(eps, T)``; AdamW with
    linear warm-up (200 steps) and cosine decay. Writes ``{"params", "config"}`` to ``path``
    (float32; ``None``: not saved). Returns ``(classifier, {t: held-out accuracy})``, the
    accuracy from :func:`noisy_classifier_accuracy` at each of ``eval_times``."""
    from .checkpoints.embedded import make_noisy_classifier

    if sde not in ("vp", "subvp", "ve"):
        raise ValueError(f"unknown sde {sde!r}; choose one of vp, subvp, ve")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
    config = dict(channels=list(channels), emb_dim=emb_dim, hidden=hidden, num_classes=10, sde=sde,
                  sigma_data=sigma_data, shape=[8, 8, 1], data="digits", steps=steps, batch_size=batch_size,
                  learning_rate=learning_rate, weight_decay=weight_decay, seed=seed)
    clf = make_noisy_classifier(None, config)
    sde_obj = clf.sde
    digits = load_digits("train", sde_obj.data_range)
    x_all, y_all = jnp.asarray(digits.images), jnp.asarray(digits.labels)
    k_init, key = jax.random.split(jax.random.PRNGKey(seed))
    params = clf.model.init(k_init, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(200, steps - 1) if steps > 1 else 0,
                                                  max(steps, 2), learning_rate * 0.05)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))
    opt = tx.init(params)

    def loss_fn(p, x0, y, key):
        k_t, k_z = jax.random.split(key)
        t = jax.random.uniform(k_t, (x0.shape[0],), x0.dtype, sde_obj.eps, sde_obj.T)
        alpha, sigma = sde_obj.marginal(t)
        x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * jax.random.normal(k_z, x0.shape)
        c_in = input_scale(sde_obj, t, sigma_data)[:, None, None, None]
        logits = clf.model.apply(p, c_in * x_t, t)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, opt, key):
        k_batch, k_loss = jax.random.split(key)
        idx = jax.random.randint(k_batch, (batch_size,), 0, x_all.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(p, x_all[idx], y_all[idx], k_loss)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    t0, losses = time.time(), []
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, opt, loss = step(params, opt, sub)
        if verbose and ((i + 1) % 500 == 0 or i + 1 == steps):
            losses.append(float(loss))
            print(f"step {i + 1:6d}  loss {losses[-1]:.4f}  {(i + 1) / (time.time() - t0):.1f} steps/s", flush=True)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    clf = make_noisy_classifier(jax.tree_util.tree_map(jnp.asarray, params), config)
    accuracy = {float(t): noisy_classifier_accuracy(clf, t) for t in eval_times}
    if verbose:
        print("held-out accuracy: " + ", ".join(f"t={t}: {a:.4f}" for t, a in accuracy.items()), flush=True)
    if path:
        save_msgpack(path, {"params": params, "config": json.dumps(config)})
    return clf, accuracy
