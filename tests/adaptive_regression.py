"""The adaptive-solver regression problems: GGF and the PF-ODE on small exact mixtures.

``python tests/adaptive_regression.py OUT.npz`` writes every problem's per-sample ``x`` and NFE in
float64; ``tests/data/adaptive_regression.npz`` was written this way at commit a1ae567 (the solvers
on ``jaxsde.controllers``, before the controller took over time: their float32 results then equalled
those of the solvers before the controller split, commit c925d60), and ``test_controllers.py``
checks the current solvers still give the same samples and NFE.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

import jaxsde
from jaxsde.testing.targets import GaussianMixture


def problems():
    """``name -> (sde, solver, mixture)``: float32, 8 samples of d = 12 each."""
    mix_vp = GaussianMixture.random(jax.random.PRNGKey(1), 3, (12,), scale=0.05)
    mix_ve = GaussianMixture.random(jax.random.PRNGKey(2), 3, (12,), scale=0.03, data_range=(0.0, 1.0))
    vp, ve, subvp = jaxsde.VPSDE(), jaxsde.VESDE(), jaxsde.SubVPSDE()
    return {
        "ggf_vp": (vp, jaxsde.GottaGoFast(rtol=0.05), mix_vp),
        "ggf_ve": (ve, jaxsde.GottaGoFast(rtol=0.02), mix_ve),
        "ggf_subvp_linf_noextrap": (subvp, jaxsde.GottaGoFast(rtol=0.1, norm="linf", extrapolate=False), mix_vp),
        "ggf_vp_lamba": (vp, jaxsde.GottaGoFast(rtol=0.05, improved_euler=False, error_use_prev=False), mix_vp),
        "pf_vp_dopri5": (vp, jaxsde.ProbabilityFlow(rtol=1e-4, atol=1e-4), mix_vp),
        "pf_ve_dopri5": (ve, jaxsde.ProbabilityFlow(rtol=1e-3, atol=1e-3, unroll_stages=True), mix_ve),
        "pf_subvp_bosh3": (subvp, jaxsde.ProbabilityFlow(rtol=1e-3, atol=1e-3, method="bosh3", h_init=0.01), mix_vp),
    }


def run(name):
    """``(x, nfe, rejected)`` of problem ``name``, in float64 (call it with x64 enabled)."""
    sde, solver, mix = problems()[name]
    # XLA's default backend optimisation level (3), whatever XLA_FLAGS say (tests/conftest.py lowers it to 0
    # for compile speed): the other level rounds differently, by more than the 1e-12 the regression checks
    sample = jax.jit(lambda key: jaxsde.sample(key, sde, mix.score(sde), solver, mix.shape, 8,
                                               dtype=jax.numpy.float64),
                     compiler_options={"xla_backend_optimization_level": 3})
    sol = sample(jax.random.PRNGKey(7))
    return np.asarray(sol.x), np.asarray(sol.stats.nfe), np.asarray(sol.stats.num_rejected)


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    out = {}
    for name in problems():
        x, nfe, rej = run(name)
        out[f"{name}/x"], out[f"{name}/nfe"], out[f"{name}/rejected"] = x, nfe, rej
        print(name, "nfe", nfe.tolist(), "rejected", rej.tolist())
    np.savez(sys.argv[1], **out)
