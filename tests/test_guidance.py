"""Conditions through the public API (``cond=``) and the guidance combinators of ``jaxsde.guidance``.

The conditional target: the data law given ``c`` is ``N(c * mu, s0^2 I)`` (``c`` a float, or a
pytree holding it), whose noised score is exact (:func:`cond_score`); the null condition is
``c = 0``'s stand-in ``NULL`` with its own exact law, so every guided score has a closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import jit

import jaxsde
from jaxsde import guidance, results
from jaxsde.solvers.multilevel import MultilevelEM, MultilevelScore
from jaxsde.solvers.registry import make_solver, solver_names, solver_options

SDE = jaxsde.VPSDE()
SHAPE = (3,)
MU = jnp.array([0.6, -0.3, 0.1], jnp.float32)
S0 = 0.3
NULL = jnp.float32(0.0)


def gaussian(mean, std):
    """The exact score of the noised law of ``N(mean, std^2 I)`` under ``SDE``."""

    def score(x, t):
        alpha, sigma = SDE.marginal(t)
        return -(x - alpha * mean) / (alpha**2 * std**2 + sigma**2)

    return score


def cond_score(x, t, c):
    """``c`` scales the mean; the null condition (``c = 0``) has a wider law (std 0.6)."""
    std = jnp.where(c == 0.0, 0.6, S0)
    return gaussian(c * MU, std)(x, t)


def dict_score(x, t, c):  # a pytree condition
    return cond_score(x, t, c["scale"]) + 0.0 * c["unused"].sum()


CONDS = jnp.array([1.0, -1.0, 2.0, 0.5, 1.5, -0.5], jnp.float32)
N = CONDS.shape[0]
KEY = jax.random.PRNGKey(3)


# --- cond= through solve / sample / generate / sdedit / inpaint ----------------------------------

@pytest.mark.parametrize("solver", [jaxsde.EulerMaruyama(20), jaxsde.GottaGoFast(rtol=0.1),
                                    jaxsde.DPMSolverPP(8)], ids=["em", "ggf", "dpmpp"])
def test_sample_with_cond_equals_the_bound_unconditional_score(solver):
    """Row i of a conditional batch is the unconditional solve of ``score(., ., c_i)``."""
    sol = jaxsde.sample(KEY, SDE, cond_score, solver, SHAPE, N, cond=CONDS)
    assert np.all(np.asarray(sol.result) == results.SUCCESS)
    # the unconditional solve of score(., ., c), c and the offset traced: one program for the three rows
    unconditional = jax.jit(lambda c, i: jaxsde.sample(KEY, SDE, lambda x, t: cond_score(x, t, c), solver, SHAPE, 1,
                                                       offset=i))
    for i in (0, 2, 5):
        ref = unconditional(CONDS[i], i)
        np.testing.assert_allclose(np.asarray(sol.x[i]), np.asarray(ref.x[0]), rtol=1e-5, atol=1e-6)
        assert int(sol.stats.nfe[i]) == int(ref.stats.nfe[0])


def test_cond_is_per_sample_whatever_the_batch():
    solver = jaxsde.GottaGoFast(rtol=0.1)
    full = jaxsde.sample(KEY, SDE, cond_score, solver, SHAPE, N, cond=CONDS)
    part = jaxsde.sample(KEY, SDE, cond_score, solver, SHAPE, 2, cond=CONDS[3:5], offset=3)
    np.testing.assert_allclose(np.asarray(part.x), np.asarray(full.x[3:5]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(part.stats.nfe), np.asarray(full.stats.nfe[3:5]))


def test_the_condition_reaches_the_samples():
    """With PF-ODE at a tight tolerance each sample's law is ``N(c mu, s0^2)``: the sample means
    of 400 samples per condition sit within 4 standard errors of ``c mu``."""
    conds = jnp.repeat(jnp.array([1.0, -2.0], jnp.float32), 400)
    sol = jit(lambda k: jaxsde.sample(k, SDE, cond_score, jaxsde.ProbabilityFlow(rtol=1e-5, atol=1e-5),
                                          SHAPE, 800, cond=conds))(KEY)
    x = np.asarray(sol.x)
    for j, c in enumerate((1.0, -2.0)):
        block = x[j * 400:(j + 1) * 400]
        se = S0 / np.sqrt(400)
        assert np.all(np.abs(block.mean(0) - c * np.asarray(MU)) < 4 * se), (c, block.mean(0))
        assert np.all(np.abs(block.std(0) / S0 - 1) < 0.15), block.std(0)


def test_generate_and_progress_carry_cond():
    solver = jaxsde.GottaGoFast(rtol=0.1)
    ref = jaxsde.sample(KEY, SDE, cond_score, solver, SHAPE, N, cond=CONDS)
    gen = jaxsde.generate(KEY, SDE, cond_score, solver, SHAPE, N, batch_size=2, cond=CONDS)
    np.testing.assert_allclose(np.asarray(gen.x), np.asarray(ref.x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(gen.stats.nfe), np.asarray(ref.stats.nfe))
    prog = jaxsde.sample(KEY, SDE, cond_score, solver, SHAPE, N, cond=CONDS, progress=lambda info: None)
    np.testing.assert_allclose(np.asarray(prog.x), np.asarray(ref.x), rtol=1e-5, atol=1e-6)


def test_pytree_conditions_and_solve():
    conds = {"scale": CONDS, "unused": jnp.ones((N, 2, 2))}
    sol = jaxsde.sample(KEY, SDE, dict_score, jaxsde.EulerMaruyama(10), SHAPE, N, cond=conds)
    ref = jaxsde.sample(KEY, SDE, cond_score, jaxsde.EulerMaruyama(10), SHAPE, N, cond=CONDS)
    np.testing.assert_allclose(np.asarray(sol.x), np.asarray(ref.x), rtol=1e-6, atol=1e-6)
    one = jaxsde.solve(KEY, SDE, cond_score, jaxsde.EulerMaruyama(10), jnp.ones(SHAPE), cond=jnp.float32(2.0))
    bound = jaxsde.solve(KEY, SDE, lambda x, t: cond_score(x, t, 2.0), jaxsde.EulerMaruyama(10), jnp.ones(SHAPE))
    np.testing.assert_array_equal(np.asarray(one.x), np.asarray(bound.x))


def test_sdedit_and_inpaint_take_cond():
    guide = jnp.array([0.2, 0.2, 0.2])
    sol = jaxsde.sdedit(KEY, SDE, cond_score, jaxsde.EulerMaruyama(10), guide, 0.5, n=N, cond=CONDS)
    ref = jaxsde.sdedit(KEY, SDE, lambda x, t: cond_score(x, t, CONDS[4]), jaxsde.EulerMaruyama(10), guide, 0.5, n=N)
    np.testing.assert_allclose(np.asarray(sol.x[4]), np.asarray(ref.x[4]), rtol=1e-5, atol=1e-6)
    mask = jnp.array([1.0, 0.0, 0.0])
    out = jaxsde.inpaint(KEY, SDE, cond_score, jaxsde.EulerMaruyama(10), guide, mask, n=N, cond=CONDS)
    np.testing.assert_array_equal(np.asarray(out.x[:, 0]), np.full(N, 0.2, np.float32))
    one = jaxsde.inpaint(KEY, SDE, cond_score, jaxsde.EulerMaruyama(10), guide, mask, cond=jnp.float32(2.0))
    assert int(one.result) == results.SUCCESS


@pytest.mark.parametrize("name", [n for n in solver_names()])
def test_every_solver_accepts_a_guided_score(name):
    solver = make_solver(name, steps=6) if "steps" in solver_options(name) else make_solver(name)
    guided = guidance.classifier_free(cond_score, NULL, 1.5)
    score = MultilevelScore([guided] * len(solver.probabilities)) if isinstance(solver, MultilevelEM) else guided
    sol = jit(lambda k, c: jaxsde.sample(k, SDE, score, solver, SHAPE, 4, cond=c))(KEY, CONDS[:4])
    assert np.all(np.asarray(sol.result) == results.SUCCESS), np.asarray(sol.result)
    assert np.all(np.isfinite(np.asarray(sol.x)))


# --- the combinators --------------------------------------------------------------------------

def _point():
    return jnp.array([0.3, -0.2, 0.5], jnp.float32), jnp.float32(0.4)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.5, -1.0])
def test_classifier_free_formula(w):
    x, t = _point()
    guided = guidance.classifier_free(cond_score, NULL, w)
    want = (1 + w) * cond_score(x, t, 2.0) - w * cond_score(x, t, NULL)
    np.testing.assert_allclose(np.asarray(guided(x, t, jnp.float32(2.0))), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_classifier_free_is_one_network_call():
    """Both branches go through ONE call of the score (traced once, over a leading pair axis)."""
    calls = []

    def net(x, t, c):
        calls.append(x.shape)
        return cond_score(x, t, c)

    guided = guidance.classifier_free(net, NULL, 2.0)
    jax.make_jaxpr(jax.vmap(guided, in_axes=(0, None, 0)))(jnp.zeros((5, *SHAPE)), 0.5, CONDS[:5])
    assert len(calls) == 1, calls


def test_composed_guidance():
    x, t = _point()
    weights = (0.5, 2.0)
    conds = jnp.array([1.0, -2.0], jnp.float32)
    guided = guidance.composed(cond_score, NULL, weights)
    s_null = cond_score(x, t, NULL)
    want = s_null + sum((1 + w) * (cond_score(x, t, c) - s_null) for w, c in zip(weights, conds, strict=True))
    np.testing.assert_allclose(np.asarray(guided(x, t, conds)), np.asarray(want), rtol=1e-5, atol=1e-6)
    one = guidance.composed(cond_score, NULL, (1.5,))(x, t, conds[:1])
    cfg = guidance.classifier_free(cond_score, NULL, 1.5)(x, t, conds[0])
    np.testing.assert_allclose(np.asarray(one), np.asarray(cfg), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="2 conditions per sample"):
        guided(x, t, conds[:1])


def test_classifier_guidance_with_an_exact_classifier_gives_the_conditional_score():
    """Unconditional law: an equal mixture of ``N(+mu, s0^2)`` and ``N(-mu, s0^2)``; its exact
    noisy classifier ``log p_t(c | x)`` at weight 1 turns the mixture's score into component c's."""
    comps = {0: gaussian(MU, S0), 1: gaussian(-MU, S0)}

    def log_density(x, t, mean):
        alpha, sigma = SDE.marginal(t)
        var = alpha**2 * S0**2 + sigma**2
        return -0.5 * jnp.sum((x - alpha * mean) ** 2) / var

    def log_prob(x, t, c):
        logs = jnp.stack([log_density(x, t, MU), log_density(x, t, -MU)])
        return jax.nn.log_softmax(logs)[c]

    def mixture_score(x, t):
        return jax.grad(lambda y: jax.nn.logsumexp(jnp.stack([log_density(y, t, MU), log_density(y, t, -MU)])))(x)

    guided = guidance.classifier(mixture_score, log_prob, 1.0)
    x, t = _point()
    for c in (0, 1):
        np.testing.assert_allclose(np.asarray(guided(x, t, c)), np.asarray(comps[c](x, t)), rtol=1e-5, atol=1e-5)
    stronger = guidance.classifier(mixture_score, log_prob, 3.0)(x, t, 0)
    grad = jax.grad(log_prob)(x, t, 0)
    np.testing.assert_allclose(np.asarray(stronger), np.asarray(mixture_score(x, t) + 3.0 * grad), rtol=1e-5,
                               atol=1e-5)


def test_guidance_interval():
    guided = guidance.classifier_free(cond_score, NULL, 4.0, sde=SDE, interval=(0.5, 2.0))
    plain = guidance.classifier_free(cond_score, NULL, 4.0)
    x = jnp.array([0.3, -0.2, 0.5], jnp.float32)
    for t in (0.05, 0.3, 0.6, 0.95):
        alpha, sigma = SDE.marginal(jnp.float32(t))
        level = float(sigma / alpha)
        got = guided(x, jnp.float32(t), jnp.float32(2.0))
        want = plain(x, jnp.float32(t), jnp.float32(2.0)) if 0.5 <= level <= 2.0 else cond_score(x, t, 2.0)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


# --- bad input ----------------------------------------------------------------------------------

def test_bad_guidance_input():
    with pytest.raises(ValueError, match="no null condition|has none"):
        guidance.classifier_free(cond_score, None, 2.0)
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        guidance.classifier_free(cond_score, NULL, 2.0, sde=SDE, interval=(-1.0, 2.0))
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        guidance.classifier_free(cond_score, NULL, 2.0, sde=SDE, interval=(2.0, 1.0))
    with pytest.raises(TypeError, match="needs the SDE"):
        guidance.classifier_free(cond_score, NULL, 2.0, interval=(0.1, 1.0))
    with pytest.raises(ValueError, match="finite"):
        guidance.classifier_free(cond_score, NULL, float("nan"))
    with pytest.raises(TypeError, match="real number"):
        guidance.classifier_free(cond_score, NULL, "2")


def test_bad_cond_input():
    solver = jaxsde.EulerMaruyama(5)
    with pytest.raises(ValueError, match="leading axis of length 6"):
        jaxsde.sample(KEY, SDE, cond_score, solver, SHAPE, 6, cond=CONDS[:4])
    with pytest.raises(ValueError, match="leading axis of length 6"):
        jaxsde.generate(KEY, SDE, cond_score, solver, SHAPE, 6, batch_size=2, cond=CONDS[:5])
    with pytest.raises(TypeError, match="needs cond="):
        jaxsde.sample(KEY, SDE, cond_score, solver, SHAPE, 6)
    with pytest.raises(TypeError, match="third argument"):
        jaxsde.sample(KEY, SDE, gaussian(MU, S0), solver, SHAPE, 6, cond=CONDS)
    with pytest.raises(ValueError, match="no arrays"):
        jaxsde.sample(KEY, SDE, cond_score, solver, SHAPE, 6, cond={})


def test_combinators_are_built_inside_jit():
    """Built from Python weights inside the caller's jit (a traced-weight check would fail there)."""
    x, t = _point()

    @jax.jit
    def run(x, c):
        cfg = guidance.classifier_free(cond_score, NULL, 2.0)(x, t, c)
        comp = guidance.composed(cond_score, NULL, [1.0, 0.5])(x, t, jnp.stack([c, -c]))
        return cfg, comp

    cfg, _ = run(x, jnp.float32(2.0))
    np.testing.assert_allclose(np.asarray(cfg), np.asarray(3 * cond_score(x, t, 2.0) - 2 * cond_score(x, t, NULL)),
                               rtol=1e-5, atol=1e-6)
    traced = jax.jit(lambda w: guidance.classifier_free(cond_score, NULL, w)(x, t, jnp.float32(2.0)))(2.0)
    np.testing.assert_allclose(np.asarray(traced), np.asarray(cfg), rtol=1e-6)
