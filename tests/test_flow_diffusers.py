"""jaxsde on flow models agrees with diffusers' four flow schedulers (#35): FlowMatch Euler (static
shift, dynamic ``mu``, ``shift_terminal``, ``stochastic_sampling``), FlowMatch Heun, and
DPM-Solver++ / UniPC multistep with ``use_flow_sigmas=True, prediction_type="flow_prediction"``.

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
from jaxsde.flow import diffusers_flow_grid, flow_grid
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


def run_diffusers(sched, k_steps, x_T, z=None, monkeypatch=None):
    """diffusers' loop; the model reads the state's sigma, ``sched.sigmas[i]`` at call ``i`` (Heun
    lists each interior sigma twice, its two stages)."""
    if z is not None:
        from diffusers.schedulers import scheduling_flow_match_euler_discrete as module

        calls = iter(range(k_steps))
        monkeypatch.setattr(module, "randn_tensor",
                            lambda shape, generator=None, device=None, dtype=None: torch.as_tensor(z[next(calls)]))
    x = torch.as_tensor(x_T)
    for i, ts in enumerate(sched.timesteps):
        v = mixture_velocity(x, sched.sigmas[i].double(), torch)
        x = sched.step(v, ts, x).prev_sample
    return x.double().numpy()


MODEL = Prediction(lambda x, t: mixture_velocity(x, t, jnp), "velocity")


@jax.jit
def _solve(solver, x_T, z):
    """One program per solver structure and grid length (the grid's times are traced settings)."""
    def one(x, zz):
        noise = None if zz is None else jaxsde.GivenNoise(zz)
        sol = jaxsde.solve(jax.random.PRNGKey(0), SDE, MODEL, solver, x, noise=noise)
        return sol.x, sol.result, sol.stats.nfe

    return jax.vmap(one)(x_T, z)


def run_jaxsde(solver, x_T, z=None):
    x, result, nfe = _solve(solver, jnp.asarray(x_T), None if z is None else jnp.asarray(z))
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


# --- the diffusers flow schedulers' grids ------------------------------------------------------------
FLOW_SIGMAS = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}
GRID_CASES = [
    ("FlowMatchHeunDiscreteScheduler", 6, {"shift": 3.0}),
    ("DPMSolverMultistepScheduler", 5, {"shift": 1.0}),
    ("DPMSolverMultistepScheduler", 10, {"shift": 3.0}),
    ("DPMSolverMultistepScheduler", 8, {"mu": 0.8}),
    ("UniPCMultistepScheduler", 5, {"shift": 1.0}),
    ("UniPCMultistepScheduler", 10, {"shift": 3.0}),
    ("UniPCMultistepScheduler", 8, {"mu": 0.8}),
    ("UniPCMultistepScheduler", 8, {"shift": 3.0, "shift_terminal": 0.1}),
]


def _flow_scheduler(name, kwargs, **options):
    """diffusers' ``name`` with flow sigmas, set to ``kwargs``; returns (scheduler, set_timesteps kwargs)."""
    cls = getattr(diffusers, name)
    init = dict(options)
    if name.startswith("FlowMatch"):
        init["shift"] = kwargs.get("shift", 1.0)
    else:
        init.update(FLOW_SIGMAS, flow_shift=kwargs.get("shift", 1.0))
    if "mu" in kwargs:
        init.update(use_dynamic_shifting=True, flow_shift=1.0)
    if "shift_terminal" in kwargs:
        init["shift_terminal"] = kwargs["shift_terminal"]
    return cls(**init), ({"mu": kwargs["mu"]} if "mu" in kwargs else {})


@pytest.mark.parametrize("name,k_steps,kwargs", GRID_CASES)
def test_diffusers_flow_grid_is_the_schedulers_sigmas(name, k_steps, kwargs):
    """Bit for bit: the float32 sigmas diffusers steps on (without the final 0; Heun's each once)."""
    sched, set_kwargs = _flow_scheduler(name, kwargs)
    sched.set_timesteps(k_steps, **set_kwargs)
    sigmas = sched.sigmas.numpy()
    assert sigmas[-1] == 0.0
    expected = sigmas[:-1] if "Heun" not in name else np.concatenate([sigmas[:1], sigmas[1:-1:2]])
    grid = diffusers_flow_grid(name, k_steps, **kwargs)
    assert len(grid) == k_steps
    np.testing.assert_array_equal(np.asarray(grid, np.float32), expected)
    np.testing.assert_array_equal(np.asarray(grid), np.asarray(grid, np.float32).astype(np.float64))
    if name.startswith("DPM"):  # never starts at 1
        assert grid[0] < 1.0
    if name.startswith("UniPC") and "shift_terminal" not in kwargs:
        assert grid[0] == float(np.float32(1.0 - 1e-6))


def test_diffusers_flow_grid_quirks():
    # DPM-Solver's timesteps are int64(1000 sigma): 749.25 -> 749 (labels only; the update reads sigmas)
    sched = diffusers.DPMSolverMultistepScheduler(**FLOW_SIGMAS)
    sched.set_timesteps(4)
    grid = diffusers_flow_grid("DPMSolverMultistepScheduler", 4)
    np.testing.assert_allclose(grid, [0.999, 0.74925, 0.4995, 0.24975], rtol=1e-7)
    assert sched.timesteps.tolist() == [999, 749, 499, 249]
    # FlowMatchHeun's static shift is applied twice to sigma_min, like FlowMatchEuler's
    assert diffusers_flow_grid("FlowMatchHeunDiscreteScheduler", 4, shift=3.0)[-1] == pytest.approx(0.0089286, abs=1e-7)


@pytest.mark.parametrize("name,kwargs,match", [
    ("EulerDiscreteScheduler", {}, "unknown diffusers flow scheduler"),
    ("FlowMatchHeunDiscreteScheduler", {"mu": 0.5}, "static shift only"),
    ("DPMSolverMultistepScheduler", {"shift_terminal": 0.1}, "no shift_terminal"),
    ("UniPCMultistepScheduler", {"mu": 0.5, "shift": 3.0}, "e\\^mu"),
    ("UniPCMultistepScheduler", {"shift": 0.0}, "shift must be"),
    ("DPMSolverMultistepScheduler", {"shift": float("nan")}, "shift must be"),
    ("UniPCMultistepScheduler", {"shift_terminal": 1.5}, "shift_terminal must lie"),
])
def test_diffusers_flow_grid_bad_input(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        diffusers_flow_grid(name, 8, **kwargs)
    with pytest.raises(ValueError, match="num_inference_steps"):
        diffusers_flow_grid("UniPCMultistepScheduler", 1)


# --- FlowMatchHeun = EDMHeun(variables="native") ------------------------------------------------------
@pytest.mark.parametrize("k_steps,shift", [(5, 1.0), (5, 3.0), (12, 3.0)])
def test_flow_match_heun_equals_native_heun(k_steps, shift, x64):
    sched, _ = _flow_scheduler("FlowMatchHeunDiscreteScheduler", {"shift": shift})
    sched.set_timesteps(k_steps)
    x_T, _ = draws(0, seed=2)
    ref = run_diffusers(sched, 2 * k_steps - 1, x_T)
    grid = diffusers_flow_grid("FlowMatchHeunDiscreteScheduler", k_steps, shift=shift)
    assert grid[0] == 1.0
    got, nfe = run_jaxsde(jaxsde.EDMHeun(k_steps - 1, variables="native", grid=grid), x_T)
    np.testing.assert_array_equal(nfe, 2 * k_steps - 1)
    report(got, ref)


def test_native_heun_bad_input_and_edm_scheme_starts_at_t_1(x64):
    with pytest.raises(ValueError, match="variables must be one of"):
        jaxsde.EDMHeun(4, variables="flow")
    with pytest.raises(ValueError, match="churn"):
        jaxsde.EDMHeun(4, churn=1.0, variables="native")
    grid = flow_grid(5, shift=3.0)  # the EDM scheme's first step out of t = 1 is Heun in rho (#35)
    sol = jaxsde.solve(jax.random.PRNGKey(0), SDE, MODEL, jaxsde.EDMHeun(4, grid=grid), jnp.zeros(3))
    assert int(sol.result) == jaxsde.results.SUCCESS and np.all(np.isfinite(np.asarray(sol.x)))


# --- DPM-Solver++ and UniPC with flow sigmas ---------------------------------------------------------
MULTISTEP_CASES = [
    ("DPMSolverMultistepScheduler", 2, 10, {"shift": 1.0}),
    ("DPMSolverMultistepScheduler", 2, 10, {"shift": 3.0}),
    ("DPMSolverMultistepScheduler", 3, 10, {"shift": 3.0}),
    ("DPMSolverMultistepScheduler", 3, 10, {"mu": 1.15}),
    ("DPMSolverMultistepScheduler", 3, 20, {"shift": 3.0}),
    ("UniPCMultistepScheduler", 2, 10, {"shift": 1.0}),
    ("UniPCMultistepScheduler", 2, 10, {"shift": 3.0}),
    ("UniPCMultistepScheduler", 3, 10, {"shift": 3.0}),
    ("UniPCMultistepScheduler", 3, 10, {"mu": 1.15}),
    ("UniPCMultistepScheduler", 2, 10, {"shift": 3.0, "shift_terminal": 0.05}),
]


@pytest.mark.parametrize("name,order,k_steps,kwargs", MULTISTEP_CASES)
def test_multistep_flow_sigmas_equal_jaxsde(name, order, k_steps, kwargs, x64):
    """diffusers' defaults otherwise (``dpmsolver++``/``midpoint``, ``bh2``, ``lower_order_final``,
    ``final_sigmas_type="zero"``); K NFE on both sides."""
    sched, set_kwargs = _flow_scheduler(name, kwargs, solver_order=order)
    sched.set_timesteps(k_steps, **set_kwargs)
    x_T, _ = draws(0, seed=3)
    ref = run_diffusers(sched, k_steps, x_T)
    grid = diffusers_flow_grid(name, k_steps, **kwargs)
    if name.startswith("DPM"):
        solver = jaxsde.DPMSolverPP(k_steps - 1, order=order, grid=grid, denoise_is_last_step=True)
    else:
        solver = jaxsde.UniPC(k_steps - 1, order=order, variant="bh2", lower_order_final="always",
                              denoise_is_last_step=True, grid=grid)
    got, nfe = run_jaxsde(solver, x_T)
    np.testing.assert_array_equal(nfe, k_steps)
    report(got, ref)
