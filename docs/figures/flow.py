"""Draw docs/figures/flow.png, the picture in the flow-matching guide (docs/flow.md).

Run it in this folder: ``cd docs/figures && python flow.py`` (CPU, about a minute). Left: the
probability-flow paths of 64 draws from pure noise at t = 1 to an 8-mode ring (the exact velocity
of the mixture, ``ProbabilityFlow`` at rtol 1e-6, sampled at 40 times). Right: the embedded
``digits-flow`` model, the same 32 prior draws through 10 NFE of ``UniPC(10, order=2,
grid="uniform")`` (top) and 1000 Euler steps (bottom).
"""

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxsde
from jaxsde.testing.targets import GaussianMixture

# left: paths on a 2-d ring
sde = jaxsde.FlowSDE()
ring = GaussianMixture.ring(8, (2,), radius=0.6, scale=0.05)
velocity = jaxsde.Prediction(ring.velocity(sde), "velocity")
x1 = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
keys = jax.random.split(jax.random.PRNGKey(1), 64)
times = np.linspace(1.0, 1e-3, 40)
ode = jaxsde.ProbabilityFlow(rtol=1e-6, atol=1e-6)
paths = [np.asarray(x1)] + [
    np.asarray(jaxsde.solve_batch(keys, sde, velocity, ode, x1, t_end=float(t), denoise=False).x) for t in times[1:]]
paths = np.stack(paths, 1)  # (64, 40, 2)

# right: digits-flow at 10 NFE and with 1000 Euler steps, same prior draws
model = jaxsde.pretrained("digits-flow")  # embedded, a velocity Prediction: no download


def digits(solver):
    run = jax.jit(lambda key: jaxsde.sample(key, model.sde, model.score, solver, model.shape, 32))
    return np.asarray(run(jax.random.PRNGKey(0)).x[..., 0])


lo, hi = model.data_range
rows = [digits(jaxsde.UniPC(10, order=2, grid="uniform")), digits(jaxsde.DDIM(1000, grid="uniform"))]
tiles = []
for x in rows:
    x = np.clip((x - lo) / (hi - lo), 0, 1)
    tiles.append(np.pad(x, ((0, 0), (1, 0), (1, 0)), constant_values=1).reshape(2, 16, 9, 9)
                 .transpose(0, 2, 1, 3).reshape(18, 144))
image = np.concatenate([tiles[0], np.ones((3, 144)), tiles[1]])

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2.2]})
for p in paths:
    left.plot(p[:, 0], p[:, 1], lw=0.6, alpha=0.7)
left.scatter(paths[:, 0, 0], paths[:, 0, 1], s=4, c="gray", label="t = 1 (noise)")
left.scatter(paths[:, -1, 0], paths[:, -1, 1], s=6, c="k", label="t = 0.001")
left.set_aspect("equal")
left.set_title("flow paths from t = 1, 8-mode ring", fontsize=9)
left.legend(fontsize=7, loc="lower right")
right.imshow(image, cmap="gray", vmin=0, vmax=1)
right.set_title("digits-flow, same draws: UniPC-2, 10 NFE (top) / Euler, 1000 steps (bottom)", fontsize=9)
right.set_axis_off()
fig.tight_layout()
fig.savefig("flow.png", dpi=100)
print("wrote flow.png")
