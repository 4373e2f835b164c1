"""Reproduces two findings docs/usage.md states, each in about a minute on a 2-core CPU.

    python -m benchmarks run findings

1. GGF's noise redraw after rejections biases the output variance in low dimension: N(0.3, 0.2^2 I), VP, rtol
   0.01; output std relative to the exact law at d = 64 (n = 2000) and 3072 (n = 100), with the rejection rate.
2. diffrax's ShARK on the reverse SDE backwards in time (t0 > t1) vs forward in tau = T - t (d = 8): max |x|.
Writes ``findings.md`` (and its lines in ``findings.json``).
"""

from __future__ import annotations

import datetime

import diffrax as dfx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import jaxsde
from jaxsde.testing import exact


def ggf_variance_bias() -> list[str]:
    lines = []
    sde = jaxsde.VPSDE()
    score = exact.gaussian_score(sde, 0.3, 0.2)
    ideal_std = exact.ideal_law(sde, 0.3, 0.2).var ** 0.5
    for d, n in ((64, 2000), (3072, 100)):
        sol = jax.jit(lambda k, d=d, n=n: jaxsde.sample(k, sde, score, jaxsde.GottaGoFast(rtol=0.01), (d,), n))(
            jax.random.PRNGKey(0))
        x = np.asarray(sol.x, np.float64)
        s = jaxsde.summarize(sol)
        rejected = s.mean_rejected / (s.mean_rejected + float(np.asarray(sol.stats.num_accepted).mean()))
        lines.append(f"GGF rtol 0.01, d={d}, n={n}: std / exact = {x.std() / ideal_std:.4f} "
                     f"(Monte-Carlo sd {1 / np.sqrt(2 * x.size):.4f}); rejected attempts {100 * rejected:.0f}% "
                     f"({s.mean_rejected:.2f} per sample); mean NFE {s.mean_nfe:.0f}")
    return lines


def shark_backward_time() -> list[str]:
    lines, sde, d, n = [], jaxsde.VPSDE(), 8, 100
    score = exact.gaussian_score(sde, 0.3, 0.2)

    def solve(key, x, t0, t1, dt0, tau, sign):  # the reverse SDE in time tau(s), s from t0 to t1
        path = dfx.VirtualBrownianTree(min(t0, t1), max(t0, t1), tol=1e-3, shape=(d,), key=key,
                                       levy_area=dfx.SpaceTimeLevyArea)
        terms = dfx.MultiTerm(dfx.ODETerm(lambda s, y, a: sign * sde.reverse_drift(y, tau(s), score(y, tau(s)))),
                              dfx.ControlTerm(lambda s, y, a: lx.DiagonalLinearOperator(
                                  sde.diffusion(tau(s)) * jnp.ones_like(y)), path))
        return dfx.diffeqsolve(terms, dfx.ShARK(), t0, t1, dt0, x, max_steps=16384,
                               stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3)).ys[-1]

    keys, x_T = jax.random.split(jax.random.PRNGKey(0), n), jax.random.normal(jax.random.PRNGKey(1), (n, d))
    for name, args in (("backward (t0 > t1)", (sde.T, sde.eps, -0.01, lambda t: t, 1.0)),
                       ("forward in tau", (0.0, sde.T - sde.eps, 0.01, lambda u: sde.T - u, -1.0))):
        x = np.asarray(jax.jit(jax.vmap(lambda k, x, args=args: solve(k, x, *args)))(keys, x_T))
        lines.append(f"diffrax ShARK {name}: max |x| = {np.abs(x).max():.3g}, std {x.std():.3f} "
                     f"(exact law: mean 0.3, std {exact.ideal_law(sde, 0.3, 0.2, denoise=False).var ** 0.5:.3f})")
    return lines


def arguments(parser):
    pass


def run(args, ctx):
    lines = ["# Findings stated in the documentation", "",
             f"`{ctx.command}` ({datetime.date.today()}, {jax.devices()[0].platform}, "
             f"jax {jax.__version__}, diffrax {dfx.__version__})", ""]
    for section in (ggf_variance_bias(), shark_backward_time()):
        for line in section:
            print(line, flush=True)
            lines.append(f"- {line}")
    ctx.save("findings", dict(lines=lines), md="\n".join(lines))
