"""The embedded flow-matching model ``digits-flow`` (#35) and what a velocity model goes through:
loading (a velocity ``Prediction`` on ``FlowSDE``), sampling from ``t = 1`` exactly, the
likelihood, guidance, ``generate``'s batching, and the command line.

The exact-target tests (a Gaussian mixture's closed-form velocity) run without the weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde import guidance
from jaxsde.apps.cli import main as cli_main
from jaxsde.batching import Generator
from jaxsde.checkpoints.embedded import available
from jaxsde.likelihood import log_likelihood
from jaxsde.prediction import Prediction, to_score
from jaxsde.testing.targets import GaussianMixture

SDE = jaxsde.FlowSDE()
needs_weights = pytest.mark.skipif("digits-flow" not in available(), reason="digits-flow weights not present")


# --- a velocity Prediction through the likelihood, guidance and generate (exact targets) -------------------


def test_likelihood_of_a_velocity_prediction_is_exact():
    """One Gaussian N(mu, s^2 I) in d = 2: log p_eps(x) from the velocity Prediction, integrated up
    to t = 1 exactly (where f - g^2 score / 2 is inf - inf), equals the exact marginal density."""
    target = GaussianMixture.create(None, [[0.3, -0.5]], [0.2])
    model = Prediction(target.velocity(SDE), "velocity")
    xs = jnp.asarray([[0.25, -0.4], [0.0, 0.1], [0.6, -0.9]], jnp.float32)
    res = jax.jit(jax.vmap(lambda x: log_likelihood(jax.random.PRNGKey(0), SDE, model, x, divergence="exact",
                                                    rtol=1e-6, atol=1e-6)))(xs)
    exact = target.log_prob(SDE, xs, SDE.eps)
    assert np.all(np.asarray(res.result) == 0)
    np.testing.assert_allclose(np.asarray(res.log_p), np.asarray(exact), atol=2e-3)


def _conditional_velocity():
    """A class-conditional velocity: class c is the Gaussian mixture component c (class 2 = null:
    both components)."""
    means, scales = jnp.asarray([[0.5, 0.2], [-0.4, -0.3]]), 0.15
    parts = [GaussianMixture.create(None, means[i:i + 1], [scales]).velocity(SDE) for i in range(2)]
    both = GaussianMixture.create(None, means, [scales, scales]).velocity(SDE)

    def v(x, t, c):
        return jax.lax.switch(c, [parts[0], parts[1], both], x, t)

    return Prediction(v, "velocity")


def test_classifier_free_guidance_of_a_velocity_is_guidance_of_its_score():
    """CFG on a velocity Prediction stays a velocity Prediction, and its score is the CFG of the
    scores (the conversion is affine in the output, the weights sum to 1)."""
    model = _conditional_velocity()
    guided = guidance.classifier_free(model, jnp.int32(2), 1.5)
    assert isinstance(guided, Prediction) and guided.kind == "velocity"
    reference = guidance.classifier_free(to_score(SDE, model), jnp.int32(2), 1.5)
    x = jnp.asarray([0.1, -0.2])
    for t in (0.2, 0.7):
        np.testing.assert_allclose(to_score(SDE, guided)(x, t, jnp.int32(0)), reference(x, t, jnp.int32(0)),
                                   rtol=1e-5, atol=1e-5)
    composed = guidance.composed(model, jnp.int32(2), [1.5])
    assert isinstance(composed, Prediction) and composed.kind == "velocity"
    np.testing.assert_allclose(composed(x, 0.4, jnp.int32([0])), guided(x, 0.4, jnp.int32(0)), rtol=1e-6)


def test_classifier_guidance_of_a_velocity():
    """Classifier guidance on a velocity Prediction: a velocity Prediction whose score is the
    guided score; exactly the model's output outside the interval, t = 1 included (where the
    term is infinite in velocity units); the SDE is required."""
    target = GaussianMixture.create(None, [[0.5, 0.2], [-0.4, -0.3]], [0.15, 0.15])
    model = Prediction(target.velocity(SDE), "velocity")

    def log_prob(x, t, c):  # any smooth function of (x, t) will do for the algebra
        return jnp.sum(jnp.sin(x + c)) * (1.0 - t)

    with pytest.raises(TypeError, match="needs the SDE"):
        guidance.classifier(model, log_prob, 2.0)
    guided = guidance.classifier(model, log_prob, 2.0, sde=SDE, interval=(0.0, 20.0))
    assert isinstance(guided, Prediction) and guided.kind == "velocity"
    reference = guidance.classifier(target.score(SDE), log_prob, 2.0, sde=SDE, interval=(0.0, 20.0))
    x = jnp.asarray([0.1, -0.2])
    np.testing.assert_allclose(to_score(SDE, guided)(x, 0.5, 1.0), reference(x, 0.5, 1.0), rtol=1e-5, atol=1e-5)
    for t in (1.0, 0.99):  # sigma/alpha = inf, 99: outside the interval
        np.testing.assert_array_equal(guided(x, jnp.float32(t), 1.0), model(x, jnp.float32(t)))
    sol = jaxsde.sample(jax.random.PRNGKey(0), SDE, guided, jaxsde.DDIM(9), (2,), 8, cond=jnp.ones((8,)))
    assert np.all(np.asarray(sol.result) == 0) and np.all(np.isfinite(np.asarray(sol.x)))


def test_generate_runs_a_velocity_prediction_like_sample():
    """``jaxsde.batching.Generator`` (behind ``jaxsde generate``) gives a velocity Prediction's
    samples exactly as ``jaxsde.sample`` (the prepared model, with its x0 channel, is kept)."""
    v = GaussianMixture.ring(8, (2,), radius=0.6, scale=0.05).velocity(SDE)

    def score_fn(p):
        return Prediction(lambda x, t: p * v(x, t), "velocity")

    solver = jaxsde.DDIM(9)
    gen = Generator(jax.random.PRNGKey(0), SDE, score_fn, jnp.float32(1.0), solver, (2,), np.arange(8),
                    batch_size=4, chunk_size=8)
    chunks = list(gen)
    x = np.concatenate([c.x for c in chunks])[np.argsort(np.concatenate([c.index for c in chunks]))]
    ref = jaxsde.sample(jax.random.PRNGKey(0), SDE, score_fn(1.0), solver, (2,), 8)
    assert all(np.all(c.result == 0) for c in chunks)
    np.testing.assert_allclose(x, np.asarray(ref.x), rtol=1e-5, atol=1e-6)


# --- the embedded model -------------------------------------------------------------------------------------


@needs_weights
def test_digits_flow_loads_as_a_velocity_model():
    """A velocity Prediction on FlowSDE; at t = 1 its data estimate x - v is E[x_0], the mean
    training digit, whatever the noise x (x_1 is independent of x_0)."""
    from jaxsde.data import load_digits

    ckpt = jaxsde.pretrained("digits-flow")
    assert isinstance(ckpt.sde, jaxsde.FlowSDE) and ckpt.shape == (8, 8, 1) and ckpt.num_classes is None
    assert ckpt.config["parameterization"] == "flow" and ckpt.config["sde"] == "flow"
    assert isinstance(ckpt.score, Prediction) and ckpt.score.kind == "velocity"
    assert isinstance(ckpt.score_fn(ckpt.params), Prediction)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 8, 8, 1))
    x0 = jax.jit(jax.vmap(lambda xi: xi - ckpt.score(xi, 1.0)))(x)
    mean = np.mean(load_digits("train", ckpt.data_range).images, axis=0)
    rms = np.sqrt(np.mean((np.asarray(x0) - mean) ** 2, axis=(1, 2, 3)))
    # measured 0.05-0.09 (a logit-normal-trained run, which almost never saw t near 1: 0.43-0.57); the
    # digits' own spread about their mean is 0.54, so 0.15 is far from both
    assert np.all(rms < 0.15), rms


@pytest.fixture(scope="module")
def digits_flow():
    from jaxsde.testing.metrics.digits import DigitsMetrics

    return jaxsde.pretrained("digits-flow"), DigitsMetrics()


N_QUALITY = 64


@needs_weights
@pytest.mark.parametrize("solver", [
    jaxsde.DDIM(9), jaxsde.DPMSolverPP(9, order=2, grid="uniform"),
    # one more compiled sampling program each (UniPC also runs fast through the CLI test)
    pytest.param(jaxsde.UniPC(9, order=2, grid="uniform"), marks=pytest.mark.slow),
    pytest.param(jaxsde.AdaptiveDPMSolver(rtol=0.05), marks=pytest.mark.slow)],
    ids=["ddim", "dpmpp2m", "unipc2", "adaptive-dpm"])
def test_samples_from_t1_are_digits(digits_flow, solver):
    """From t = 1 exactly, a handful of samples at ~10 NFE are finite and score far better in
    FD-digits than the noise they start from (bounds: see FD_SAMPLES_MAX)."""
    ckpt, metrics = digits_flow
    sol = jax.jit(lambda p, k: jaxsde.sample(k, ckpt.sde, ckpt.score_fn(p), solver, ckpt.shape, N_QUALITY))(
        ckpt.params, jax.random.PRNGKey(0))
    x = np.asarray(sol.x)
    assert np.all(np.asarray(sol.result) == 0) and np.all(np.isfinite(x))
    report = metrics.report(x, ckpt.data_range)
    # FD-digits is biased upwards at small n: held-out real digits score report["fd_floor"] at the same n
    # (37.5 at n = 64); measured for these solvers 34.6-37.4 (seed 0), 28.5-29.7 (seed 1); N(0, I) noise
    # scores ~790 and the mean digit (+ 0.05 noise) ~550. Twice the real floor separates digits from both.
    assert report["fd"] < 2.0 * report["fd_floor"], report


class _RefusesTheStart(jaxsde.DDIM):
    """A solver that cannot start where alpha = 0 (as the SDE solvers before their t = 1 step)."""

    starts_at_alpha_zero = False


@needs_weights
def test_cli_sample_and_a_solver_that_refuses_t1(tmp_path, monkeypatch, capsys):
    """`jaxsde sample --model digits-flow` runs a fixed-grid solver from t = 1 (its log-SNR grid put
    on 'uniform'); a solver that cannot start there exits 2 with its one-line error, no traceback."""
    from jaxsde.solvers import registry

    out, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    rc = cli_main(["sample", "--model", "digits-flow", "--solver", "unipc", "--steps", "9", "--n", "8",
                   "--no-metrics", "--no-progress", "--out", str(out), "--samples", str(npz)])
    assert rc == 0 and out.exists()
    with np.load(npz) as z:
        assert np.all(np.isfinite(z["x"])) and np.all(z["nfe"] == 10) and np.all(z["result"] == 0)
    assert "grid='uniform'" in capsys.readouterr().out
    monkeypatch.setitem(registry._REGISTRY, "refuses-t1", (lambda steps=9: _RefusesTheStart(steps), "test"))
    rc = cli_main(["sample", "--model", "digits-flow", "--solver", "refuses-t1", "--n", "4", "--no-metrics",
                   "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot start where alpha = 0" in err, err


@needs_weights
def test_cli_likelihood_is_finite_and_beats_uniform(tmp_path):
    """`jaxsde likelihood --model digits-flow`: the probability-flow ODE up to t = 1 exactly from the
    velocity; finite bits/dim, below the log2(17) = 4.09 of a uniform density on the 17 pixel levels."""
    import json

    path = tmp_path / "ll.json"
    rc = cli_main(["likelihood", "--model", "digits-flow", "--n", "4", "--probes", "1", "--rtol", "1e-3",
                   "--atol", "1e-3", "--batch-size", "4", "--json", str(path)])
    report = json.loads(path.read_text())
    assert rc == 0 and report["num_failed"] == 0, report
    assert np.all(np.isfinite(report["per_sample"])) and report["bits_per_dim"] < np.log2(17), report


@pytest.mark.slow  # one more compiled sampling program through the resumable shards
@needs_weights
def test_cli_generate(tmp_path):
    from jaxsde.apps.generate_job import read_shards

    out = tmp_path / "gen"
    rc = cli_main(["generate", "--model", "digits-flow", "--solver", "unipc", "--steps", "9", "--n", "6",
                   "--batch-size", "4", "--out", str(out), "--no-progress"])
    shards = read_shards(str(out))
    assert rc == 0 and sorted(shards["index"]) == list(range(6))
    assert np.all(np.isfinite(shards["x"])) and np.all(shards["nfe"] == 10) and np.all(shards["result"] == 0)


def _flow_time_classifier(clf, flow):
    """The embedded VP noisy classifier read on FlowSDE's noised samples: ``x_t`` at flow time ``t``
    is the VP sample at the time of the same log-SNR, scaled by ``alpha_vp / alpha_flow``."""

    def log_prob(x, t, label):
        t = jnp.asarray(t, x.dtype)
        t_vp = jnp.clip(clf.sde.inverse_log_snr(flow.log_snr(t)), clf.sde.eps, clf.sde.T)
        scale = clf.sde.marginal(t_vp)[0] / flow.marginal(t)[0]
        return clf.log_prob(scale * x, t_vp, label)

    return log_prob


@pytest.mark.slow  # two compiled guided sampling runs with a classifier gradient (~50 s on the shared CPU)
@needs_weights
def test_classifier_guidance_of_digits_flow(digits_flow):
    """Classifier guidance of digits-flow (a velocity Prediction) from t = 1 with DDIM, by the
    embedded VP noisy classifier read at the same log-SNR: the guided samples are the asked class
    far more often than the unguided ones (measured on 32 samples: 1.0 at w = 2, 0.125 at w = 0,
    near the class's 10% share)."""
    from jaxsde.checkpoints.embedded import noisy_classifier

    ckpt, metrics = digits_flow
    log_prob = _flow_time_classifier(noisy_classifier(), ckpt.sde)
    labels = jnp.full((32,), 3, jnp.int32)

    @jax.jit
    def run(p, w):
        guided = guidance.classifier(ckpt.score_fn(p), log_prob, w, sde=ckpt.sde, interval=(0.0, 20.0))
        return jaxsde.sample(jax.random.PRNGKey(0), ckpt.sde, guided, jaxsde.DDIM(19), ckpt.shape, 32, cond=labels)

    accuracy = {}
    for w in (0.0, 2.0):
        sol = run(ckpt.params, jnp.float32(w))
        assert np.all(np.asarray(sol.result) == 0) and np.all(np.isfinite(np.asarray(sol.x)))
        accuracy[w] = metrics.accuracy(np.asarray(sol.x), np.asarray(labels), ckpt.data_range)
    assert accuracy[2.0] >= 0.8 and accuracy[0.0] <= 0.4, accuracy
