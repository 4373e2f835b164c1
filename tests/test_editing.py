"""SDEdit and inpainting drivers (jaxsde.editing)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.editing import Inpainting, check_mask, inpaint, sdedit
from jaxsde.testing.targets import GaussianMixture

SHAPE = (6, 6, 1)


@pytest.fixture(scope="module")
def problem():
    sde = jaxsde.VPSDE()
    target = GaussianMixture.random(jax.random.PRNGKey(3), 3, SHAPE, scale=0.1)
    return sde, target.score(sde)


def _guide():
    return jnp.linspace(-0.8, 0.8, int(np.prod(SHAPE))).reshape(SHAPE)


def _mask():
    m = np.zeros(SHAPE[:-1], np.float32)
    m[:, :3] = 1.0  # left half known
    return m


def test_sdedit_at_T_equals_plain_sampling(problem):
    sde, score = problem
    solver = jaxsde.EulerMaruyama(12)
    key = jax.random.PRNGKey(7)
    batch = jax.jit(lambda k: sdedit(k, sde, score, solver, _guide(), sde.T, n=3))(key)
    ref = jax.jit(lambda k: jaxsde.sample(k, sde, score, solver, SHAPE, 3))(key)
    np.testing.assert_array_equal(np.asarray(batch.x), np.asarray(ref.x))
    np.testing.assert_array_equal(np.asarray(batch.stats.nfe), np.asarray(ref.stats.nfe))
    # the one-sample form with fold_in(key, i) is sample i
    one = sdedit(jax.random.fold_in(key, 2), sde, score, solver, _guide(), sde.T)
    np.testing.assert_allclose(np.asarray(one.x), np.asarray(ref.x[2]), rtol=0, atol=1e-5)


def test_sdedit_small_t0_stays_close_to_guide(problem):
    sde, score = problem
    sol = sdedit(jax.random.PRNGKey(0), sde, score, jaxsde.DDIM(10), _guide(), 0.02)
    far = sdedit(jax.random.PRNGKey(0), sde, score, jaxsde.DDIM(10), _guide(), 0.9)
    assert int(sol.result) == 0
    assert float(jnp.mean(jnp.abs(sol.x - _guide()))) < 0.5 * float(jnp.mean(jnp.abs(far.x - _guide())))
    # t_start = t0: a fixed-grid solver spends exactly num_steps (+1 denoise) evaluations
    assert int(sol.stats.nfe) == 11


@pytest.mark.parametrize("t0", [0.0, -0.1, 1.5, float("nan"), 1e-4])
def test_sdedit_bad_t0(problem, t0):
    sde, score = problem
    with pytest.raises(ValueError, match="t0"):
        sdedit(jax.random.PRNGKey(0), sde, score, jaxsde.DDIM(4), _guide(), t0)


@pytest.mark.parametrize("solver", [
    jaxsde.EulerMaruyama(20),
    jaxsde.DDIM(15, eta=1.0),
    jaxsde.GottaGoFast(rtol=0.1),
])
def test_inpaint_keeps_known_pixels_exactly(problem, solver):
    sde, score = problem
    x_known = _guide()
    mask = _mask()
    sol = jax.jit(lambda k: inpaint(k, sde, score, solver, x_known, mask, n=2))(jax.random.PRNGKey(1))
    assert np.all(np.asarray(sol.result) == 0)
    x = np.asarray(sol.x)
    known = np.broadcast_to(mask[..., None], SHAPE) == 1
    for i in range(2):
        np.testing.assert_array_equal(x[i][known], np.asarray(x_known)[known])
        assert np.all(np.isfinite(x[i]))
    # the unknown half is generated: the two samples differ there (stochastic) or at least it is not the guide
    assert not np.allclose(x[0][~known], np.asarray(x_known)[~known], atol=1e-3)


def test_inpainting_wrapper_projects_every_step(problem):
    """Before the final denoise, the known pixels sit on the forward process of x_known."""
    sde, score = problem
    x_known, mask = _guide(), _mask()
    m = check_mask(mask, SHAPE)
    wrapped = Inpainting(jaxsde.DDIM(8), x_known, m)
    assert wrapped.noise == "fixed" and wrapped.noise_per_attempt == 0
    x_T = sde.prior_sample(jax.random.PRNGKey(2), SHAPE)
    sol = jaxsde.solve(jax.random.PRNGKey(0), sde, score, wrapped, x_T, denoise=False)
    alpha_T, sigma_T = sde.marginal(sde.T)
    eps0 = (x_T - alpha_T * x_known) / sigma_T
    alpha, sigma = sde.marginal(sde.eps)
    expect = alpha * x_known + sigma * eps0
    np.testing.assert_allclose(np.asarray(sol.x)[np.asarray(m) == 1], np.asarray(expect)[np.asarray(m) == 1],
                               rtol=1e-5, atol=1e-6)
    em = Inpainting(jaxsde.EulerMaruyama(8), x_known, m)
    assert em.noise == "fresh" and em.noise_per_attempt == 2


def test_inpaint_deterministic_variant_is_deterministic(problem):
    sde, score = problem
    a = inpaint(jax.random.PRNGKey(5), sde, score, jaxsde.DDIM(10), _guide(), _mask())
    b = inpaint(jax.random.PRNGKey(5), sde, score, jaxsde.DDIM(10), _guide(), _mask())
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    assert int(a.stats.nfe) == 11


def test_inpaint_pf_ode_counts_the_fsal_refresh(problem):
    sde, score = problem
    solver = jaxsde.ProbabilityFlow(rtol=1e-3, atol=1e-3, h_init=0.05)
    assert Inpainting(solver, _guide(), check_mask(_mask(), SHAPE)).nfe_per_attempt == solver.nfe_per_attempt + 1
    sol = inpaint(jax.random.PRNGKey(5), sde, score, solver, _guide(), _mask())
    attempts = int(sol.stats.num_steps)
    # init's k1, then per attempt the RK stages and the FSAL refresh at the projected state; the final
    # denoising step reads the score from that refreshed k1 (the wrapper forwards denoise): no +1
    assert int(sol.stats.nfe) == 1 + attempts * (solver.nfe_per_attempt + 1)


@pytest.mark.parametrize("mask, match", [
    (np.ones((5, 6)), "shape"),
    (np.ones((6, 6, 2)), "shape"),
    (np.zeros((6, 6)), "empty"),
    (np.ones((6, 6)), "every pixel"),
    (np.full((6, 6), 0.5), "only 0 and 1"),
])
def test_inpaint_bad_mask(problem, mask, match):
    sde, score = problem
    with pytest.raises(ValueError, match=match):
        inpaint(jax.random.PRNGKey(0), sde, score, jaxsde.DDIM(4), _guide(), mask)


def test_bad_n(problem):
    sde, score = problem
    with pytest.raises(ValueError, match="n must be"):
        sdedit(jax.random.PRNGKey(0), sde, score, jaxsde.DDIM(4), _guide(), 0.5, n=0)
