"""AdaptiveDPMSolver against k-diffusion 0.1.1's ``sample_dpm_adaptive`` on identical inputs.

k-diffusion runs in float64 torch on a batch of one with the same exact mixture score (as its
denoiser ``D(x / alpha, sigma / alpha)``); jaxsde solves the same sample in float64.
"""

import math

import jax
import jax.numpy as jnp
import k_diffusion_sampling
import numpy as np
import pytest

import jaxsde
from jaxsde.testing.targets import GaussianMixture

torch = pytest.importorskip("torch")
k_sampling = k_diffusion_sampling.load()
if k_sampling is None:
    pytest.skip("k-diffusion 0.1.1.post1 is not installed (pip install --no-deps k-diffusion==0.1.1.post1)",
                allow_module_level=True)


def mixture(sde):
    lo, hi = sde.data_range
    return GaussianMixture.random(jax.random.PRNGKey(4), 4, (16,), scale=0.05, data_range=(lo, hi),
                                  dtype=jnp.float64)


class Denoiser:
    """k-diffusion's model: ``D(xt, sigma~)`` for ``xt = x / alpha``, ``sigma~ = sigma / alpha``,
    from a jaxsde score; counts its calls."""

    def __init__(self, sde, score):
        self.sde, self.calls = sde, 0
        self.fn = jax.jit(lambda xt, s: self._denoise(score, xt, s))

    def _denoise(self, score, xt, sigma_t):
        t = self.sde.inverse_log_snr(-2.0 * jnp.log(sigma_t))
        alpha, _ = self.sde.marginal(t)
        x = alpha * xt
        return self.sde.tweedie(x, t, score(x, t))

    def __call__(self, xt, sigma):
        self.calls += 1
        out = self.fn(jnp.asarray(xt.numpy()[0]), jnp.asarray(float(sigma[0])))
        return torch.from_numpy(np.array(out))[None]


def run_k_diffusion(sde, score, x_T, order, rtol, atol, eta=0.0, noise=None):
    torch.set_default_dtype(torch.float64)
    try:
        model = Denoiser(sde, score)
        alpha_T, sigma_T = (float(v) for v in sde.marginal(sde.T))
        alpha_e, sigma_e = (float(v) for v in sde.marginal(sde.eps))
        sampler = None
        if noise is not None:  # attempt k (k-diffusion calls it on acceptance) gets noise[k]
            sampler = lambda *_: torch.from_numpy(noise[model.calls // order - 1])[None]  # noqa: E731
        xt = torch.from_numpy(np.asarray(x_T) / alpha_T)[None]
        out, info = k_sampling.sample_dpm_adaptive(
            model, xt, sigma_min=sigma_e / alpha_e, sigma_max=sigma_T / alpha_T, order=order, rtol=rtol, atol=atol,
            eta=eta, noise_sampler=sampler, return_info=True, disable=True)
    finally:
        torch.set_default_dtype(torch.float32)
    return out.numpy()[0] * alpha_e, info, model.calls


CASES = [("ve", 3, 0.05), ("ve", 2, 0.05), ("vp", 3, 0.05), ("vp", 2, 0.02), ("subvp", 3, 0.1)]


@pytest.mark.parametrize("kind,order,rtol", CASES)
def test_deterministic_equals_k_diffusion(kind, order, rtol, x64):
    sde = {"ve": jaxsde.VESDE(), "vp": jaxsde.VPSDE(), "subvp": jaxsde.SubVPSDE()}[kind]
    mix = mixture(sde)
    score = mix.score(sde)
    solver = jaxsde.AdaptiveDPMSolver(order=order, rtol=rtol, atol=0.0078, prediction="noise")
    run = jax.jit(lambda x: jaxsde.solve(jax.random.PRNGKey(0), sde, score, solver, x, denoise=False))
    for seed in range(3):
        x_T = sde.prior_sample(jax.random.PRNGKey(seed), mix.shape, jnp.float64)
        ref, info, calls = run_k_diffusion(sde, score, x_T, order, rtol, 0.0078)
        sol = run(x_T)
        assert int(sol.result) == 0
        assert int(sol.stats.num_accepted) == info["n_accept"]
        assert int(sol.stats.num_rejected) == info["n_reject"]
        assert int(sol.stats.nfe) == info["nfe"] == calls
        np.testing.assert_allclose(np.asarray(sol.x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind,order", [("ve", 3), ("vp", 2)])
def test_ancestral_equals_k_diffusion_on_the_same_noise(kind, order, x64):
    sde = {"ve": jaxsde.VESDE(), "vp": jaxsde.VPSDE()}[kind]
    mix = mixture(sde)
    score = mix.score(sde)
    x_T = sde.prior_sample(jax.random.PRNGKey(5), mix.shape, jnp.float64)
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(6), (400, 1, *mix.shape), jnp.float64))
    ref, info, _ = run_k_diffusion(sde, score, x_T, order, 0.05, 0.0078, eta=1.0, noise=noise[:, 0])
    solver = jaxsde.AdaptiveDPMSolver(order=order, rtol=0.05, atol=0.0078, eta=1.0, prediction="noise")
    sol = jaxsde.solve(jax.random.PRNGKey(0), sde, score, solver, x_T, denoise=False,
                       noise=jaxsde.GivenNoise(jnp.asarray(noise)))
    assert int(sol.stats.num_accepted) == info["n_accept"] and int(sol.stats.num_rejected) == info["n_reject"]
    assert int(sol.stats.nfe) == info["nfe"]
    assert info["n_accept"] + info["n_reject"] < noise.shape[0]
    np.testing.assert_allclose(np.asarray(sol.x), ref, rtol=1e-10, atol=1e-10)
    assert not math.isclose(float(np.abs(ref).sum()), 0.0)
