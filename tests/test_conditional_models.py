"""Class-conditional DigitsUNet, label-dropout training, the "digits-cond" checkpoint and the
noisy-digits classifier for classifier guidance (issue #21)."""

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

import jaxsde
from jaxsde.apps.cli import main as cli_main
from jaxsde.checkpoints import embedded as pt
from jaxsde.checkpoints.io import load_msgpack
from jaxsde.data import load_digits
from jaxsde.models.unet import SIZES, DigitsUNet
from jaxsde.training import (
    TrainConfig,
    drop_labels,
    export_weights,
    make_train_steps,
    noisy_classifier_accuracy,
)

X = jnp.zeros((8, 8, 1))


def _randomized(params, seed=0):
    """Every parameter redrawn N(0, 0.3^2): the zero-initialised output conv no longer hides the label.
    Only the shapes of ``params`` are read (an ``eval_shape`` tree will do); NumPy draws: no compilation
    per parameter shape."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(0.0, 0.3, a.shape), jnp.float32), params)


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), tree)


def test_conditional_unet_shapes_labels_and_null_class():
    net = DigitsUNet(channels=(8, 16), num_classes=10)
    x, t = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1)), jnp.full((4,), 0.5)
    # init's values are all redrawn: its shapes are enough
    params = _randomized(jax.eval_shape(net.init, jax.random.PRNGKey(0), x, t, jnp.zeros((4,), jnp.int32)))
    assert params["params"]["label_embed"]["embedding"].shape == (11, 64)
    apply = jax.jit(net.apply)  # one compilation for every label below
    out = {c: apply(params, x, t, jnp.full((4,), c, jnp.int32)) for c in (3, 5, 10)}
    assert all(o.shape == x.shape and bool(jnp.all(jnp.isfinite(o))) for o in out.values())
    assert float(jnp.max(jnp.abs(out[3] - out[5]))) > 1e-3  # the label changes the output
    assert float(jnp.max(jnp.abs(out[3] - out[10]))) > 1e-3  # the null class is a class of its own
    # out-of-range labels that cannot be checked (traced) give NaN, negative ones included
    bad = apply(params, x, t, jnp.array([-1, 11, 2, 10], jnp.int32))
    assert np.isnan(np.asarray(bad[:2])).all() and np.isfinite(np.asarray(bad[2:])).all()
    with pytest.raises(ValueError, match="class-conditional"):
        jax.eval_shape(net.apply, params, x, t)
    with pytest.raises(TypeError, match="integer"):
        jax.eval_shape(net.apply, params, x, t, jnp.zeros((4,)))
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(DigitsUNet(channels=(8, 16)).init, jax.random.PRNGKey(0), x, t, jnp.zeros((4,), jnp.int32))


def test_unconditional_parameter_tree_is_unchanged():
    """num_classes=None builds exactly the tree of the shipped unconditional weights; num_classes=10
    adds the label embedding and nothing else."""
    shipped = load_msgpack(os.path.join(pt.WEIGHTS_DIR, "digits-medium.msgpack"))["params_ema"]
    x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))
    uncond = jax.eval_shape(DigitsUNet(**SIZES["medium"]).init, jax.random.PRNGKey(0), x, t)
    assert _shapes(uncond) == _shapes(shipped)
    cond = jax.eval_shape(DigitsUNet(**SIZES["medium"], num_classes=10).init, jax.random.PRNGKey(0), x, t,
                          jnp.zeros((1,), jnp.int32))
    extra = dict(cond["params"])
    assert _shapes(extra.pop("label_embed")) == {"embedding": (11, 64)}
    assert _shapes({"params": extra}) == _shapes(shipped)


@pytest.mark.parametrize("kwargs,match", [(dict(num_classes=1), "num_classes"), (dict(num_classes=5), "10"),
                                          (dict(num_classes=10, label_dropout=1.0), "label_dropout"),
                                          (dict(label_dropout=-0.1), "label_dropout")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs).validate()


def test_old_config_dicts_load_unconditional():
    old = {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k not in ("num_classes", "label_dropout")}
    config = TrainConfig.from_dict(json.loads(json.dumps(old)))
    assert config.num_classes is None and config.label_dropout == 0.1 and config.make_model().num_classes is None


def test_label_dropout_rate():
    labels = jnp.arange(100_000, dtype=jnp.int32) % 10
    dropped = drop_labels(jax.random.PRNGKey(0), labels, 10, 0.1)
    is_null = np.asarray(dropped) == 10
    assert abs(is_null.mean() - 0.1) < 0.005  # binomial sd 0.001
    np.testing.assert_array_equal(np.asarray(dropped)[~is_null], np.asarray(labels)[~is_null])
    np.testing.assert_array_equal(drop_labels(jax.random.PRNGKey(0), labels, 10, 0.0), labels)


@pytest.mark.slow  # a training run through the CLI; the conditional model, config and dropout tests stay fast
def test_conditional_training_export_and_load(tmp_path, capsys):
    """`jaxsde train --num-classes 10` runs, its loss is finite, and the exported file loads with
    score(x, t, cond) (concrete and traced params, every label and the null class)."""
    digits = load_digits("train")
    config = TrainConfig(size="small", steps=3, batch_size=8, warmup_steps=1, num_classes=10, label_dropout=0.5)
    with pytest.raises(ValueError, match="labels are required"):
        make_train_steps(config, jnp.asarray(digits.images))
    with pytest.raises(ValueError, match="labels are required"):
        make_train_steps(TrainConfig(), jnp.asarray(digits.images), labels=digits.labels)

    out = str(tmp_path / "run")
    assert cli_main(["train", "--size", "small", "--steps", "3", "--batch-size", "8", "--num-classes", "10",
                     "--label-dropout", "0.5", "--out", out]) == 0
    logged = capsys.readouterr().out
    assert "10 classes, label dropout 0.5" in logged
    assert np.isfinite(float(re.search(r"step +3 +loss (\S+)", logged).group(1))), logged
    assert json.load(open(os.path.join(out, "config.json")))["num_classes"] == 10
    assert cli_main(["train", "--num-classes", "3", "--out", str(tmp_path / "bad")]) == 2
    path = str(tmp_path / "cond.msgpack")
    export_weights(out, path)
    ckpt = pt.load_weights_file(path)
    assert ckpt.num_classes == 10 and int(ckpt.null_cond) == 10 and ckpt.null_cond.dtype == jnp.int32
    s = jax.jit(ckpt.score)(X, 0.5, jnp.int32(3))
    assert s.shape == X.shape and s.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(s)))
    traced = jax.jit(lambda p, c: ckpt.score_fn(p)(X, 0.5, c))  # traced params and label
    np.testing.assert_allclose(traced(ckpt.params, jnp.int32(3)), s, rtol=1e-5, atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(traced(ckpt.params, ckpt.null_cond))))
    np.testing.assert_allclose(jax.jit(ckpt.convention.cond_score(ckpt.model.apply, ckpt.params))(X, 0.5, 3), s,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outside 0..10"):
        ckpt.score(X, 0.5, 11)
    with pytest.raises(TypeError, match="integer"):
        ckpt.score(X, 0.5, 3.0)


def test_unconditional_checkpoints_keep_score_x_t():
    ckpt = jaxsde.pretrained("digits-small")
    assert ckpt.num_classes is None and ckpt.null_cond is None
    assert jax.jit(ckpt.score)(X, 0.5).shape == X.shape  # (one program, not the U-Net op by op)


def test_pretrained_digits_cond():
    ckpt = jaxsde.pretrained("digits-cond")
    assert isinstance(ckpt.sde, jaxsde.VPSDE) and ckpt.shape == (8, 8, 1) and ckpt.num_classes == 10
    assert ckpt.null_cond.dtype == jnp.int32 and int(ckpt.null_cond) == 10
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 1))
    scores = jax.jit(jax.vmap(lambda c: ckpt.score(x, 0.3, c)))(jnp.arange(11, dtype=jnp.int32))
    assert scores.shape == (11, 8, 8, 1) and scores.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(scores)))
    assert float(jnp.max(jnp.abs(scores[1] - scores[7]))) > 1e-2  # trained: the label matters
    with pytest.raises(ValueError, match="outside"):
        ckpt.score(x, 0.3, jnp.int32(-1))


def test_noisy_classifier():
    clf = pt.noisy_classifier()
    assert isinstance(clf.sde, jaxsde.VPSDE) and clf.num_classes == 10
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 1))
    logits = jax.jit(clf.logits)(x, 0.5)
    assert logits.shape == (10,)
    log_prob = jax.jit(clf.log_prob)  # the label traced: one program for the ten
    log_probs = jnp.stack([log_prob(x, 0.5, jnp.int32(c)) for c in range(10)])
    np.testing.assert_allclose(logsumexp(log_probs), 0.0, atol=1e-5)
    grad = jax.jit(jax.grad(lambda p, x: clf.log_prob_fn(p)(x, 0.5, jnp.int32(4)), argnums=1))(clf.params, x)
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
    with pytest.raises(ValueError, match="outside 0..9"):
        clf.log_prob(x, 0.5, 10)  # no null class
    # held-out digits, barely noised: a random network scores ~0.1
    assert noisy_classifier_accuracy(clf, 0.01, draws=1) >= 0.95
