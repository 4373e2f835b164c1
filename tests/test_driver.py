"""The driver: reproducibility, jit with traced parameters, result codes, input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde import results
from jaxsde.testing import exact, targets

SDE = jaxsde.VPSDE()
SCORE = exact.gaussian_score(SDE, 0.3, 0.2)
SOLVERS = [
    jaxsde.EulerMaruyama(20),
    jaxsde.ReverseDiffusion(20),
    jaxsde.PredictorCorrector(20, snr=0.01),
    jaxsde.GottaGoFast(rtol=0.05),
    jaxsde.ProbabilityFlow(rtol=1e-3, atol=1e-3),
]
IDS = [type(s).__name__ for s in SOLVERS]


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
def test_sample_i_independent_of_n(solver, key):
    run = jax.jit(lambda k, n: jaxsde.sample(k, SDE, SCORE, solver, (8,), n), static_argnums=1)
    one, many = run(key, 1), run(key, 64)
    np.testing.assert_allclose(one.x[0], many.x[0], atol=1e-6)
    assert int(one.stats.nfe[0]) == int(many.stats.nfe[0])
    np.testing.assert_array_equal(many.x, run(key, 64).x)  # same key, same samples
    assert not np.allclose(many.x, run(jax.random.PRNGKey(1), 64).x)
    assert np.all(np.asarray(many.result) == results.SUCCESS)


@pytest.mark.parametrize("solver,nfe", [(jaxsde.EulerMaruyama(20), 21), (jaxsde.ReverseDiffusion(20), 21),
                                        (jaxsde.PredictorCorrector(20, corrector_steps=2), 61)],
                         ids=["em", "rd", "pc"])
def test_fixed_step_nfe_is_exact(solver, nfe, key):
    sol = jaxsde.sample(key, SDE, SCORE, solver, (4,), 3)
    np.testing.assert_array_equal(sol.stats.nfe, nfe)
    np.testing.assert_array_equal(sol.stats.num_accepted, 20)
    np.testing.assert_array_equal(sol.stats.num_rejected, 0)
    no_denoise = jaxsde.sample(key, SDE, SCORE, solver, (4,), 3, denoise=False)
    np.testing.assert_array_equal(no_denoise.stats.nfe, nfe - 1)


def test_jit_with_traced_params_does_not_retrace(key):
    """A score closing over traced parameters: new key or new params reuse the compiled program."""
    traces = []

    def make_score(params):
        def score(x, t):
            alpha, sigma = SDE.marginal(t)
            c = alpha**2 * params["s"] ** 2 + sigma**2
            return -(x - alpha * params["mu"]) / c
        return score

    @jax.jit
    def pipeline(params, k):
        traces.append(1)
        return jaxsde.sample(k, SDE, make_score(params), jaxsde.GottaGoFast(rtol=0.1), (4,), 16).x

    p1 = {"mu": jnp.float32(0.3), "s": jnp.float32(0.2)}
    p2 = {"mu": jnp.float32(-0.5), "s": jnp.float32(0.1)}
    a = pipeline(p1, key)
    b = pipeline(p2, jax.random.PRNGKey(7))
    c = pipeline(p1, key)
    assert len(traces) == 1
    np.testing.assert_array_equal(a, c)
    assert float(jnp.mean(b)) == pytest.approx(-0.5, abs=0.1)
    # The parameters are arguments of the compiled program, not baked-in constants.
    hlo = pipeline.lower(p1, key).as_text()
    assert "0.300000012" not in hlo


def test_custom_grid_and_grid_kinds(key):
    grid = [1.0, 0.5, 0.2, 0.05, 0.01]
    sol = jaxsde.solve(key, SDE, SCORE, jaxsde.EulerMaruyama(4, grid=grid), jnp.ones(3))
    assert float(sol.t) == np.float32(0.01) and int(sol.stats.nfe) == 5
    with pytest.raises(ValueError, match="custom grid"):
        jaxsde.solve(key, SDE, SCORE, jaxsde.EulerMaruyama(4, grid=grid), jnp.ones(3), t_end=0.02)
    for kind in ("logsnr", "edm"):  # the sample law is EM-50's exact law on that grid, within 4 Monte-Carlo sd
        solver = jaxsde.EulerMaruyama(50, grid=kind)
        x = np.asarray(jaxsde.sample(key, SDE, SCORE, solver, (16,), 200).x, np.float64)
        law = exact.solver_output_law(SDE, 0.3, 0.2, solver)
        sd = law.var**0.5
        assert abs(x.mean() - law.mean) < 4 * sd / np.sqrt(x.size), (kind, x.mean(), law)
        assert abs(x.std() - sd) < 4 * sd / np.sqrt(2 * x.size), (kind, x.std(), law)


def test_t_end_and_t_start(key):
    sol = jaxsde.solve(key, SDE, SCORE, jaxsde.GottaGoFast(), jnp.ones(3), t_end=0.2, t_start=0.8)
    assert float(sol.t) == np.float32(0.2)
    sol = jaxsde.solve(key, SDE, SCORE, jaxsde.EulerMaruyama(10), jnp.ones(3), t_end=0.2, denoise=False)
    assert float(sol.t) == np.float32(0.2)


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
def test_nan_score_gives_nonfinite_code(solver, key):
    def bad_score(x, t):
        return jnp.where(t < 0.5, jnp.nan, 1.0) * SCORE(x, t)

    sol = jaxsde.sample(key, SDE, bad_score, solver, (4,), 3)
    np.testing.assert_array_equal(sol.result, results.NONFINITE)
    assert np.all(np.isfinite(np.asarray(sol.x))), "x is the last finite state"
    assert np.all(np.asarray(sol.t) >= 0.45)
    with pytest.raises(RuntimeError, match="non-finite"):
        results.raise_if_failed(sol)


def test_check_finite_off_still_reports_nonfinite(key):
    """check_finite=False skips the per-step check: the failure is still reported, the loop runs
    to the end, x is not finite. The default keeps the last finite state."""
    def bad_score(x, t):
        return jnp.where(t < 0.5, jnp.nan, 1.0) * SCORE(x, t)

    solver = jaxsde.EulerMaruyama(20)
    checked = jaxsde.sample(key, SDE, bad_score, solver, (4,), 3)
    unchecked = jaxsde.sample(key, SDE, bad_score, solver, (4,), 3, check_finite=False)
    np.testing.assert_array_equal(unchecked.result, results.NONFINITE)
    assert np.all(np.asarray(unchecked.stats.num_steps) == 20)
    assert not np.any(np.isfinite(np.asarray(unchecked.x)))
    # fixed grid + check: the failed sample runs to the grid's end with its batch, but returns its
    # last finite state, and num_accepted counts the steps up to that state
    np.testing.assert_array_equal(checked.result, results.NONFINITE)
    assert np.all(np.asarray(checked.stats.num_steps) == 20)
    assert np.all(np.isfinite(np.asarray(checked.x)))
    grid = np.asarray(jaxsde.time_grid(SDE, 20))
    first_bad = int(np.argmax(grid < 0.5))  # the score is NaN from here: the last finite state is at it
    np.testing.assert_allclose(checked.t, grid[first_bad], rtol=1e-6)
    np.testing.assert_array_equal(checked.stats.num_accepted, first_bad)
    # adaptive solvers stop at the failure (GGF rejects and shrinks first, then reports it)
    ggf = jaxsde.sample(key, SDE, bad_score, jaxsde.GottaGoFast(rtol=0.05), (4,), 3)
    np.testing.assert_array_equal(ggf.result, results.NONFINITE)
    assert np.all(np.asarray(ggf.stats.num_steps) < 1000) and np.all(np.isfinite(np.asarray(ggf.x)))
    good = jaxsde.sample(key, SDE, SCORE, solver, (4,), 3)
    fine = jaxsde.sample(key, SDE, SCORE, solver, (4,), 3, check_finite=False)
    np.testing.assert_allclose(good.x, fine.x, rtol=1e-6, atol=1e-6)  # different fusion, same maths


def test_max_steps_gives_its_code(key):
    sol = jaxsde.sample(key, SDE, SCORE, jaxsde.GottaGoFast(rtol=0.01), (4,), 3, max_steps=5)
    np.testing.assert_array_equal(sol.result, results.MAX_STEPS_REACHED)
    np.testing.assert_array_equal(sol.stats.num_steps, 5)
    assert np.all(np.asarray(sol.t) > SDE.eps)
    assert "max_steps" in results.describe(results.MAX_STEPS_REACHED)


def test_bad_input_raises_before_compute(key):
    calls = []

    def counting_score(x, t):
        calls.append(1)
        return jnp.zeros((5,), x.dtype)  # wrong shape for x of shape (4,)

    with pytest.raises(ValueError, match=r"shaped like x.*\(4,\).*\(5,\)"):
        jaxsde.solve(key, SDE, counting_score, jaxsde.GottaGoFast(), jnp.ones(4))
    assert len(calls) == 1  # only the abstract shape check ran
    with pytest.raises(ValueError, match="shaped like x"):
        jaxsde.sample(key, SDE, lambda x, t: x[None], jaxsde.EulerMaruyama(5), (4,), 2)
    with pytest.raises(ValueError, match="t_end"):
        jaxsde.solve(key, SDE, SCORE, jaxsde.GottaGoFast(), jnp.ones(4), t_end=0.0)
    with pytest.raises(ValueError, match="t_end"):
        jaxsde.solve(key, SDE, SCORE, jaxsde.GottaGoFast(), jnp.ones(4), t_end=1.5)
    with pytest.raises(ValueError, match="t_start"):
        jaxsde.solve(key, SDE, SCORE, jaxsde.GottaGoFast(), jnp.ones(4), t_start=2.0)
    with pytest.raises(ValueError, match="rtol"):
        jaxsde.GottaGoFast(rtol=0)
    with pytest.raises(ValueError, match="num_steps"):
        jaxsde.EulerMaruyama(0)
    with pytest.raises(ValueError, match="n must be"):
        jaxsde.sample(key, SDE, SCORE, jaxsde.EulerMaruyama(5), (4,), 0)
    with pytest.raises(TypeError, match="floating"):
        jaxsde.solve(key, SDE, SCORE, jaxsde.EulerMaruyama(5), jnp.ones(4, jnp.int32))
    with pytest.raises(ValueError, match="max_steps"):
        jaxsde.solve(key, SDE, SCORE, jaxsde.GottaGoFast(), jnp.ones(4), max_steps=0)


def test_solvers_are_hashable_pytrees_of_their_float_settings():
    # hashable (usable as a static jit argument), and the pytree's leaves are exactly the traced
    # float settings that are set (None ones have no leaf); everything else is static structure
    for s in SOLVERS:
        assert hash(s) == hash(s)
        values = [getattr(s, name) for name in type(s).traced_settings]
        expected = jax.tree_util.tree_leaves([v for v in values if not isinstance(v, str)])  # a grid kind is static
        assert jax.tree_util.tree_leaves(s) == expected
        rebuilt = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(s), jax.tree_util.tree_leaves(s))
        assert rebuilt == s and hash(rebuilt) == hash(s)
    assert jaxsde.GottaGoFast(rtol=0.05) == jaxsde.GottaGoFast(rtol=0.05)
    assert jax.tree_util.tree_leaves(jaxsde.EulerMaruyama(10)) == []  # a fixed grid of constants: no settings
    assert jax.tree_util.tree_leaves(jaxsde.GottaGoFast(rtol=0.02))[0] == 0.02


def _loop_predicate_shapes(solver):
    """Shapes of the loop predicates of ``sample``'s program (batch of 3)."""
    jaxpr = jax.make_jaxpr(lambda k: jaxsde.sample(k, SDE, SCORE, solver, (4,), 3).x)(jax.random.PRNGKey(0))
    shapes = []

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "while":
                shapes.append(eqn.params["cond_jaxpr"].jaxpr.outvars[0].aval.shape)
            for v in eqn.params.values():
                inner = getattr(v, "jaxpr", v)
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jaxpr.jaxpr)
    return shapes


def test_fixed_grid_loop_predicate_is_data_free():
    """A fixed grid ends on its step count: its loop has a static trip count (a scan, which also
    makes it reverse-differentiable) and no per-sample predicate, so vmap does not select every
    carried array each step (that cost EM 16% at d=3072). Adaptive solvers stop per sample: their
    predicate has the batch axis."""
    assert _loop_predicate_shapes(jaxsde.EulerMaruyama(10)) == []
    jaxpr = jax.make_jaxpr(lambda k: jaxsde.sample(k, SDE, SCORE, jaxsde.EulerMaruyama(10), (4,), 3).x)(
        jax.random.PRNGKey(0))
    assert "scan" in str(jaxpr)
    assert _loop_predicate_shapes(jaxsde.GottaGoFast()) == [(3,)]


@pytest.mark.parametrize("shape", [(1, 16, 16, 3), (2, 5), (3,)])
def test_fresh_noise_is_the_plain_normal_draw(shape):
    """FreshNoise draws flat (faster to compile) but gives exactly normal(fold_in(key, attempt), shape)."""
    key = jax.random.PRNGKey(5)
    z = jaxsde.FreshNoise().draw(key, jnp.int32(7), 0.5, 0.4, shape, jnp.float32)
    np.testing.assert_array_equal(z, jax.random.normal(jax.random.fold_in(key, 7), shape, jnp.float32))


@pytest.mark.parametrize("sde", [jaxsde.VPSDE(), jaxsde.VESDE()], ids=["vp", "ve"])
def test_probability_flow_denoises_from_its_last_stage(sde, key):
    """ProbabilityFlow's final Tweedie step reads the score from its FSAL stage: no extra NFE, and
    the same result as evaluating the score there."""
    score = targets.GaussianMixture.random(jax.random.PRNGKey(3), 4, (5,)).score(sde)
    pf = jaxsde.ProbabilityFlow(rtol=1e-4, atol=1e-4)
    run = jax.jit(lambda k, d: jaxsde.sample(k, sde, score, pf, (5,), 8, denoise=d), static_argnums=1)
    raw, den = run(key, False), run(key, True)
    np.testing.assert_array_equal(den.stats.nfe, raw.stats.nfe)
    expected = jax.vmap(lambda x, t: sde.tweedie(x, t, score(x, t)))(raw.x, raw.t)
    np.testing.assert_allclose(den.x, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(den.x, raw.x, atol=1e-3)  # the step did something
