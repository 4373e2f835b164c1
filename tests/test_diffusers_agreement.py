"""jaxsde's DDIM, DPMSolverPP and SASolver agree with diffusers' PyTorch schedulers.

Same problem on both sides:

* schedule: diffusers' linear 1e-4..0.02 over N = 1000 steps; jaxsde's
  ``DiscreteVPSDE.from_alphas_cumprod(scheduler.alphas_cumprod)`` (the scheduler's own float32
  table, so table entry ``n`` is bit-identical), entry ``n`` at ``t = (n + 1) / N``;
* model: the exact noise prediction ``eps = -sigma * score`` of a 2-component Gaussian mixture in
  d = 3, one formula (:func:`mixture_eps`, float64) run in torch for diffusers (from the table's
  ``abar_n``) and in JAX for jaxsde (from ``sde.marginal(t)``, equal to the table at the nodes);
* time grid: diffusers' ``timesteps`` mapped to ``t = (n + 1) / N`` (``diffusers_grid``);
* noise: the same float64 standard normals (diffusers' ``variance_noise`` for DDIM, its
  ``randn_tensor`` draws for SA-Solver replaced by ours; jaxsde's ``GivenNoise``).

diffusers options chosen so the comparison is exact (each explained where it is used):
``prediction_type="epsilon"``, ``thresholding=False``, ``clip_sample=False`` (DDIM),
``use_karras_sigmas=False``, ``timestep_spacing`` "trailing" for DDIM (its ``prev_timestep = t -
N // K`` then lands on the next timestep and the last step on ``-1`` = the first table entry) and
the scheduler default "linspace" otherwise. diffusers computes in float32 internally (the
``sigmas`` table, DPM-Solver's ``sample.to(float32)``), which limits the agreement to ~1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.solvers.exponential import diffusers_grid
from jaxsde.solvers.sa_solver import diffusers_tau
from jaxsde.testing.targets import GaussianMixture

torch = pytest.importorskip("torch")
schedulers = pytest.importorskip("diffusers.schedulers")

N_TRAIN = 1000
TOL = 2e-6  # the claim in docs/usage.md; measured max 1.5e-6 (SA-Solver 3-4, float32 inside diffusers)
WEIGHTS = np.array([0.35, 0.65])
MEANS = np.array([[0.6, -0.3, 0.2], [-0.5, 0.4, -0.1]])
SCALES = np.array([0.15, 0.3])
BATCH = 6


def mixture_eps(x, alpha, sigma, xp):
    """Exact ``eps(x) = -sigma grad log p_t(x)`` of the mixture; ``x`` (..., d); ``xp`` = jnp or torch."""
    means, w, s2 = (xp.asarray(v) if xp is jnp else torch.as_tensor(v, dtype=torch.float64)
                    for v in (MEANS, WEIGHTS, SCALES**2))
    c = alpha**2 * s2 + sigma**2  # (K,)
    diff = x[..., None, :] - alpha * means  # (..., K, d)
    d = x.shape[-1]
    logits = xp.log(w) - 0.5 * d * xp.log(c) - 0.5 * (diff**2).sum(-1) / c
    r = xp.exp(logits - logits.max(-1, keepdims=True) if xp is jnp else logits - logits.amax(-1, keepdim=True))
    r = r / r.sum(-1, keepdims=True) if xp is jnp else r / r.sum(-1, keepdim=True)
    score = -(r[..., None] * diff / c[:, None]).sum(-2)
    return -sigma * score


def torch_model(scheduler):
    abar = scheduler.alphas_cumprod.double()

    def eps(x, n):
        a = abar[int(n)]
        return mixture_eps(x, torch.sqrt(a), torch.sqrt(1.0 - a), torch)

    return eps


def jax_solve(scheduler, solver, x_T, z=None, denoise=False):
    """jaxsde on the scheduler's own table, the same analytic model, the given normals (float64)."""
    sde = jaxsde.DiscreteVPSDE.from_alphas_cumprod(scheduler.alphas_cumprod.double().numpy())

    def score(x, t):
        alpha, sigma = sde.marginal(t)
        return -mixture_eps(x, alpha, sigma, jnp) / sigma

    def one(x, zz):
        noise = None if zz is None else jaxsde.GivenNoise(zz)
        sol = jaxsde.solve(jax.random.PRNGKey(0), sde, score, solver, x, noise=noise, denoise=denoise)
        return sol.x, sol.result, sol.stats.nfe

    x, result, nfe = jax.jit(jax.vmap(one))(jnp.asarray(x_T), None if z is None else jnp.asarray(z))
    np.testing.assert_array_equal(result, 0)
    return np.asarray(x), np.asarray(nfe)


def report(got, ref):
    """Assert agreement within ``TOL``; print the max difference (``pytest -s`` shows it)."""
    diff = float(np.max(np.abs(got - ref.numpy())))
    print(f"max |jaxsde - diffusers| = {diff:.2e}")
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=TOL)


def draws(num_steps, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, 3)), rng.standard_normal((num_steps, BATCH, 3))


def test_model_is_the_mixture_eps(x64):
    """The shared analytic model equals -sigma * jaxsde.testing.targets.GaussianMixture's exact score."""
    sde = jaxsde.DiscreteVPSDE.linear()
    mix = GaussianMixture.create(WEIGHTS, jnp.asarray(MEANS), SCALES)
    x = jnp.asarray(draws(1)[0])
    for t in (0.05, 0.4, 0.93):
        t = jnp.asarray(t)
        alpha, sigma = sde.marginal(t)
        ref = -sigma * jax.vmap(lambda xi, t=t: mix.score(sde)(xi, t))(x)
        np.testing.assert_allclose(mixture_eps(x, alpha, sigma, jnp), ref, rtol=1e-12, atol=1e-13)
        got = mixture_eps(torch.tensor(np.asarray(x)), torch.tensor(float(alpha), dtype=torch.float64),
                          torch.tensor(float(sigma), dtype=torch.float64), torch).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-13)


# --- DDIM ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta,set_alpha_to_one", [(0.0, True), (0.6, False)])
def test_ddim_matches_diffusers(eta, set_alpha_to_one, x64):
    """``DDIMScheduler(timestep_spacing="trailing")`` with K = 20 steps 999, 949, ..., 49:

    * ``set_alpha_to_one=False``: its last step goes from 49 to the first table entry (``t = 1/N``):
      ``DDIM(20, grid=diffusers_grid(timesteps, N))``, ``denoise=False``; 20 NFE on both sides.
    * ``set_alpha_to_one=True``: its last step goes to ``abar = 1`` and returns the data prediction
      (no noise: the posterior variance there is 0) = the Tweedie step at 49: ``DDIM(19)`` on the
      timesteps alone with ``denoise=True``; 20 NFE on both sides.
    ``variance_noise`` of step k = jaxsde's normal of attempt k.
    """
    k_steps = 20
    sched = schedulers.DDIMScheduler(num_train_timesteps=N_TRAIN, beta_schedule="linear",
                                     set_alpha_to_one=set_alpha_to_one, timestep_spacing="trailing",
                                     steps_offset=0, clip_sample=False, thresholding=False,
                                     prediction_type="epsilon")
    sched.set_timesteps(k_steps)
    ts = sched.timesteps.numpy()
    assert ts[0] == N_TRAIN - 1 and ts[-1] == N_TRAIN // k_steps - 1
    x_T, z = draws(k_steps)
    model = torch_model(sched)
    x = torch.as_tensor(x_T)
    for k, n in enumerate(sched.timesteps):
        noise = torch.as_tensor(z[k]) if eta > 0 else None
        x = sched.step(model(x, n), n, x, eta=eta, variance_noise=noise).prev_sample
    grid = diffusers_grid(ts, N_TRAIN, end_at_first_entry=not set_alpha_to_one)
    solver = jaxsde.DDIM(len(grid) - 1, eta=eta, grid=grid)
    zz = np.swapaxes(z[: len(grid) - 1], 0, 1)[:, :, None] if eta > 0 else None
    got, nfe = jax_solve(sched, solver, x_T, zz, denoise=set_alpha_to_one)
    np.testing.assert_array_equal(nfe, k_steps)
    report(got, x)
    assert np.max(np.abs(got - x.numpy())) < 1e-5


# --- DPM-Solver++ ----------------------------------------------------------------------------------
@pytest.mark.parametrize("order,k_steps,final", [(2, 10, "sigma_min"), (3, 20, "sigma_min"), (3, 12, "zero")])
def test_dpm_solver_pp_matches_diffusers(order, k_steps, final, x64):
    """``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint",
    lower_order_final=True, euler_at_final=False, use_karras_sigmas=False, timestep_spacing="linspace",
    lambda_min_clipped=-inf)``, K timesteps 999 .. ~1000/K:

    * ``final_sigmas_type="sigma_min"``: last step to the first table entry; ``DPMSolverPP(K,
      order, grid=diffusers_grid(...))``, ``denoise=False``. Lower-order rule identical (K < 15: last
      step order 1, the one before <= 2).
    * ``final_sigmas_type="zero"`` (diffusers' default): last step to sigma = 0, forced first order,
      which is the Tweedie step at the last timestep: ``DPMSolverPP(K - 1, ..., denoise_is_last_step=True)``
      on the timesteps alone with ``denoise=True``.
    K NFE on both sides.
    """
    sched = schedulers.DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN, beta_schedule="linear", solver_order=order, prediction_type="epsilon",
        thresholding=False, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        euler_at_final=False, use_karras_sigmas=False, final_sigmas_type=final, timestep_spacing="linspace",
        lambda_min_clipped=-float("inf"))
    sched.set_timesteps(k_steps)
    x_T, _ = draws(0)
    model = torch_model(sched)
    x = torch.as_tensor(x_T)
    for n in sched.timesteps:
        x = sched.step(model(x, n), n, x).prev_sample
    zero = final == "zero"
    grid = diffusers_grid(sched.timesteps.numpy(), N_TRAIN, end_at_first_entry=not zero)
    solver = jaxsde.DPMSolverPP(len(grid) - 1, order=order, grid=grid, denoise_is_last_step=zero)
    got, nfe = jax_solve(sched, solver, x_T, denoise=zero)
    np.testing.assert_array_equal(nfe, k_steps)
    report(got, x)


def test_dpm_denoise_is_last_step_orders():
    """``denoise_is_last_step`` counts the Tweedie step in the lower-order rule: K - 1 = 11 solver
    steps then order <= 2 on the last (diffusers' "zero": its second-to-last), instead of 1."""
    with_, without = jaxsde.DPMSolverPP(11, order=3, denoise_is_last_step=True), jaxsde.DPMSolverPP(11, order=3)
    assert [int(with_.effective_order(i)) for i in range(11)] == [1, 2] + [3] * 8 + [2]
    assert [int(without.effective_order(i)) for i in range(11)] == [1, 2] + [3] * 7 + [2, 1]
    assert [int(jaxsde.DPMSolverPP(14, order=3, denoise_is_last_step=True).effective_order(i))
            for i in (12, 13)] == [3, 3]  # 15 "steps" with the Tweedie one: no lowering


# --- SA-Solver -------------------------------------------------------------------------------------
@pytest.mark.parametrize("p,c,k_steps,tau", [(3, 4, 20, "default"), (2, 2, 10, "default")])
def test_sa_solver_matches_diffusers(p, c, k_steps, tau, x64, monkeypatch):
    """``SASolverScheduler(algorithm_type="data_prediction", lower_order_final=True,
    use_karras_sigmas=False, timestep_spacing="linspace")``, K steps, ending at the first table entry:
    ``SASolver(K, p, c, grid=diffusers_grid(...), rescale_order2=True, lower_order_final="always",
    tau=diffusers_tau(sde))`` (or ``tau=0`` for a constant ``tau_func``), ``denoise=False``. Its
    per-step ``randn_tensor`` draws are replaced by our normals (draw i = jaxsde's attempt i)."""
    from diffusers.schedulers import scheduling_sasolver

    tau_func = None if tau == "default" else (lambda n: tau)
    sched = schedulers.SASolverScheduler(
        num_train_timesteps=N_TRAIN, beta_schedule="linear", predictor_order=p, corrector_order=c,
        prediction_type="epsilon", tau_func=tau_func, thresholding=False, algorithm_type="data_prediction",
        lower_order_final=True, use_karras_sigmas=False, timestep_spacing="linspace")
    sched.set_timesteps(k_steps)
    x_T, z = draws(k_steps, seed=1)
    calls = iter(range(k_steps))
    monkeypatch.setattr(scheduling_sasolver, "randn_tensor",
                        lambda shape, generator=None, device=None, dtype=None: torch.as_tensor(z[next(calls)]))
    model = torch_model(sched)
    x = torch.as_tensor(x_T)
    for n in sched.timesteps:
        x = sched.step(model(x, n), n, x).prev_sample
    grid = diffusers_grid(sched.timesteps.numpy(), N_TRAIN)
    sde = jaxsde.DiscreteVPSDE.from_alphas_cumprod(sched.alphas_cumprod.double().numpy())
    solver = jaxsde.SASolver(k_steps, predictor_order=p, corrector_order=c, grid=grid, rescale_order2=True,
                             lower_order_final="always", tau=diffusers_tau(sde) if tau == "default" else tau)
    zz = np.swapaxes(z, 0, 1)[:, :, None] if solver.stochastic else None
    got, nfe = jax_solve(sched, solver, x_T, zz)
    np.testing.assert_array_equal(nfe, k_steps)
    report(got, x)


def test_sa_tau_interval_differs_from_diffusers_tau(x64):
    """diffusers' default tau is 1 on integer timesteps 200..800 (t in [0.201, 0.801]); jaxsde's
    default ``tau_interval=(0.2, 0.8)`` is the continuous-time [0.2, 0.8]: the grid point t = 0.2
    (timestep 199) is stochastic for one and not for the other."""
    sde = jaxsde.DiscreteVPSDE.linear()
    tau = diffusers_tau(sde)
    solver = jaxsde.SASolver(10)
    for n, expected in ((199, 0.0), (200, 1.0), (800, 1.0), (801, 0.0)):
        t = jnp.asarray((n + 1) / N_TRAIN)
        assert float(tau(t)) == expected
    assert float(solver.tau_at(sde, jnp.asarray(0.2))) == 1.0 and float(tau(jnp.asarray(0.2))) == 0.0
