"""Training: config validation, learning, atomic resumable checkpoints, export/load round trip."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsde.checkpoints import embedded as pt
from jaxsde.checkpoints.io import atomic_write
from jaxsde.data import load_digits
from jaxsde.models.score import output_to_score
from jaxsde.sde import VESDE, VPSDE
from jaxsde.training import (
    TrainConfig,
    debias_ema,
    ema_update,
    export_weights,
    init_params,
    init_state,
    make_train_steps,
    train,
)


def test_digits_split():
    train_set, test_set = load_digits("train"), load_digits("test")
    assert train_set.images.shape == (1438, 8, 8, 1) and test_set.images.shape == (359, 8, 8, 1)
    assert train_set.images.min() == -1.0 and train_set.images.max() == 1.0
    assert load_digits("test", (0.0, 1.0)).images.min() == 0.0
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")


@pytest.mark.parametrize("kwargs,match", [(dict(size="huge"), "size"), (dict(sde="foo"), "sde"),
                                          (dict(parameterization="y"), "parameterization"),
                                          (dict(data="mnist"), "data"), (dict(weighting="w"), "weighting")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs).validate()


# v-prediction is defined for VP-type SDEs only: no ("ve", "v") case
PARAM_CASES = [(VPSDE(), p) for p in ("eps", "x0", "v", "score")] + [(VESDE(), p) for p in ("eps", "x0", "score")]


@pytest.mark.parametrize("sde,param", PARAM_CASES, ids=[f"{type(s).__name__}-{p}" for s, p in PARAM_CASES])
def test_parameterizations_agree_on_the_exact_score(sde, param):
    """Each parameterisation's map inverts its definition on an exact (x0, eps) pair."""
    x0, eps, t = jnp.array([0.3, -0.2]), jnp.array([1.1, -0.4]), 0.4
    alpha, sigma = sde.marginal(t)
    x = alpha * x0 + sigma * eps
    out = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0, "score": -eps}[param]
    np.testing.assert_allclose(output_to_score(sde, out, x, t, param), -eps / sigma, rtol=1e-5)


# The run every test here trains with (finished_run trains it through train(); the other tests step its program,
# compiled once: read back from the session's compilation cache). ema_decay 0.7: after 4 updates the init keeps a
# 0.7^4 = 24% share of the plain EMA (the debiasing test).
RUN_CONFIG = TrainConfig(size="small", steps=60, batch_size=8, warmup_steps=10, learning_rate=3e-3, ema_decay=0.7)


def run_data():
    """train()'s data for RUN_CONFIG."""
    return jnp.asarray(load_digits("train", RUN_CONFIG.make_sde().data_range).images)


@pytest.fixture(scope="module")
def run_steps():
    """RUN_CONFIG's one-update program on run_data(), shared by the tests that step it by hand (compiled by
    finished_run's train(): read back from the session's compilation cache, once)."""
    return make_train_steps(RUN_CONFIG, run_data(), 1)


def test_training_lowers_the_loss(finished_run, run_steps):
    state = init_state(RUN_CONFIG, run_data().shape[1:])
    losses = []
    for _ in range(60):
        state, loss = run_steps(state)
        losses.append(float(loss))
    assert np.mean(losses[-15:]) < 0.75 * np.mean(losses[:5]), (losses[:5], losses[-15:])
    # EMA lags the raw weights
    leaf = jax.tree_util.tree_leaves(state.params)[3]
    assert not np.allclose(leaf, jax.tree_util.tree_leaves(state.params_ema)[3])
    # the steps train() took
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(finished_run[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished RUN_CONFIG training run (its directory and final state), shared: training compiles the
    network's gradient, the most expensive program here."""
    out = str(tmp_path_factory.mktemp("training") / "run")
    return out, train(RUN_CONFIG, out, log_every=20, checkpoint_every=20, verbose=False)


def test_resume_export_and_load(finished_run, tmp_path, capsys):
    out, state = finished_run
    config = RUN_CONFIG
    assert int(state.step) == RUN_CONFIG.steps and os.path.exists(os.path.join(out, "checkpoint.msgpack"))
    again = train(config, out, verbose=True)  # same arguments: resumes, nothing left to do
    assert f"resuming from step {RUN_CONFIG.steps}" in capsys.readouterr().out
    leaves = jax.tree_util.tree_leaves
    np.testing.assert_array_equal(leaves(again.params)[0], leaves(state.params)[0])
    with pytest.raises(ValueError, match="another configuration"):
        train(TrainConfig(size="small", steps=4, batch_size=16, warmup_steps=2), out, verbose=False)
    path = str(tmp_path / "w.msgpack")
    export_weights(out, path)
    ckpt = pt.load_weights_file(path)
    assert ckpt.shape == (8, 8, 1) and ckpt.data_range == (-1.0, 1.0)
    x = jnp.zeros((8, 8, 1))
    s = jax.jit(ckpt.score)(x, 0.5)  # the params concrete (constants of the program)
    assert s.shape == x.shape and bool(jnp.all(jnp.isfinite(s)))
    # traced params give the same score
    s2 = jax.jit(lambda p: ckpt.score_fn(p)(x, 0.5))(ckpt.params)
    np.testing.assert_allclose(s, s2, rtol=1e-5, atol=1e-5)


def test_bad_weight_files_give_clear_errors(finished_run, tmp_path):
    out, _ = finished_run
    good = str(tmp_path / "good.msgpack")
    export_weights(out, good)
    data = open(good, "rb").read()
    truncated = str(tmp_path / "truncated.msgpack")
    atomic_write(truncated, data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.msgpack"):
        pt.load_weights_file(truncated)
    from flax import serialization

    payload = serialization.msgpack_restore(data)
    del payload["params_ema"]["params"]["Conv_0"]
    missing = str(tmp_path / "missing.msgpack")
    atomic_write(missing, serialization.msgpack_serialize(payload))
    with pytest.raises(ValueError, match=r"missing.msgpack: missing parameter /params/Conv_0"):
        pt.load_weights_file(missing)
    payload = serialization.msgpack_restore(data)
    payload["params_ema"]["params"]["Conv_0"]["kernel"] = np.zeros((3, 3, 1, 5), np.float32)
    wrong = str(tmp_path / "wrong.msgpack")
    atomic_write(wrong, serialization.msgpack_serialize(payload))
    with pytest.raises(ValueError, match=r"Conv_0/kernel has shape \(3, 3, 1, 5\), expected \(3, 3, 1, 16\)"):
        pt.load_weights_file(wrong)
    with pytest.raises(ValueError, match="unknown model"):
        pt.pretrained("cifar10")


def test_debiased_ema_has_no_share_of_the_init(run_steps):
    """The debiased EMA of RUN_CONFIG's run (4 updates of its one-update program) equals the plain
    EMA recursion over the same weights (ema_update with debias=False, what a run with ema_debias false
    keeps: the optimiser's steps do not read the EMA) with the init's share removed (debias_ema), and its
    first update is the trained weights themselves."""
    data, updates, decay = run_data(), 4, RUN_CONFIG.ema_decay
    assert RUN_CONFIG.ema_debias
    init = init_params(RUN_CONFIG, data.shape[1:])
    state, plain = init_state(RUN_CONFIG, data.shape[1:]), init
    for k in range(1, updates + 1):
        state, _ = run_steps(state)
        plain = ema_update(plain, state.params, jnp.int32(k), decay, debias=False)
        if k == 1:
            np.testing.assert_array_equal(*(np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])
                                            for t in (state.params_ema, state.params)))
    recovered = debias_ema(plain, init, updates, decay)
    for a, b in zip(jax.tree_util.tree_leaves(recovered), jax.tree_util.tree_leaves(state.params_ema), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    flat = [np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)]) for t in (state.params_ema, plain)]
    assert np.abs(flat[0] - flat[1]).max() > 1e-4  # the plain EMA differs (0.7^4 = 24% init): the test can fail


def test_debias_weights_file(tmp_path):
    """An old-format weights file (no ema_debias: the plain EMA) is rewritten debiased, once."""
    import json

    from jaxsde.checkpoints.io import load_msgpack, save_msgpack
    from jaxsde.training import debias_weights_file

    cfg = TrainConfig(size="small", steps=3, ema_decay=0.9)
    init = init_params(cfg, (8, 8, 1))
    trained = jax.tree_util.tree_map(lambda a: a + 1.0, init)
    old_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "ema_debias"}
    plain = jax.tree_util.tree_map(lambda i, p: 0.9**3 * i + (1 - 0.9**3) * p, init, trained)
    path = str(tmp_path / "w.msgpack")
    save_msgpack(path, {"params_ema": plain, "config": json.dumps(old_cfg), "step": 3})
    debias_weights_file(path)
    out = load_msgpack(path)
    assert json.loads(out["config"])["ema_debias"] is True
    for a, b in zip(jax.tree_util.tree_leaves(out["params_ema"]), jax.tree_util.tree_leaves(trained), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already debiased"):
        debias_weights_file(path)
