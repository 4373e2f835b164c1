"""WrappedSolver forwards the whole solver contract, so wrappers (Inpainting) drop no behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import jit

import jaxsde
from jaxsde.editing import Inpainting, check_mask, inpaint
from jaxsde.solvers.base import Solver, WrappedSolver, solver_class
from jaxsde.testing.targets import GaussianMixture

SHAPE = (6, 6, 1)


@solver_class
class Passthrough(WrappedSolver):
    """The identity wrapper: overrides nothing."""

    solver: Solver
    traced_settings = {"solver": None}


@pytest.fixture(scope="module")
def problem():
    sde = jaxsde.VPSDE()
    return sde, GaussianMixture.random(jax.random.PRNGKey(3), 3, SHAPE, scale=0.1).score(sde)


def _mask():
    m = np.zeros(SHAPE[:-1], np.float32)
    m[:, :3] = 1.0
    return m


def _guide():
    return jnp.linspace(-0.8, 0.8, int(np.prod(SHAPE))).reshape(SHAPE)


def test_every_public_part_of_the_contract_is_forwarded_explicitly():
    # the class machinery (settings, construction checks, what derives from the forwarded
    # step_controller) is the wrapper's own, inherited as it is
    machinery = {"traced_settings", "noise_setting", "derive", "check_contract", "missing_hooks", "adaptive",
                 "max_attempts", "time_span"}
    public = {name for name in dir(Solver) if not name.startswith("_") and name not in machinery}
    missing = sorted(public - set(vars(WrappedSolver)))
    assert not missing, f"WrappedSolver does not forward {missing}"


@pytest.mark.parametrize("solver", [
    jaxsde.GottaGoFast(rtol=0.1),
    jaxsde.ProbabilityFlow(rtol=1e-3, atol=1e-3),
    jaxsde.LMS(8, last_step="lms"),
    jaxsde.DDIM(6, eta=1.0),
    jaxsde.AdaptiveMultistepSolver(rtol=0.05, tau=1.0),
], ids=lambda s: type(s).__name__)
def test_identity_wrapper_is_the_inner_solver(problem, solver):
    sde, score = problem
    wrapped = Passthrough(solver)
    for name in ("noise_per_attempt", "nfe_per_attempt", "adaptive", "error_order", "reimpose_nfe", "step_controller"):
        assert getattr(wrapped, name) == getattr(solver, name), name
    assert wrapped.time_span() == solver.time_span() and wrapped.max_attempts() == solver.max_attempts()
    run = jit(lambda s, k: jaxsde.sample(k, sde, score, s, SHAPE, 3))
    a, b = run(solver, jax.random.PRNGKey(1)), run(wrapped, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    np.testing.assert_array_equal(np.asarray(a.stats.nfe), np.asarray(b.stats.nfe))


def test_inpainting_takes_the_inner_solvers_last_step(problem):
    sde, score = problem
    m = check_mask(_mask(), SHAPE)
    inner = jaxsde.LMS(8, last_step="lms")
    wrapped = Inpainting(inner, _guide(), m)
    x_T = sde.prior_sample(jax.random.PRNGKey(2), SHAPE)
    t_end = jnp.asarray(sde.eps)
    # run to the end without the final step, then apply the wrapper's final step by hand
    p = jaxsde.driver.prepare(sde, score, wrapped, x_T, denoise=False)
    state = jax.lax.fori_loop(0, 8, lambda i, s: jaxsde.driver.step(p, jax.random.PRNGKey(0), s),
                              jaxsde.driver.init(p, x_T))
    s_end = score(state.x, t_end)
    ours, _ = wrapped.denoise(sde, score, state.x, t_end, state.solver_state)
    lms, _ = inner.denoise(sde, score, state.x, t_end, state.solver_state[0])
    tweedie = sde.tweedie(state.x, t_end, s_end)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(lms))
    assert not np.allclose(np.asarray(lms), np.asarray(tweedie), atol=1e-4)  # the two last steps differ here
    # and inpaint uses it: LMS(last_step="lms") and LMS(last_step="tweedie") give different samples
    a = inpaint(jax.random.PRNGKey(5), sde, score, inner, _guide(), _mask())
    b = inpaint(jax.random.PRNGKey(5), sde, score, jaxsde.LMS(8), _guide(), _mask())
    unknown = np.broadcast_to(_mask()[..., None], SHAPE) == 0
    assert not np.allclose(np.asarray(a.x)[unknown], np.asarray(b.x)[unknown], atol=1e-4)


def test_inpainting_pf_final_step_costs_no_evaluation(problem):
    sde, score = problem
    solver = jaxsde.ProbabilityFlow(rtol=1e-3, atol=1e-3, h_init=0.05)
    on = inpaint(jax.random.PRNGKey(5), sde, score, solver, _guide(), _mask())
    off = inpaint(jax.random.PRNGKey(5), sde, score, solver, _guide(), _mask(), denoise=False)
    assert int(on.stats.num_steps) == int(off.stats.num_steps)
    assert int(on.stats.nfe) == int(off.stats.nfe)  # the denoising step reads the score from the state


def test_inpainting_keeps_inner_settings_traced(problem):
    sde, score = problem
    traces = []

    @jax.jit
    def run(solver, k):
        traces.append(1)
        return inpaint(k, sde, score, solver, _guide(), _mask()).stats.nfe

    nfes = [int(run(jaxsde.GottaGoFast(rtol=r), jax.random.PRNGKey(0))) for r in (0.2, 0.05)]
    assert len(traces) == 1 and nfes[0] < nfes[1]
    leaves = jax.tree_util.tree_leaves(Inpainting(jaxsde.GottaGoFast(rtol=0.2), _guide(), check_mask(_mask(), SHAPE)))
    assert 0.2 in leaves
