"""Flow models through the solvers (#35): ``jaxsde.Prediction`` accepted wherever a score is (the
driver's exact x0 channel), and every registry solver started at ``t = 1`` on ``FlowSDE`` with a
velocity model samples (its usual NFE, no NaN, the target's law); a plain score there is refused
with an error naming the fix."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import jit

import jaxsde
from jaxsde import results
from jaxsde.prediction import Model, Prediction, to_kind
from jaxsde.solvers.multilevel import MultilevelEM, MultilevelScore
from jaxsde.solvers.registry import make_solver, solver_names, solver_options
from jaxsde.testing.targets import GaussianMixture

SDE = jaxsde.FlowSDE()
SHAPE = (2,)


def _mixture():
    rng = np.random.default_rng(0)
    return GaussianMixture.create(rng.uniform(0.5, 1.5, 3), rng.uniform(-0.8, 0.8, (3, 2)),
                                  rng.uniform(0.05, 0.3, 3))


TARGET = _mixture()
VELOCITY = Prediction(TARGET.velocity(SDE), "velocity")

def small_solver(name):
    return make_solver(name, steps=8) if "steps" in solver_options(name) else make_solver(name)


def _score_for(solver, model):
    return MultilevelScore([model] * len(solver.probabilities)) if isinstance(solver, MultilevelEM) else model


def _usual_nfe(solver) -> int:
    """A fixed-grid solver's NFE on any SDE: its declared evaluations per step times its steps (for
    MultilevelEM the levels its shared coins draw), plus the final denoising step."""
    if isinstance(solver, MultilevelEM):
        steps = np.asarray(jax.vmap(lambda k: solver.needed(solver.coins(k)))(jnp.arange(solver.num_steps)))
        return int(steps.sum()) + 1
    return solver.nfe_per_attempt * solver.num_steps + 1


@functools.cache
def _flow_sampler(solver, n: int, t_start: float = 1.0):
    """``key -> sample(key, SDE, VELOCITY, solver, SHAPE, n, t_start=t_start)``, jitted: one compiled
    program per solver, size and start, shared by the tests below."""
    model = _score_for(solver, VELOCITY)
    return jit(lambda k: jaxsde.sample(k, SDE, model, solver, SHAPE, n, t_start=t_start))


EXACT_FIRST_STEP = ["deis", "ipndm", "lms", "sa", "edm", "mlem"]


def _registry_run(name):
    """The solver and sample size test_every_registry_solver_samples_from_t_1 takes for ``name``: the
    program a sampling test below compiles anyway where there is one (the solvers that take the exact
    first step at their registry defaults, 4000 samples; DDIM on 8 uniform steps, 512 samples), else the
    registry solver on 8 steps and 8 samples."""
    if name in EXACT_FIRST_STEP:
        return make_solver(name), 4000
    if name == "ddim":
        return UNIFORM["ddim"], 512
    return small_solver(name), 8


@pytest.mark.parametrize("name", solver_names())
def test_every_registry_solver_samples_from_t_1(name):
    """Every registry solver with its registry defaults (8 steps, or its registry steps where a sampling
    test below runs it) starts at t = 1 exactly on a flow given a velocity Prediction: every sample
    succeeds and is finite, and a fixed-grid solver spends exactly its usual NFE (the log-SNR grids'
    first step out of t = 1 replaces a step, it adds none; the solvers whose own step is undefined
    there take the exact first step at no extra cost)."""
    solver, n = _registry_run(name)
    sol = _flow_sampler(solver, n)(jax.random.PRNGKey(1))
    assert np.all(np.asarray(sol.result) == results.SUCCESS), np.asarray(sol.result)
    assert np.all(np.isfinite(np.asarray(sol.x)))
    if not solver.adaptive:
        np.testing.assert_array_equal(np.asarray(sol.stats.nfe), _usual_nfe(solver))


@functools.cache
def _ideal_moments():
    """Mean and std of what an exact sampler returns (``ideal_sample``: exact draws at ``sde.eps``,
    then the final denoising step), from 400000 draws, and their standard errors."""
    return _moments(np.asarray(TARGET.ideal_sample(jax.random.PRNGKey(3), SDE, 400_000)))


def _moments(x):
    """Per coordinate: mean, std, and their standard errors (the std's by the delta method from the
    fourth central moment, since the mixture is not Gaussian)."""
    var = x.var(0)
    m4 = ((x - x.mean(0)) ** 4).mean(0)
    return x.mean(0), np.sqrt(var), np.sqrt(var / len(x)), np.sqrt((m4 - var**2) / (4 * var * len(x)))


@pytest.mark.parametrize("name", EXACT_FIRST_STEP)
def test_solvers_that_take_the_exact_first_step_sample_the_flow_target(name):
    """The solvers whose own step is undefined at alpha = 0 (and MultilevelEM on Prediction levels),
    at their registry defaults from t = 1 on the flow target: 4000 samples whose mean and std per
    coordinate match an exact sampler's within 4 standard errors of the difference (sampling noise
    only: the discretisation error at these step counts is below it)."""
    sol = _flow_sampler(make_solver(name), 4000)(jax.random.PRNGKey(5))
    assert np.all(np.asarray(sol.result) == results.SUCCESS)
    mean, std, se_mean, se_std = _moments(np.asarray(sol.x))
    ref_mean, ref_std, ref_se_mean, ref_se_std = _ideal_moments()
    assert np.all(np.abs(mean - ref_mean) < 4 * np.hypot(se_mean, ref_se_mean)), (mean, ref_mean, se_mean)
    assert np.all(np.abs(std - ref_std) < 4 * np.hypot(se_std, ref_se_std)), (std, ref_std, se_std)


UNIFORM = {
    "ddim": jaxsde.DDIM(8),
    "ddim-eta1": jaxsde.DDIM(8, eta=1.0),
    "dpmpp2m": jaxsde.DPMSolverPP(8, order=2, grid="uniform"),
    "dpmpp3m": jaxsde.DPMSolverPP(8, order=3, grid="uniform"),
    "dpmpp3m-taylor": jaxsde.DPMSolverPP(8, order=3, solver_type="taylor", grid="uniform"),
    "dpmpp-sde": jaxsde.DPMSolverPPSDE(8, order=2, grid="uniform"),
    "dpmpp-3m-sde": jaxsde.DPMSolverPPSDE(8, order=3, grid="uniform"),
    "euler-ancestral": jaxsde.EulerAncestral(8, grid="uniform"),
    "pf": jaxsde.ProbabilityFlow(rtol=1e-4, atol=1e-4),
    "unipc2": jaxsde.UniPC(8, order=2, grid="uniform"),
    "unipc3": jaxsde.UniPC(8, order=3, grid="uniform"),
    "unip3": jaxsde.UniPC(8, order=3, corrector=False, grid="uniform"),
    # its own lookahead's limit out of alpha = 0. (DEIS, SA-Solver, LMS drop the node at lambda = -inf
    # from their interpolation; started at lambda_0 > -inf its weight falls only like 1 / |lambda_0|,
    # so they are checked against the target instead: test_solvers_that_take_the_exact_first_step_...)
    "fv": jaxsde.ForwardValue(8, grid="uniform"),
}


REVERSE_SDE = {
    "em": jaxsde.EulerMaruyama(32),
    "rd": jaxsde.ReverseDiffusion(32),
    "ggf": jaxsde.GottaGoFast(rtol=0.05),
}


@pytest.mark.parametrize("name", ["em", pytest.param("ggf", marks=pytest.mark.slow), "rd"])  # ggf: 2000 Brownian-
# tree paths, ~250 NFE each (the fast tier: test_gotta_go_fast_on_brownian_paths_steps_out_of_t_1)
def test_time_stepping_reverse_sde_solvers_step_out_of_t_1_exactly(name):
    """Euler-Maruyama, reverse diffusion and Gotta Go Fast from t = 1 on a flow: their drift is
    infinite there (~ x / (1 - t)), so the first step is the exact posterior step from the model's
    x0; every later step is the method's own (h <= 1 - t keeps its linear factor 1 - h / (1 - t) in
    [0, 1]; Gotta Go Fast rejects longer attempts). The samples' mean and spread match the target's
    (2000 samples; Gotta Go Fast on one Brownian path per sample, so that its rejections do not bias
    the spread: tests/test_brownian_tree_noise.py)."""
    solver = REVERSE_SDE[name]
    noise = jaxsde.BrownianTreeNoise() if solver.adaptive else None
    sol = jit(lambda k: jaxsde.sample(k, SDE, VELOCITY, solver, SHAPE, 2000, noise=noise))(jax.random.PRNGKey(2))
    assert np.all(np.asarray(sol.result) == results.SUCCESS)
    x = np.asarray(sol.x)
    ref = np.asarray(TARGET.sample(jax.random.PRNGKey(3), 50000))
    np.testing.assert_allclose(x.mean(0), ref.mean(0), atol=0.05)
    np.testing.assert_allclose(x.std(0), ref.std(0), rtol=0.12)


def test_gotta_go_fast_on_brownian_paths_steps_out_of_t_1():
    """Gotta Go Fast on one Brownian path per sample from t = 1 (the program of
    test_time_stepping_reverse_sde_solvers_step_out_of_t_1_exactly[ggf], slow tier, on 128 samples): every
    sample succeeds, finite, and the mean per coordinate lies within 4 standard errors of the target's."""
    solver = REVERSE_SDE["ggf"]
    sol = jit(lambda k: jaxsde.sample(k, SDE, VELOCITY, solver, SHAPE, 128, noise=jaxsde.BrownianTreeNoise()))(
        jax.random.PRNGKey(2))
    assert np.all(np.asarray(sol.result) == results.SUCCESS)
    x = np.asarray(sol.x)
    assert np.all(np.isfinite(x))
    ref = np.asarray(TARGET.sample(jax.random.PRNGKey(3), 50000))
    assert np.all(np.abs(x.mean(0) - ref.mean(0)) < 4 * x.std(0) / np.sqrt(len(x))), (x.mean(0), ref.mean(0))


@pytest.mark.parametrize("name", sorted(UNIFORM))
def test_solvers_that_start_at_t_1_sample_the_flow_target(name):
    """From pure noise at t = 1 (a uniform grid): finite, the limit of the same solve started just
    below 1 (same prior draws and noise: the first step out of lambda = -inf is the exact limit, not
    a jump), and the sample mean near the target's (a loose check; 512 samples)."""
    solver = UNIFORM[name]

    def run(t_start):
        return _flow_sampler(solver, 512, t_start)(jax.random.PRNGKey(2))

    sol = run(1.0)
    assert np.all(np.asarray(sol.result) == results.SUCCESS)
    x = np.asarray(sol.x)
    assert np.all(np.isfinite(x))
    if not solver.adaptive:  # an adaptive solve's steps depend on t_start
        diff = np.abs(x - np.asarray(run(1.0 - 1e-5).x))
        # stochastic paths may switch modes near a boundary: a few samples move, the bulk does not
        assert (np.median(diff) if solver.noise_per_attempt else diff.max()) < 2e-3, diff.max()
    ref = np.asarray(TARGET.sample(jax.random.PRNGKey(3), 20000)).mean(0)
    np.testing.assert_allclose(x.mean(0), ref, atol=0.25)


def test_flow_grid_and_shift_with_ddim_and_dpmpp():
    for solver in (jaxsde.DDIM(9, grid=jaxsde.flow.flow_grid(10, shift=3.0)),
                   jaxsde.DPMSolverPP(9, grid=jaxsde.flow.flow_grid(10, shift=3.0))):
        sol = jaxsde.sample(jax.random.PRNGKey(0), SDE, VELOCITY, solver, SHAPE, 16)
        assert np.all(np.asarray(sol.result) == results.SUCCESS) and np.all(np.isfinite(np.asarray(sol.x)))


def test_a_score_at_alpha_zero_is_refused_naming_the_prediction():
    with pytest.raises(ValueError, match="Prediction"):
        jaxsde.solve(jax.random.PRNGKey(0), SDE, TARGET.score(SDE), jaxsde.DDIM(8), jnp.zeros(SHAPE))
    with pytest.raises(ValueError, match="Prediction"):  # MultilevelEM: every level a velocity / x0 Prediction
        jaxsde.solve(jax.random.PRNGKey(0), SDE, MultilevelScore([VELOCITY, TARGET.score(SDE)]),
                     MultilevelEM(8, probabilities=(1.0, 0.5)), jnp.zeros(SHAPE))
    # below t = 1 a plain score is still a score
    sol = jaxsde.solve(jax.random.PRNGKey(0), SDE, TARGET.score(SDE), jaxsde.DDIM(8), jnp.zeros(SHAPE),
                       t_start=0.999)
    assert int(sol.result) == results.SUCCESS


def test_a_log_snr_grid_from_t_1_is_t_1_then_the_grid_from_its_top():
    """From t = 1 (alpha = 0) "logsnr" / "edm" grids are t = 1, then exponential / Karras sigmas
    (sigma/alpha) from ALPHA_ZERO_SIGMA_MAX down to t_end: the same number of steps; a solver on
    such a grid solves as on those times given explicitly. Below t = 1 the grids are the usual ones."""
    from jaxsde.grids import ALPHA_ZERO_SIGMA_MAX, alpha_zero_grid, time_grid

    smax, s_end = ALPHA_ZERO_SIGMA_MAX, SDE.eps / (1 - SDE.eps)
    ramp = np.linspace(0.0, 1.0, 8)
    expected = {"logsnr": np.exp(np.log(smax) + ramp * (np.log(s_end) - np.log(smax))),
                "edm": (smax ** (1 / 7) + ramp * (s_end ** (1 / 7) - smax ** (1 / 7))) ** 7}
    for kind, sig in expected.items():
        grid = np.asarray(time_grid(SDE, 8, kind))
        assert grid.shape == (9,) and grid[0] == 1.0 and grid[-1] == np.float32(SDE.eps)
        np.testing.assert_allclose(grid[1:], sig / (1 + sig), rtol=2e-5)
        np.testing.assert_array_equal(grid, np.asarray(alpha_zero_grid(SDE, 8, kind)))
        below = np.asarray(time_grid(SDE, 8, kind, t_start=0.999))  # lambda finite: the usual spacing
        assert below[0] == np.float32(0.999) and below[1] > grid[1]
    x_T = jax.random.normal(jax.random.PRNGKey(0), (16, *SHAPE))
    keys = jax.random.split(jax.random.PRNGKey(1), 16)
    for solver in (jaxsde.DPMSolverPP(8), jaxsde.DEIS(8, grid="edm")):
        times = tuple(float(v) for v in time_grid(SDE, 8, solver.grid))
        a = jaxsde.solve_batch(keys, SDE, VELOCITY, solver, x_T)
        b = jaxsde.solve_batch(keys, SDE, VELOCITY, dataclasses.replace(solver, grid=times), x_T)
        np.testing.assert_allclose(np.asarray(a.x), np.asarray(b.x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="alpha = 0"):
        alpha_zero_grid(SDE, 8, t_start=0.999)
    # t_end above the top: uniform in t
    np.testing.assert_allclose(np.asarray(alpha_zero_grid(SDE, 4, t_end=0.95)), np.linspace(1.0, 0.95, 5), rtol=1e-6)


def test_a_velocity_the_sde_cannot_convert_is_refused():
    class Broken(jaxsde.VPSDE):
        def velocity_determinant(self, t):
            return jnp.zeros_like(jnp.asarray(t, float))

    jax.tree_util.register_static(Broken)
    with pytest.raises(ValueError, match="velocity"):
        jaxsde.solve(jax.random.PRNGKey(0), Broken(), VELOCITY, jaxsde.DDIM(8), jnp.zeros(SHAPE))


def test_the_x0_channel_is_exact_at_alpha_zero_and_the_final_step_reads_it():
    model = Model(SDE, VELOCITY)
    x = jnp.array([0.3, -1.2])
    np.testing.assert_allclose(model.x0(x, 1.0), TARGET.posterior_mean(SDE)(x, 1.0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.x0(x, 1.0), x - VELOCITY(x, 1.0), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(model(x, 1.0))))  # the score there: -x
    # the default final step: x0 from the velocity, one evaluation (x - t v at t_end)
    x0, nfe = jaxsde.DDIM(4).denoise(SDE, model, x, jnp.float32(0.01), None)
    np.testing.assert_allclose(x0, x - 0.01 * VELOCITY(x, 0.01), rtol=1e-6)
    assert nfe == 1


@pytest.mark.parametrize("solver", [jaxsde.DDIM(6), jaxsde.DPMSolverPP(6, order=3), jaxsde.DEIS(6),
                                    jaxsde.EulerMaruyama(6), jaxsde.GottaGoFast(rtol=0.05)],
                         ids=lambda s: type(s).__name__)
def test_a_score_prediction_equals_the_plain_score_on_vp(solver):
    """A Prediction of kind "score" (and the same model as an eps Prediction) gives the plain
    score's solve to float rounding, with the same NFE."""
    sde = jaxsde.VPSDE()
    score = TARGET.score(sde)
    keys = jax.random.split(jax.random.PRNGKey(4), 4)
    x_T = jax.random.normal(jax.random.PRNGKey(5), (4, *SHAPE))
    ref = jaxsde.solve_batch(keys, sde, score, solver, x_T)
    for pred in (Prediction(score, "score"), Prediction(to_kind(sde, score, "eps"), "eps")):
        sol = jaxsde.solve_batch(keys, sde, pred, solver, x_T)
        np.testing.assert_array_equal(np.asarray(sol.stats.nfe), np.asarray(ref.stats.nfe))
        np.testing.assert_allclose(np.asarray(sol.x), np.asarray(ref.x), rtol=2e-5, atol=2e-5)


def test_nfe_of_a_prediction_is_one_per_evaluation():
    calls: list[int] = []
    v = TARGET.velocity(SDE)

    def counting(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return v(x, t)

    sol = jax.jit(lambda k, x: jaxsde.solve(k, SDE, Prediction(counting, "velocity"), jaxsde.DPMSolverPP(
        5, grid="uniform"), x))(jax.random.PRNGKey(0), jnp.zeros(SHAPE))
    nfe = int(sol.stats.nfe)
    jax.effects_barrier()
    assert nfe == len(calls) == 6


def test_a_conditional_prediction_and_a_bf16_model():
    v = TARGET.velocity(SDE)

    def cond_v(x, t, c):
        return v(x, t) + 0.0 * c

    cond = jnp.arange(4, dtype=jnp.float32)
    sol = jaxsde.sample(jax.random.PRNGKey(0), SDE, Prediction(cond_v, "velocity"), jaxsde.DDIM(6), SHAPE, 4,
                        cond=cond)
    ref = jaxsde.sample(jax.random.PRNGKey(0), SDE, VELOCITY, jaxsde.DDIM(6), SHAPE, 4)
    np.testing.assert_allclose(np.asarray(sol.x), np.asarray(ref.x), rtol=1e-6, atol=1e-6)
    low = Prediction(lambda x, t: v(x, t).astype(jnp.bfloat16), "velocity")
    sol = jaxsde.sample(jax.random.PRNGKey(0), SDE, low, jaxsde.DDIM(6), SHAPE, 4)
    assert sol.x.dtype == jnp.float32 and np.all(np.asarray(sol.result) == results.SUCCESS)


def test_generate_takes_a_prediction():
    if not hasattr(jaxsde, "generate"):
        pytest.skip("no generate")
    solver = dataclasses.replace(jaxsde.DDIM(6))
    out = jaxsde.sample(jax.random.PRNGKey(0), SDE, VELOCITY, solver, SHAPE, 4)
    assert np.all(np.isfinite(np.asarray(out.x)))


# --- the adaptive log-SNR samplers from t = 1 (#35): the first step out of alpha = 0 in rho ---------

ADAPTIVE = {
    "dpm12": lambda rtol: jaxsde.AdaptiveDPMSolver(order=2, rtol=rtol),
    "dpm23": lambda rtol: jaxsde.AdaptiveDPMSolver(order=3, rtol=rtol),
    "multistep1": lambda rtol: jaxsde.AdaptiveMultistepSolver(order=1, rtol=rtol),
    "multistep2": lambda rtol: jaxsde.AdaptiveMultistepSolver(order=2, rtol=rtol),
    "multistep3": lambda rtol: jaxsde.AdaptiveMultistepSolver(order=3, rtol=rtol),
}


@jit(static_argnames=("model", "t_start", "denoise", "max_steps"))
def _solve_jit(solver, x_T, model, t_start, denoise, max_steps):
    keys = jax.random.split(jax.random.PRNGKey(7), x_T.shape[0])
    return jaxsde.solve_batch(keys, SDE, model, solver, x_T, t_start=t_start, denoise=denoise, max_steps=max_steps)


def _flow_solve(solver, x_T, t_start=1.0, model=VELOCITY, denoise=True, max_steps=None):
    """One compiled program per solver structure: the tolerance is a traced setting."""
    return _solve_jit(solver, x_T, model, t_start, denoise, max_steps)


def _reference(x_T, t_start=1.0):
    """The flow ODE's solution, converged (float32): Dormand-Prince at rtol = atol = 1e-7."""
    return np.asarray(_flow_solve(jaxsde.ProbabilityFlow(rtol=1e-7, atol=1e-7), x_T, t_start, max_steps=20000).x)


X_T = jax.random.normal(jax.random.PRNGKey(11), (64, *SHAPE))


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_adaptive_log_snr_solvers_start_at_t_1(name):
    """From t = 1 exactly (alpha = 0, lambda = -inf): every sample succeeds, finite, and lands where
    the same ODE started at 1 - 1e-5 lands (both within tolerance of the converged flow)."""
    solver = ADAPTIVE[name](1e-4)
    sol = _flow_solve(solver, X_T)
    assert np.all(np.asarray(sol.result) == results.SUCCESS), np.asarray(sol.result)
    x = np.asarray(sol.x)
    assert np.all(np.isfinite(x))
    later = np.asarray(_flow_solve(solver, X_T, t_start=1.0 - 1e-5).x)
    ref = _reference(X_T)
    assert np.abs(x - ref).max() < 5e-3, np.abs(x - ref).max()
    assert np.abs(x - later).max() < 5e-3, np.abs(x - later).max()
    # out of alpha = 0 the first step is not spent crawling out of lambda = -23 in 0.05 steps
    assert np.mean(np.asarray(sol.stats.nfe)) <= np.mean(np.asarray(_flow_solve(solver, X_T, 1.0 - 1e-5).stats.nfe))


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_adaptive_from_t_1_samples_an_exact_gaussian_flow(name):
    """A Gaussian target N(mu, s^2 I): the flow ODE's map is linear, x_t = (1 - t) mu +
    sqrt((1 - t)^2 s^2 + t^2) x_1, in closed form: the solve from t = 1 reaches it pathwise."""
    mu, scale = jnp.array([0.5, -0.3]), 0.2
    target = GaussianMixture.gaussian(mu, scale)
    model = Prediction(target.velocity(SDE), "velocity")
    sol = _flow_solve(ADAPTIVE[name](1e-4), X_T, model=model, denoise=False)
    assert np.all(np.asarray(sol.result) == results.SUCCESS)
    t = SDE.eps
    exact = (1 - t) * np.asarray(mu) + np.sqrt((1 - t) ** 2 * scale**2 + t**2) * np.asarray(X_T)
    np.testing.assert_allclose(np.asarray(sol.x), exact, atol=2e-3)


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_adaptive_from_t_1_honours_the_tolerance(name):
    """Against the converged flow, the error falls as rtol falls (each decade by >= 2x), and
    the NFE rises."""
    ref = _reference(X_T)
    errors, nfes = [], []
    for rtol in (1e-2, 1e-3, 1e-4):
        sol = _flow_solve(ADAPTIVE[name](rtol), X_T)
        assert np.all(np.asarray(sol.result) == results.SUCCESS)
        errors.append(float(np.sqrt(np.mean((np.asarray(sol.x) - ref) ** 2))))
        nfes.append(float(np.mean(np.asarray(sol.stats.nfe))))
    assert errors[1] < 0.5 * errors[0] and errors[2] < 0.5 * errors[1], errors
    assert nfes[0] < nfes[1] < nfes[2], nfes


def test_the_reverse_sde_multistep_starts_at_t_1():
    """tau = 1 (the reverse-time SDE) out of alpha = 0: the state is forgotten (h = inf), the first
    step's PEC pair interpolates x0 linearly in rho; samples finite and distributed as the target."""
    solver = jaxsde.AdaptiveMultistepSolver(order=2, rtol=0.02, tau=1.0)
    sol = jit(lambda k: jaxsde.sample(k, SDE, VELOCITY, solver, SHAPE, 512))(jax.random.PRNGKey(2))
    assert np.all(np.asarray(sol.result) == results.SUCCESS)
    x = np.asarray(sol.x)
    assert np.all(np.isfinite(x))
    ref = np.asarray(TARGET.sample(jax.random.PRNGKey(3), 20000))
    np.testing.assert_allclose(x.mean(0), ref.mean(0), atol=0.1)
    np.testing.assert_allclose(x.std(0), ref.std(0), atol=0.1)


@pytest.mark.parametrize("solver", [jaxsde.AdaptiveDPMSolver(prediction="noise"), jaxsde.AdaptiveDPMSolver(eta=1.0)],
                         ids=["noise", "ancestral"])
def test_adaptive_dpm_refuses_what_cannot_start_at_alpha_zero(solver):
    with pytest.raises(ValueError, match="prediction='data', eta=0"):
        jaxsde.solve(jax.random.PRNGKey(0), SDE, VELOCITY, solver, jnp.zeros(SHAPE))
    sol = jaxsde.solve(jax.random.PRNGKey(0), SDE, VELOCITY, solver, jnp.zeros(SHAPE), t_start=0.999)
    assert int(sol.result) == results.SUCCESS


def test_the_log_snr_controller_steps_out_of_alpha_zero_in_rho():
    """u = -inf at t = 1: the first step ends at rho = alpha / sigma = h (t = 1 / (1 + h) on the
    flow); rejected, the rho-step shrinks; accepted, the next half log-SNR step covers the rho-step
    the rule proposes, log1p(factor)."""
    from jaxsde.controllers import ErrorNorm, GottaGoFastController, StepSizeController

    ctrl = StepSizeController(GottaGoFastController(safety=1.0, exponent=1.0), ErrorNorm(0.1, atol=0.1),
                              error_order=2.0, h_init=0.05, variable="log_snr")
    t0, t_end = jnp.float32(1.0), jnp.float32(1e-3)
    state = ctrl.init(SDE, t0, t_end, jnp.float32)
    assert np.isneginf(float(state.u))
    t1, state = ctrl.propose(SDE, t0, t_end, state)
    np.testing.assert_allclose(float(t1), 1.0 / 1.05, rtol=1e-6)
    x = jnp.ones(2)
    rejected = ctrl.adapt(SDE, t0, t1, x, jnp.full(2, 0.4), jnp.zeros(2), True, state)  # e = 4
    assert not bool(rejected.accepted) and float(rejected.t) == 1.0
    np.testing.assert_allclose(float(rejected.state.h), 0.05 / 4, rtol=1e-6)
    assert np.isneginf(float(rejected.state.u))
    accepted = ctrl.adapt(SDE, t0, t1, x, jnp.full(2, 0.025), jnp.zeros(2), True, state)  # e = 0.25
    assert bool(accepted.accepted)
    np.testing.assert_allclose(float(accepted.state.u), np.log(0.05), rtol=1e-6)
    np.testing.assert_allclose(float(accepted.state.h), np.log1p(4.0), rtol=1e-6)


def test_sample_multilevel_takes_prediction_levels():
    """jaxsde.sample_multilevel (levels skipped batch-wide) on velocity levels from t = 1 gives
    jaxsde.sample's samples (the levels keep their kind when the batch's values are handed on)."""
    solver = MultilevelEM(16, probabilities=(1.0, 0.5))
    slow = Prediction(lambda x, t: TARGET.velocity(SDE)(x, t) + 0.01 * x, "velocity")
    score = MultilevelScore([slow, VELOCITY])
    a = jaxsde.sample(jax.random.PRNGKey(3), SDE, score, solver, SHAPE, 32)
    b = jaxsde.sample_multilevel(jax.random.PRNGKey(3), SDE, score, solver, SHAPE, 32)
    assert np.all(np.asarray(a.result) == results.SUCCESS) and np.all(np.isfinite(np.asarray(a.x)))
    np.testing.assert_allclose(np.asarray(b.x), np.asarray(a.x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(b.stats.nfe), np.asarray(a.stats.nfe))
