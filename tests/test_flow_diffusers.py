"""jaxsde on flow models agrees with diffusers' ``FlowMatchEulerDiscreteScheduler`` (#35).

Same problem on both sides: the exact velocity of a 2-component Gaussian mixture in d = 3 on the
linear path (:func:`mixture_velocity`, one float64 formula run in torch for diffusers and in JAX for
jaxsde, equal to ``jaxsde.testing.targets.GaussianMixture.velocity``), diffusers' ``sigmas`` as
jaxsde times (:func:`jaxsde.flow.flow_grid`, time = sigma on :class:`~jaxsde.FlowSDE`), the same
float64 normals (diffusers' ``randn_tensor`` replaced by ours). diffusers' torch side reads the
time from ``sched.sigmas`` (float32); its ``step`` casts the sample to float32, which limits the
agreement to float32 rounding (~1e-7 relative).

* deterministic: diffusers' Euler step ``x + (sigma' - sigma) v`` is DDIM with ``eta = 0`` on the
  linear path (``x' = (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) x0``, ``x0 = x - sigma v``);
  its last step to ``sigma = 0`` returns ``x - sigma_last v`` = the driver's final step from the
  velocity (``denoise=True``). So ``K`` diffusers steps = ``DDIM(K - 1, grid=flow_grid(K, ...))``,
  ``K`` NFE on both sides, from ``t = 1`` exactly.
* ``stochastic_sampling=True``: ``x' = (1 - sigma') x0 + sigma' z`` is the fully ancestral step,
  :class:`~jaxsde.EulerAncestral` with ``eta`` large enough that its cap ``eta_k = 1/sqrt(q)``
  applies on every step (then ``x'`` keeps nothing of ``x``); its last step draws noise with weight
  0 (jaxsde's final step draws none).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.flow import flow_grid
from jaxsde.prediction import Prediction
from jaxsde.testing.targets import GaussianMixture

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-6  # relative to max |x|; measured below (pytest -s prints it)
WEIGHTS = np.array([0.35, 0.65])
MEANS = np.array([[0.6, -0.3, 0.2], [-0.5, 0.4, -0.1]])
SCALES = np.array([0.15, 0.3])
BATCH = 6
SDE = jaxsde.FlowSDE()


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def mixture_velocity(x, t, xp):
    """Exact velocity ``(x - x0) / t`` of the mixture on the linear path (``x0`` the posterior mean,
    finite at ``t = 1``); ``x`` (..., d); ``xp`` = jnp or torch."""
    means, w, s2 = (xp.asarray(v) if xp is jnp else torch.as_tensor(v, dtype=torch.float64)
                    for v in (MEANS, WEIGHTS, SCALES**2))
    alpha, sigma = 1.0 - t, t
    c = alpha**2 * s2 + sigma**2  # (K,)
    diff = x[..., None, :] - alpha * means  # (..., K, d)
    d = x.shape[-1]
    logits = xp.log(w) - 0.5 * d * xp.log(c) - 0.5 * (diff**2).sum(-1) / c
    r = xp.exp(logits - logits.max(-1, keepdims=True) if xp is jnp else logits - logits.amax(-1, keepdim=True))
    r = r / r.sum(-1, keepdims=True) if xp is jnp else r / r.sum(-1, keepdim=True)
    x0 = (r[..., None] * (means + (alpha * s2 / c)[:, None] * diff)).sum(-2)
    return (x - x0) / sigma


def draws(num, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, 3)), rng.standard_normal((num, BATCH, 3))


def test_model_is_the_mixture_velocity(x64):
    mix = GaussianMixture.create(WEIGHTS, jnp.asarray(MEANS), SCALES)
    x = jnp.asarray(draws(1)[0])
    for t in (1.0, 0.7, 0.2, 0.01):
        ref = jax.vmap(lambda xi, t=t: mix.velocity(SDE)(xi, jnp.asarray(t)))(x)
        np.testing.assert_allclose(mixture_velocity(x, t, jnp), ref, rtol=1e-12, atol=1e-12)
        got = mixture_velocity(torch.tensor(np.asarray(x)), torch.tensor(t, dtype=torch.float64), torch).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def run_diffusers(sched, k_steps, x_T, z, monkeypatch):
    from diffusers.schedulers import scheduling_flow_match_euler_discrete as module

    calls = iter(range(k_steps))
    monkeypatch.setattr(module, "randn_tensor",
                        lambda shape, generator=None, device=None, dtype=None: torch.as_tensor(z[next(calls)]))
    x = torch.as_tensor(x_T)
    for i, ts in enumerate(sched.timesteps):
        v = mixture_velocity(x, sched.sigmas[i].double(), torch)
        x = sched.step(v, ts, x).prev_sample
    return x.double().numpy()


def run_jaxsde(solver, x_T, z=None):
    model = Prediction(lambda x, t: mixture_velocity(x, t, jnp), "velocity")

    def one(x, zz):
        noise = None if zz is None else jaxsde.GivenNoise(zz)
        sol = jaxsde.solve(jax.random.PRNGKey(0), SDE, model, solver, x, noise=noise)
        return sol.x, sol.result, sol.stats.nfe

    x, result, nfe = jax.jit(jax.vmap(one))(jnp.asarray(x_T), None if z is None else jnp.asarray(z))
    np.testing.assert_array_equal(result, 0)
    return np.asarray(x), np.asarray(nfe)


def report(got, ref):
    rel = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    print(f"max |jaxsde - diffusers| / max |x| = {rel:.2e}")
    assert rel < TOL, rel


CONFIGS = [
    (10, {"shift": 1.0}, {}),
    (10, {"shift": 3.0}, {}),
    (28, {"shift": 3.0}, {}),
    (8, {"use_dynamic_shifting": True, "mu": 1.15}, {"mu": 1.15}),
    (12, {"shift": 3.0, "shift_terminal": 0.1}, {}),
]


def _scheduler(kwargs, stochastic=False):
    init = {k: v for k, v in kwargs.items() if k != "mu"}
    if init.get("use_dynamic_shifting"):
        init.pop("shift", None)
    return diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=stochastic, **init)


@pytest.mark.parametrize("k_steps,kwargs,set_kwargs", CONFIGS)
def test_flow_match_euler_equals_ddim_from_t_1(k_steps, kwargs, set_kwargs, x64, monkeypatch):
    sched = _scheduler(kwargs)
    sched.set_timesteps(k_steps, **set_kwargs)
    x_T, z = draws(k_steps)
    ref = run_diffusers(sched, k_steps, x_T, z, monkeypatch)
    grid = flow_grid(k_steps, **kwargs)
    assert grid[0] == 1.0
    got, nfe = run_jaxsde(jaxsde.DDIM(k_steps - 1, grid=grid), x_T)
    np.testing.assert_array_equal(nfe, k_steps)
    report(got, ref)


@pytest.mark.parametrize("k_steps,kwargs,set_kwargs", CONFIGS[:2] + CONFIGS[3:4])
def test_flow_match_euler_stochastic_sampling_equals_euler_ancestral(k_steps, kwargs, set_kwargs, x64,
                                                                     monkeypatch):
    sched = _scheduler(kwargs, stochastic=True)
    sched.set_timesteps(k_steps, **set_kwargs)
    x_T, z = draws(k_steps, seed=1)
    ref = run_diffusers(sched, k_steps, x_T, z, monkeypatch)
    grid = flow_grid(k_steps, **kwargs)
    solver = jaxsde.EulerAncestral(k_steps - 1, eta=1e8, grid=grid)
    zz = np.swapaxes(z[: k_steps - 1], 0, 1)[:, :, None]
    got, nfe = run_jaxsde(solver, x_T, zz)
    np.testing.assert_array_equal(nfe, k_steps)
    report(got, ref)
