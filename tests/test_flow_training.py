"""Flow-matching training (#35): the loss on the raw output is minimised by the exact velocity;
uniform and logit-normal times; the config's flow settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxsde.data import load_digits
from jaxsde.sde import VPSDE, FlowSDE
from jaxsde.testing.targets import GaussianMixture
from jaxsde.training import TrainConfig, flow_matching_loss, init_state, make_train_steps, sample_times


@pytest.mark.parametrize("sde,time_sampling", [(FlowSDE(), "uniform"), (FlowSDE(), "logit_normal"),
                                               (VPSDE(), "uniform")], ids=["flow-uniform", "flow-logit", "vp"])
def test_the_exact_velocity_minimises_the_flow_loss(sde, time_sampling):
    """Perturb the exact velocity by delta * phi: the loss is lowest at delta = 0, where its
    gradient is ~0 next to the curvature (same data, times and noise for every delta)."""
    target = GaussianMixture.create([0.3, 0.7], [[0.5, -0.4], [-0.6, 0.2]], [0.3, 0.2])
    x0 = target.sample(jax.random.PRNGKey(0), 8192)
    v = jax.vmap(target.velocity(sde))

    def output(delta, x, t):
        return v(x, t) + delta * (jnp.sin(3.0 * x) + t[:, None])

    loss = jax.jit(jax.value_and_grad(lambda d: flow_matching_loss(output, sde, time_sampling)(d, x0,
                                                                                               jax.random.PRNGKey(1))))
    (l0, g0), (lp, gp), (lm, _) = (loss(jnp.float32(d)) for d in (0.0, 0.3, -0.3))
    assert l0 < lp and l0 < lm, (l0, lp, lm)
    curvature = (gp - g0) / 0.3
    assert curvature > 0.5 and abs(g0) < 0.05 * curvature, (g0, curvature)
    assert np.isfinite(l0) and np.isfinite(g0)


def test_flow_loss_is_finite_at_t_equal_1():
    """The target eps - x0 and the loss stay finite when every time is T = 1."""
    sde = FlowSDE(eps=0.999999)
    x0 = jnp.ones((4, 3))
    loss = flow_matching_loss(lambda p, x, t: x - p, sde)(jnp.zeros((3,)), x0, jax.random.PRNGKey(0))
    assert np.isfinite(float(loss))


def test_sample_times():
    key = jax.random.PRNGKey(0)
    sde = FlowSDE()
    t = sample_times(key, 20000, sde, "logit_normal")
    z = jnp.log(t) - jnp.log1p(-t)
    assert abs(float(jnp.mean(z))) < 0.03 and abs(float(jnp.std(z)) - 1.0) < 0.03
    assert float(jnp.min(t)) >= sde.eps and float(jnp.max(t)) <= sde.T
    u = sample_times(key, 20000, sde, "uniform")
    assert float(jnp.min(u)) >= sde.eps and abs(float(jnp.mean(u)) - 0.5005) < 0.01
    with pytest.raises(ValueError, match="unknown time_sampling 'beta'"):
        sample_times(key, 4, sde, "beta")
    with pytest.raises(ValueError, match="unknown time_sampling"):
        flow_matching_loss(lambda p, x, t: x, sde, "beta")


@pytest.mark.parametrize("kwargs,match", [
    (dict(time_sampling="beta"), "time_sampling must be"),
    (dict(sde="flow", parameterization="flow", weighting="likelihood"), "weighting='simple'"),
    (dict(time_sampling="logit_normal"), "parameterization 'flow' only"),
    (dict(sde="flow", parameterization="v"), "parameterization 'flow'"),
])
def test_flow_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs).validate()


class _ZeroNet(nn.Module):
    """A network whose output starts at 0: the first loss is E|target|^2."""

    @nn.compact
    def __call__(self, x, t):
        return nn.Dense(1, kernel_init=nn.initializers.zeros)(x) + 0.0 * t[:, None, None, None]


def test_flow_config_trains_by_flow_matching(monkeypatch):
    """sde='flow', parameterization='flow', logit-normal times: the step runs on the flow loss
    (first loss = E|eps - x0|^2 = 1 + E[x0^2] for a zero output; a score loss would give ~1)."""
    monkeypatch.setattr(TrainConfig, "make_model", lambda self: _ZeroNet())
    config = TrainConfig(sde="flow", parameterization="flow", time_sampling="logit_normal", steps=2,
                         batch_size=64, warmup_steps=1, learning_rate=1e-9)
    config.validate()
    assert isinstance(config.make_sde(), FlowSDE)
    data = jnp.asarray(load_digits("train").images)
    state = init_state(config, data.shape[1:])
    state, loss = make_train_steps(config, data)(state)
    expected = 1.0 + float(jnp.mean(data**2))
    assert abs(float(loss) - expected) < 0.1 * expected and int(state.step) == 1, (float(loss), expected)


@pytest.mark.slow  # a training run through the CLI (compiles a U-Net step); the loss and config tests stay fast
def test_cli_trains_a_flow_model_that_loads_as_a_velocity(tmp_path):
    """`jaxsde train --sde flow` trains the velocity (parameterization 'flow' by default on a flow),
    with the times asked for; the exported file loads as a velocity Prediction on FlowSDE."""
    import json

    import jaxsde
    from jaxsde.apps.cli import main as cli_main
    from jaxsde.checkpoints.embedded import load_weights_file
    from jaxsde.training import export_weights

    out = tmp_path / "run"
    assert cli_main(["train", "--size", "small", "--sde", "flow", "--time-sampling", "logit_normal", "--steps", "2",
                     "--batch-size", "8", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["sde"], config["parameterization"], config["time_sampling"]) == ("flow", "flow", "logit_normal")
    export_weights(str(out), str(tmp_path / "w.msgpack"))
    ckpt = load_weights_file(str(tmp_path / "w.msgpack"))
    assert isinstance(ckpt.sde, FlowSDE) and isinstance(ckpt.score, jaxsde.Prediction)
    assert ckpt.score.kind == "velocity"
    assert np.all(np.isfinite(np.asarray(ckpt.score(jnp.zeros((8, 8, 1)), 1.0))))
    assert cli_main(["train", "--sde", "flow", "--time-sampling", "beta", "--out", str(tmp_path / "bad")]) == 2
