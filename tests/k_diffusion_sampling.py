"""k-diffusion 0.1.1's ``sampling.py``, loaded without its package ``__init__``.

The package's ``__init__`` imports its training stack (torchvision, wandb, scikit-image, ...);
``sampling.py`` needs only torch, torchdiffeq, torchsde, scipy and tqdm, plus
``utils.append_dims``, which is given here with the same body. ``load()`` returns the real,
unmodified module, or ``None`` when k-diffusion is not installed (``pip install --no-deps
k-diffusion==0.1.1.post1``).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def _append_dims(x, target_dims):
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def load():
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    sampling_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", root / "sampling.py")
    module = importlib.util.module_from_spec(sampling_spec)
    sys.modules["k_diffusion.sampling"] = module
    sampling_spec.loader.exec_module(module)
    return module


class FixedGridReference:
    """A k-diffusion fixed-schedule sampler run on a jaxsde grid, in float64 torch on a batch of one.

    The model is k-diffusion's denoiser ``D(x / alpha, sigma / alpha)`` built from a jaxsde score
    (``t`` recovered from ``sigma / alpha`` with ``sde.inverse_log_snr``); ``sigmas`` are
    ``sigma(t_i) / alpha(t_i)`` of the grid ``times``, followed by 0 if ``to_zero``. Given normals
    ``noise`` (``(steps, *shape)``) are served in call order by the ``noise_sampler``.
    """

    def __init__(self, sde, score):
        import jax.numpy as jnp

        self.sde, self.calls, self.noise_calls = sde, 0, 0

        def denoise(xt, sigma_t):
            t = sde.inverse_log_snr(-2.0 * jnp.log(sigma_t))
            alpha, _ = sde.marginal(t)
            x = alpha * xt
            return sde.tweedie(x, t, score(x, t))

        self.fn = denoise  # eager: cheaper than a compilation for a dozen calls

    def model(self, xt, sigma):
        import numpy as np
        import torch

        self.calls += 1
        out = self.fn(np.asarray(xt.numpy()[0]), np.asarray(float(sigma[0])))
        return torch.from_numpy(np.array(out))[None]

    def run(self, name, times, x_T, noise=None, to_zero=True, **kwargs):
        """``k_diffusion.sampling.<name>`` from ``x_T`` at ``times[0]``: the output in jaxsde's variable
        (``x / alpha`` times ``alpha(times[-1])``; the data prediction itself when ``to_zero``)."""
        import numpy as np
        import torch

        sampling = load()
        alphas, sigmas = (np.asarray(v, np.float64) for v in self.sde.marginal(np.asarray(times, np.float64)))
        ks = list(sigmas / alphas) + ([0.0] if to_zero else [])
        if noise is not None:
            def sampler(*_):
                self.noise_calls += 1
                return torch.from_numpy(np.array(noise[self.noise_calls - 1], np.float64))[None]
            kwargs["noise_sampler"] = sampler
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            xt = torch.from_numpy(np.asarray(x_T, np.float64) / alphas[0])[None]
            out = getattr(sampling, name)(self.model, xt, torch.tensor(ks, dtype=torch.float64), disable=True,
                                          **kwargs).numpy()[0]
        finally:
            torch.set_default_dtype(default)
        return out if to_zero else out * alphas[-1]


def grid_times(sde, n: int, grid: str) -> tuple[float, ...]:
    """The ``n + 1`` times of a jaxsde grid (``"uniform"``, ``"logsnr"``, ``"edm"``), float64; ``"times"``:
    a custom grid quadratic in ``t`` from ``sde.T`` to ``sde.eps``."""
    import jax.numpy as jnp
    import numpy as np

    import jaxsde

    if grid == "times":
        return tuple(float(v) for v in sde.eps + (sde.T - sde.eps) * np.linspace(1.0, 0.0, n + 1) ** 2)
    return tuple(float(v) for v in np.asarray(jaxsde.time_grid(sde, n, grid, dtype=jnp.float64)))


def fixed_grid_agreement(sde, make, grid: str, n: int, name: str, to_zero: bool = True, **kwargs):
    """jaxsde's ``make(n, grid)`` and k-diffusion's ``name`` (with ``kwargs``) on one float64 sample of a
    16-dimensional Gaussian mixture (exact score), the same start and, for a stochastic solver, the
    same normals (one per step). ``to_zero``: k-diffusion's sigmas end in 0 and jaxsde denoises;
    otherwise both end at ``sde.eps``. Returns ``(jaxsde's x, k-diffusion's, solution, reference)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxsde
    from jaxsde.testing.targets import GaussianMixture

    mix = GaussianMixture.random(jax.random.PRNGKey(4), 4, (16,), scale=0.05, data_range=sde.data_range,
                                 dtype=jnp.float64)
    score = mix.score(sde)
    times = grid_times(sde, n, grid)
    solver = make(n, times if grid == "times" else grid)
    x_T = sde.prior_sample(jax.random.PRNGKey(1), mix.shape, jnp.float64)
    z = jax.random.normal(jax.random.PRNGKey(2), (n, 1, *mix.shape), jnp.float64)
    noise = jaxsde.GivenNoise(z) if solver.noise_per_attempt else None
    sol = jaxsde.solve(jax.random.PRNGKey(0), sde, score, solver, x_T, noise=noise, denoise=to_zero)
    reference = FixedGridReference(sde, score)
    ref = reference.run(name, times, x_T, noise=None if noise is None else np.asarray(z[:, 0]), to_zero=to_zero,
                        **kwargs)
    return np.asarray(sol.x), ref, sol, reference
