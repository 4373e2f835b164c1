"""Flow-matching schedules (#35): GaussianPathSDE, FlowSDE, the velocity conversions, the
Prediction channel and the "flow" parameterization; exact at alpha = 0 (t = 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.models.score import output_to_score, output_to_x0, preconditioned_convention
from jaxsde.prediction import PREDICTION_KINDS, Prediction, as_prediction, convert, to_kind, to_score, to_x0
from jaxsde.sde import VESDE, VPSDE, FlowSDE, GaussianPathSDE


class LinearPath(GaussianPathSDE):
    """FlowSDE's path with nothing but marginal: autodiff derivatives, bisection inverse."""

    def marginal(self, t):
        t = jnp.asarray(t)
        return 1.0 - t, t


class CosinePath(GaussianPathSDE):
    def marginal(self, t):
        t = jnp.asarray(t)
        return jnp.sin(0.5 * jnp.pi * (1.0 - t)), jnp.sin(0.5 * jnp.pi * t)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


TS = [1e-3, 0.05, 0.3, 0.7, 0.95, 1.0 - 1e-6]


def test_flow_closed_forms_equal_the_generic_path(x64):
    """FlowSDE's closed forms = GaussianPathSDE's autodiff/bisection on the same (alpha, sigma);
    g^2 = d sigma^2/dt - 2 f sigma^2 by autodiff."""
    flow, generic = FlowSDE(), LinearPath()
    ts = jnp.asarray(TS, jnp.float64)
    x = jnp.linspace(-1.0, 1.0, len(TS))
    for name in ("log_snr", "diffusion", "velocity_determinant"):
        np.testing.assert_allclose(getattr(flow, name)(ts), getattr(generic, name)(ts), rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(flow.drift(x, ts), generic.drift(x, ts), rtol=1e-12)
    np.testing.assert_allclose(jnp.stack(flow.marginal_derivatives(ts)), jnp.stack(generic.marginal_derivatives(ts)))
    lam = flow.log_snr(ts)
    np.testing.assert_allclose(flow.inverse_log_snr(lam), ts, rtol=1e-12)
    np.testing.assert_allclose(generic.inverse_log_snr(lam), ts, rtol=1e-12)
    for sde in (flow, CosinePath()):
        def sigma2(t, sde=sde):
            return sde.marginal(t)[1] ** 2

        for t in TS:
            t = jnp.float64(t)
            f = sde.drift(jnp.float64(1.0), t)
            g2 = jax.grad(sigma2)(t) - 2.0 * f * sde.marginal(t)[1] ** 2
            np.testing.assert_allclose(sde.diffusion(t) ** 2, g2, rtol=1e-10)
            np.testing.assert_allclose(f, jax.grad(lambda u, sde=sde: jnp.log(sde.marginal(u)[0]))(t), rtol=1e-10)


def test_cosine_path_inverse_log_snr_by_bisection():
    """Bisection inverts the log-SNR to the dtype's precision (closed form of the cosine path:
    t = 2/pi arctan(exp(-lam/2))), infinities to the ends."""
    sde = CosinePath()
    for dtype, tol in ((jnp.float32, 2e-6), (jnp.float64, 1e-13)):
        with jax.enable_x64(dtype == jnp.float64):
            lam = jnp.linspace(-12.0, 15.0, 28, dtype=dtype)
            expected = 2.0 / np.pi * np.arctan(np.exp(-0.5 * np.asarray(lam, np.float64)))
            t = jax.jit(sde.inverse_log_snr)(lam)
            assert t.dtype == dtype
            np.testing.assert_allclose(t, expected, rtol=tol, atol=tol)
            ends = sde.inverse_log_snr(jnp.asarray([-jnp.inf, jnp.inf, jnp.nan], dtype))
            assert ends[0] == 1.0 and ends[1] == 0.0 and jnp.isnan(ends[2])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_flow_is_exact_at_t_equal_1(dtype):
    """At alpha = 0: the prior is exact and every velocity-based quantity is finite and exact."""
    with jax.enable_x64(dtype == jnp.float64):
        sde = FlowSDE()
        one = jnp.asarray(1.0, dtype)
        x = jnp.asarray([0.3, -1.7, 2.2], dtype)
        v = jnp.asarray([1.1, 0.4, -0.9], dtype)
        alpha, sigma = sde.marginal(one)
        assert alpha == 0 and sigma == 1 and sde.T == 1.0 and sde.prior_std == 1.0
        assert sde.log_snr(one) == -jnp.inf and sde.inverse_log_snr(jnp.asarray(-jnp.inf, dtype)) == 1.0
        np.testing.assert_array_equal(sde.x0_from_velocity(x, one, v), x - v)
        np.testing.assert_array_equal(sde.eps_from_velocity(x, one, v), x)
        np.testing.assert_array_equal(sde.score_from_velocity(x, one, v), -x)
        np.testing.assert_array_equal(sde.velocity_from_x0(x, one, v), x - v)
        np.testing.assert_array_equal(sde.score_from_probability_flow_drift(x, one, v), -x)
        for out in (sde.x0_from_velocity(x, one, v), sde.score_from_velocity(x, one, v)):
            assert out.dtype == dtype
        # the score-based quantities are the documented singularities
        assert not jnp.all(jnp.isfinite(sde.tweedie(x, one, -x)))
        assert not jnp.isfinite(sde.diffusion(one))


SDES = [FlowSDE(), CosinePath(), VPSDE(), VESDE(), jaxsde.SubVPSDE()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_every_conversion_recovers_the_truth(x64, sde):
    """On an exact pair (x0, eps): x = alpha x0 + sigma eps, and each kind's true value
    (score = -eps/sigma, velocity = alpha' x0 + sigma' eps) converts into every other's."""
    x0 = jnp.asarray([0.3, -0.2, 0.8])
    eps = jnp.asarray([1.1, -0.4, 0.05])
    for t in (0.02, 0.4, 0.9):
        t = jnp.float64(t)
        alpha, sigma = sde.marginal(t)
        dalpha, dsigma = sde.marginal_derivatives(t)
        x = alpha * x0 + sigma * eps
        truth = {"x0": x0, "eps": eps, "score": -eps / sigma, "velocity": dalpha * x0 + dsigma * eps}
        for source in PREDICTION_KINDS:
            for target in PREDICTION_KINDS:
                np.testing.assert_allclose(convert(sde, truth[source], x, t, source, target), truth[target],
                                           rtol=1e-10, atol=1e-12, err_msg=f"{source} -> {target} at t={t}")
    # the velocity of a score is the probability-flow drift f x - g^2 s / 2
    x, s, t = jnp.asarray([0.5, -1.0, 2.0]), jnp.asarray([-0.3, 0.7, 0.1]), jnp.float64(0.37)
    np.testing.assert_allclose(sde.velocity_from_score(x, t, s), sde.probability_flow_drift(x, t, s), rtol=1e-10)


def test_prediction_channel():
    """Plain callables are scores; conversions are exact at t = 1 from velocity and x0 models;
    cond is passed through; bad kinds and non-callables are refused."""
    sde = FlowSDE()
    calls = []

    def v(x, t, cond=0.0):
        calls.append(cond)
        return 0.5 * x + 1.0 + cond

    def score(x, t):
        return -x

    assert as_prediction(score) == Prediction(score, "score") and to_kind(sde, score, "score") is score
    pred = Prediction(v, "velocity")
    assert as_prediction(pred) is pred and pred.kind == "velocity" and hash(pred) == hash(Prediction(v, "velocity"))
    x = jnp.asarray([0.2, -0.6], jnp.float32)
    np.testing.assert_array_equal(to_x0(sde, pred)(x, 1.0), x - v(x, 1.0))
    np.testing.assert_array_equal(to_x0(sde, pred)(x, 0.25, 2.0), x - 0.25 * v(x, 0.25, 2.0))
    assert calls[-1] == 2.0
    np.testing.assert_array_equal(to_score(sde, pred)(x, 1.0), -x)
    x0_model = Prediction(to_x0(sde, pred), "x0")
    np.testing.assert_allclose(to_kind(sde, x0_model, "velocity")(x, 1.0), v(x, 1.0), rtol=1e-6)
    out = jax.jit(jax.vmap(to_x0(sde, pred), (0, None)))(jnp.stack([x, x]), 1.0)
    assert out.shape == (2, 2) and bool(jnp.all(jnp.isfinite(out)))
    with pytest.raises(ValueError, match="unknown prediction kind 'v'.*velocity"):
        Prediction(v, "v")
    with pytest.raises(TypeError, match="callable"):
        Prediction(3.0, "score")
    with pytest.raises(TypeError, match="already a Prediction"):
        Prediction(pred, "x0")
    with pytest.raises(ValueError, match="unknown prediction kind"):
        to_kind(sde, pred, "flow")


def test_flow_parameterization(x64):
    """'flow' reads the output as the velocity (score and exact x0), for any SDE; output_to_x0
    agrees with Tweedie on the score for every parameterization; 'v' is refused on a flow."""
    x0, eps = jnp.asarray([0.3, -0.2]), jnp.asarray([1.1, -0.4])
    for sde in (FlowSDE(), VPSDE()):
        for t in (0.1, 0.6):
            t = jnp.float64(t)
            alpha, sigma = sde.marginal(t)
            dalpha, dsigma = sde.marginal_derivatives(t)
            x = alpha * x0 + sigma * eps
            outs = {"flow": dalpha * x0 + dsigma * eps, "eps": eps, "x0": x0, "score": -eps}
            if isinstance(sde, VPSDE):
                outs["v"] = alpha * eps - sigma * x0
            for param, out in outs.items():
                np.testing.assert_allclose(output_to_score(sde, out, x, t, param), -eps / sigma, rtol=1e-10)
                np.testing.assert_allclose(output_to_x0(sde, out, x, t, param), x0, rtol=1e-10, err_msg=param)
    sde = FlowSDE()
    x, v = jnp.asarray([0.3, -0.5]), jnp.asarray([1.0, 2.0])
    np.testing.assert_array_equal(output_to_x0(sde, v, x, 1.0, "flow"), x - v)
    conv = preconditioned_convention(sde, "flow")
    np.testing.assert_array_equal(conv.to_score(v, x, 1.0), -x)
    with pytest.raises(ValueError, match="alpha\\^2 \\+ sigma\\^2 = 1.*'flow'"):
        preconditioned_convention(sde, "v")
    preconditioned_convention(CosinePath(), "v")  # variance preserving: accepted


def test_bad_schedules_are_refused():
    with pytest.raises(TypeError, match="abstract"):
        GaussianPathSDE()
    with pytest.raises(ValueError, match="T = 1"):
        FlowSDE(T=2.0)
    with pytest.raises(ValueError, match="eps must be a finite positive"):
        FlowSDE(eps=0.0)
    with pytest.raises(ValueError, match="smaller than T"):
        FlowSDE(eps=1.0)

    class Overshoot(GaussianPathSDE):
        def marginal(self, t):
            t = jnp.asarray(t)
            return 0.9 - t, t

    with pytest.raises(ValueError, match="Overshoot: marginal must give alpha"):
        Overshoot()
    sde = CosinePath(eps=1e-2)  # subclasses are frozen, hashable static pytrees
    assert sde == CosinePath(eps=1e-2) and hash(sde) == hash(CosinePath(eps=1e-2))
    assert jax.tree_util.tree_leaves(sde) == []
    with pytest.raises(AttributeError):
        sde.eps = 0.5
