"""The tolerance is a promise: with the default ``atol`` (tied to ``rtol``), lowering ``rtol``
alone lowers the error of every adaptive ODE solver against a converged reference, on VP and VE."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.controllers import ErrorNorm
from jaxsde.testing.reference import diffrax_solve
from jaxsde.testing.targets import GaussianMixture

SHAPE, N = (16,), 6
RTOLS = (1e-1, 1e-2, 1e-3, 1e-4)


def _problem(sde, data_range):
    target = GaussianMixture.random(jax.random.PRNGKey(11), 4, SHAPE, scale=0.1, data_range=data_range,
                                    dtype=jnp.float64)
    score = target.score(sde)
    x_T = jax.vmap(lambda k: sde.prior_sample(k, SHAPE, jnp.float64))(jax.random.split(jax.random.PRNGKey(5), N))
    reference = jax.jit(jax.vmap(lambda x: diffrax_solve(
        jax.random.PRNGKey(0), sde, score, x, diffrax.Dopri8(), ode=True, denoise=False,
        controller=diffrax.PIDController(rtol=1e-11, atol=1e-11), dt0=1e-3).x))(x_T)
    return score, x_T, reference


@pytest.fixture(scope="module")
def problems():
    with jax.enable_x64(True):
        yield {"vp": (jaxsde.VPSDE(), *_problem(jaxsde.VPSDE(), (-1.0, 1.0))),
               "ve": (jaxsde.VESDE(), *_problem(jaxsde.VESDE(), (0.0, 1.0)))}


SOLVERS = {
    "dpm-adaptive": lambda r: jaxsde.AdaptiveDPMSolver(rtol=r),
    "multistep-adaptive": lambda r: jaxsde.AdaptiveMultistepSolver(rtol=r),
    "pf": lambda r: jaxsde.ProbabilityFlow(rtol=r),
}


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_error_falls_as_rtol_falls(problems, kind, name):
    with jax.enable_x64(True):
        sde, score, x_T, reference = problems[kind]
        run = jax.jit(lambda solver: jaxsde.solve_batch(jax.random.split(jax.random.PRNGKey(0), N), sde, score,
                                                        solver, x_T, denoise=False))
        errors, nfes = [], []
        for rtol in RTOLS:
            sol = run(SOLVERS[name](rtol))
            assert np.all(np.asarray(sol.result) == 0)
            errors.append(float(jnp.max(jnp.abs(sol.x - reference))))
            nfes.append(float(jnp.mean(sol.stats.nfe)))
    # monotone over three decades, and by a real margin: at least 30x from the loosest to the tightest
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), (errors, nfes)
    assert errors[-1] < errors[0] / 30, (errors, nfes)


def test_default_atol_relation():
    vp, ve = jaxsde.VPSDE(), jaxsde.VESDE()
    for rtol, want_vp, want_ve in ((0.1, 0.0078, 0.0039), (0.0078, 0.0078, 0.0039), (1e-3, 1e-3, 5e-4)):
        assert float(ErrorNorm(rtol).absolute(vp)) == pytest.approx(want_vp)
        assert float(ErrorNorm(rtol).absolute(ve)) == pytest.approx(want_ve)
    assert ErrorNorm(1e-3, atol=0.05).absolute(vp) == 0.05


def test_norm_conventions():
    sde = jaxsde.VPSDE()
    error = jnp.array([0.01, -0.02, 0.0, 0.04])
    reference = jnp.array([1.0, 0.5, 0.0, 2.0])
    scale_max = np.maximum(0.001, 0.01 * np.asarray(reference))
    scale_sum = 0.001 + 0.01 * np.asarray(reference)
    r = np.asarray(error)
    cases = {
        ("max", "l2"): np.sqrt(np.mean((r / scale_max) ** 2)),
        ("max", "l2_unscaled"): np.sqrt(np.sum((r / scale_max) ** 2)),
        ("max", "linf"): np.max(np.abs(r / scale_max)),
        ("sum", "l2"): np.sqrt(np.mean((r / scale_sum) ** 2)),
    }
    for (combine, reduce), want in cases.items():
        got = ErrorNorm(0.01, 0.001, combine=combine, reduce=reduce)(sde, error, reference)
        assert float(got) == pytest.approx(want, rel=1e-6), (combine, reduce)


def test_one_norm_shared_by_every_solver():
    norm = ErrorNorm(rtol=1e-3, atol=1e-3, combine="sum")
    for solver in (jaxsde.GottaGoFast(tolerance=norm), jaxsde.ProbabilityFlow(tolerance=norm),
                   jaxsde.AdaptiveDPMSolver(tolerance=norm), jaxsde.AdaptiveMultistepSolver(tolerance=norm)):
        assert solver.error_norm is norm
    with pytest.raises(ValueError, match="rtol"):
        jaxsde.GottaGoFast(rtol=0.01, tolerance=norm)
    with pytest.raises(TypeError, match="ErrorNorm"):
        jaxsde.ProbabilityFlow(tolerance=0.01)
    with pytest.raises(ValueError, match="combine"):
        ErrorNorm(combine="mean")
    with pytest.raises(ValueError, match="rtol"):
        ErrorNorm(rtol=float("nan"))
