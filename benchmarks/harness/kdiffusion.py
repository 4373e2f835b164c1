"""The k-diffusion peer: a jaxsde score as k-diffusion 0.1.1.post1's denoiser, and its ``sampling`` module.

Shared by the suites that run k-diffusion's samplers on a jaxsde score. k-diffusion's sampling module is loaded
by ``tests/k_diffusion_sampling.py`` (without the package's ``__init__`` and its training stack), itself loaded
from its file.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LOADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "k_diffusion_sampling.py")


def sampling_module() -> ModuleType | None:
    """k-diffusion's ``sampling`` module (None when k-diffusion is not installed)."""
    spec = importlib.util.spec_from_file_location("k_diffusion_sampling", LOADER)
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    return loader.load()


class KDiffusionModel(NamedTuple):
    ks: ModuleType  # k-diffusion's ``sampling`` module
    model: Callable  # torch (x, sigma) -> torch D(x, sigma): k-diffusion's ``model`` argument; counts its calls
    denoise: Callable  # the same denoiser, jitted and batched, on JAX arrays (B, *shape), (B,); not counted
    calls: list[int]  # calls[0]: calls of ``model`` so far (set it to 0 to restart the count)
    sigma_min: float  # k-diffusion's sigma at the SDE's eps: sigma(eps) / alpha(eps)
    sigma_max: float  # and at T: sigma(T) / alpha(T)
    alpha_T: float

    def initial(self, x_T: Any):
        """jaxsde's prior draw ``x_T`` (B, *shape) as k-diffusion's start: float32 torch ``x_T / alpha(T)``."""
        import torch

        return torch.from_numpy(np.asarray(x_T, np.float32) / self.alpha_T)

    def sample_adaptive(self, xt: Any, seed: int, **kwargs: Any) -> tuple[np.ndarray, int]:
        """k-diffusion's ``sample_dpm_adaptive`` (``kwargs``: rtol, atol, eta, ...) from ``xt`` (torch, as from
        :meth:`initial`) down to ``sigma_min``, then the final denoising call jaxsde's samplers also make there.
        Returns (samples as a NumPy array, NFE = model calls + 1); torch's seed is set to ``seed`` first."""
        import torch

        torch.manual_seed(seed)
        self.calls[0] = 0
        out = self.ks.sample_dpm_adaptive(self.model, xt, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
                                          disable=True, **kwargs)
        sig = jnp.full((out.shape[0],), self.sigma_min, jnp.float32)
        return np.asarray(jax.block_until_ready(self.denoise(jnp.asarray(out.numpy()), sig))), self.calls[0] + 1


def k_diffusion_model(sde: Any, score: Callable) -> KDiffusionModel:
    """The one-sample jaxsde ``score(x, t)`` of ``sde`` as k-diffusion's denoiser ``D(x / alpha, sigma / alpha)``.

    k-diffusion's state is ``x_k = x / alpha(t)`` at noise level ``sigma_k = sigma(t) / alpha(t)``; the denoiser
    recovers ``t = sde.inverse_log_snr(-2 log sigma_k)`` and returns the Tweedie estimate
    ``sde.tweedie(x, t, score(x, t))`` at ``x = alpha(t) x_k``, vmapped over the batch and jitted once. ``model``
    takes and returns float32 torch tensors (a scalar ``sigma`` is broadcast to the batch; the batch goes to
    JAX and back through NumPy on every call). Raises ``RuntimeError`` if k-diffusion is not installed.
    """
    import torch

    ks = sampling_module()
    if ks is None:
        raise RuntimeError("k-diffusion is not installed: pip install --no-deps k-diffusion==0.1.1.post1")

    def one(xt, sigma_t):
        t = sde.inverse_log_snr(-2.0 * jnp.log(sigma_t))
        alpha, _ = sde.marginal(t)
        x = alpha * xt
        return sde.tweedie(x, t, score(x, t))

    denoise = jax.jit(jax.vmap(one))
    calls = [0]

    def model(xt, sigma):
        calls[0] += 1
        sig = jnp.broadcast_to(jnp.asarray(sigma.numpy(), jnp.float32), (xt.shape[0],))
        return torch.from_numpy(np.array(denoise(jnp.asarray(xt.numpy()), sig)))

    alpha_T, sigma_T = (float(v) for v in sde.marginal(sde.T))
    alpha_e, sigma_e = (float(v) for v in sde.marginal(sde.eps))
    return KDiffusionModel(ks, model, denoise, calls, sigma_e / alpha_e, sigma_T / alpha_T, alpha_T)
