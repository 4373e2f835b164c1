"""The controller that owns time: where a step ends, what the next trial step grows from, the last step."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.controllers import ErrorNorm, FixedGrid, PIDController, StepSizeController

pytestmark = pytest.mark.usefixtures("x64")

SDE = jaxsde.VPSDE()
T0, T_END = 1.0, 1e-3


def controller(**kw) -> StepSizeController:
    return StepSizeController(rule=PIDController(), norm=ErrorNorm(0.05), error_order=2.0, **kw)


@pytest.mark.parametrize("variable", ["time", "log_snr"])
def test_the_last_step_lands_exactly_on_t_end(variable):
    c = controller(variable=variable, h_init=100.0)  # a trial step far past the end
    state = c.init(SDE, jnp.asarray(T0, jnp.float32), jnp.asarray(T_END, jnp.float32), jnp.float32)
    t1, _ = c.propose(SDE, T0, jnp.asarray(T_END, jnp.float32), state)
    assert t1 == jnp.asarray(T_END, jnp.float32)


def test_log_snr_steps_are_in_half_log_snr():
    c = controller(variable="log_snr", h_init=0.5)
    state = c.init(SDE, jnp.asarray(T0), jnp.asarray(T_END), jnp.float64)
    t1, _ = c.propose(SDE, T0, jnp.asarray(T_END), state)
    np.testing.assert_allclose(0.5 * SDE.log_snr(t1) - 0.5 * SDE.log_snr(T0), 0.5, rtol=1e-6)


def test_snap_takes_the_end_within_1_1_trial_steps():
    clip, snap = controller(h_init=0.95), controller(h_init=0.95, last_step="snap")  # 0.999 left in time
    t0, t_end = jnp.asarray(T0), jnp.asarray(T_END)
    t_clip, _ = clip.propose(SDE, t0, t_end, clip.init(SDE, t0, t_end, jnp.float64))
    t_snap, _ = snap.propose(SDE, t0, t_end, snap.init(SDE, t0, t_end, jnp.float64))
    assert float(t_clip) == pytest.approx(0.05) and float(t_snap) == T_END


@pytest.mark.parametrize("grow_from", ["integrated", "trial"])
def test_the_next_trial_step_grows_from_the_integrated_or_the_trial_step(grow_from):
    c = controller(h_init=2.0, grow_from=grow_from)
    state = c.init(SDE, jnp.asarray(T0), jnp.asarray(T_END), jnp.float64)
    t1, state = c.propose(SDE, T0, jnp.asarray(T_END), state)  # clipped to the end: integrated 0.999, trial 2.0
    x = jnp.ones(4)
    big = jnp.full(4, 10.0)  # scaled error far above 1: rejected, the step shrinks by factor_min
    verdict = c.adapt(SDE, T0, t1, x, big, x, jnp.asarray(True), state)
    assert not bool(verdict.accepted) and float(verdict.t) == float(T0)
    base = 0.999 if grow_from == "integrated" else 2.0
    assert float(verdict.state.h) == pytest.approx(base * 0.2)


def test_a_nonfinite_step_is_rejected_and_stops_below_min_step():
    c = controller(h_init=1e-7, min_step=1e-7)
    state = c.init(SDE, jnp.asarray(T0), jnp.asarray(T_END), jnp.float64)
    t1, state = c.propose(SDE, T0, jnp.asarray(T_END), state)
    x = jnp.ones(4)
    verdict = c.adapt(SDE, T0, t1, x.at[0].set(jnp.nan), x, x, jnp.asarray(True), state)
    assert not bool(verdict.accepted) and int(verdict.status) == jaxsde.results.NONFINITE


def test_the_fixed_grid_walks_its_times():
    grid = (1.0, 0.5, 0.2, 1e-3)
    c = FixedGrid(3, grid)
    state = c.init(SDE, jnp.asarray(T0), jnp.asarray(T_END), jnp.float64)
    times = []
    t = jnp.asarray(T0)
    for _ in range(3):
        t1, state = c.propose(SDE, t, jnp.asarray(T_END), state)
        verdict = c.adapt(SDE, t, t1, None, None, None, True, state)
        t, state = verdict.t, verdict.state
        times.append(float(t))
        assert bool(verdict.accepted)
    assert times == list(grid[1:])


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="variable must be one of"):
        controller(variable="sigma")
    with pytest.raises(ValueError, match="last_step must be one of"):
        controller(last_step="round")
    with pytest.raises(TypeError, match="norm must be"):
        StepSizeController(rule=PIDController(), norm=0.05, error_order=2.0)


@pytest.mark.parametrize("make", [lambda m: jaxsde.AdaptiveMultistepSolver(order=2, rtol=0.1, max_step=m),
                                  lambda m: jaxsde.AdaptiveDPMSolver(rtol=0.1, max_step=m)],
                         ids=["multistep", "dpm"])
def test_max_step_caps_every_step_in_half_log_snr(make):
    """With ``max_step`` the half log-SNR span of the solve takes at least ``span / max_step``
    accepted steps (the loose tolerance alone takes far fewer), one compiled program for both
    values (a traced setting), and a non-positive cap is refused."""
    import jax

    from jaxsde.testing.targets import GaussianMixture

    mix = GaussianMixture.random(jax.random.PRNGKey(1), 3, (12,), scale=0.05)
    sde = jaxsde.VPSDE()
    span = 0.5 * float(sde.log_snr(jnp.float32(sde.eps)) - sde.log_snr(jnp.float32(sde.T)))
    run = jax.jit(lambda solver, k: jaxsde.sample(k, sde, mix.score(sde), solver, mix.shape, 16, denoise=False))
    loose = run(make(5.0), jax.random.PRNGKey(0))
    capped = run(make(0.5), jax.random.PRNGKey(0))
    assert run._cache_size() == 1
    assert int(np.max(loose.stats.num_accepted)) < span / 0.5
    assert int(np.min(capped.stats.num_accepted)) >= int(np.ceil(span / 0.5))
    assert np.all(np.asarray(capped.result) == jaxsde.results.SUCCESS)
    with pytest.raises(ValueError, match="max_step must be a finite number > 0"):
        make(0.0)
